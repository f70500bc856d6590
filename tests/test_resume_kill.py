"""SIGKILL a training subprocess, --resume it, and get exactly the uninterrupted run: every tensor of the
final checkpoint (parameters, optimiser moments, RNG states, carried diagnostics) and every line of
metrics.jsonl except the wall-clock field ``updates_per_s``.

The child kills itself with SIGKILL when it asks for the batch of update KILL_AT + 1, so the kill lands
at the same place on every machine: after the checkpoint of step 30 (in the middle of a logging window,
so the window's partial sums must survive), after the log rows of steps 40 (and the evaluation at 40),
which the resume must drop and write again.

The child is a fork of the test process (conftest.py's ``forked``: no seconds of imports); the slow run
also starts it as a fresh ``python -c`` interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rl_adapters.cli import main
from rl_adapters.training import TIMING_FIELDS

REPO = Path(__file__).resolve().parent.parent
STEPS, KILL_AT, CHECKPOINT_EVERY, LOG_EVERY, EVAL_EVERY = 90, 55, 30, 20, 40

# Runs the CLI in the child, SIGKILLing the process when update KILL_AT + 1 asks for its batch.
CHILD = """
import os, signal, sys
from rl_adapters.data import OfflineData
kill_at, calls, real = int(sys.argv[1]), [0], OfflineData.sample
def sample(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] > kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
OfflineData.sample = sample
from rl_adapters.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""

ALGO_ARGS = {
    "bc": [],
    "td3bc": [],  # policy_freq 2: the steps after the checkpoint report the last actor update's losses
    "iql": [],
    # value_steps = 22: the checkpoint at 30 is in the bi-level phase (solver state, sigma schedule)
    "vaco": ["--scorer-hidden-dim", "16", "--value-fraction", "0.25"],
    "aspc": ["--update-interval", "2"],  # outer updates (rho, EMA, scale log) before and after the kill
}


def _args(algo: str, dataset: str, out: Path) -> list[str]:
    return [
        "--algo", algo, "--dataset", dataset, "--steps", str(STEPS), "--seed", "3", "--device", "cpu",
        "--out", str(out), "--eval-every", str(EVAL_EVERY), "--eval-episodes", "1",
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--log-every", str(LOG_EVERY), "--threads", "1",
        "--no-progress", "--no-plot", "--hidden-dim", "32", "--batch-size", "32", *ALGO_ARGS[algo],
    ]  # fmt: skip


def _rows(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def _assert_identical(a: Any, b: Any, where: str = "checkpoint") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def _final_state(out: Path) -> dict[str, Any]:
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for timing_or_path in ("train_time_s", "wall_time_s", "config"):  # config holds --out
        state.pop(timing_or_path)
    return state


def _killed_child(argv: list[str], cwd: Path, launch: str, forked) -> tuple[int, str]:
    """Run CHILD (``train`` killed at update KILL_AT + 1) forked or as a fresh interpreter: (exit status, stderr)."""
    if launch == "subprocess":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        proc = subprocess.run([sys.executable, "-c", CHILD, str(KILL_AT), *argv], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=300, check=False)
        return proc.returncode, proc.stderr
    err = cwd / "child.err"

    def child() -> None:  # the same code as `python -c CHILD KILL_AT ...argv`, in the forked process
        sys.argv = ["-c", str(KILL_AT), *argv]
        exec(CHILD, {"__name__": "__main__"})  # noqa: S102 - our own code

    with open(err, "w") as f:
        rc = forked(child, cwd=cwd, stdout=subprocess.DEVNULL, stderr=f).wait(timeout=300)
    return rc, err.read_text()


@pytest.mark.parametrize("launch", ["fork", pytest.param("subprocess", marks=pytest.mark.slow)])
@pytest.mark.parametrize("algo", list(ALGO_ARGS))
def test_sigkill_then_resume_equals_uninterrupted_run(tiny_dataset, tmp_path, capsys, algo, launch, forked):
    killed = tmp_path / "killed"
    rc, stderr = _killed_child(_args(algo, tiny_dataset, killed), tmp_path, launch, forked)
    assert rc == -signal.SIGKILL, stderr
    before = _rows(killed)
    assert [r["step"] for r in before] == [20, 40, 40], "the kill should land after step 40's rows"
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 30
    assert not (killed / "summary.json").exists()

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    reference = tmp_path / "reference"
    assert main(["train", *_args(algo, tiny_dataset, reference)]) == 0
    capsys.readouterr()

    assert _rows(killed) == _rows(reference)
    assert [r["step"] for r in _rows(reference)] == [20, 40, 40, 60, 80, 80, 90, 90]
    _assert_identical(_final_state(killed), _final_state(reference))
    summary = {k: v for k, v in json.loads((killed / "summary.json").read_text()).items()
               if k not in ("updates_per_s", "wall_time_s")}
    ref_summary = {k: v for k, v in json.loads((reference / "summary.json").read_text()).items()
                   if k not in ("updates_per_s", "wall_time_s")}
    assert summary == ref_summary


def test_threads_are_saved_and_honoured_on_resume(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "20", "--device", "cpu", "--out",
            str(out), "--eval-episodes", "0", "--checkpoint-every", "10", "--hidden-dim", "16", "--no-progress",
            "--no-plot", "--threads", "2", "--max-steps-this-session", "10"]
    before = torch.get_num_threads()
    assert main(base) == 0
    assert json.loads((out / "config.json").read_text())["threads"] == 2
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["threads"] == 2
    assert torch.get_num_threads() == before  # the caller's setting is restored


def test_default_is_one_thread(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "5", "--out", str(out),
                 "--eval-episodes", "0", "--hidden-dim", "16", "--no-progress", "--no-plot"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == 1
    assert json.loads((out / "config.json").read_text())["threads"] == 1


def test_checkpoint_without_logging_window_or_threads_still_resumes(tiny_dataset, tmp_path, capsys):
    """Runs started by the previous trainer (no saved logging window, no threads in config.json) resume to the
    same result, still weights_only."""

    def args(out, *extra):
        return ["train", "--algo", "td3bc", "--dataset", tiny_dataset, "--steps", "20", "--seed", "1",
                "--device", "cpu", "--out", str(out), "--eval-episodes", "0", "--checkpoint-every", "10",
                "--log-every", "5", "--hidden-dim", "16", "--batch-size", "16", "--no-progress", "--no-plot",
                *extra]  # fmt: skip

    assert main(args(tmp_path / "reference")) == 0
    old = tmp_path / "old"
    assert main(args(old, "--max-steps-this-session", "10")) == 0
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["log_window"]
    torch.save(state, old / "checkpoint.pt")
    cfg = json.loads((old / "config.json").read_text())
    del cfg["threads"]
    (old / "config.json").write_text(json.dumps(cfg))
    # what benchmarks/offline_rl.py did: --threads 1 with --resume
    assert main(["train", "--resume", str(old), "--threads", "1", "--no-progress"]) == 0
    capsys.readouterr()
    _assert_identical(_final_state(old)["algorithm"], _final_state(tmp_path / "reference")["algorithm"])
    assert _rows(old) == _rows(tmp_path / "reference")

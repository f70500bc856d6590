"""Issue 23, second reliability pass: every subcommand fails in one line (exit 2 usage, 1 file/data) naming the
flag and a fix, nothing is written or deleted when it refuses, an existing run is never replaced without
``--overwrite``, and SIGINT/SIGTERM checkpoint the current step and print the command that continues the run.

Most rows run in-process through ``cli.main`` (imports cost seconds per subprocess); one real subprocess per
signal checks what a terminal shows (marked slow).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from rl_adapters.cli import main
from rl_adapters.data import OfflineData
from rl_adapters.errors import UsageError
from rl_adapters.training import TIMING_FIELDS, TrainConfig, train
from rl_adapters.training.config import check_out_free
from tests.test_resume_kill import _assert_identical

REPO = Path(__file__).resolve().parent.parent
TINY = ["--hidden-dim", "16", "--batch-size", "16", "--no-progress", "--no-plot", "--eval-episodes", "0",
        "--device", "cpu"]


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` ("<dir>" for folders; empty if it does not exist)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


def _one_line(err: str, command: str = "train") -> str:
    assert err.count("\n") == 1 and err.startswith(f"bilevel-rl {command}: "), err
    assert "Traceback" not in err
    return err.strip()


def _bc_run(dataset: str, out: Path, steps: int = 20, stop_at: int | None = None) -> Path:
    cfg = TrainConfig(algo="bc", dataset=dataset, steps=steps, device="cpu", out=str(out), eval_episodes=0,
                      checkpoint_every=10, log_every=5, progress=False, plot=False,
                      hparams={"hidden_dim": 16, "batch_size": 16})
    train(cfg, max_steps_this_session=stop_at)
    return out


def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, fail the test if the training data is loaded (a refusal must come before)."""
    monkeypatch.setattr("rl_adapters.training.loop.load_dataset",
                        lambda *a, **k: pytest.fail("the data was loaded before the refusal"))


# ------------------------------------------------------------------------------------------------ train --out
@pytest.mark.parametrize("state", ["finished", "unfinished"])
def test_out_holding_a_run_is_refused_and_left_alone(tiny_dataset, tmp_path, capsys, monkeypatch, state):
    run = _bc_run(tiny_dataset, tmp_path / "run", stop_at=10 if state == "unfinished" else None)
    before = _snapshot(run)
    with monkeypatch.context() as m:
        _forbid_loading(m)
        assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "20", "--out", str(run),
                     *TINY]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"--out {run}: holds a{'n unfinished' if state == 'unfinished' else ' finished'} run" in err
    assert "replace it with --overwrite" in err and f"another --out, e.g. --out {run}-2" in err
    assert (f"continue it with --resume {run}" in err) == (state == "unfinished")
    assert _snapshot(run) == before and not (tmp_path / "run-2").exists()
    # every suggested fix passes: --resume continues it, the other --out is free
    assert check_out_free(f"{run}-2") is False
    if state == "unfinished":
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_non_empty_directory_is_refused(tiny_dataset, tmp_path, capsys, monkeypatch):
    _forbid_loading(monkeypatch)
    out = tmp_path / "papers"
    out.mkdir()
    for name in ("a.pdf", "b.txt", "c.csv", "d.md"):
        (out / name).write_text(name)
    before = _snapshot(out)
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--out", str(out), *TINY]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"--out {out}: is not empty (4 entries: a.pdf, b.txt, c.csv, ...)" in err
    assert f"--out {out}-2" in err and "--overwrite" in err
    assert _snapshot(out) == before


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(tiny_dataset, tmp_path, capsys):
    run = _bc_run(tiny_dataset, tmp_path / "run")
    (run / "learning_curve.png").write_bytes(b"old figure")
    (run / "seed7").mkdir()
    (run / "seed7" / "checkpoint.pt").write_bytes(b"old seed")
    (run / "notes.txt").write_text("mine")
    old_config = json.loads((run / "config.json").read_text())
    args = ["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "5", "--log-every", "5", "--out",
            str(run), "--overwrite", *TINY]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl", "notes.txt",
                                                    "summary.json"]
    assert (run / "notes.txt").read_text() == "mine"
    assert old_config["steps"] == 20 and json.loads((run / "config.json").read_text())["steps"] == 5
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [5]


def test_overwrite_deletes_nothing_when_the_run_is_refused(tiny_dataset, tmp_path, capsys):
    run = _bc_run(tiny_dataset, tmp_path / "run")
    before = _snapshot(run)
    refused_after_loading = ["--algo", "vaco", "--solver", "k_step", "--mode", "forward"]  # too big for forward mode
    for bad in (["--dataset", "tiny/pendulum/nothing-v0"], ["--steps", "0"], ["--resume", str(run)],
                refused_after_loading):
        argv = ["train", "--algo", "bc", "--dataset", tiny_dataset, "--out", str(run), "--overwrite", *TINY, *bad]
        assert main(argv) == 2, bad
        err = _one_line(capsys.readouterr().err)
        assert "--overwrite with --resume" in err if "--resume" in bad else "--overwrite" not in err
        assert _snapshot(run) == before


def test_a_run_stopped_before_its_first_checkpoint_is_started_again(tiny_dataset, tmp_path, capsys):
    """What a SIGKILL before the first checkpoint leaves (config.json, metrics rows, no checkpoint): nothing to
    resume, so a new run may take the directory; the benchmark grid relies on this to retry such a cell."""
    run = _bc_run(tiny_dataset, tmp_path / "run")
    for name in ("checkpoint.pt", "summary.json"):
        (run / name).unlink()
    (tmp_path / "empty").mkdir()
    for out in (run, tmp_path / "empty"):
        assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "5", "--log-every", "5",
                     "--out", str(out), *TINY]) == 0, capsys.readouterr().err
        assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [5]


# ------------------------------------------------------------------------ other train flags (issue 23 rows)
ROWS = [
    ("checkpoint-every-zero", ["--checkpoint-every", "0"],
     (r"--checkpoint-every 0: must be an integer >= 1 \(.*a value >= --steps checkpoints only at the end\); "
     r"e\.g\. --checkpoint-every 10000$")),
    ("seeds-descending", ["--seeds", "3-1"], r"--seeds 3-1: the range 3-1 is empty .*e\.g\. --seeds 1-3$"),
    ("seeds-descending-in-list", ["--seeds", "0,5-4"], r"--seeds 0,5-4: .*e\.g\. --seeds 0,4-5$"),
]


@pytest.mark.parametrize("args, message", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_flag_is_one_line(tiny_dataset, tmp_path, capsys, monkeypatch, args, message):
    _forbid_loading(monkeypatch)
    out = tmp_path / "new" / "run"
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--out", str(out), *TINY, *args]) == 2
    err = _one_line(capsys.readouterr().err)
    assert re.search(message, err), err
    suggestion = err.rsplit("e.g. ", 1)[1].split()
    # the suggestion passes every check; only the dataset, checked last, is refused now
    assert main(["train", "--algo", "bc", "--dataset", "tiny/pendulum/nothing-v0", "--out", str(out), *TINY,
                 *suggestion]) == 2
    assert "--dataset tiny/pendulum/nothing-v0: not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_config_recorded_with_checkpoint_every_zero_still_resumes():
    cfg = TrainConfig.from_dict({"algo": "bc", "dataset": "x", "steps": 300, "checkpoint_every": 0})
    assert cfg.checkpoint_every == 300  # what 0 meant then: a checkpoint only at the end


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize("out", ["/proc/nosuch/run", "/sys/x"])
def test_out_that_cannot_be_created(tiny_dataset, capsys, out):
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "5", "--out", out, *TINY]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"bilevel-rl train: error: --out {out}: ") and "e.g. --out runs/" in err
    assert not Path(out).exists()


# ------------------------------------------------------------------------------------------- interrupts
def _signal_at(monkeypatch: pytest.MonkeyPatch, method: str, at: int, signum: int) -> None:
    """Send ``signum`` to this process while update ``at`` asks for its batch (the update still completes)."""
    real, calls = getattr(OfflineData, method), [0]

    def sample(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signum)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OfflineData, method, sample)


def _rows(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def _state(ckpt: Path) -> dict[str, Any]:
    state = torch.load(ckpt, weights_only=True)
    for timing_or_path in ("train_time_s", "wall_time_s", "config"):
        state.pop(timing_or_path)
    return state


@pytest.mark.parametrize("signum, code, algo, seeds", [
    (signal.SIGINT, 130, "td3bc", None),
    (signal.SIGTERM, 143, "td3bc", None),
    (signal.SIGTERM, 143, "bc", "0,1"),  # a multi-seed run checkpoints every seed
], ids=["sigint", "sigterm", "sigterm-seeds"])
def test_signal_checkpoints_the_current_step_and_resumes_bitwise(tiny_dataset, tmp_path, capsys, monkeypatch,
                                                                  signum, code, algo, seeds):
    def argv(out: Path) -> list[str]:
        return ["train", "--algo", algo, "--dataset", tiny_dataset, "--steps", "40", "--checkpoint-every", "10",
                "--log-every", "4", "--out", str(out), *(["--seeds", seeds] if seeds else ["--seed", "3"]), *TINY]

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        _signal_at(m, "sample_many" if seeds else "sample", 17, signum)
        assert main(argv(tmp_path / "stopped")) == code
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    captured = capsys.readouterr()
    assert captured.out == ""
    err = _one_line(captured.err)
    assert err == f"bilevel-rl train: interrupted at step 17; continue with: bilevel-rl train --resume {tmp_path}/stopped"
    runs = [Path(f"seed{s}") for s in seeds.split(",")] if seeds else [Path()]
    for r in runs:
        assert torch.load(tmp_path / "stopped" / r / "checkpoint.pt", weights_only=True)["step"] == 17
        assert not (tmp_path / "stopped" / r / "summary.json").exists()
    assert main(["train", "--resume", str(tmp_path / "stopped"), "--no-progress"]) == 0
    assert main(argv(tmp_path / "reference")) == 0
    for r in runs:
        assert _rows(tmp_path / "stopped" / r) == _rows(tmp_path / "reference" / r)
        _assert_identical(_state(tmp_path / "stopped" / r / "checkpoint.pt"),
                          _state(tmp_path / "reference" / r / "checkpoint.pt"))


def test_signal_before_training_leaves_nothing(tiny_dataset, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the data loads: no update to save, one line, exit 130, no directory left behind."""
    def load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs at once; reaching the end of this would mean it did not raise
        pytest.fail("SIGINT outside the update loop did not stop the run")

    monkeypatch.setattr("rl_adapters.training.loop.load_dataset", load)
    out = tmp_path / "new" / "run"
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--out", str(out), *TINY]) == 130
    err = _one_line(capsys.readouterr().err)
    assert err == ("bilevel-rl train: interrupted before the first checkpoint, so there is nothing to resume; start "
                   "the run again")
    assert not (tmp_path / "new").exists()


CHILD_WAIT = 240


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_a_real_process_stops_in_one_line(tiny_dataset, tmp_path, signum, code):
    """What a terminal shows after Ctrl-C / kill once the first checkpoint exists: one line, no traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_adapters", "train", "--algo", "bc", "--dataset", tiny_dataset, "--steps",
         "10000000", "--checkpoint-every", "20", "--out", str(out), *TINY],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + CHILD_WAIT
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code and stdout == ""
    [line] = stderr.splitlines()
    m = re.fullmatch(rf"bilevel-rl train: interrupted at step (\d+); continue with: bilevel-rl train --resume {out}",
                     line)
    assert m, line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == int(m.group(1))


# ------------------------------------------------------------------------------------------- make-dataset
MAKE_ROWS = [
    ("unknown-env", ["--env", "Nope-v0", "--tiny"], (r"--env Nope-v0: not a registered gymnasium environment "
                                                    r"\(NameNotFound: .*\); e\.g\. --env InvertedPendulum-v5$")),
    ("discrete-actions", ["--env", "CartPole-v1", "--tiny"],
     r"--env CartPole-v1: its action space is Discrete\(2\), .*continuous .*e\.g\. --env InvertedPendulum-v5$"),
    ("train-steps-negative", ["--env", "Pendulum-v1", "--train-steps", "-5"],
     r"--train-steps -5: must be an integer >= 1; e\.g\. --train-steps 300000$"),
    ("eval-every-above-train-steps", ["--env", "Pendulum-v1", "--train-steps", "100"],
     r"--eval-every 5000 with --train-steps 100: no policy snapshot .*e\.g\. --eval-every 10$"),
    ("version-without-v", ["--env", "Pendulum-v1", "--tiny", "--version", "1"], r"--version '1': .*e\.g\. --version v0$"),
    ("bad-namespace", ["--env", "Pendulum-v1", "--tiny", "--namespace", "a b"], r"--namespace 'a b': not a Minari"),
]


@pytest.mark.parametrize("args, message", [r[1:] for r in MAKE_ROWS], ids=[r[0] for r in MAKE_ROWS])
def test_make_dataset_bad_flag_is_one_line_and_writes_nothing(minari_root, capsys, args, message):
    before = _snapshot(minari_root)
    assert main(["make-dataset", "--namespace", "t/x", *args]) == 2
    err = _one_line(capsys.readouterr().err, "make-dataset")
    assert re.search(message, err), err
    assert _snapshot(minari_root) == before


def test_make_dataset_refuses_to_replace_a_dataset(make_tiny_dataset, minari_root, capsys):
    make_tiny_dataset(episodes=1)
    before = _snapshot(minari_root)
    base = ["make-dataset", "--env", "InvertedPendulum-v5", "--namespace", "tiny/pendulum", "--tiny"]
    assert main(base) == 2
    err = _one_line(capsys.readouterr().err, "make-dataset")
    assert err.endswith(f"--namespace tiny/pendulum: dataset tiny/pendulum/mixed-v0 exists already in {minari_root}; "
                        f"pass --overwrite to delete and regenerate it, or another --namespace or --version, e.g. "
                        f"--version v1")
    assert _snapshot(minari_root) == before
    assert main([*base, "--version", "v1"]) == 0  # the suggestion works
    assert main([*base, "--overwrite"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and json.loads(out[-1])["episodes"] == 6  # JSON only, no "Dataset ... deleted!"


def test_make_dataset_debug_shows_the_traceback(minari_root):
    with pytest.raises(UsageError, match="--train-steps -5"):
        main(["make-dataset", "--env", "Pendulum-v1", "--namespace", "t/x", "--train-steps", "-5", "--debug"])


# ---------------------------------------------------------------------------------------- analyze-weights
@pytest.fixture
def vaco_run_files(tiny_dataset: str, tmp_path: Path) -> Path:
    """What analyze-weights checks before loading: a VACO run's config.json and a checkpoint file."""
    run = tmp_path / "vaco"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"algo": "vaco", "dataset": tiny_dataset, "steps": 10}))
    (run / "checkpoint.pt").write_bytes(b"not read before the arguments are checked")
    return run


def _analyze(argv: list[str], capsys: pytest.CaptureFixture[str], code: int) -> str:
    assert main(["analyze-weights", *argv]) == code
    return _one_line(capsys.readouterr().err, "analyze-weights")


def test_analyze_weights_of_a_non_vaco_run(tiny_dataset, tmp_path, capsys):
    run = _bc_run(tiny_dataset, tmp_path / "bc")
    before = _snapshot(run)
    err = _analyze([str(run)], capsys, 2)
    assert f"RUN_DIR {run}: a bc run, but only VACO has a meta-scorer to analyze" in err
    assert _snapshot(run) == before


def test_analyze_weights_of_a_missing_directory(tmp_path, capsys):
    err = _analyze([str(tmp_path / "nothing")], capsys, 2)
    assert f"RUN_DIR {tmp_path / 'nothing'}: no such directory" in err and "--algo vaco" in err
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("case", ["unknown-dataset", "out-is-a-file", "cuda-without-gpu", "no-checkpoint",
                                  "unreadable-config"])
def test_analyze_weights_bad_argument(vaco_run_files, capsys, monkeypatch, case):
    run = vaco_run_files
    argv, code = [str(run)], 2
    if case == "unknown-dataset":
        argv += ["--dataset", "tiny/pendulum/nothing-v0"]
        message = "--dataset tiny/pendulum/nothing-v0: not found under"
    elif case == "out-is-a-file":
        (run / "report.txt").write_text("keep me")
        argv += ["--out", str(run / "report.txt")]
        message = f"--out {run}/report.txt: is an existing file, not a directory; pass a directory, e.g. --out {run}/weights"
    elif case == "cuda-without-gpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        argv += ["--device", "cuda"]
        message = "--device cuda: torch.cuda.is_available() is False"
    elif case == "no-checkpoint":
        (run / "checkpoint.pt").unlink()
        message = f"RUN_DIR {run}: has no checkpoint.pt"
    else:
        (run / "config.json").write_text("{not json")
        code, message = 1, f"{run}/config.json: not a readable run configuration"
    before = _snapshot(run)
    err = _analyze(argv, capsys, code)
    assert message in err, err
    assert _snapshot(run) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_analyze_weights_out_that_cannot_be_written(tiny_dataset, tmp_path, capsys):
    """Found (as root) only when the results are written, after the scorer ran: still one line, exit 2."""
    run = tmp_path / "vaco"
    train(TrainConfig(algo="vaco", dataset=tiny_dataset, steps=4, device="cpu", out=str(run), eval_episodes=0,
                      checkpoint_every=4, log_every=2, progress=False, plot=False,
                      hparams={"hidden_dim": 16, "batch_size": 16}))
    before = _snapshot(run)
    err = _analyze([str(run), "--out", "/proc/nosuch/weights", "--no-plot"], capsys, 2)
    # as root (which may write to /proc) the failure comes from mkdir; otherwise the check finds /proc read-only
    assert err.startswith("bilevel-rl analyze-weights: error: --out /proc/nosuch/weights: "), err
    assert ("cannot be written (FileNotFoundError" in err and err.endswith(f"e.g. --out {run}/weights")
            or "/proc is not writable" in err), err
    assert _snapshot(run) == before

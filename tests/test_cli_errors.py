"""Bad input to ``bilevel-rl train``: one line on stderr naming the flag, the value and a fix, the right
exit code, no traceback (unless --debug), and nothing left behind in --out.

One row per input of issue 12's table, run in-process through ``cli.main`` (a subprocess per row would
cost seconds of imports each); one row also runs as a real subprocess to check what a user's terminal
shows, import-time warnings included.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rl_adapters.cli import main
from rl_adapters.errors import CheckpointError, UsageError
from rl_adapters.training import TrainConfig, read_checkpoint, train

REPO = Path(__file__).resolve().parent.parent
TINY = ["--hidden-dim", "16", "--batch-size", "16", "--no-progress", "--no-plot", "--eval-episodes", "0"]


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (empty if it does not exist)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def interrupted_run(tiny_dataset: str, tmp_path: Path) -> Path:
    """A BC run stopped after 10 of 30 steps, with its checkpoint: what --resume rows start from."""
    out = tmp_path / "interrupted"
    cfg = TrainConfig(algo="bc", dataset=tiny_dataset, steps=30, device="cpu", out=str(out),
                      eval_episodes=0, checkpoint_every=10, log_every=5, progress=False, plot=False,
                      hparams={"hidden_dim": 16, "batch_size": 16})
    assert train(cfg, max_steps_this_session=10)["status"] == "interrupted"
    return out


def _corrupt(how: str) -> Callable[[Path], None]:
    def apply(ckpt: Path) -> None:
        data = ckpt.read_bytes()
        if how == "truncated":
            ckpt.write_bytes(data[: len(data) // 2])
        elif how == "random":
            ckpt.write_bytes(np.random.default_rng(0).bytes(len(data)))
        elif how == "empty":
            ckpt.write_bytes(b"")

    return apply


class _Payload:
    """Pickles to a call of Path.touch: loading it with weights_only=False would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickled_object(ckpt: Path) -> None:
    state = torch.load(ckpt, weights_only=True)
    state["last_eval"] = _Payload(ckpt.parent.parent / "payload-ran")
    torch.save(state, ckpt)


# (id, extra args for a new run | None for a --resume row, corrupt the checkpoint, exit code, stderr regex)
NEW_RUN_ROWS = [
    ("steps-negative", ["--steps", "-5"], 2, r"--steps -5: must be an integer >= 1 .*e\.g\. --steps"),
    ("steps-zero", ["--steps", "0"], 2, r"--steps 0: must be an integer >= 1"),
    ("device-gpu", ["--device", "gpu"], 2, r"--device 'gpu': not a device .* use auto, cpu, cuda"),
    ("log-every-zero", ["--log-every", "0"], 2, r"--log-every 0: must be an integer >= 1 .*e\.g\. --log-every"),
    ("set-actor-lr-abc", ["--set", "actor_lr=abc"], 2, r"actor_lr \(--actor-lr\) = 'abc': must be a number.*e\.g\."),
    ("actor-lr-negative", ["--actor-lr", "-1"], 2, r"actor_lr \(--actor-lr\) = -1\.0: must be > 0 .*learning rate.*e\.g\."),
    ("batch-size-zero", ["--batch-size", "0"], 2, r"batch_size \(--batch-size\) = 0: must be >= 1.*e\.g\. --batch-size"),
    ("unknown-dataset", ["--dataset", "tiny/pendulum/nothing-v0"], 2,
     r"--dataset tiny/pendulum/nothing-v0: not found under MINARI_DATASETS_PATH=.*make-dataset"),
    ("set-without-equals", ["--set", "actor_lr"], 2, r"--set 'actor_lr': expects KEY=VALUE"),
    ("eval-every-negative", ["--eval-every", "-1"], 2, r"--eval-every -1: must be an integer >= 0"),
    ("threads-zero", ["--threads", "0"], 2, r"--threads 0: must be an integer >= 1"),
    ("solver-unknown", ["--algo", "vaco", "--solver", "two_step"], 2,
     r"solver \(--solver\) = 'two_step': must be one of one_step, k_step, implicit"),
]


@pytest.mark.parametrize("args, code, message", [r[1:] for r in NEW_RUN_ROWS], ids=[r[0] for r in NEW_RUN_ROWS])
def test_bad_new_run_is_one_line_and_leaves_nothing(tiny_dataset, tmp_path, capsys, monkeypatch, args, code, message):
    out = tmp_path / "out" / "run"
    base = ["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "20", "--out", str(out), *TINY]
    loaded = []
    monkeypatch.setattr("rl_adapters.training.loop.load_dataset", lambda *a, **k: loaded.append(a) or pytest.fail())
    assert main([*base, *args]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bilevel-rl train: error: "), err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # not even the parent --out would have created
    assert not loaded  # refused before any data was read


def test_cuda_without_gpu_is_a_usage_error(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine that has one
    out = tmp_path / "run"
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: torch.cuda.is_available() is False" in err
    assert "use --device cpu" in err and not out.exists()


def test_setting_checked_once_the_data_is_known_is_one_line_too(tiny_dataset, tmp_path, capsys):
    """VACO's forward mode refuses a large scorer only once the input sizes are known (after loading)."""
    out = tmp_path / "run"
    args = ["train", "--algo", "vaco", "--dataset", tiny_dataset, "--solver", "k_step", "--mode", "forward",
            "--out", str(out), *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--algo vaco: VACO k_step mode='forward' needs one unrolled pass" in err
    assert not out.exists()


def test_out_is_an_existing_file(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out}: is an existing file" in err and "e.g. --out" in err
    assert out.read_text() == "keep me"


def test_nan_in_data_is_one_line_and_leaves_nothing(make_tiny_dataset, minari_root, tmp_path, capsys):
    make_tiny_dataset(episodes=2)
    with h5py.File(minari_root / "tiny/pendulum/mixed-v0" / "data" / "main_data.hdf5", "r+") as f:
        rewards = f["episode_1/rewards"][...]
        rewards[3] = np.nan
        f["episode_1/rewards"][...] = rewards
    out = tmp_path / "run"
    assert main(["train", "--algo", "bc", "--dataset", "tiny/pendulum/mixed-v0", "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "field 'rewards' has a non-finite value nan at transition 43" in err and "regenerate" in err
    assert not out.exists()


RESUME_ROWS = [
    ("steps-with-resume", ["--steps", "500"], None, 2,
     (r"--steps 500 with --resume .*started with steps=30 .*continues it unchanged; to train longer start a "
      r"new run, e\.g\. --out .*-longer --steps 500")),
    ("hparam-with-resume", ["--actor-lr", "0.1"], None, 2, r"--actor-lr 0\.1 with --resume .*actor_lr=0\.0003"),
    ("truncated-checkpoint", [], _corrupt("truncated"), 1,
     r"checkpoint\.pt: not a readable checkpoint \(.*truncated or not a torch file.*without --resume"),
    ("random-checkpoint", [], _corrupt("random"), 1, r"checkpoint\.pt: not a readable checkpoint \(.*without --resume"),
    ("empty-checkpoint", [], _corrupt("empty"), 1, r"checkpoint\.pt: not a readable checkpoint \(EOFError"),
    ("pickled-object-checkpoint", [], _pickled_object, 1,
     r"checkpoint\.pt: refused: it holds a pickled Python object \(GLOBAL getattr\) that could run code"),
]


@pytest.mark.parametrize("args, corrupt, code, message", [r[1:] for r in RESUME_ROWS],
                         ids=[r[0] for r in RESUME_ROWS])
def test_bad_resume_is_one_line_and_changes_nothing(interrupted_run, capsys, args, corrupt, code, message):
    if corrupt is not None:
        corrupt(interrupted_run / "checkpoint.pt")
    before = _snapshot(interrupted_run)
    assert main(["train", "--resume", str(interrupted_run), "--no-progress", *args]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bilevel-rl train: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert _snapshot(interrupted_run) == before
    assert not (interrupted_run.parent / "payload-ran").exists()


def test_resume_accepts_flags_equal_to_the_saved_ones(interrupted_run, capsys):
    """Repeating the original command with --resume is not a conflict; the run finishes its 30 steps."""
    assert main(["train", "--resume", str(interrupted_run), "--steps", "30", "--hidden-dim", "16",
                 "--no-progress"]) == 0
    assert '"steps": 30' in capsys.readouterr().out


def test_resume_of_a_finished_run_is_refused(interrupted_run, capsys):
    assert main(["train", "--resume", str(interrupted_run), "--no-progress"]) == 0
    before = _snapshot(interrupted_run)
    assert main(["train", "--resume", str(interrupted_run), "--no-progress"]) == 2
    assert "the run already finished (30 of 30 steps)" in capsys.readouterr().err
    assert _snapshot(interrupted_run) == before


def test_pickled_object_is_refused_by_the_api_too(interrupted_run):
    _pickled_object(interrupted_run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused: it holds a pickled Python object"):
        read_checkpoint(interrupted_run / "checkpoint.pt")
    assert not (interrupted_run.parent / "payload-ran").exists()
    # the payload is live: an unsafe load would have run it
    torch.load(interrupted_run / "checkpoint.pt", weights_only=False)
    assert (interrupted_run.parent / "payload-ran").exists()


def test_numpy_rng_states_are_refused_like_any_pickled_object(interrupted_run):
    """The RNG states are written as tensors; numpy arrays in a checkpoint are not allowed in (no allowlist)."""
    state = torch.load(interrupted_run / "checkpoint.pt", weights_only=True)
    n = state["numpy_rng"]
    state["numpy_rng"] = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                          n["cached_gaussian"])
    torch.save(state, interrupted_run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"refused: it holds a pickled Python object \(GLOBAL numpy"):
        read_checkpoint(interrupted_run / "checkpoint.pt")


def test_debug_shows_the_traceback(tiny_dataset, tmp_path):
    with pytest.raises(UsageError, match="--steps -5"):
        main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "-5", "--debug",
              "--out", str(tmp_path / "run")])


def test_run_failing_before_its_first_checkpoint_removes_its_directory(tiny_dataset, tmp_path, monkeypatch):
    from rl_adapters.algorithms.bc import BC
    from rl_adapters.training import NonFiniteLossError

    monkeypatch.setattr(BC, "update", lambda self, batch: {"actor_loss": float("nan")})
    out = tmp_path / "new" / "run"
    cfg = TrainConfig(algo="bc", dataset=tiny_dataset, steps=20, device="cpu", out=str(out), eval_episodes=0,
                      checkpoint_every=10, progress=False, plot=False, hparams={"hidden_dim": 16})
    with pytest.raises(NonFiniteLossError, match="step 1: .*No checkpoint had been written yet"):
        train(cfg)
    assert not (tmp_path / "new").exists()


def test_help_lists_solver_values_per_algorithm(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--solver SOLVER [vaco: one_step|k_step|implicit; aspc, aspc-iql: one_step|k_step_forward|k_step_reverse]" in text


def test_a_real_process_prints_exactly_one_line(tiny_dataset, tmp_path):
    """What the terminal shows: exit 2, one stderr line, no warnings or traceback from the imports."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rl_adapters", "train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "-5",
         "--out", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        ("bilevel-rl train: error: --steps -5: must be an integer >= 1 (the number of gradient updates); "
         "e.g. --steps 100000")
    ]
    assert not out.exists()

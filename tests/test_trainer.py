"""Trainer and CLI: outputs, bitwise resume (in-process hook; a SIGKILLed process: tests/test_resume_kill.py),
NaN handling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rl_adapters.cli import main
from rl_adapters.errors import CheckpointError
from rl_adapters.training import NonFiniteLossError, TrainConfig, train


def _cfg(dataset, out, algo="td3bc", steps=60, **kw):
    base = {
        "algo": algo,
        "dataset": dataset,
        "steps": steps,
        "seed": 1,
        "device": "cpu",
        "out": str(out),
        "eval_every": 30,
        "eval_episodes": 2,
        "checkpoint_every": 20,
        "log_every": 10,
        "progress": False,
        "plot": False,
        "hparams": {"hidden_dim": 32, "batch_size": 64},
    }
    base.update(kw)
    return TrainConfig(**base)


def _ckpt(out):
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)


def _assert_same_state(a, b):
    sa, sb = a["algorithm"], b["algorithm"]
    assert sa["step"] == sb["step"]
    for name in sa["modules"]:
        for k, t in sa["modules"][name].items():
            assert torch.equal(t, sb["modules"][name][k]), (name, k)
    for name in sa["optimizers"]:
        for pid, st in sa["optimizers"][name]["state"].items():
            for k, t in st.items():
                assert torch.equal(t, sb["optimizers"][name]["state"][pid][k]), (name, pid, k)
    assert torch.equal(sa["generator"], sb["generator"])
    assert torch.equal(a["sampler_rng"], b["sampler_rng"])


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_resume_is_bitwise_identical(tiny_dataset, tmp_path, algo):
    full = train(_cfg(tiny_dataset, tmp_path / "full", algo))
    assert full["status"] == "finished"
    part = train(_cfg(tiny_dataset, tmp_path / "part", algo), max_steps_this_session=25)
    assert part["status"] == "interrupted" and _ckpt(tmp_path / "part")["step"] == 25
    assert not (tmp_path / "part" / "summary.json").exists()
    resumed = train(_cfg(tiny_dataset, tmp_path / "part", algo), resume=True)
    assert resumed["status"] == "finished" and resumed["steps"] == 60
    _assert_same_state(_ckpt(tmp_path / "full"), _ckpt(tmp_path / "part"))
    assert resumed["final_return"] == full["final_return"]
    # metrics.jsonl of the resumed run has every step exactly once, like the uninterrupted one
    steps = lambda p: [(r["step"], "eval_return" in r) for r in map(json.loads, (p / "metrics.jsonl").open())]
    assert steps(tmp_path / "part") == steps(tmp_path / "full")


def test_outputs_summary_metrics_plot_tensorboard(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--algo",
            "iql",
            "--dataset",
            tiny_dataset,
            "--steps",
            "40",
            "--seed",
            "0",
            "--eval-every",
            "20",
            "--eval-episodes",
            "3",
            "--checkpoint-every",
            "20",
            "--log-every",
            "10",
            "--out",
            str(out),
            "--no-progress",
            "--tensorboard",
            "--hidden-dim",
            "32",
            "--expectile",
            "0.8",
            "--set",
            "beta=2.0",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "algo",
        "dataset",
        "seed",
        "steps",
        "final_normalized_score",
        "final_return",
        "wall_time_s",
        "updates_per_s",
    ):
        assert key in summary
    assert summary["algo"] == "iql" and summary["steps"] == 40 and summary["updates_per_s"] > 0
    assert summary["hparams"]["expectile"] == 0.8 and summary["hparams"]["beta"] == 2.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "critic_loss" in r] == [10, 20, 30, 40]
    evals = [r for r in rows if "eval_return" in r]
    assert [r["step"] for r in evals] == [20, 40]
    ref = json.loads((out / "config.json").read_text())
    assert ref["hparams"] == {"hidden_dim": 32, "expectile": 0.8, "beta": 2.0}
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert any((out / "tb").iterdir())
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_return"]
        == summary["final_return"]
    )


def test_cli_rejects_option_of_another_algorithm(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--algo", "bc", "--dataset", tiny_dataset, "--expectile", "0.9", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert re.search(r"\['expectile'\] do not apply to --algo bc.*iql", capsys.readouterr().err)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from rl_adapters.algorithms.bc import BC

    real = BC.update

    def flaky(self, batch):
        info = real(self, batch)
        return {"actor_loss": float("nan")} if self.step == 27 else info

    monkeypatch.setattr(BC, "update", flaky)
    with pytest.raises(NonFiniteLossError, match=r"step 27: non-finite actor_loss=nan.*checkpoint kept"):
        train(_cfg(tiny_dataset, tmp_path / "nan", "bc", steps=60))
    assert _ckpt(tmp_path / "nan")["step"] == 20
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_checkpoint_write_is_atomic(tiny_dataset, tmp_path):
    train(_cfg(tiny_dataset, tmp_path / "a", "bc", steps=20, eval_episodes=0))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "summary.json",
    ]


def test_resume_without_checkpoint_is_a_clear_error(tiny_dataset, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint.pt there"):
        train(_cfg(tiny_dataset, tmp_path / "empty"), resume=True)


def test_logged_means_count_only_steps_that_report_the_metric(tiny_dataset, tmp_path, monkeypatch):
    """TD3+BC reports its actor loss on every second update: the logged mean is over those updates, not
    diluted by the updates without it."""
    from rl_adapters.algorithms.td3bc import TD3BC

    real, seen = TD3BC.update, []

    def recording(self, batch):
        info = real(self, batch)
        seen.append(info)
        return info

    monkeypatch.setattr(TD3BC, "update", recording)
    out = tmp_path / "means"
    train(_cfg(tiny_dataset, out, "td3bc", steps=20, eval_every=0, checkpoint_every=20))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    first = next(r for r in rows if r["step"] == 10)
    actor = [i["actor_loss"] for i in seen[:10] if "actor_loss" in i]
    assert 0 < len(actor) < 10
    assert first["actor_loss"] == pytest.approx(sum(actor) / len(actor), rel=1e-9)
    critic = [i["critic_loss"] for i in seen[:10]]
    assert first["critic_loss"] == pytest.approx(sum(critic) / 10, rel=1e-9)

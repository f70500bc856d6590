"""benchmarks/throughput.py runs end to end on synthetic data (every algorithm, ours and plain), and its
plain loops train (finite losses that move)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import throughput


def test_throughput_smoke(capsys):
    rc = throughput.main(["--dataset", "synthetic", "--algos", ",".join(throughput.ALGOS), "--repeats", "2",
                          "--seconds", "0.05", "--warmup", "2", "--batch-size", "32", "--seeds-n", "1,3",
                          "--compile-algos", ""])
    assert rc == 0
    out = capsys.readouterr().out
    for label in throughput.ALGO_LABELS.values():
        assert f"| {label} | single seed |" in out
    for name in throughput.STACKABLE:
        assert f"| {throughput.ALGO_LABELS[name]} | 3 seeds in one process |" in out


@pytest.mark.parametrize("name", throughput.ALGOS)
def test_plain_loops_train(name):
    torch.manual_seed(0)
    data = throughput.synthetic_dataset(n=2_000)
    trainer = throughput.make_plain(name, data, "cpu", total_steps=100)
    buffer = throughput.CORLReplayBuffer(data, seed=0)
    params = [p for m in vars(trainer).values() if isinstance(m, torch.nn.Module) for p in m.parameters()]
    before = [p.detach().clone() for p in params]
    logs = [trainer.train(buffer.sample(64)) for _ in range(40)]  # ASPC: 20 actor updates, 2 outer steps
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    if name == "aspc":
        assert "outer_loss" in logs[-1] and trainer.rho.grad is not None

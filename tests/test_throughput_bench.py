"""benchmarks/throughput.py runs end to end on synthetic data (every algorithm, ours and plain), and its
plain loops train (finite losses that move)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import throughput


def test_throughput_smoke(capsys, tmp_path, monkeypatch):
    save = tmp_path / "cpu.json"
    rc = throughput.main(["--dataset", "synthetic", "--algos", ",".join(throughput.ALGOS), "--repeats", "2",
                          "--seconds", "0.05", "--warmup", "2", "--batch-size", "32", "--seeds-n", "1,3",
                          "--compile-algos", "", "--save", str(save)])
    assert rc == 0
    out = capsys.readouterr().out
    # --report-only renders the saved rows without measuring (the section writer is stubbed: no docs touched).
    written = []
    monkeypatch.setattr(throughput, "write_section_from", lambda run, text: written.append((run, text)))
    monkeypatch.setattr(throughput, "measure", lambda args: pytest.fail("--report-only measured"))
    assert throughput.main(["--report-only", "--save", str(save)]) == 0
    (run, text), = written
    assert run["device"] == "cpu" and "| TD3+BC | single seed |" in text
    assert text in out  # the same table as the measuring run printed
    for label in throughput.ALGO_LABELS.values():
        assert f"| {label} | single seed |" in out
    for name in throughput.STACKABLE:
        assert f"| {throughput.ALGO_LABELS[name]} | 3 seeds in one process |" in out
    assert "| TD3+BC | 3 seeds hand-batched (plain, no framework) |" in out


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


def test_hand_batched_td3bc_seed_is_the_single_seed_update():
    """Seed 1 of the hand-batched loop (the batching ceiling's row) runs exactly the update a 1-seed instance
    with seed 1's weights runs on seed 1's data: CORL's TD3+BC per seed, nothing shared between seeds."""
    torch.manual_seed(0)
    n, b, obs_dim, act_dim = 3, 16, 5, 2
    many = throughput.PlainTD3BCBatched(n, obs_dim, act_dim, 1.0, "cpu")
    one = throughput.PlainTD3BCBatched(1, obs_dim, act_dim, 1.0, "cpu")
    for dst, src in ((one.actor, many.actor), (one.actor_target, many.actor_target)):
        for d, s in zip(dst, src):
            d.data.copy_(s.data[1:2])
    for dst, src in ((one.critic, many.critic), (one.critic_target, many.critic_target)):
        for d, s in zip(dst, src):
            d.data.copy_(s.data[2:4])  # seed 1's two critics
    for t in (many, one):
        t.policy_noise = 0.0  # the noise is drawn per batch shape; the rest must agree exactly
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):  # three critic and three actor steps
        batch = [torch.randn(n, b, d, generator=gen) for d in (obs_dim, act_dim, 1, obs_dim)]
        batch.append((torch.rand(n, b, 1, generator=gen) < 0.1).float())
        many.train(batch)
        one.train([x[1:2] for x in batch])
    for a, c in zip(many.actor + many.critic, one.actor + one.critic):
        sel = a[1:2] if a.shape[0] == n else a[2:4]
        torch.testing.assert_close(sel, c, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(many.actor[0][0], many.actor[0][1])  # the seeds differ

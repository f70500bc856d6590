"""benchmarks/throughput.py runs end to end on synthetic data (every algorithm, ours and plain), and the plain
loops of benchmarks/reference_loops.py train (finite losses that move)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import reference_loops, throughput


def test_throughput_smoke(capsys, tmp_path, monkeypatch):
    save = tmp_path / "cpu.json"
    rc = throughput.main(["--dataset", "synthetic", "--algos", ",".join(throughput.ALGOS), "--repeats", "2",
                          "--seconds", "0.001", "--warmup", "2", "--batch-size", "32", "--seeds-n", "3",
                          "--compile-algos", "", "--save", str(save)])
    assert rc == 0
    out = capsys.readouterr().out
    # --report-only renders the saved rows without measuring; only --report writes the section (the writer is
    # stubbed: no docs touched).
    written = []
    monkeypatch.setattr(throughput, "write_section_from", lambda run, text: written.append((run, text)))
    monkeypatch.setattr(throughput, "measure", lambda args: pytest.fail("--report-only measured"))
    assert throughput.main(["--report-only", "--save", str(save)]) == 0
    assert written == []
    assert throughput.main(["--report-only", "--report", "--save", str(save)]) == 0
    (run, text), = written
    assert run["device"] == "cpu" and "| TD3+BC | single seed |" in text
    assert text in out  # the same table as the measuring run printed
    for label in throughput.ALGO_LABELS.values():
        assert f"| {label} | single seed |" in out
    for name in throughput.STACKABLE:
        assert f"| {throughput.ALGO_LABELS[name]} | 3 seeds in one process |" in out
    assert "| TD3+BC | 3 seeds hand-batched (plain, no framework) |" in out


@pytest.mark.parametrize("name", reference_loops.ALGOS)
def test_plain_loops_train(name):
    torch.manual_seed(0)
    data = throughput.synthetic_dataset(n=2_000)
    trainer = reference_loops.make_plain(name, data, "cpu", total_steps=100)
    buffer = reference_loops.CORLReplayBuffer(data, seed=0)
    params = [p for m in vars(trainer).values() if isinstance(m, torch.nn.Module) for p in m.parameters()]
    before = [p.detach().clone() for p in params]
    logs = [trainer.train(buffer.sample(64)) for _ in range(40)]  # ASPC: 20 actor updates, 2 outer steps
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    if name == "aspc":
        assert "outer_loss" in logs[-1] and trainer.rho.grad is not None


def _copy_member(linears, params, member):
    """Member ``member`` of a hand-batched network ``[w (m, in, out), b (m, 1, out), ...]`` into ``nn.Linear`` s."""
    for lin, w, b in zip(linears, params[0::2], params[1::2]):
        lin.weight.data.copy_(w.data[member].T)
        lin.bias.data.copy_(b.data[member, 0])


def test_hand_batched_td3bc_seed_is_corls_update(monkeypatch):
    """Seed 1 of the hand-batched loop (the batching-ceiling rows) runs CORL's TD3+BC update: started from seed
    1's weights, CORL's loop (``PlainTD3BC``) fed seed 1's batches ends at the same networks after 8 updates (four
    actor steps, Polyak averaging included), while the other seeds' data never reaches seed 1."""
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.full_like(x, 0.7))  # the same smoothing noise in both
    torch.manual_seed(0)
    n, b, obs_dim, act_dim, k = 3, 16, 5, 2, 1
    many = reference_loops.PlainTD3BCBatched(n, obs_dim, act_dim, 1.0, "cpu")
    corl = reference_loops.PlainTD3BC(obs_dim, act_dim, 1.0, "cpu")

    def linears(m):
        return [x for x in m.modules() if isinstance(x, torch.nn.Linear)]

    _copy_member(linears(corl.actor), many.actor, k)
    _copy_member(linears(corl.actor_target), many.actor_target, k)
    for q, (net, target) in enumerate(((corl.critic_1, corl.critic_1_target), (corl.critic_2, corl.critic_2_target))):
        _copy_member(linears(net), many.critic, 2 * k + q)  # seed-major: seed k's critics are members 2k, 2k+1
        _copy_member(linears(target), many.critic_target, 2 * k + q)
    before = many.actor[0].detach().clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        batch = [torch.randn(n, b, d, generator=gen) for d in (obs_dim, act_dim, 1, obs_dim)]
        batch.append((torch.rand(n, b, 1, generator=gen) < 0.1).float())
        many.train(batch)
        corl.train([x[k] for x in batch])
    pairs = [(linears(corl.actor), many.actor, k), (linears(corl.actor_target), many.actor_target, k),
             (linears(corl.critic_1), many.critic, 2 * k), (linears(corl.critic_2), many.critic, 2 * k + 1),
             (linears(corl.critic_2_target), many.critic_target, 2 * k + 1)]
    for lins, params, member in pairs:
        for lin, w, bias in zip(lins, params[0::2], params[1::2]):
            torch.testing.assert_close(w.data[member].T, lin.weight.data, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(bias.data[member, 0], lin.bias.data, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before[k], many.actor[0][k])  # the networks moved: the comparison is not vacuous

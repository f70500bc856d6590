"""ARQ (paper 003): behaviour model against analytic Gaussians, K-th-max target and AWR weights against
hand computations, dataset state mapping, bit-exact resume across the behaviour-model phase and the
candidate cache, and option checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from rl_adapters.algorithms import arq as arq_module
from rl_adapters.algorithms import make_algorithm, make_config
from rl_adapters.algorithms.arq import awr_weights, kth_max
from rl_adapters.behavior_model import VPSDE, BehaviorModel, ode_log_likelihood, pc_sample
from rl_adapters.data import load_dataset
from rl_adapters.errors import UsageError
from rl_adapters.training import TrainConfig, train


def _ckpt(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def _assert_same_state(a, b):
    sa, sb = a["algorithm"], b["algorithm"]
    assert sa["step"] == sb["step"]
    for part in ("modules", "optimizers"):
        for name in sa[part]:
            for k, t in _flat(sa[part][name]):
                assert torch.equal(t, dict(_flat(sb[part][name]))[k]), (part, name, k)
    assert torch.equal(sa["generator"], sb["generator"])
    assert torch.equal(sa["extra"]["act_generator"], sb["extra"]["act_generator"])
    assert torch.equal(a["sampler_rng"], b["sampler_rng"])


def _flat(tree, prefix=""):
    """(path, tensor) pairs of a nested state dict."""
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _flat(v, f"{prefix}/{k}")]
    if isinstance(tree, (list, tuple)):
        return [p for i, v in enumerate(tree) for p in _flat(v, f"{prefix}/{i}")]
    return []

SDE = VPSDE()
EPS_T = 1e-3  # the sampler's / likelihood's lower time


class GaussianEps(nn.Module):
    """Exact noise prediction for ``x_0 | s ~ N(A s, Sigma)``: ``eps = sigma_t (mu_t^2 Sigma + sigma_t^2 I)^-1 (x - mu_t A s)``."""

    def __init__(self, A: torch.Tensor, Sigma: torch.Tensor) -> None:
        super().__init__()
        self.A, self.Sigma = A, Sigma

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu, sigma = SDE.marginal(t)
        d = x.shape[-1]
        cov = mu[:, None, None] ** 2 * self.Sigma + sigma[:, None, None] ** 2 * torch.eye(d, dtype=x.dtype)
        r = x - mu[:, None] * (s @ self.A.T)
        return sigma[:, None] * torch.linalg.solve(cov, r.unsqueeze(-1)).squeeze(-1)


def _gaussian_logpdf_at_eps(x, s, A, Sigma):
    """Closed form of the model's density at t = eps: ``N(mu_eps A s, mu_eps^2 Sigma + sigma_eps^2 I)``."""
    mu, sigma = SDE.marginal(torch.tensor(EPS_T, dtype=torch.float64))
    cov = mu**2 * Sigma + sigma**2 * torch.eye(x.shape[-1], dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mu * (s @ A.T), covariance_matrix=cov)
    return dist.log_prob(x)


def _correlated_gaussian():
    A = torch.tensor([[0.5, -0.2], [0.1, 0.3]], dtype=torch.float64)
    L = torch.tensor([[0.3, 0.0], [0.2, 0.15]], dtype=torch.float64)
    return A, L @ L.T


def test_ode_log_likelihood_matches_closed_form_gaussian():
    A, Sigma = _correlated_gaussian()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(300, 2, generator=g, dtype=torch.float64)
    x = s @ A.T + torch.randn(300, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(Sigma).T
    exact = _gaussian_logpdf_at_eps(x, s, A, Sigma)
    eps_fn = GaussianEps(A, Sigma)
    ll = ode_log_likelihood(eps_fn, SDE, x, s, steps=60, method="rk4", trace="exact")
    assert (ll - exact).abs().mean() < 0.005 and (ll - exact).abs().max() < 0.05
    # Hutchinson is exact per sample only on its mean: average 400 independent probes per point.
    reps = 400
    xr, sr = x[:20].repeat(reps, 1), s[:20].repeat(reps, 1)
    llh = ode_log_likelihood(eps_fn, SDE, xr, sr, steps=60, method="rk4", trace="hutchinson", generator=g)
    single = llh.reshape(reps, 20)
    assert single.std(0).mean() > 0.05  # the estimate is noisy per probe (the covariance is not diagonal)
    assert (single.mean(0) - exact[:20]).abs().max() < 4 * single.std(0).max() / math.sqrt(reps) + 0.02
    # The CPU setting (2 Heun steps) overestimates here by ~0.35 nats (4 Euler steps, same cost: 1.45).
    cheap = ode_log_likelihood(eps_fn, SDE, x, s, steps=2, method="heun", trace="exact")
    assert 0.0 < (cheap - exact).mean() < 0.6


def test_behavior_model_log_likelihood_is_in_raw_action_units():
    """Bounds [-2, 2] x [0, 3]: a raw density is the normalised one divided by the half-ranges 2 and 1.5."""
    A, Sigma = _correlated_gaussian()
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 3.0])
    model = BehaviorModel(2, 2, low, high, hidden=8, blocks=1).double()
    model.ema = GaussianEps(A, Sigma)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(50, 2, generator=g, dtype=torch.float64)
    a_norm = s @ A.T + 0.3 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    raw = model.to_raw(a_norm)
    ll = model.log_likelihood(s, raw, steps=60, method="rk4", trace="exact")
    expected = _gaussian_logpdf_at_eps(a_norm, s, A, Sigma) - math.log(2.0 * 1.5)
    assert (ll - expected).abs().mean() < 0.005
    normalised = ode_log_likelihood(model.ema, SDE, a_norm, s, steps=60, method="rk4", trace="exact")
    assert torch.allclose(ll, normalised - math.log(3.0), rtol=0, atol=1e-9)


def test_pc_sampler_draws_the_known_conditional_gaussian():
    A = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    Sigma = torch.tensor([[0.1**2]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    x = pc_sample(GaussianEps(A, Sigma), SDE, s, 1, steps=200, corrector_steps=1, snr=0.16, generator=g)
    r = x[:, 0] - 0.5 * s[:, 0]
    assert abs(r.mean().item()) < 0.01
    assert abs(r.std().item() - 0.1) < 0.01


def test_score_model_learns_a_conditional_gaussian_score():
    """a | s ~ N(0.6 s, 0.15^2), s ~ U(-1, 1): after training, the EMA network's noise prediction matches the
    analytic one at several noise levels, and samples have the right conditional mean and spread."""
    torch.manual_seed(0)
    model = BehaviorModel(1, 1, np.array([-1.0]), np.array([1.0]), hidden=64, blocks=1)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):  # errors below measured at 600 updates: 0.037 near t = 0, < 6e-4 elsewhere
        s = torch.rand(256, 1, generator=g) * 2 - 1
        a = 0.6 * s + 0.15 * torch.randn(256, 1, generator=g)
        loss = model.loss(s, a, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema(0.99)
    truth = GaussianEps(torch.tensor([[0.6]]), torch.tensor([[0.15**2]]))
    s = torch.rand(2000, 1, generator=g) * 2 - 1
    a0 = 0.6 * s + 0.15 * torch.randn(2000, 1, generator=g)
    with torch.no_grad():
        for t_val in (0.05, 0.2, 0.5, 0.9):
            t = torch.full((2000,), t_val)
            mu, sigma = SDE.marginal(t)
            xt = mu[:, None] * a0 + sigma[:, None] * torch.randn(2000, 1, generator=g)
            want = truth(xt, s, t)
            err = (model.ema(xt, s, t) - want).pow(2).mean() / want.pow(2).mean()
            # Near t = 0 the target is a steep function of the state (measured 0.04 there, < 0.001 elsewhere).
            assert err < (0.1 if t_val < 0.1 else 0.01), (t_val, err.item())
        for s_val in (-0.7, 0.5):
            samples = model.sample(torch.full((2000, 1), s_val), steps=50, corrector_steps=1, generator=g)
            assert abs(samples.mean().item() - 0.6 * s_val) < 0.03
            assert abs(samples.std().item() - 0.15) < 0.02


def test_kth_max_by_hand():
    q = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0], [0.5, -1.0, 7.0, 2.0, 9.0]])
    valid = torch.tensor([[True] * 5, [True, True, False, True, False]])
    for k in (1, 2, 3, 5):
        got = kth_max(q, valid, k)
        for row in range(2):
            vals = sorted((v for v, m in zip(q[row].tolist(), valid[row].tolist()) if m), reverse=True)
            assert got[row].item() == vals[min(k, len(vals)) - 1]
    assert kth_max(q, valid, 5)[1].item() == -1.0  # only 3 valid: the smallest of them


@pytest.fixture
def arq_on_tiny(tiny_dataset):
    data = load_dataset(tiny_dataset, "cpu")
    algo = make_algorithm("arq", data.obs_dim, data.act_dim, data.stats, seed=3, total_steps=100,
                          hidden_dim=16, bm_steps=10, bm_hidden_dim=8, n_candidates=6, k=3)
    algo.attach_data(data)
    n_states = algo._state_obs.shape[0]
    g = torch.Generator().manual_seed(0)
    cand = torch.rand(n_states, 6, data.act_dim, generator=g) * 2 - 1
    logp = torch.randn(n_states, 6, generator=g) * 4 - 3  # about 30% below the e^-5 threshold
    logp[0] = -10.0  # a state with no valid candidate keeps its most likely one
    logp[0, 2] = -9.0
    algo.set_candidates(cand, logp)
    return algo, data


def test_next_state_mapping_reproduces_next_observations(arq_on_tiny):
    algo, data = arq_on_tiny
    idx = torch.arange(len(data))
    assert torch.equal(algo._state_obs[idx], data.normalize(data.observations))
    assert torch.equal(algo._state_obs[algo.next_state], data.normalize(data.next_observations))
    assert algo._state_obs.shape[0] == len(data) + data.num_episodes  # one extra state per episode end


def test_td_target_is_the_kth_max_by_hand(arq_on_tiny):
    algo, data = arq_on_tiny
    with torch.no_grad():  # make the target critic differ from an initialised one
        for p in algo.critic_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = data.sample(32, data.make_generator(0))
    y, _ = algo.td_target(batch)
    assert algo.candidate_valid[0].tolist() == [False, False, True, False, False, False]
    for i in range(32):
        st = algo.next_state[batch.indices[i]].item()
        qs = []
        for j in range(6):
            if algo.candidate_logp[st, j] >= -5 or j == algo.candidate_logp[st].argmax():
                q1, q2 = algo.critic_target(batch.next_obs[i : i + 1], algo.candidates[st, j : j + 1])
                qs.append(min(q1.item(), q2.item()))
        qs.sort(reverse=True)
        kth = qs[min(3, len(qs)) - 1]
        want = batch.rewards[i].item() * algo.reward_scale + 0.99 * (1 - batch.dones[i].item()) * kth
        assert y[i].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_awr_weights_by_hand(arq_on_tiny):
    algo, data = arq_on_tiny
    batch = data.sample(16, data.make_generator(1))
    w, adv = algo.advantage_weights(batch)
    for i in range(16):
        st = batch.indices[i].item()
        q = algo.critic_target.min_q(batch.obs[i : i + 1], batch.actions[i : i + 1]).item()
        qc = [algo.critic_target.min_q(batch.obs[i : i + 1], algo.candidates[st, j : j + 1]).item()
              for j in range(6) if algo.candidate_valid[st, j]]
        a = q - sum(qc) / len(qc)
        assert adv[i].item() == pytest.approx(a, abs=1e-5)
        assert w[i].item() == pytest.approx(min(math.exp(a), 100.0), rel=1e-5)
    # The clip: alpha 10 on advantages of +-1 gives e^10 > 100 and e^-10.
    q = torch.tensor([3.0, 1.0])
    qc = torch.tensor([[2.0, 2.0, 50.0], [2.0, 2.0, 2.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    w, adv = awr_weights(q, qc, valid, alpha=10.0, max_weight=100.0)
    assert adv.tolist() == [1.0, -1.0]
    assert w.tolist() == pytest.approx([100.0, math.exp(-10.0)])


def test_implicit_policy_picks_by_softmax_of_the_advantage(arq_on_tiny, monkeypatch):
    """alpha -> infinity: the candidate with the largest Q'; alpha = 0: a uniform draw over the candidates."""
    algo, data = arq_on_tiny
    fixed = torch.tensor([[-0.9], [-0.3], [0.2], [0.8], [0.5], [0.0]])  # N = 6 per state
    monkeypatch.setattr(algo.behavior, "sample", lambda s, *a, **kw: fixed.repeat(s.shape[0] // 6, 1))
    obs = data.normalize(data.observations[:4])
    algo.config.policy = "implicit"
    algo.config.alpha = 1e6
    q = torch.stack([algo.critic_target.min_q(o.expand(6, -1), fixed) for o in obs])
    assert torch.equal(algo.policy(obs), fixed[q.argmax(1)])
    algo.config.alpha = 0.0
    picks = torch.cat([algo.policy(obs) for _ in range(150)]).squeeze(1)
    counts = torch.stack([(picks == v).sum() for v in fixed.squeeze(1)])
    assert counts.sum() == 600 and counts.min() > 60  # each of 6 expected 100 times


def _arq_cfg(dataset, out, steps=40, **hp):
    hparams = {"hidden_dim": 16, "batch_size": 32, "bm_steps": 15, "bm_hidden_dim": 16, "bm_blocks": 1,
               "n_candidates": 5, "k": 2, "sampler_steps": 4, "corrector_steps": 1, "ode_steps": 2,
               "ode_method": "euler", "trace": "hutchinson"} | hp
    return TrainConfig(algo="arq", dataset=dataset, steps=steps, seed=2, device="cpu", out=str(out), eval_every=20,
                       eval_episodes=1, checkpoint_every=10, log_every=5, progress=False, plot=False, hparams=hparams)


def test_resume_is_bit_exact_across_behavior_phase_and_candidate_cache(tiny_dataset, tmp_path, monkeypatch):
    calls = []
    real = arq_module.generate_candidates

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(arq_module, "generate_candidates", counting)
    full = train(_arq_cfg(tiny_dataset, tmp_path / "full"))
    assert len(calls) == 1
    # Interrupted inside the behaviour-model phase (step 8 < 15), then after the candidates exist (25).
    part = _arq_cfg(tiny_dataset, tmp_path / "part")
    assert train(part, max_steps_this_session=8)["status"] == "interrupted"
    assert not (tmp_path / "part" / "arq_candidates.pt").exists()
    assert train(part, resume=True, max_steps_this_session=17)["status"] == "interrupted"
    assert len(calls) == 2 and (tmp_path / "part" / "arq_candidates.pt").exists()
    resumed = train(part, resume=True)
    assert len(calls) == 2  # the last session loaded the cache
    _assert_same_state(_ckpt(tmp_path / "full"), _ckpt(tmp_path / "part"))
    assert resumed["final_return"] == full["final_return"]

    def rows(p):
        return [{k: v for k, v in r.items() if k != "updates_per_s"}
                for r in map(json.loads, (p / "metrics.jsonl").open())]

    assert rows(tmp_path / "part") == rows(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "arq_candidates.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "arq_candidates.pt", weights_only=True)
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["logp"], b["logp"])
    assert any(r.get("phase") == 1.0 for r in rows(tmp_path / "full"))
    assert any(r.get("phase") == 2.0 for r in rows(tmp_path / "full"))


def test_an_interrupted_candidate_generation_continues_from_its_finished_chunks(tiny_dataset, tmp_path, monkeypatch):
    """A generation stopped after some chunks (the end of a session) leaves them in arq_candidates.partial.pt;
    the next attempt continues from there and ends bit for bit where an uninterrupted one does."""
    data = load_dataset(tiny_dataset, "cpu")
    hp = {"hidden_dim": 16, "bm_steps": 10, "bm_hidden_dim": 8, "bm_blocks": 1, "n_candidates": 4, "k": 2,
          "sampler_steps": 3, "corrector_steps": 1, "ode_steps": 2, "ode_method": "heun", "trace": "hutchinson",
          "candidate_chunk": 16}

    def fresh(out):
        algo = make_algorithm("arq", data.obs_dim, data.act_dim, data.stats, seed=4, total_steps=30, **hp)
        algo.attach_data(data, out)
        return algo

    whole = fresh(tmp_path / "whole")
    (tmp_path / "whole").mkdir()
    whole.ensure_candidates()
    n_states = whole.candidates.shape[0]
    assert n_states > 3 * 16  # several chunks

    class Stop(Exception):
        pass

    real, starts = arq_module.generate_candidates, []

    def stopping(*a, after_chunk=None, resume=None, **kw):
        starts.append(0 if resume is None else int(resume["done"]))

        def then_stop(state):
            after_chunk(state)
            if state["done"] >= 32:
                raise Stop

        return real(*a, after_chunk=then_stop if not starts[1:] else after_chunk, resume=resume, **kw)

    monkeypatch.setattr(arq_module, "PARTIAL_EVERY_S", 0.0)  # save after every chunk
    monkeypatch.setattr(arq_module, "generate_candidates", stopping)
    (tmp_path / "part").mkdir()
    with pytest.raises(Stop):
        fresh(tmp_path / "part").ensure_candidates()
    partial = tmp_path / "part" / arq_module.CANDIDATE_PARTIAL
    assert partial.exists() and not (tmp_path / "part" / arq_module.CANDIDATE_FILE).exists()
    saved = torch.load(partial, weights_only=True)
    assert saved["actions"].untyped_storage().nbytes() == saved["actions"].nbytes  # only the rows done
    resumed = fresh(tmp_path / "part")
    resumed.ensure_candidates()
    assert starts == [0, 32]  # the second attempt began after the two saved chunks
    assert torch.equal(resumed.candidates, whole.candidates)
    assert torch.equal(resumed.candidate_logp, whole.candidate_logp)
    assert not partial.exists() and (tmp_path / "part" / arq_module.CANDIDATE_FILE).exists()
    info = json.loads((tmp_path / "part" / arq_module.CANDIDATE_INFO).read_text())
    assert info["seconds"] > 0 and info["states"] == n_states
    # The interrupted attempt's seconds were never checkpointed: the resumed run carries them into its wall time.
    assert whole.carried_seconds() == 0.0
    assert resumed.carried_seconds() == float(saved["seconds"]) > 0
    assert info["seconds"] > float(saved["seconds"])


def test_candidate_time_an_interrupted_run_reused_is_in_the_wall_time(tiny_dataset, tmp_path, monkeypatch):
    """Killed after its candidates were saved but before the next checkpoint (a session's end), a run resumes
    from the behaviour-model checkpoint and loads them: their generation time joins its wall time, once."""
    cfg = _arq_cfg(tiny_dataset, tmp_path / "run")
    assert train(cfg, max_steps_this_session=15)["status"] == "interrupted"  # checkpoint at the last BM step

    class Killed(Exception):
        pass

    def killed(self, batch):
        raise Killed

    with monkeypatch.context() as m:  # the candidates are made and saved, then the process dies
        m.setattr(arq_module.ARQ, "critic_update", killed)
        with pytest.raises(Killed):
            train(cfg, resume=True)
    info_path = tmp_path / "run" / arq_module.CANDIDATE_INFO
    assert _ckpt(tmp_path / "run")["step"] == 15 and info_path.exists()
    info = json.loads(info_path.read_text())
    info["seconds"] = 10_000.0  # far above the rest of this tiny run, so the sum shows
    info_path.write_text(json.dumps(info))
    wall_at_bm = _ckpt(tmp_path / "run")["wall_time_s"]
    # stopped again at step 20 (after the candidates), then to the end: the 10,000 s are counted once
    part = train(cfg, resume=True, max_steps_this_session=5)
    assert part["status"] == "interrupted" and 10_000.0 + wall_at_bm < part["wall_time_s"]
    summary = train(cfg, resume=True)
    assert summary["status"] == "finished"
    assert part["wall_time_s"] < summary["wall_time_s"] < 10_000.0 + wall_at_bm + 600


def test_stale_candidate_cache_is_regenerated(tiny_dataset, tmp_path):
    """A cache written for other settings (or another behaviour model) is not used."""
    cfg = _arq_cfg(tiny_dataset, tmp_path / "r", steps=20)
    train(cfg, max_steps_this_session=16)
    path = tmp_path / "r" / "arq_candidates.pt"
    saved = torch.load(path, weights_only=True)
    saved["key"]["sampler_steps"] = 999
    saved["actions"] = torch.zeros_like(saved["actions"])
    torch.save(saved, path)
    train(cfg, resume=True)
    fresh = torch.load(path, weights_only=True)
    assert fresh["key"]["sampler_steps"] == 4 and fresh["actions"].abs().sum() > 0


@pytest.mark.parametrize(
    ("hp", "named"),
    [
        ({"k": 31}, "--k"),
        ({"k": 0}, "--k"),
        ({"policy": "greedy"}, "--policy"),
        ({"ode_method": "rk45"}, "--ode-method"),
        ({"trace": "none"}, "--trace"),
        ({"sampler_steps": 0}, "--sampler-steps"),
        ({"corrector_steps": -1}, "--corrector-steps"),
        ({"bm_ema": 1.0}, "--bm-ema"),
        ({"snr": 0.0}, "--snr"),
        ({"sampler_grid": "log"}, "--sampler-grid"),
    ],
)
def test_bad_options_are_refused_before_data_loads(hp, named):
    with pytest.raises(UsageError, match=named):
        make_config("arq", **hp)


def test_behavior_phase_longer_than_run_is_refused(tmp_path):
    cfg = TrainConfig(algo="arq", dataset="no/such/dataset-v0", steps=1000, out=str(tmp_path / "x"),
                      hparams={"bm_steps": 1000})
    with pytest.raises(UsageError, match="--bm-steps"):
        cfg.validate()  # before the (missing) dataset is looked up


def test_cli_refuses_behavior_phase_as_long_as_the_run(tiny_dataset, tmp_path, capsys):
    from rl_adapters.cli import main

    code = main(["train", "--algo", "arq", "--dataset", tiny_dataset, "--steps", "10", "--bm-steps", "10",
                 "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--bm-steps" in err and "--steps 100010" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ the paper's order: Q first, then the policy
def _params(module):
    return [t.detach().clone() for t in module.state_dict().values()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _arq_with_candidates(data, total_steps, seed=3, **hp):
    """A tiny ARQ past its behaviour-model phase (step = bm_steps), with random candidates, ~30% of them invalid."""
    hp = {"hidden_dim": 16, "bm_steps": 10, "bm_hidden_dim": 8, "n_candidates": 6, "k": 3, "batch_size": 32} | hp
    algo = make_algorithm("arq", data.obs_dim, data.act_dim, data.stats, seed=seed, total_steps=total_steps, **hp)
    algo.attach_data(data)
    g = torch.Generator().manual_seed(0)
    n_states = algo._state_obs.shape[0]
    algo.set_candidates(torch.rand(n_states, 6, data.act_dim, generator=g) * 2 - 1,
                        torch.randn(n_states, 6, generator=g) * 4 - 3)
    algo.step = algo.bm_steps  # the behaviour model's updates are tested above
    return algo


def test_sequential_trains_only_the_critic_first_then_only_the_actor(tiny_dataset):
    data = load_dataset(tiny_dataset, "cpu")
    algo = _arq_with_candidates(data, total_steps=10 + 3 + 2, q_steps=3)
    assert algo.config.schedule == "sequential" and algo.value_phase().steps == 13
    gen = data.make_generator(0)
    actor0, critic0 = _params(algo.actor), _params(algo.critic)
    for _ in range(3):
        assert algo.in_q_phase()
        assert algo.update(data.sample(32, gen))["phase"] == 2.0
        assert _same(_params(algo.actor), actor0)  # the Q-only phase leaves the actor alone
    assert not _same(_params(algo.critic), critic0)
    critic_q, target_q, actor_opt = _params(algo.critic), _params(algo.critic_target), algo.actor_opt.state_dict()
    assert not actor_opt["state"]  # Adam never stepped the actor
    for _ in range(2):
        assert not algo.in_q_phase()
        info = algo.update(data.sample(32, gen))
        assert info["phase"] == 3.0 and "critic_loss" not in info
        # the paper's policy loop runs on the converged Q: critic and target frozen
        assert _same(_params(algo.critic), critic_q) and _same(_params(algo.critic_target), target_q)
    assert not _same(_params(algo.actor), actor0)


def test_q_only_update_is_the_joint_schedules_critic_update(tiny_dataset):
    """Same seed, same candidates, same batch: the critic, its target and the TD target after one update of
    the Q-only phase equal those after one joint update (whose actor step does not touch the critic)."""
    data = load_dataset(tiny_dataset, "cpu")
    seq = _arq_with_candidates(data, total_steps=20, q_steps=5)
    joint = _arq_with_candidates(data, total_steps=20, schedule="joint")
    for a in (seq, joint):  # a trained-looking target: differs from the critic
        with torch.no_grad():
            for p in a.critic_target.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    batch = data.sample(32, data.make_generator(4))
    assert torch.equal(seq.td_target(batch)[0], joint.td_target(batch)[0])
    assert seq.in_q_phase() and not joint.in_q_phase()
    i_seq, i_joint = seq.update(batch), joint.update(batch)
    assert i_seq["critic_loss"] == i_joint["critic_loss"] and "actor_loss" in i_joint
    assert _same(_params(seq.critic), _params(joint.critic))
    assert _same(_params(seq.critic_target), _params(joint.critic_target))
    assert not _same(_params(joint.actor), _params(seq.actor))


def test_a_run_too_short_for_both_phases_and_a_policy_step_is_refused(tiny_dataset, tmp_path, capsys):
    import re

    from rl_adapters.cli import main

    cfg = make_config("arq", bm_steps=10, q_steps=20)
    cfg.check_steps(31)  # 10 + 20 + one policy update
    with pytest.raises(ValueError) as refused:
        cfg.check_steps(30)
    text = str(refused.value)
    assert all(f in text for f in ("--steps 30", "--bm-steps", "--q-steps")) and "\n" not in text
    cfg.check_steps(int(re.search(r"e\.g\. --steps (\d+)", text)[1]))  # the suggestion fits
    auto = make_config("arq", bm_steps=10)  # q_steps unset: half of what follows the behaviour model
    assert auto.phase_steps(100) == (10, 45, 45)
    auto.check_steps(12)
    with pytest.raises(ValueError, match="--q-steps"):
        auto.check_steps(11)
    make_config("arq", bm_steps=10, schedule="joint").check_steps(11)  # no Q-only phase
    with pytest.raises(UsageError, match="--q-steps"):
        make_config("arq", schedule="joint", q_steps=5)
    code = main(["train", "--algo", "arq", "--dataset", tiny_dataset, "--steps", "30", "--bm-steps", "10",
                 "--q-steps", "20", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--q-steps" in err and "--bm-steps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("schedule", ["sequential", "joint"])
def test_advantage_baseline_is_the_mean_learned_q_over_valid_candidates(tiny_dataset, schedule):
    """Paper Eq. 6: A(s, a) = Q(s, a) - 1/|supp| sum_{a' in supp} Q(s, a'); sequential: the learned critic Q
    (frozen), joint: the target critic before the update."""
    data = load_dataset(tiny_dataset, "cpu")
    algo = _arq_with_candidates(data, total_steps=20, schedule=schedule, alpha=0.5)
    with torch.no_grad():  # the online critic and its target differ
        for p in algo.critic.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    critic = algo.critic if schedule == "sequential" else algo.critic_target
    batch = data.sample(16, data.make_generator(1))
    w, adv = algo.advantage_weights(batch)
    assert algo.candidate_valid[batch.indices].sum(1).lt(6).any()  # some states drop candidates
    for i in range(16):
        st = batch.indices[i].item()
        q1, q2 = critic(batch.obs[i : i + 1], batch.actions[i : i + 1])
        kept = [min(v.item() for v in critic(batch.obs[i : i + 1], algo.candidates[st, j : j + 1]))
                for j in range(6) if algo.candidate_logp[st, j] >= -5 or j == algo.candidate_logp[st].argmax()]
        a = min(q1.item(), q2.item()) - sum(kept) / len(kept)
        assert adv[i].item() == pytest.approx(a, abs=1e-5)
        assert w[i].item() == pytest.approx(min(math.exp(0.5 * a), 100.0), rel=1e-5)
    # A tiny example by hand: Q = 1; candidates 0.5, 2.0 (valid), 10.0 (dropped): A = 1 - 1.25.
    w, adv = awr_weights(torch.tensor([1.0]), torch.tensor([[0.5, 2.0, 10.0]]),
                         torch.tensor([[True, True, False]]), alpha=2.0, max_weight=100.0)
    assert adv.tolist() == [-0.25] and w.tolist() == pytest.approx([math.exp(-0.5)])


def test_policy_phase_weight_table_equals_per_batch_weights_and_follows_a_loaded_critic(tiny_dataset):
    """The sequential policy phase looks its AWR weights up in a table built once from the frozen critic: the
    table equals the per-batch computation (:meth:`advantage_weights`), an update with it equals an AWR step
    with the per-batch weights, and loading a state (another critic) rebuilds it."""
    data = load_dataset(tiny_dataset, "cpu")
    algo = _arq_with_candidates(data, total_steps=20, q_steps=2, alpha=0.5)
    gen = data.make_generator(2)
    for _ in range(2):
        algo.update(data.sample(32, gen))  # the Q-only phase moves the critic away from its initialisation
    assert not algo.in_q_phase()
    twin = _arq_with_candidates(data, total_steps=20, q_steps=2, alpha=0.5)
    twin.load_state_dict(algo.state_dict())
    batch = data.sample(32, gen)
    w_ref, adv_ref = algo.advantage_weights(batch)
    assert adv_ref.std() > 0 and w_ref.std() > 0
    w, adv = algo.policy_phase_weights(batch)
    torch.testing.assert_close(adv, adv_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=0)
    assert algo._policy_table.shape == (2, data.observations.shape[0])
    info = algo.update(batch)
    twin.actor_update(batch, w_ref)  # the same step with the per-batch weights
    assert info["awr_weight"] == pytest.approx(w_ref.mean().item(), rel=1e-6)
    for a, b in zip(_params(algo.actor), _params(twin.actor)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    other = _arq_with_candidates(data, total_steps=20, q_steps=2, alpha=0.5, seed=5)
    for _ in range(2):
        other.update(data.sample(32, gen))
    algo.load_state_dict(other.state_dict())  # another critic: the table must follow it
    torch.testing.assert_close(algo.policy_phase_weights(batch)[1], other.advantage_weights(batch)[1],
                               rtol=0, atol=1e-6)
    assert not torch.allclose(other.advantage_weights(batch)[1], adv_ref)


def test_resume_is_bit_exact_across_the_q_to_policy_boundary_and_no_evaluation_before_it(tiny_dataset, tmp_path):
    hp = {"bm_steps": 15, "q_steps": 10}  # Q only: updates 16-25; policy: 26-40
    full = train(_arq_cfg(tiny_dataset, tmp_path / "full", **hp))
    part = _arq_cfg(tiny_dataset, tmp_path / "part", **hp)
    for stop in (18, 7, 2):  # inside the Q-only phase, at its last update (25), just after it (27)
        assert train(part, resume=(tmp_path / "part").exists(), max_steps_this_session=stop)["status"] == "interrupted"
    resumed = train(part, resume=True)
    _assert_same_state(_ckpt(tmp_path / "full"), _ckpt(tmp_path / "part"))
    assert resumed["final_return"] == full["final_return"]

    def rows(p):
        return [{k: v for k, v in r.items() if k != "updates_per_s"}
                for r in map(json.loads, (p / "metrics.jsonl").open())]

    assert rows(tmp_path / "part") == rows(tmp_path / "full")
    # eval_every 20: the evaluation due at 20 falls in the Q-only phase (the actor untouched) and is skipped
    assert [r["step"] for r in rows(tmp_path / "full") if "eval_normalized_score" in r] == [40]
    phase = {r["step"]: r["phase"] for r in rows(tmp_path / "full") if "phase" in r}
    assert phase == {5: 1.0, 10: 1.0, 15: 1.0, 20: 2.0, 25: 2.0, 30: 3.0, 35: 3.0, 40: 3.0}


def test_equal_budget_puts_the_behaviour_model_and_q_phase_on_top_of_the_policy_steps():
    import argparse

    from benchmarks import grid_cells
    from rl_adapters.training.config import default_eval_every

    sets = grid_cells.VARIANTS["arq"][1]
    args = argparse.Namespace(steps=50_000, arq_bm_steps=50_000, arq_q_steps=None, set=[])
    assert grid_cells.policy_budget("arq", args, sets) == (150_000, 100_000)  # q_steps: --steps (1:1)
    assert grid_cells.arq_sets(args, sets) == ["bm_steps=50000", "q_steps=50000"]
    args.arq_q_steps = 20_000
    assert grid_cells.policy_budget("arq", args, sets) == (120_000, 70_000)
    assert grid_cells.policy_budget("arq", args, [*sets, "schedule=joint"]) == (100_000, 50_000)
    assert grid_cells.arq_sets(args, [*sets, "schedule=joint"]) == ["bm_steps=50000"]
    # the trainer's default --eval-every spreads its evaluations over the policy updates only
    cfg = TrainConfig(algo="arq", dataset="x", steps=120_000, hparams={"bm_steps": 50_000, "q_steps": 20_000})
    assert cfg.value_only_steps() == 70_000
    assert cfg.resolved().eval_every == default_eval_every(50_000)

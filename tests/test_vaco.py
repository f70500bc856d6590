"""VACO: hypergradients against finite differences of independent one-step and K-step maps (float64), value
learning identical to IQL, meta-weights that prefer good trajectories, every solver through the CLI,
bitwise resume (policy Adam moments in the solver included), and the weight analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchopt
from torch.func import functional_call

from rl_adapters.algorithms import make_algorithm, make_config
from rl_adapters.algorithms.vaco import VACO
from rl_adapters.cli import main
from rl_adapters.data import Batch, load_dataset
from rl_adapters.errors import UsageError
from rl_adapters.training import TrainConfig, train
from rl_adapters.vaco_analysis import pearson

DT = torch.float64



def _adam_state(solver):
    """The Adam moments (mu, nu, count) in the solver's inner optimiser state, found by what they hold rather
    than by their position in torchopt's chain."""
    [st] = [x for x in solver.inner_state if hasattr(x, "mu") and hasattr(x, "nu")]
    return st

def _to64(batch: Batch) -> Batch:
    return Batch(*(t.to(DT) if t is not None and t.is_floating_point() else t for t in batch))


def _vaco64(data, **hp) -> VACO:
    """A tiny VACO in float64: modules converted, then optimisers and solver rebuilt on the new tensors."""
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, seed=3, **hp)
    for m in algo.modules.values():
        m.to(DT)
    algo.obs_mean, algo.obs_std = algo.obs_mean.to(DT), algo.obs_std.to(DT)
    algo.build_optimizers()
    return algo


# ------------------------------------------------------------------ hypergradient vs finite differences
def _hand_one_step_outer(algo, alpha, theta0, mu, nu, count, vb) -> torch.Tensor:
    """J_pi(phi_1(alpha)) with phi_1 one hand-written Adam step on J_w (see :func:`_hand_k_step_outer`)."""
    return _hand_k_step_outer(algo, alpha, theta0, mu, nu, count, vb, 1)


# A randomly initialised scorer keeps the hypergradient well above rounding level (with the default zero
# output layer only that layer's gradient is non-zero at the start).
@pytest.mark.parametrize("mechanism", [{"weight_norm": "none", "weight_kl": 0.0, "scorer_init": "torch"},
                                       {"weight_norm": "batch_mean", "weight_kl": 0.5, "scorer_init": "torch"}])
def test_one_step_hypergradient_matches_finite_differences_and_step_lowers_outer_loss(tiny_dataset, mechanism):
    torch.manual_seed(0)
    data = load_dataset(tiny_dataset)
    algo = _vaco64(
        data,
        **mechanism,
        hidden_dim=16,
        scorer_hidden_dim=8,
        total_steps=40,
        value_fraction=0.5,
        batch_size=64,
        actor_lr=1e-2,
    )  # a larger inner step makes d J_pi / d alpha well above rounding level
    g = data.make_generator(0)
    for _ in range(26):  # 20 value steps, then 6 bi-level steps so that the policy's Adam moments are warm
        algo.update(_to64(data.sample(64, g)))
    b = _to64(data.sample(64, g))
    with torch.no_grad():
        vb = algo.make_bilevel_batch(b, algo.critic_target.min_q(b.obs, b.actions), sigma=0.5)
    solver = algo.solver
    names = [n for n, _ in algo.actor.named_parameters()]
    theta0 = {n: p.detach().clone() for n, p in algo.actor.named_parameters()}
    st = _adam_state(solver)
    mu, nu = [x.clone() for x in st.mu], [x.clone() for x in st.nu]
    count = int(st.count[0])
    assert count == 6 and len(mu) == len(names)
    alpha0 = {n: p.detach().clone() for n, p in algo.scorer.named_parameters()}
    G = lambda alpha: float(_hand_one_step_outer(algo, alpha, theta0, mu, nu, count, vb).detach())

    hyper = solver.hypergradient(vb)
    assert sum(float(h.norm()) for h in hyper) > 0
    gen = torch.Generator().manual_seed(1)
    eps = 1e-5
    for _ in range(3):
        d = {n: torch.randn(p.shape, generator=gen, dtype=DT) for n, p in alpha0.items()}
        fd = (G({n: alpha0[n] + eps * d[n] for n in d}) - G({n: alpha0[n] - eps * d[n] for n in d})) / (
            2 * eps
        )
        analytic = sum(float((h * d[n]).sum()) for h, n in zip(hyper, d))
        # The central difference's own noise floor here is ~1e-7 relative (measured: 1e-8..1.2e-7 over eps in
        # 1e-5..3e-5, also with a fourth-order stencil), so 1e-7 sat on the floor and flipped with rounding-level
        # changes of the training history (e.g. the fused critic's batched matmuls).
        assert abs(fd - analytic) <= 3e-7 * abs(analytic), (fd, analytic)

    # One real bi-level step (fresh outer Adam, so its first step is -lr * sign(hypergradient)) moves alpha
    # downhill on the same one-step map: the outer loss at the new alpha is lower, by about <h, delta>.
    algo.scorer_opt.state.clear()
    g_before = G(alpha0)
    info = solver.step(vb)
    assert info.outer_loss == pytest.approx(g_before, rel=1e-10)
    alpha1 = {n: p.detach().clone() for n, p in algo.scorer.named_parameters()}
    predicted = sum(float((h * (alpha1[n] - alpha0[n])).sum()) for h, n in zip(hyper, alpha0))
    change = G(alpha1) - g_before
    assert predicted < 0 and change < 0
    assert change == pytest.approx(predicted, rel=0.05)


def _hand_k_step_outer(algo, alpha, theta0, mu, nu, count, vb, k):
    """J_pi(phi_K(alpha)) with phi_K = K hand-written Adam steps (coupled L2 weight decay, torch.optim.Adam's
    convention) on J_w over the same batch, the map VACO's solvers differentiate, written independently of
    bilevel/torchopt. torchopt 0.7.3 computes the bias corrections as pow(beta, int64 count tensor), i.e. in
    float32 even for float64 parameters; this map does the same (exact 1 - beta**t would differ by ~1e-5
    relative)."""
    c = algo.config
    b1, b2 = 0.9, 0.999
    names = list(theta0)
    th = dict(theta0)
    m_, v_ = list(mu), list(nu)
    w = functional_call(algo.scorer, alpha, (vb.obs, vb.actions, vb.q_in))
    for i in range(k):
        cur = {n: t if t.requires_grad else t.detach().clone().requires_grad_() for n, t in th.items()}
        bc = (functional_call(algo.actor, cur, (vb.obs,)) - vb.actions).pow(2).sum(-1)
        grads = torch.autograd.grad((w * bc).mean(), [cur[n] for n in names])
        t = torch.tensor(count + 1 + i)
        bias1, bias2 = 1 - torch.pow(b1, t), 1 - torch.pow(b2, t)
        new = {}
        for j, (n, g) in enumerate(zip(names, grads)):
            g = g + c.weight_decay * cur[n]
            m_[j] = b1 * m_[j] + (1 - b1) * g
            v_[j] = b2 * v_[j] + (1 - b2) * g * g
            new[n] = cur[n] - c.actor_lr * (m_[j] / bias1) / ((v_[j] / bias2).sqrt() + c.adam_eps)
        th = new
    a1 = functional_call(algo.actor, th, (vb.noisy_obs,))
    loss = -algo.critic_target.min_q(vb.obs, a1).mean()
    loss = loss / vb.q_scale if c.outer_q_norm else loss
    if c.weight_kl > 0:
        net = {n.removeprefix("net."): t for n, t in alpha.items()}
        raw = torch.sigmoid(functional_call(algo.scorer.net, net, (torch.cat([vb.obs, vb.actions, vb.q_in[:, None]], -1),)))
        p = raw.squeeze(-1) / raw.sum()
        loss = loss + c.weight_kl * (p * torch.log(p * p.numel())).sum()
    return loss


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_k_step_hypergradient_matches_finite_differences(tiny_dataset, mode):
    """VACO's K-step hypergradient is the exact derivative of K Adam steps on one batch (central FD of an
    independent unroll), so whatever K-step learns is the algorithm's, not the wiring's."""
    torch.manual_seed(0)
    data = load_dataset(tiny_dataset)
    algo = _vaco64(data, hidden_dim=16, scorer_hidden_dim=4 if mode == "forward" else 8, total_steps=40,
                   value_fraction=0.5, batch_size=64, actor_lr=1e-2, solver="k_step", k=3, mode=mode,
                   scorer_init="torch")  # default batch-mean weights + KL guard; random output layer
    g = data.make_generator(0)
    for _ in range(24):
        algo.update(_to64(data.sample(64, g)))
    b = _to64(data.sample(64, g))
    with torch.no_grad():
        vb = algo.make_bilevel_batch(b, algo.critic_target.min_q(b.obs, b.actions), sigma=0.5)
    solver = algo.solver
    theta0 = {n: p.detach().clone() for n, p in algo.actor.named_parameters()}
    st = _adam_state(solver)
    mu, nu, count = [x.clone() for x in st.mu], [x.clone() for x in st.nu], int(st.count[0])
    assert count == 4 * 3  # 4 bi-level updates of 3 inner steps each
    alpha0 = {n: p.detach().clone() for n, p in algo.scorer.named_parameters()}
    G = lambda alpha: float(_hand_k_step_outer(algo, alpha, theta0, mu, nu, count, vb, 3).detach())
    hyper = solver.hypergradient(vb)
    assert sum(float(h.norm()) for h in hyper) > 0
    gen = torch.Generator().manual_seed(1)
    eps = 1e-5
    for _ in range(3):
        d = {n: torch.randn(p.shape, generator=gen, dtype=DT) for n, p in alpha0.items()}
        fd = (G({n: alpha0[n] + eps * d[n] for n in d}) - G({n: alpha0[n] - eps * d[n] for n in d})) / (2 * eps)
        analytic = sum(float((h * d[n]).sum()) for h, n in zip(hyper, d))
        assert abs(fd - analytic) <= 1e-6 * abs(analytic), (fd, analytic)


# ------------------------------------------------------------------ value learning is IQL's
def test_value_phase_is_bitwise_iql(tiny_dataset):
    data = load_dataset(tiny_dataset)
    kw = {"seed": 5, "total_steps": 40}
    iql = make_algorithm("iql", data.obs_dim, data.act_dim, data.stats, hidden_dim=32, **kw)
    vaco = make_algorithm(
        "vaco", data.obs_dim, data.act_dim, data.stats, hidden_dim=32, value_fraction=0.5, **kw
    )
    g = data.make_generator(0)
    for _ in range(20):
        b = data.sample(32, g)
        iql.update(b)
        info = vaco.update(b)
        assert info["phase"] == 1.0
    for name in ("critic", "critic_target", "value"):
        for k, t in iql.modules[name].state_dict().items():
            assert torch.equal(t, vaco.modules[name].state_dict()[k]), (name, k)
    assert vaco.update(data.sample(32, g))["phase"] == 2.0


def test_joint_schedule_updates_values_and_policy_every_step(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo = make_algorithm(
        "vaco", data.obs_dim, data.act_dim, data.stats, hidden_dim=16, schedule="joint", total_steps=5
    )
    before = {
        k: algo.modules[k].state_dict()["net.0.weight" if k in ("actor", "value") else "net.linears.0.weight"].clone()
        for k in ("actor", "critic", "value")
    }
    info = algo.update(data.sample(32, data.make_generator(0)))
    assert {"value_loss", "critic_loss", "inner_loss", "outer_loss", "w_mean", "sigma"} <= set(info)
    assert info["sigma"] == 1.0
    for k, t in before.items():
        key = "net.0.weight" if k in ("actor", "value") else "net.linears.0.weight"
        assert not torch.equal(t, algo.modules[k].state_dict()[key]), k


def test_sigma_anneals_linearly_over_the_bilevel_phase(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo = make_algorithm(
        "vaco",
        data.obs_dim,
        data.act_dim,
        data.stats,
        hidden_dim=8,
        total_steps=21,
        value_fraction=0.5,
        sigma_start=2.0,
    )
    assert algo.value_steps == 10 and algo.bilevel_steps == 11
    assert [algo.sigma_at(s) for s in (11, 16, 21)] == pytest.approx([2.0, 1.0, 0.0])


def test_act_needs_only_the_policy(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, hidden_dim=16)
    obs = data.observations[:5].numpy()
    a = algo.act(obs)
    with torch.no_grad():
        for p in algo.scorer.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(a, algo.act(obs))


def test_default_scorer_starts_with_equal_weights_and_learns_a_ranking(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, seed=0, total_steps=60,
                          hidden_dim=16, scorer_hidden_dim=16, value_fraction=0.5, scorer_lr=1e-3)
    b = data.sample(64, data.make_generator(0))
    with torch.no_grad():
        w0, _ = algo.score(b.obs, b.actions)
    assert torch.all(w0 == 0.5)
    g = data.make_generator(1)
    infos = [algo.update(data.sample(64, g)) for _ in range(60)]
    with torch.no_grad():
        w1, _ = algo.score(b.obs, b.actions)
    assert float(w1.std()) > 0
    last = infos[-1]
    assert last["w_mean"] == pytest.approx(1.0, rel=1e-5)  # batch-mean normalised
    assert 0 < last["w_ess"] <= 1 and 0 < last["w_raw_mean"] < 1 and last["hypergrad_rms_over_eps"] > 0


def test_weight_diagnostics_and_kl_guard_by_hand():
    from rl_adapters.algorithms.vaco import effective_sample_fraction, weight_kl_to_uniform

    equal = torch.full((8,), 0.3, dtype=DT)
    assert float(weight_kl_to_uniform(equal)) == pytest.approx(0.0, abs=1e-15)
    assert float(effective_sample_fraction(equal)) == pytest.approx(1.0)
    spiky = torch.tensor([1.0] + [1e-12] * 7, dtype=DT)
    assert float(weight_kl_to_uniform(spiky)) == pytest.approx(np.log(8), rel=1e-6)
    assert float(effective_sample_fraction(spiky)) == pytest.approx(1 / 8, rel=1e-6)
    w = torch.tensor([1.0, 2.0, 3.0, 2.0], dtype=DT)
    p = [1 / 8, 2 / 8, 3 / 8, 2 / 8]
    assert float(weight_kl_to_uniform(w)) == pytest.approx(sum(x * np.log(4 * x) for x in p), rel=1e-12)
    assert float(effective_sample_fraction(w)) == pytest.approx(64 / (4 * 18), rel=1e-12)
    # scale-free: only the spread is penalised
    assert float(weight_kl_to_uniform(10 * w)) == pytest.approx(float(weight_kl_to_uniform(w)), rel=1e-12)


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="weight_kl"):
        make_config("vaco", weight_kl=-1.0)
    with pytest.raises(ValueError, match="scorer_lr"):
        make_config("vaco", scorer_lr=0.0)
    with pytest.raises(ValueError, match="solver"):
        make_config("vaco", solver="two_step")
    with pytest.raises(ValueError, match="schedule"):
        make_config("vaco", schedule="alternating")
    with pytest.raises(ValueError, match="value_fraction"):
        make_config("vaco", value_fraction=1.0)
    with pytest.raises(ValueError, match="weight_norm"):
        make_config("vaco", weight_norm="softmax")


def test_forward_mode_refuses_a_large_scorer(tiny_dataset):
    data = load_dataset(tiny_dataset)
    with pytest.raises(ValueError, match="forward"):
        make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, solver="k_step", mode="forward")


# The meta-scorer learns data quality (good episodes weighted above random ones, trajectory weight correlated
# with return): tests/test_docs.py runs the quickstart's VACO demo, the same 5 good + 40 random episodes and
# hyper-parameters at the same 600-update budget, through the trainer and analyze_weights of the run.


# ------------------------------------------------------------------ end to end through the CLI
SOLVER_FLAGS = {
    "one_step": ["--solver", "one_step"],
    "one_step-joint-meannorm": [
        "--solver",
        "one_step",
        "--schedule",
        "joint",
        "--weight-norm",
        "batch_mean",
        "--no-outer-q-norm",
    ],
    "k_step-reverse": ["--solver", "k_step", "--k", "3", "--truncate", "2", "--mode", "reverse"],
    "k_step-forward": ["--solver", "k_step", "--k", "2", "--mode", "forward", "--scorer-hidden-dim", "2"],
    "implicit": ["--solver", "implicit", "--linear-solver", "cg", "--iterations", "3"],
}


@pytest.mark.parametrize("variant", sorted(SOLVER_FLAGS))
def test_every_solver_trains_through_the_cli(tiny_dataset, tmp_path, variant, capsys):
    out = tmp_path / variant
    args = [
        "train",
        "--algo",
        "vaco",
        "--dataset",
        tiny_dataset,
        "--steps",
        "8",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--eval-every",
        "0",
        "--eval-episodes",
        "1",
        "--log-every",
        "4",
        "--no-progress",
        "--no-plot",
        "--hidden-dim",
        "16",
        "--batch-size",
        "32",
        "--value-fraction",
        "0.25",
        *SOLVER_FLAGS[variant],
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert summary["final_normalized_score"] is not None
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "w_mean" in r][-1]
    for key in (
        "w_mean",
        "w_std",
        "w_q10",
        "w_q50",
        "w_q90",
        "sigma",
        "inner_loss",
        "outer_loss",
        "hypergrad_norm",
        "updates_per_s",
    ):
        assert np.isfinite(last[key]), key
    if variant == "one_step":
        capsys.readouterr()
        assert main(["analyze-weights", str(out)]) == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        res = json.loads((out / "weights" / "weights.json").read_text())
        assert printed["pearson_traj_weight_return"] == res["pearson_traj_weight_return"]
        assert res["trajectories"] == len(res["episodes"]["return"]) == 8
        assert (out / "weights" / "weights_vs_return.png").stat().st_size > 0
        assert (out / "weights" / "weights_vs_q.png").stat().st_size > 0
        assert res["pearson_weight_q"] is None or -1 <= res["pearson_weight_q"] <= 1


# ------------------------------------------------------------------ bitwise resume
def _cfg(dataset: str, out: Path, **hp) -> TrainConfig:
    return TrainConfig(
        algo="vaco",
        dataset=dataset,
        steps=30,
        seed=2,
        device="cpu",
        out=str(out),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=10,
        log_every=5,
        progress=False,
        plot=False,
        hparams={"hidden_dim": 16, "batch_size": 32, "value_fraction": 0.3, **hp},
    )


@pytest.mark.parametrize(
    "hp", [{}, {"solver": "k_step", "k": 2, "schedule": "joint"}], ids=["one_step", "k_step"]
)
def test_resume_is_bitwise_identical(tiny_dataset, tmp_path, hp):
    full = train(_cfg(tiny_dataset, tmp_path / "full", **hp))
    part = train(_cfg(tiny_dataset, tmp_path / "part", **hp), max_steps_this_session=17)
    assert part["status"] == "interrupted"
    resumed = train(_cfg(tiny_dataset, tmp_path / "part", **hp), resume=True)
    assert resumed["status"] == "finished" and full["status"] == "finished"
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["algorithm"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["algorithm"]
    for name in a["modules"]:
        for k, t in a["modules"][name].items():
            assert torch.equal(t, b["modules"][name][k]), (name, k)
    for name in a["optimizers"]:
        for pid, st in a["optimizers"][name]["state"].items():
            for k, t in st.items():
                assert torch.equal(t, b["optimizers"][name]["state"][pid][k]), (name, pid, k)
    assert len(a["extra"]["inner_state"]) == len(b["extra"]["inner_state"]) > 0
    for x, y in zip(a["extra"]["inner_state"], b["extra"]["inner_state"]):
        assert torch.equal(x, y)
    assert resumed["final_return"] == full["final_return"]


def test_checkpoint_restores_policy_adam_moments(tiny_dataset):
    data = load_dataset(tiny_dataset)
    kw = {"hidden_dim": 16, "total_steps": 10, "value_fraction": 0.0}
    a = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, **kw)
    g = data.make_generator(0)
    for _ in range(3):
        a.update(data.sample(32, g))
    b = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, **kw)
    b.load_state_dict(a.state_dict())
    la, lb = (torchopt.pytree.tree_leaves(x.solver.inner_state) for x in (a, b))
    assert int(_adam_state(b.solver).count[0]) == 3
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert torch.equal(x, y) and x is not y


def test_pearson_helper():
    assert pearson(np.arange(5.0), 2 * np.arange(5.0) + 1) == pytest.approx(1.0)
    assert pearson(np.ones(4), np.arange(4.0)) is None


def test_scorer_eps_is_the_scorer_adams_own(tiny_dataset: str) -> None:
    """``scorer_eps`` sets the eps of the scorer's Adam only (None: ``adam_eps``), and the logged
    ``hypergrad_rms_over_eps`` divides by the eps that Adam uses."""

    data = load_dataset(tiny_dataset)
    base = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, hidden_dim=16, value_fraction=0.0,
                          scorer_eps=None)
    assert base.scorer_opt.param_groups[0]["eps"] == base.config.adam_eps == 1e-5
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, hidden_dim=16, value_fraction=0.0)
    assert algo.scorer_opt.param_groups[0]["eps"] == 1e-12 and algo.config.adam_eps == 1e-5
    info = algo.update(data.sample(32, data.make_generator(0)))
    numel = sum(p.numel() for p in algo.scorer.parameters())
    assert info["hypergrad_rms_over_eps"] == pytest.approx(info["hypergrad_norm"] / (numel**0.5 * 1e-12))
    with pytest.raises(UsageError, match="scorer_eps"):
        make_config("vaco", scorer_eps=0.0)

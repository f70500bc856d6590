"""ASPC and ASPC-IQL: hypergradient vs finite differences, solver agreement, outer-update schedule,
ablation switches, training through the CLI (metrics, alpha plot) and bitwise resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchopt

import bilevel
from bilevel import InnerView
from rl_adapters.algorithms import make_algorithm
from rl_adapters.algorithms.aspc import ADAM_EPS_ROOT, OUTER_TERMS, ScaleBatch, StopGrad, outer_terms
from rl_adapters.cli import main
from rl_adapters.data import load_dataset
from rl_adapters.training import TrainConfig, train


def _aspc(data, name="aspc", steps=200, **hp):
    hp = {"hidden_dim": 8, "batch_size": 32, **hp}
    return make_algorithm(name, data.obs_dim, data.act_dim, data.stats, seed=0, total_steps=steps, **hp)


def _float64(algo):
    """The same algorithm with every network, the scale and the solver state in float64."""
    for m in algo.modules.values():
        m.double()
    algo.build_optimizers()
    return algo


def _batch64(data, n=32, seed=0):
    b = data.sample(n, data.make_generator(seed))
    return b._replace(**{k: v.double() for k, v in b._asdict().items() if v is not None and v.is_floating_point()})


def _prepared(data, name="aspc", **hp):
    """A float64 algorithm after a few plain actor steps (non-trivial Adam moments) and an outer batch
    whose m_{t-1} differs from the current mean Q (so eq2 and eq3 are not ~0)."""
    algo = _float64(_aspc(data, name, **hp))
    adv = None
    if name == "aspc-iql":
        adv = torch.linspace(-0.3, 0.3, 32, dtype=torch.float64)
    for i in range(4):
        b = _batch64(data, seed=10 + i)
        algo.plain_actor_step(ScaleBatch(b.obs, b.actions, adv))
    b = _batch64(data)
    ob = algo.outer_batch(b.obs, b.actions, adv)
    return algo, ob._replace(m_prev=ob.m_prev - 0.5)


def _names(module):
    return [n for n, p in module.named_parameters() if p.requires_grad]


def _outer_through_step(algo, ob, rho, stop_grad=None):
    """Outer terms at phi'(rho) = one (plain) Adam step from the solver's current phi and moments."""
    s = algo.solver
    with torch.no_grad():
        algo.scale.rho.fill_(rho)
    buffers = dict(algo.actor.named_buffers())
    theta1, _, _ = s.inner_step(s.theta(), s.inner_state, ob, buffers, differentiable=False)
    view = InnerView(algo.actor, _names(algo.actor), theta1, buffers)
    terms = algo.outer_objective(view, ob, stop_grad)
    q_abs = algo.outer_q(ob.obs, view(ob.obs)).abs().mean()
    return terms, q_abs


@pytest.mark.parametrize("name", ["aspc", "aspc-iql"])
def test_hypergradient_matches_central_finite_differences(tiny_dataset, name):
    data = load_dataset(tiny_dataset)
    algo, ob = _prepared(data, name, outer_terms="all")
    rho0 = float(algo.scale.rho.detach())
    grad = algo.solver.hypergradient(ob)[0]
    base, q_abs = _outer_through_step(algo, ob, rho0)
    # Freeze the stop-gradient factors at rho0: that is the function autograd differentiates.
    sg = StopGrad(q_weight=algo.q_weight(algo.scale().detach()), q_abs=q_abs, eq2=base.eq2.detach())
    h = 1e-4  # float64: truncation ~h^2, round-off ~1e-16/h; 1e-4 balances them here
    plus = _outer_through_step(algo, ob, rho0 + h, sg)[0].total
    minus = _outer_through_step(algo, ob, rho0 - h, sg)[0].total
    fd = (plus - minus) / (2 * h)
    assert float(grad.abs()) > 1e-9, "degenerate check: the hypergradient is ~0"
    rel = float(((grad - fd).abs() / fd.abs()).detach())
    assert rel < 1e-6, (float(grad.detach()), float(fd.detach()), rel)
    # every term contributes to the checked function
    assert float(base.eq2.detach()) > 0 and float(base.eq3.detach()) > 0


def test_one_step_forward_and_reverse_k_step_agree(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo, ob = _prepared(data, "aspc", outer_terms="all")
    grads = {"one_step": algo.solver.hypergradient(ob)[0]}
    for mode in ("forward", "reverse"):
        s = bilevel.KStepSolver(algo.problem, torchopt.adam(lr=3e-4, eps_root=ADAM_EPS_ROOT),
                                torch.optim.Adam(algo.scale.parameters()), steps=1, mode=mode)
        s.load_state_dict(algo.solver.state_dict())
        grads[mode] = s.hypergradient(ob)[0]
    ref = grads["one_step"]
    for mode in ("forward", "reverse"):
        assert torch.allclose(grads[mode], ref, rtol=1e-10, atol=0), (mode, grads)


@pytest.mark.parametrize("name,outer", [("aspc", 3), ("aspc-iql", 6)])
def test_forward_mode_solver_trains_like_one_step(tiny_dataset, name, outer):
    data = load_dataset(tiny_dataset)
    runs = {}
    for solver in ("one_step", "k_step_forward"):
        algo = _aspc(data, name, solver=solver, steps=60)
        gen = data.make_generator(3)
        for _ in range(60):
            algo.update(data.sample(32, gen))
        runs[solver] = algo
    assert runs["one_step"].outer_updates == runs["k_step_forward"].outer_updates == outer
    assert runs["k_step_forward"].scale.rho.dtype == torch.float32
    torch.testing.assert_close(runs["k_step_forward"].parameters_flat(), runs["one_step"].parameters_flat(),
                               rtol=1e-5, atol=1e-6)


def test_one_outer_update_per_update_interval_actor_updates(tiny_dataset):
    data = load_dataset(tiny_dataset)
    # A 100-step decay horizon (5 outer updates) makes the whole schedule visible in a short test.
    algo = _aspc(data, update_interval=10, policy_freq=2, steps=100, outer_lr_horizon=100)
    calls = []
    real_step = algo.solver.step

    def counting_step(*a, **k):
        calls.append(algo.actor_updates)
        return real_step(*a, **k)

    algo.solver.step = counting_step
    gen = data.make_generator(0)
    rho_changes = []
    for step in range(1, 101):
        before = float(algo.scale.rho.detach())
        algo.update(data.sample(32, gen))
        if float(algo.scale.rho.detach()) != before:
            rho_changes.append(step)
        assert algo.actor_updates == step // 2
        assert algo.outer_updates == algo.actor_updates // 10
    # 50 actor updates -> outer updates at actor updates 10, 20, ..., 50 (critic steps 20, 40, ...)
    assert calls == [10, 20, 30, 40, 50]
    assert rho_changes == [20, 40, 60, 80, 100]
    # outer lr: 2e-3 * interval/10, decayed by gamma = 0.01 ** (1 / (100 // 2 // 10)) per outer update
    assert algo.rho_opt.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.01)


@pytest.mark.parametrize("steps", [100, 20_000, 1_000_000])
def test_outer_lr_decay_horizon_is_the_references_whatever_the_run_length(tiny_dataset, steps):
    data = load_dataset(tiny_dataset)
    algo = _aspc(data, steps=steps)
    # The authors' code: gamma = 0.01 ** (1 / int(1e6 / (policy_freq * alpha_freq))) = 0.01 ** (1 / 50000).
    assert algo.rho_sched.gamma == pytest.approx(0.01 ** (1 / 50_000), rel=1e-12)
    # ASPC-IQL updates its actor every step, so the same horizon holds 100000 outer updates.
    assert _aspc(data, "aspc-iql", steps=steps).rho_sched.gamma == pytest.approx(0.01 ** (1 / 100_000), rel=1e-12)


@pytest.mark.parametrize("option,value", [("outer_lr_horizon", -5), ("outer_lr_horizon", 0), ("ema_init", "mean"),
                                          ("outer_terms", "eq2"), ("solver", "k_step"), ("critic_init", "xavier")])
def test_bad_aspc_options_are_refused_by_make_config_naming_the_option(option, value):
    from rl_adapters.algorithms import make_config

    with pytest.raises(ValueError, match=option):
        make_config("aspc", **{option: value})


def test_update_interval_scales_the_outer_lr(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo = _aspc(data, update_interval=30, steps=6000)
    assert algo.rho_opt.param_groups[0]["lr"] == pytest.approx(6e-3)
    assert algo.rho_sched.gamma == pytest.approx(0.01 ** (1 / (1_000_000 // 60)))


def test_ablation_switches_change_the_loss_as_documented(tiny_dataset):
    g = torch.Generator().manual_seed(0)
    pi = torch.randn(16, 3, generator=g, dtype=torch.float64)
    actions = torch.randn(16, 3, generator=g, dtype=torch.float64)
    q = torch.randn(16, generator=g, dtype=torch.float64) + 2.0
    b_pre = torch.rand(16, generator=g, dtype=torch.float64)
    batch = ScaleBatch(torch.zeros(16, 2, dtype=torch.float64), actions, None, b_pre, torch.tensor(1.0).double())
    w = torch.tensor(2.5, dtype=torch.float64)
    ref = outer_terms(pi, q, batch, w, 0.995, True, True)
    # the terms themselves, from their definitions
    # F.mse_loss convention: mean over the 16 x 3 entries
    bc = sum(float(pi[i, j] - actions[i, j]) ** 2 for i in range(16) for j in range(3)) / 48
    assert torch.allclose(ref.eq1, -2.5 * q.mean() / q.abs().mean() + bc)
    m = 0.005 * q.mean() + 0.995 * 1.0
    assert torch.allclose(ref.ema, m) and torch.allclose(ref.eq2, (m - 1.0) ** 2)
    b_new = ((pi - actions) ** 2).mean(-1)
    assert torch.allclose(ref.eq3, ref.eq2 * b_pre.max() * (b_pre - b_new).abs().max())
    expected = {"eq1": ref.eq1, "eq1+eq2": ref.eq1 + ref.eq2, "eq1+eq3": ref.eq1 + ref.eq3,
                "all": ref.eq1 + ref.eq2 + ref.eq3}
    for option, (use2, use3) in OUTER_TERMS.items():
        t = outer_terms(pi, q, batch, w, 0.995, use2, use3)
        assert torch.equal(t.total, expected[option]), option
    # through the algorithm: the configured option reaches the problem's outer loss
    data = load_dataset(tiny_dataset)
    losses = {}
    for option in OUTER_TERMS:
        algo, ob = _prepared(data, "aspc", outer_terms=option)
        view = InnerView(algo.actor, _names(algo.actor), algo.solver.theta(), dict(algo.actor.named_buffers()))
        losses[option] = float(algo.problem.outer_loss(view, algo.scale, ob).detach())
        with torch.no_grad():
            terms = algo.outer_objective(view, ob)
    assert losses["eq1+eq2"] - losses["eq1"] == pytest.approx(float(terms.eq2), rel=1e-9)
    assert losses["eq1+eq3"] - losses["eq1"] == pytest.approx(float(terms.eq3), rel=1e-9)
    assert losses["all"] == pytest.approx(losses["eq1"] + float(terms.eq2) + float(terms.eq3), rel=1e-12)
    with pytest.raises(ValueError, match="outer_terms"):
        _aspc(data, outer_terms="eq2")


def test_robust_critic_and_td3bc_option(tiny_dataset):
    data = load_dataset(tiny_dataset)
    for algo in (_aspc(data), _aspc(data, "td3bc", critic_hidden_layers=3, critic_layer_norm=True)):
        assert len(algo.critic.net.linears) == 4
        assert algo.critic.net.norms is not None and len(algo.critic.net.norms) == 3
    plain = _aspc(data, "td3bc")
    assert plain.critic.net.norms is None


@pytest.mark.parametrize("name,key", [("aspc", "alpha"), ("aspc-iql", "beta")])
def test_cli_run_scale_moves_metrics_and_plot(tiny_dataset, tmp_path, name, key):
    out = tmp_path / name
    # 80 updates, 16 outer ones: the scale moves by 5e-3 (ASPC) and 2e-3 (ASPC-IQL) from its initial value
    rc = main(["train", "--algo", name, "--dataset", tiny_dataset, "--steps", "80", "--seed", "0",
               "--device", "cpu", "--out", str(out), "--eval-every", "0", "--eval-episodes", "1",
               "--log-every", "10", "--checkpoint-every", "80", "--no-progress", "--hidden-dim", "32",
               "--batch-size", "64", "--update-interval", "5"])
    assert rc == 0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if key in r]
    assert len(train_rows) == 8
    for k in (key, "ema_q", "delta_q", "bc_sup", "eq1", "outer_loss", "hypergrad_norm"):
        assert all(isinstance(r[k], float) and r[k] == r[k] and abs(r[k]) < 1e6 for r in train_rows), k
    scales = [r[key] for r in train_rows]
    initial = 2.5 if name == "aspc" else 3.0
    assert abs(scales[-1] - initial) > 1e-3 and len(set(scales)) > 1
    assert (out / f"{key}_curve.png").stat().st_size > 1000
    assert (out / "learning_curve.png").exists() and (out / "summary.json").exists()


@pytest.mark.parametrize("name", ["aspc", "aspc-iql"])
def test_resume_is_bitwise_identical(tiny_dataset, tmp_path, name):
    def cfg(out):
        return TrainConfig(algo=name, dataset=tiny_dataset, steps=60, seed=1, device="cpu", out=str(out),
                           eval_every=0, eval_episodes=1, checkpoint_every=20, log_every=10, progress=False,
                           plot=False, hparams={"hidden_dim": 16, "batch_size": 32, "update_interval": 3})

    full = train(cfg(tmp_path / "full"))
    part = train(cfg(tmp_path / "part"), max_steps_this_session=25)  # mid-interval: counters matter
    assert part["status"] == "interrupted"
    resumed = train(cfg(tmp_path / "part"), resume=True)
    assert resumed["status"] == "finished" and resumed["final_return"] == full["final_return"]
    a = torch.load(Path(tmp_path / "full" / "checkpoint.pt"), weights_only=True)["algorithm"]
    b = torch.load(Path(tmp_path / "part" / "checkpoint.pt"), weights_only=True)["algorithm"]
    for mod in a["modules"]:
        for k, t in a["modules"][mod].items():
            assert torch.equal(t, b["modules"][mod][k]), (mod, k)
    assert len(a["extra"]["inner_state"]) == len(b["extra"]["inner_state"]) > 0
    for x, y in zip(a["extra"]["inner_state"], b["extra"]["inner_state"]):
        assert torch.equal(x, y)
    assert torch.equal(a["extra"]["ema_q"], b["extra"]["ema_q"])
    assert a["extra"]["outer_updates"] == b["extra"]["outer_updates"] > 0
    assert a["optimizers"]["rho"]["state"][0]["exp_avg"] == b["optimizers"]["rho"]["state"][0]["exp_avg"]
    assert a["schedulers"]["rho"] == b["schedulers"]["rho"]
    lines = lambda p: (p / "metrics.jsonl").read_text().splitlines()
    # The trainer restarts its logging window at a resume, so the row at step 30 averages steps 26-30
    # instead of 21-30; every other row must be identical.
    strip = lambda ls: [{k: v for k, v in json.loads(ln).items() if k != "updates_per_s"} for ln in ls
                        if json.loads(ln)["step"] != 30]
    assert strip(lines(tmp_path / "part")) == strip(lines(tmp_path / "full"))

"""ARQ's one-off cost and what the CPU settings change (docs/algorithms.md "ARQ").

1. ``--settings``: on ``--states`` random states of a dataset, candidates (``N`` per state) from a trained
   behaviour model with the paper's settings (500 Euler-Maruyama + 1 Langevin step per step, SNR 0.16;
   likelihood by RK4 with 100 steps and the exact trace) and with the CPU settings (20 predictor steps,
   no corrector; 2 Heun steps with a Hutchinson trace). Reports seconds per state for each, extrapolated
   to every state of the dataset; the CPU likelihood's error against the reference ODE on the same
   candidates; how many candidates each drops (``log beta < -5``) and how often the two disagree; and
   how the candidates sit around the dataset action (mean distance, per-state spread).
2. ``--ablation``: the sampler and likelihood choices one at a time (which part of the error is whose).
3. ``--update-timing``: milliseconds per ARQ update (candidates in place) and per TD3+BC update, batch
   512 and 256 as each algorithm uses, one thread.

The behaviour model comes from a finished ``bilevel-rl train --algo arq`` run (``--run DIR``), whose
checkpoint holds it. Example (the numbers in docs/algorithms.md)::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.arq_candidates --run runs/arq-smoke \\
        --states 60 --settings --update-timing
    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.arq_candidates --run runs/arq-smoke \\
        --states 30 --ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rl_adapters.algorithms import make_algorithm
from rl_adapters.behavior_model import BehaviorModel
from rl_adapters.data import load_dataset

PAPER = {"sampler_steps": 500, "corrector_steps": 1, "ode_steps": 100, "ode_method": "rk4", "trace": "exact"}
CPU = {"sampler_steps": 20, "corrector_steps": 0, "ode_steps": 2, "ode_method": "heun", "trace": "hutchinson"}
THRESHOLD = -5.0


def load_behavior(run: Path, data) -> BehaviorModel:
    cfg = json.loads((run / "config.json").read_text())
    hp = cfg["hparams"]
    model = BehaviorModel(data.obs_dim, data.act_dim, data.stats.action_low, data.stats.action_high,
                          hp.get("bm_hidden_dim", 256), hp.get("bm_blocks", 3))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    model.load_state_dict(state["algorithm"]["modules"]["behavior"])
    return model


def candidates(model: BehaviorModel, obs: torch.Tensor, n: int, s: dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    rep = obs.repeat_interleave(n, 0)
    t0 = time.perf_counter()
    a = model.sample(rep, s["sampler_steps"], s["corrector_steps"], 0.16, g)
    t1 = time.perf_counter()
    ll = model.log_likelihood(rep, a, s["ode_steps"], s["ode_method"], s["trace"], g)
    t2 = time.perf_counter()
    return a.reshape(len(obs), n, -1), ll.reshape(len(obs), n), t1 - t0, t2 - t1


def settings_effect(model, data, states: int, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:states]
    obs = data.normalize(data.observations[idx])
    act = data.actions[idx]
    total_states = len(data) + data.num_episodes
    out = {"states": states, "n": n, "dataset_states": total_states}
    res = {}
    for name, s in (("cpu", CPU), ("paper", PAPER)):
        a, ll, ts, tl = candidates(model, obs, n, s, seed + 1)
        res[name] = (a, ll)
        dist = (a - act.unsqueeze(1)).norm(dim=-1)
        out[name] = {
            "settings": s,
            "sample_s_per_state": ts / states, "loglik_s_per_state": tl / states,
            "extrapolated_min_for_dataset": (ts + tl) / states * total_states / 60,
            "loglik_mean": ll.mean().item(), "loglik_median": ll.median().item(),
            "dropped_fraction": (ll < THRESHOLD).float().mean().item(),
            "dist_to_data_action": dist.mean().item(),
            "spread_per_state": a.std(1).mean().item(),
        }
        print(name, json.dumps(out[name]), flush=True)
    a_cpu, ll_cpu = res["cpu"]
    rep = obs.repeat_interleave(n, 0)
    t0 = time.perf_counter()
    # The CPU candidates' likelihood by the reference ODE: the CPU estimate's error on the same points.
    ref = model.log_likelihood(rep, a_cpu.reshape(-1, a_cpu.shape[-1]), PAPER["ode_steps"], PAPER["ode_method"],
                               PAPER["trace"]).reshape(states, n)
    err = ll_cpu - ref
    out["cpu_loglik_vs_reference"] = {
        "bias": err.mean().item(), "mae": err.abs().mean().item(), "rmse": err.pow(2).mean().sqrt().item(),
        "corr": torch.corrcoef(torch.stack([ll_cpu.flatten(), ref.flatten()]))[0, 1].item(),
        "dropped_by_reference": (ref < THRESHOLD).float().mean().item(),
        "valid_flag_disagreement": ((ll_cpu < THRESHOLD) != (ref < THRESHOLD)).float().mean().item(),
        "seconds": time.perf_counter() - t0,
    }
    print("cpu vs reference", json.dumps(out["cpu_loglik_vs_reference"]), flush=True)
    return out


def ablation(model, data, states: int, n: int, seed: int) -> dict:
    """Which part of the CPU settings costs what: sampler variants (spread, distance to the data action,
    reference log-likelihood) and likelihood variants on one fixed set of candidates (error vs RK4 x 100)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:states]
    obs = data.normalize(data.observations[idx]).repeat_interleave(n, 0)
    act = data.actions[idx].repeat_interleave(n, 0)
    out: dict = {"sampler": {}, "loglik": {}}

    def ref_ll(a):
        return model.log_likelihood(obs, a, PAPER["ode_steps"], PAPER["ode_method"], PAPER["trace"])

    for steps, corr, grid in ((20, 0, "quadratic"), (20, 1, "quadratic"), (50, 0, "quadratic"), (100, 1, "quadratic"),
                              (500, 1, "quadratic"), (500, 1, "uniform"), (50, 1, "uniform")):
        t0 = time.perf_counter()
        a = model.sample(obs, steps, corr, 0.16, torch.Generator().manual_seed(seed + 1), grid)
        dt = time.perf_counter() - t0
        ll = ref_ll(a)
        row = {"s_per_state": dt / states, "spread_per_state": a.reshape(states, n, -1).std(1).mean().item(),
               "dist_to_data_action": (a - act).norm(dim=-1).mean().item(), "ref_loglik_mean": ll.mean().item(),
               "ref_dropped": (ll < THRESHOLD).float().mean().item()}
        out["sampler"][f"{steps}+{corr} {grid}"] = row
        print("sampler", steps, corr, grid, json.dumps(row), flush=True)
    a = model.sample(obs, CPU["sampler_steps"], CPU["corrector_steps"], 0.16, torch.Generator().manual_seed(seed + 1))
    ref = ref_ll(a)
    for steps, method, trace in ((2, "heun", "hutchinson"), (2, "heun", "exact"), (4, "euler", "hutchinson"),
                                 (4, "heun", "hutchinson"), (8, "heun", "hutchinson"), (2, "rk4", "exact"),
                                 (50, "rk4", "exact")):
        t0 = time.perf_counter()
        ll = model.log_likelihood(obs, a, steps, method, trace, torch.Generator().manual_seed(seed + 2))
        dt = time.perf_counter() - t0
        err = ll - ref
        row = {"s_per_state": dt / states, "bias": err.mean().item(), "mae": err.abs().mean().item(),
               "flag_disagreement": ((ll < THRESHOLD) != (ref < THRESHOLD)).float().mean().item()}
        out["loglik"][f"{method} x{steps} {trace}"] = row
        print("loglik", method, steps, trace, json.dumps(row), flush=True)
    return out


def update_timing(data, updates: int = 40) -> dict:
    out = {}
    for algo, hp in (("arq", {"bm_steps": 1}), ("td3bc", {})):
        a = make_algorithm(algo, data.obs_dim, data.act_dim, data.stats, total_steps=10**6, **hp)
        if algo == "arq":
            a.attach_data(data)
            n_states = a._state_obs.shape[0]
            g = torch.Generator().manual_seed(0)
            a.set_candidates(torch.rand(n_states, 30, data.act_dim, generator=g) * 2 - 1,
                             torch.zeros(n_states, 30))
            a.step = 1  # past its behaviour-model phase
        gen = data.make_generator(0)
        bs = a.config.batch_size
        for _ in range(5):
            a.update(data.sample(bs, gen))
        t0 = time.perf_counter()
        for _ in range(updates):
            a.update(data.sample(bs, gen))
        out[algo] = {"ms_per_update": 1000 * (time.perf_counter() - t0) / updates, "batch_size": bs}
        print(algo, json.dumps(out[algo]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="suite/hopper/medium-v0")
    p.add_argument("--run", type=Path, help="a bilevel-rl train --algo arq run directory (its behaviour model)")
    p.add_argument("--states", type=int, default=100)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", action="store_true")
    p.add_argument("--update-timing", action="store_true")
    p.add_argument("--ablation", action="store_true", help="sampler and likelihood variants one at a time")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, "cpu")
    result: dict = {"dataset": args.dataset, "threads": 1}
    if args.settings:
        if args.run is None:
            p.error("--settings needs --run DIR (a finished ARQ run whose checkpoint holds the behaviour model)")
        result["settings"] = settings_effect(load_behavior(args.run, data), data, args.states, args.n, args.seed)
    if args.ablation:
        result["ablation"] = ablation(load_behavior(args.run, data), data, args.states, args.n, args.seed)
    if args.update_timing:
        result["update_timing"] = update_timing(data)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Many seeds in one process (``--seeds``): equivalence with single runs, bit-exact resume, files, errors."""

from __future__ import annotations

import json

import pytest
import torch

from rl_adapters.algorithms import make_algorithm
from rl_adapters.cli import main
from rl_adapters.data import load_dataset
from rl_adapters.errors import UsageError
from rl_adapters.training import TrainConfig, train
from rl_adapters.training.seed_stack import SeedStack, stackable_algorithms

HP = {"hidden_dim": 32, "batch_size": 64}


def _cfg(dataset, out, algo="td3bc", steps=40, **kw):
    base = {"algo": algo, "dataset": dataset, "steps": steps, "seeds": [3, 5], "device": "cpu", "out": str(out),
            "eval_every": 20, "eval_episodes": 2, "checkpoint_every": 10, "log_every": 10, "progress": False,
            "plot": False, "hparams": dict(HP)}
    base.update(kw)
    return TrainConfig(**base)


def _stacked_batch(data, gens):
    return data.sample_many(64, gens)


# ASPC's outer update every actor update, so that six updates take several hypergradient steps.
EXTRA = {"aspc": {"update_interval": 1}, "aspc-iql": {"update_interval": 1}}


@pytest.mark.parametrize("algo", ["bc", "td3bc", "iql", "aspc", "aspc-iql"])
def test_each_seed_follows_its_single_run(tiny_dataset, algo):
    """Seed k of a stack starts from exactly seed k's single-run weights and, fed the same batches and noise,
    takes the same updates up to float rounding (batched matmuls sum in another order); for ASPC that
    includes the differentiable actor step and the hypergradient step on its own constraint scale."""
    data = load_dataset(tiny_dataset, "cpu")
    seeds = [3, 5, 8]
    hp = HP | EXTRA.get(algo, {})
    stack = SeedStack.build(algo, seeds, data.obs_dim, data.act_dim, data.stats, total_steps=50, **hp)
    singles = [make_algorithm(algo, data.obs_dim, data.act_dim, data.stats, seed=s, total_steps=50, **hp)
               for s in seeds]
    stack.sync_members()
    for member, single in zip(stack.members, singles):
        assert torch.equal(member.parameters_flat(), single.parameters_flat())
    gens = [data.make_generator(s) for s in seeds]
    single_gens = [data.make_generator(s) for s in seeds]
    for _ in range(6):  # TD3+BC's actor steps every 2nd update: 3 actor steps
        infos = stack.update(_stacked_batch(data, gens))
        single_infos = [a.update(data.sample(64, g)) for a, g in zip(singles, single_gens)]
    stack.sync_members()
    for member, single, info, single_info in zip(stack.members, singles, infos, single_infos):
        diff = (member.parameters_flat() - single.parameters_flat()).abs().max().item()
        assert diff < 1e-5, diff
        assert info.keys() == single_info.keys()
        for k in info:
            assert info[k] == pytest.approx(single_info[k], rel=1e-4, abs=1e-6), k
        assert torch.equal(member.generator.get_state(), single.generator.get_state())  # same noise drawn
    # the seeds did not collapse onto one another
    assert (stack.members[0].parameters_flat() - stack.members[1].parameters_flat()).abs().max() > 1e-2


def test_member_state_round_trip_is_exact(tiny_dataset):
    data = load_dataset(tiny_dataset, "cpu")
    stack = SeedStack.build("td3bc", [0, 1], data.obs_dim, data.act_dim, data.stats, total_steps=50, **HP)
    gens = [data.make_generator(s) for s in (0, 1)]
    for _ in range(3):
        stack.update(_stacked_batch(data, gens))
    before = {k: v.clone() for k, v in stack.algo.modules["critic"].state_dict().items()}
    moments = [s["exp_avg"].clone() for s in stack.algo.optimizers["critic"].state_dict()["state"].values()]
    stack.sync_members()
    stack.restack()
    for k, v in stack.algo.modules["critic"].state_dict().items():
        assert torch.equal(v, before[k])
    after = [s["exp_avg"] for s in stack.algo.optimizers["critic"].state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(after, moments))
    assert stack.members[1].state_dict()["attrs"]["_last_actor"]["lambda"] == pytest.approx(
        float(stack.algo._last_actor["lambda"][1]))


@pytest.mark.parametrize("algo", ["td3bc", "iql", "aspc"])
def test_multi_seed_resume_is_bitwise_identical(tiny_dataset, tmp_path, algo):
    kw = {"hparams": HP | EXTRA.get(algo, {})}
    full = train(_cfg(tiny_dataset, tmp_path / "full", algo, **kw))
    part = train(_cfg(tiny_dataset, tmp_path / "part", algo, **kw), max_steps_this_session=15)
    assert full["status"] == "finished" and part["status"] == "interrupted"
    resumed = train(_cfg(tiny_dataset, tmp_path / "part", algo, **kw), resume=True)
    assert resumed["status"] == "finished" and resumed["steps"] == 40
    for s in (3, 5):
        a = torch.load(tmp_path / "full" / f"seed{s}" / "checkpoint.pt", weights_only=True)
        b = torch.load(tmp_path / "part" / f"seed{s}" / "checkpoint.pt", weights_only=True)
        for name, sd in a["algorithm"]["modules"].items():
            for k, t in sd.items():
                assert torch.equal(t, b["algorithm"]["modules"][name][k]), (s, name, k)
        for name, sd in a["algorithm"]["optimizers"].items():
            for pid, st in sd["state"].items():
                for k, t in st.items():
                    assert torch.equal(t, b["algorithm"]["optimizers"][name]["state"][pid][k])
        assert torch.equal(a["sampler_rng"], b["sampler_rng"])
        lines = lambda p: [(r["step"], "eval_return" in r) for r in map(json.loads, p.open())]
        assert lines(tmp_path / "part" / f"seed{s}" / "metrics.jsonl") == lines(
            tmp_path / "full" / f"seed{s}" / "metrics.jsonl")
    assert resumed["final_normalized_scores"] == full["final_normalized_scores"]


def test_each_seed_writes_a_single_runs_files_and_resumes_alone(tiny_dataset, tmp_path):
    out = tmp_path / "many"
    summary = train(_cfg(tiny_dataset, out, steps=20, plot=True), max_steps_this_session=10)
    assert summary["status"] == "interrupted"
    for s in (3, 5):
        run = out / f"seed{s}"
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["seed"] == s and cfg["seeds"] is None and cfg["seeds_in_process"] == [3, 5]
        assert (run / "checkpoint.pt").exists() and (run / "metrics.jsonl").read_text()
    # a seed of a multi-seed run is an ordinary run: it can be continued on its own
    alone = train(TrainConfig.from_dict(json.loads((out / "seed5" / "config.json").read_text())), resume=True)
    assert alone["status"] == "finished" and alone["seed"] == 5
    assert (out / "seed5" / "summary.json").exists() and (out / "seed5" / "learning_curve.png").exists()


def test_cli_seeds(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--algo", "bc", "--dataset", tiny_dataset, "--steps", "10", "--seeds", "0-2", "--out", str(out),
            "--eval-episodes", "1", "--no-progress", "--no-plot", "--hidden-dim", "32"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["seeds"] == [0, 1, 2] and len(summary["final_normalized_scores"]) == 3
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["seed0", "seed1", "seed2"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--algo", "vaco", "--seeds", "0,1"], "--seeds works for aspc, aspc-iql, bc, iql, td3bc"),
        (["--algo", "bc", "--seeds", "0,0"], "a seed is repeated"),
        (["--algo", "bc", "--seeds", "a,b"], "--seeds 'a,b'"),
        (["--algo", "bc", "--seeds", "0,1", "--seed", "3"], "give one of them"),
    ],
)
def test_cli_refuses_bad_seeds(tiny_dataset, tmp_path, capsys, argv, needle):
    code = main(["train", "--dataset", tiny_dataset, "--steps", "10", "--out", str(tmp_path / "x"), *argv])
    assert code != 0
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_stackable_algorithms():
    assert stackable_algorithms() == ["aspc", "aspc-iql", "bc", "iql", "td3bc"]
    with pytest.raises(UsageError, match="--seeds"):
        TrainConfig(algo="vaco", dataset="x", seeds=[0, 1]).check_seeds()


@pytest.mark.slow
@pytest.mark.parametrize("stacked", [False, True])
def test_compiled_losses_take_the_eager_steps(tiny_dataset, stacked):
    """--compile changes how a loss is computed, not what: compiled and eager updates agree to rounding."""
    data = load_dataset(tiny_dataset, "cpu")

    def build():
        if stacked:
            return SeedStack.build("td3bc", [0, 1], data.obs_dim, data.act_dim, data.stats, total_steps=50, **HP)
        return make_algorithm("td3bc", data.obs_dim, data.act_dim, data.stats, seed=0, total_steps=50, **HP)

    eager, compiled = build(), build()
    (compiled.algo if stacked else compiled).compile_losses()
    gens = [[data.make_generator(s) for s in (0, 1)] for _ in range(2)]
    for _ in range(4):
        for algo, g in ((eager, gens[0]), (compiled, gens[1])):
            algo.update(data.sample_many(64, g) if stacked else data.sample(64, g[0]))
    flat = lambda a: torch.cat([p.detach().reshape(-1) for m in (a.algo if stacked else a).modules.values()
                                for p in m.parameters()])
    assert (flat(eager) - flat(compiled)).abs().max() < 1e-5

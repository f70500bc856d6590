"""Issue 23, what a person reads: a short run's learning curve has points for every loss and about ten
evaluations, one panel per quantity; analyze-weights' groups are terciles and an untrained scorer is said so;
a corrupted dataset is one line naming the file; ARQ says how long its candidates take and warns when few are
valid; every suggested fix passes its own check; SOBA / F2SA warm up to an estimate at once; a run prints only
its summary (no warning the project can prevent)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchopt

import bilevel
from rl_adapters.cli import main
from rl_adapters.training import TrainConfig, default_eval_every, default_log_every, train
from rl_adapters.training.metrics import read_metrics
from rl_adapters.training.plots import learning_curve_figure

REPO = Path(__file__).resolve().parent.parent
SMALL = {"hidden_dim": 16, "batch_size": 16}


def _one_line(err: str, command: str = "train") -> str:
    assert err.count("\n") == 1 and err.startswith(f"bilevel-rl {command}: "), err
    assert "Traceback" not in err
    return err.strip()


# ------------------------------------------------------------------------------ 1. cadence and the figure
def test_default_cadence_scales_with_the_run_and_explicit_flags_win(tiny_dataset, tmp_path):
    assert default_log_every(2000) == 40 and default_log_every(100_000) == 1000 and default_log_every(10) == 1
    cfg = TrainConfig(algo="bc", dataset=tiny_dataset, steps=2000).resolved()
    assert cfg.log_every == 40 and cfg.eval_every == 200  # 50 loss rows, 10 evaluations
    assert TrainConfig(algo="bc", dataset=tiny_dataset, steps=2000, log_every=7, eval_every=3).resolved().log_every == 7
    # VACO's value-only phase is not evaluated: the ten evaluations are spread over the rest of the run
    vaco = TrainConfig(algo="vaco", dataset=tiny_dataset, steps=2000).resolved()
    assert vaco.eval_every == default_eval_every(1000) == 100
    out = tmp_path / "bc"
    train(TrainConfig(algo="bc", dataset=tiny_dataset, steps=100, device="cpu", out=str(out), eval_episodes=0,
                      progress=False, plot=False, hparams=SMALL))
    saved = json.loads((out / "config.json").read_text())
    assert saved["log_every"] == 2 and saved["eval_every"] == 10  # the resolved values are recorded


@pytest.mark.parametrize("algo, hparams", [
    ("vaco", {"scorer_hidden_dim": 16}),
    ("aspc", {}),
])
def test_short_run_figure_has_a_panel_per_loss_with_ten_points_and_ten_evaluations(tiny_dataset, tmp_path, algo,
                                                                                    hparams):
    """ceil(steps / 50) logging: a 100-step run has the rows a 2000-step one has (50), so this is its figure."""
    out = tmp_path / algo
    train(TrainConfig(algo=algo, dataset=tiny_dataset, steps=100, device="cpu", out=str(out), eval_episodes=1,
                      progress=False, plot=True, hparams=SMALL | hparams))
    rows = read_metrics(out / "metrics.jsonl")
    fig = learning_curve_figure(rows, "t")
    panels = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_visible()}
    losses = [k for k in panels if k != "evaluation"]
    assert {"outer_loss", "bc_loss" if algo == "vaco" else "actor_loss"} <= set(losses)
    for name in losses:
        [line] = panels[name].get_lines()  # one series per panel: none hides another
        assert len(line.get_xdata()) >= 10, name
    [evals] = panels["evaluation"].get_lines()
    assert 9 <= len(evals.get_xdata()) <= 11
    assert (out / "learning_curve.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------ 2. analyze-weights
def test_return_groups_are_terciles_of_the_trajectories():
    from rl_adapters.vaco_analysis import return_terciles

    ret = np.array([1.0, 2.0, 3.0, 1000.0, 4.0, 5.0, 6.0] + [7.0] * 5)  # one outlier: thirds of the range fail
    groups = return_terciles(ret)
    assert np.bincount(groups).tolist() == [4, 4, 4]
    assert groups[3] == 2 and set(groups[:3]) == {0}


def test_analyze_weights_warns_when_the_scorer_is_untrained(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "vaco"
    cfg = TrainConfig(algo="vaco", dataset=tiny_dataset, steps=40, device="cpu", out=str(run), eval_episodes=0,
                      checkpoint_every=10, log_every=5, progress=False, plot=False,
                      hparams=SMALL | {"scorer_hidden_dim": 16})
    train(cfg, max_steps_this_session=10)  # value phase: steps 1-20
    capsys.readouterr()
    assert main(["analyze-weights", str(run), "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert _one_line(err, "analyze-weights") == (
        f"bilevel-rl analyze-weights: warning: the run stopped at step 10, in its value-only phase 1 (steps 1-20), "
        f"so the meta-scorer has not been trained yet: every weight is 1 and no correlation is defined; train past "
        f"step 20 first (bilevel-rl train --resume {shlex.quote(str(run))})")
    assert json.loads(out)["scorer_trained"] is False
    train(cfg, resume=True)  # past the value phase: no warning
    capsys.readouterr()
    assert main(["analyze-weights", str(run), "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["scorer_trained"] is True
    thirds = json.loads((run / "weights" / "weights.json").read_text())["return_thirds"]
    assert [thirds[k]["episodes"] for k in ("low", "middle", "top")] == [3, 3, 2]  # 8 trajectories


# ------------------------------------------------------------------------------ 3. corrupted datasets
def _corrupt(root: Path, how: str) -> Path:
    data = root / "tiny" / "pendulum" / "mixed-v0" / "data"
    hdf5, meta = data / "main_data.hdf5", data / "metadata.json"
    if how == "truncated":
        hdf5.write_bytes(hdf5.read_bytes()[:3000])
        return hdf5
    if how == "garbled":
        raw = bytearray(hdf5.read_bytes())
        for i in range(2000, len(raw), 7):
            raw[i] ^= 0x5A
        hdf5.write_bytes(bytes(raw))
        return hdf5
    if how == "metadata":
        meta.write_text(meta.read_text()[:40])
        return meta
    hdf5.unlink()
    return hdf5


@pytest.mark.parametrize("how, what", [
    ("truncated", "cannot be read: the file is truncated or corrupted (OSError"),
    ("garbled", "cannot be read: the file is truncated or corrupted ("),
    ("metadata", "is not readable JSON: the file is truncated or corrupted (JSONDecodeError"),
    ("hdf5-missing", "is missing"),
])
def test_a_corrupted_dataset_is_one_line_naming_the_file(make_tiny_dataset, minari_root, tmp_path, capsys, how,
                                                         what):
    make_tiny_dataset()
    path = _corrupt(minari_root, how)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # minari's "Misconfigured dataset" warning must not show either
        code = main(["train", "--algo", "bc", "--dataset", "tiny/pendulum/mixed-v0", "--steps", "10", "--out",
                     str(out), "--no-progress", "--eval-episodes", "0", "--device", "cpu"])
    err = _one_line(capsys.readouterr().err)
    assert code == 1, err
    assert f"error: dataset 'tiny/pendulum/mixed-v0': {path} {what}" in err
    assert f"delete {path.parent.parent} and build the dataset again (bilevel-rl make-dataset)" in err
    assert "minari download tiny/pendulum/mixed-v0" in err and "not found" not in err
    assert not out.exists()


# ------------------------------------------------------------------------------ 4. ARQ and suggested fixes
def _arq_cfg(dataset, out, **hp):
    hparams = {"hidden_dim": 16, "batch_size": 32, "bm_steps": 5, "bm_hidden_dim": 16, "bm_blocks": 1,
               "n_candidates": 5, "k": 2, "sampler_steps": 2, "corrector_steps": 0, "ode_steps": 2,
               "ode_method": "euler", "trace": "hutchinson", "candidate_chunk": 64} | hp
    return TrainConfig(algo="arq", dataset=dataset, steps=10, seed=2, device="cpu", out=str(out), eval_every=0,
                       eval_episodes=0, checkpoint_every=10, log_every=5, progress=False, plot=False,
                       hparams=hparams)


def test_arq_announces_the_candidate_time_and_warns_when_few_are_valid(tiny_dataset, tmp_path, capsys):
    from rl_adapters.algorithms import make_config

    # threshold 100: no sample is valid, each state keeps its most likely one -> 1 / 5 = 20% valid
    train(_arq_cfg(tiny_dataset, tmp_path / "few", log_density_threshold=100.0))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"ARQ: generating 5 candidates for 19[0-9] states: ~\d+ s at this rate \(the first 64 "
                        r"states took \d+\.\d s\)", lines[0]), lines[0]
    m = re.fullmatch(r"ARQ: warning: only 20\.0% of the behaviour model's candidates are valid \(log-density >= "
                     r"100; under 50% the advantage baseline averages few actions\): its 5-step phase is too "
                     r"short; train it longer, e\.g\. --bm-steps (\d+) --steps (\d+)", lines[1])
    assert m, lines[1]
    make_config("arq", bm_steps=int(m[1])).check_steps(int(m[2]))  # the suggestion is accepted
    assert int(m[2]) - int(m[1]) == 5  # as many Q/policy updates as this run had
    train(_arq_cfg(tiny_dataset, tmp_path / "many", log_density_threshold=-1e9))
    assert "warning" not in capsys.readouterr().err


class _Accepted(Exception):
    """Raised instead of loading the data: the configuration passed every check."""


@pytest.mark.parametrize("argv", [
    ["--algo", "arq", "--n-candidates", "8"],  # refuses the default --k 9
    ["--algo", "arq", "--k", "40"],
    ["--algo", "arq", "--bm-steps", "500", "--steps", "300"],
    ["--algo", "bc", "--steps", "0"],
    ["--algo", "bc", "--log-every", "0"],
    ["--algo", "bc", "--eval-every", "-1"],
    ["--algo", "bc", "--checkpoint-every", "0"],
    ["--algo", "bc", "--seeds", "3-1"],
], ids=lambda a: " ".join(a[1:]))
def test_every_suggested_fix_passes_its_own_check(tiny_dataset, tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setattr("rl_adapters.training.loop.load_dataset", lambda *a, **k: (_ for _ in ()).throw(_Accepted()))
    base = ["train", "--dataset", tiny_dataset, "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(base + argv) == 2
    err = _one_line(capsys.readouterr().err)
    m = re.search(r"e\.g\. (--[a-z-]+) ([^\s;,)]+)", err)
    assert m, err
    flag, value = m[1], m[2]
    fixed = list(argv)
    if flag in fixed:
        fixed[fixed.index(flag) + 1] = value
    else:
        fixed += [flag, value]
    with pytest.raises(_Accepted):
        main(base + fixed)


# ------------------------------------------------------------------------------ 5. SOBA / F2SA warm-up
def _quadratic():
    from benchmarks.stochastic_problems import _full, make_quadratic

    inst = make_quadratic(n=6, d_in=4, d_out=2, seed=0)
    problem = inst.make_problem()
    fi, fo = _full(inst.data["inner"]), _full(inst.data["outer"])
    x = problem.outer.x.detach().clone()
    z = -torch.linalg.solve(fi["A"], fi["a"] + fi["C"].T @ x)
    v = torch.linalg.solve(fi["A"], fo["A"] @ z + fo["C"].T @ x + fo["a"])
    true = fo["B"] @ x + fo["C"] @ z + fo["b"] - fi["C"] @ v  # the implicit-function hypergradient
    return inst, problem, fi, fo, x, z, true


@pytest.mark.parametrize("start_at_solution", [True, False])
def test_soba_warm_up_gives_the_implicit_hypergradient_at_once(start_at_solution):
    inst, problem, _, _, _, z_star, true = _quadratic()
    full = torch.arange(inst.n_inner)
    solver = bilevel.SOBASolver(problem, torchopt.sgd(lr=1.5), torch.optim.SGD(problem.outer.parameters(), 0.1))
    [fresh] = solver.hypergradient(full)
    assert float((fresh - true).norm()) > 0.9 * float(true.norm())  # v = 0: only the direct term
    if start_at_solution:
        with torch.no_grad():
            problem.inner.z.copy_(z_star)
        info = solver.warm_up(full)
    else:
        info = solver.warm_up(full, inner_steps=400)
    assert info["v_residual"] < 1e-8
    x_before = problem.outer.x.detach().clone()
    [warm] = solver.hypergradient(full)
    torch.testing.assert_close(warm, true, rtol=1e-6, atol=1e-8)
    assert torch.equal(problem.outer.x, x_before)  # lambda untouched


def test_f2sa_warm_up_gives_the_penalised_value_gradient_at_once():
    inst, problem, fi, fo, x, z_star, true = _quadratic()
    mu = 100.0
    xx = x.clone().requires_grad_()

    def quad(m, z):
        return 0.5 * z @ m["A"] @ z + 0.5 * xx @ m["B"] @ xx + xx @ m["C"] @ z + m["a"] @ z + m["b"] @ xx

    z = -torch.linalg.solve(fi["A"], fi["a"] + fi["C"].T @ xx)
    y = -torch.linalg.solve(fo["A"] + mu * fi["A"], fo["a"] + fo["C"].T @ xx + mu * (fi["a"] + fi["C"].T @ xx))
    expected = torch.autograd.grad(quad(fo, y) + mu * (quad(fi, y) - quad(fi, z)), xx)[0]
    full = torch.arange(inst.n_inner)
    with torch.no_grad():
        problem.inner.z.copy_(z_star)
    solver = bilevel.F2SASolver(problem, torchopt.sgd(lr=0.5), torch.optim.SGD(problem.outer.parameters(), 0.1),
                                penalty=mu, penalty_growth=1.0)
    [fresh] = solver.hypergradient(full)
    assert float((fresh - expected).norm()) > 0.5 * float(expected.norm())
    solver.warm_up(full, steps=100)  # y then matches to 2e-6
    [warm] = solver.hypergradient(full)
    torch.testing.assert_close(warm, expected, rtol=1e-3, atol=1e-6)
    # O(1 / mu) from the implicit value (12% at mu = 100 on this instance), against 80% before the warm-up
    assert float((warm - true).norm()) < 0.2 * float((fresh - true).norm())
    assert solver.state_dict()["steps_taken"] == 0 and solver.penalty_at(solver.steps_taken) == mu


# ------------------------------------------------------------------------------ 6. nothing but the summary
def test_train_prints_only_its_summary_and_raises_no_warning(tiny_dataset, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["train", "--algo", "vaco", "--dataset", tiny_dataset, "--steps", "20", "--out",
                     str(tmp_path / "run"), "--no-progress", "--eval-episodes", "2", "--device", "cpu",
                     "--hidden-dim", "16", "--scorer-hidden-dim", "16", "--batch-size", "16"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert [str(w.message) for w in caught] == []
    [line] = out.splitlines()
    assert json.loads(line)["status"] == "finished"


def test_halfcheetah_evaluation_env_prints_no_mujoco_deprecation(capfd):
    pytest.importorskip("mujoco")
    from rl_adapters.evaluation import make_eval_env_fn

    make = make_eval_env_fn("HalfCheetah-v5")
    for _ in range(2):
        make().close()
    out, err = capfd.readouterr()
    assert "settotalmass" not in out + err


@pytest.mark.slow
def test_a_real_train_process_prints_only_the_summary(tiny_dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rl_adapters", "train", "--algo", "bc", "--dataset", tiny_dataset,
                           "--steps", "20", "--out", str(tmp_path / "run"), "--no-progress", "--eval-episodes", "2",
                           "--device", "cpu", "--hidden-dim", "16", "--batch-size", "16"],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    [line] = proc.stdout.splitlines()
    assert json.loads(line)["status"] == "finished"

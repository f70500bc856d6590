"""The committed results store (benchmarks/store.py), the report rendered from it, and filtered BC."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import grid_cells, grid_report, offline_rl, store
from benchmarks._report import REPORT

# ------------------------------------------------------------------------------------------ statistics


def test_score_is_the_mean_of_the_last_three_evaluations() -> None:
    curve = [[0, 10.0], [5000, 70.0], [10000, 20.0], [15000, 35.0], [20000, 50.0]]
    assert store.last3(curve) == pytest.approx((20.0 + 35.0 + 50.0) / 3)
    assert store.last3(curve[:2]) == pytest.approx(40.0)


def test_mean_std_uses_ddof_1_and_one_seed_has_no_spread() -> None:
    m, s, n = store.mean_std_n([1.0, 2.0, 6.0])
    assert (m, n) == (3.0, 3)
    assert s == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    assert store.fmt_score([1.0, 2.0, 6.0]) == "3.0 ± 2.6 (n=3)"
    assert store.fmt_score([42.04]) == "42.0 (n=1)"


def test_welch_t_against_a_hand_computation() -> None:
    a, b = [10.0, 12.0, 14.0], [1.0, 2.0, 6.0]
    # var(a) = 4, var(b) = 7 (ddof 1), n = 3 each: t = (12 - 3) / sqrt(4/3 + 7/3)
    assert store.welch_t(a, b) == pytest.approx(9 / math.sqrt(11 / 3))
    assert store.welch_t([1.0], b) is None


def test_downsample_keeps_the_ends_and_the_bound() -> None:
    pts = [[i, float(i * i)] for i in range(1000)]
    d = store.downsample(pts, 40)
    assert len(d) <= 40 and d[0] == pts[0] and d[-1] == pts[-1]
    assert store.downsample(pts[:5], 40) == pts[:5]


def test_an_oversized_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="downsample"):
        store.write(tmp_path / "x.json", {"curve": list(range(20_000))})
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------ stale cells


def test_a_record_with_other_hyper_parameters_is_stale() -> None:
    hp = store.expected_hparams("bc", ["top_fraction=0.1"])
    rec = {"hparams": hp, "policy_steps": 100, "value_steps": 0, "eval_every": 10, "eval_episodes": 1}
    run = {"policy_steps": 100, "value_steps": 0, "eval_every": 10, "eval_episodes": 1}
    assert store.stale_reason(rec, "bc", ["top_fraction=0.1"], run) is None
    assert "top_fraction 0.1 -> 0.25" in store.stale_reason(rec, "bc", ["top_fraction=0.25"], run)
    assert "policy_steps 100 != 200" in store.stale_reason(rec, "bc", ["top_fraction=0.1"], run | {"policy_steps": 200})


def test_vaco_k_step_runs_steps_over_k_updates_at_equal_policy_steps() -> None:
    args = argparse.Namespace(steps=50_000, vaco_value_steps=50_000, arq_bm_steps=0)
    assert grid_cells.policy_budget("vaco", args, ["solver=k_step", "k=5"]) == (60_000, 50_000)
    assert grid_cells.policy_budget("vaco", args, ["solver=one_step"]) == (100_000, 50_000)
    assert grid_cells.policy_budget("bc", args, ["top_fraction=0.1"]) == (50_000, 0)


def test_the_next_cells_follow_the_vaco_table_first() -> None:
    args = argparse.Namespace(steps=100, vaco_value_steps=100, arq_bm_steps=0)
    cells = grid_cells.make_cells([(a, d, s) for d in ("suite/hopper/medium-v0", "suite/hopper/medium-expert")
                                   for a in ("td3bc", "vaco-one_step", "bc") for s in (1, 0)], args)
    names = [c.name for c in offline_rl.ordered(cells, "equal")]
    assert names[:4] == ["bc__suite_hopper_medium-expert__s0", "vaco-one_step__suite_hopper_medium-expert__s0",
                         "bc__suite_hopper_medium-expert__s1", "vaco-one_step__suite_hopper_medium-expert__s1"]
    # then the rest of the preset, seed by seed, medium-expert before medium
    assert names[4:7] == ["td3bc__suite_hopper_medium-expert__s0", "bc__suite_hopper_medium-v0__s0",
                          "td3bc__suite_hopper_medium-v0__s0"]


# ------------------------------------------------------------------------------------------ the report


def _section(name: str) -> str:
    text = REPORT.read_text()
    begin, end = f"<!-- BEGIN {name} -->\n", f"\n<!-- END {name} -->"
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_equal_section_re_renders_byte_for_byte_from_the_committed_records(tmp_path: Path) -> None:
    """docs/benchmarks.md's equal-preset section is what the committed records render to: nothing in it
    depends on run folders, the date or the current revision."""
    # Only the records git knows of: a grid running in this checkout adds files the committed docs cannot show.
    import shutil
    import subprocess

    src = store.STORE / "equal"
    try:
        tracked = subprocess.run(["git", "ls-files", "--", str(src)], capture_output=True, text=True, check=True,
                                 cwd=store.ROOT).stdout.split()
        files = [store.ROOT / f for f in tracked if f.endswith(".json")]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every record is the committed set
        files = sorted(src.glob("*.json"))
    copy = tmp_path / "store"
    copy.mkdir()
    for f in files:
        shutil.copy(f, copy / Path(f).name)
    assert offline_rl.main(["--preset", "equal", "--report-only", "--out", str(tmp_path), "--store", str(copy)]) == 0
    rendered = (tmp_path / "report.md").read_text()
    assert rendered.rstrip() == _section("offline_rl_equal")
    assert (tmp_path / "headline.md").read_text().rstrip() == _section("offline_rl_equal_headline")


def test_a_narrowed_report_still_writes_the_whole_preset_section(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``--report`` with ``--algos bc`` (say, after running a few BC cells) writes the preset's whole section
    into docs, not a one-algorithm table in its place; the run's own report.md keeps the narrowed view."""
    import shutil

    copy = tmp_path / "store"
    copy.mkdir()
    for f in (store.STORE / "equal").glob("bc*__suite_hopper_*.json"):  # a few records render in seconds
        shutil.copy(f, copy / f.name)
    base = ["--preset", "equal", "--report-only", "--store", str(copy)]
    assert offline_rl.main([*base, "--out", str(tmp_path / "whole")]) == 0
    written: dict[str, str] = {}
    monkeypatch.setattr(offline_rl, "write_section", lambda name, text: written.__setitem__(name, text))
    monkeypatch.setattr(offline_rl, "REPORT", tmp_path / "docs" / "benchmarks.md")
    argv = [*base, "--out", str(tmp_path / "bc"), "--report", "--algos", "bc", "--datasets", "suite/hopper/medium-v0"]
    assert offline_rl.main(argv) == 0
    assert written["offline_rl_equal"] == (tmp_path / "whole" / "report.md").read_text()
    assert written["offline_rl_equal_headline"] == (tmp_path / "whole" / "headline.md").read_text()
    narrowed = (tmp_path / "bc" / "report.md").read_text()
    assert "| suite/hopper/medium-v0 | bc |" in narrowed and "td3bc" not in narrowed.split("| dataset", 1)[1]


def test_the_equal_section_shows_gpu_only_cells_only_where_stored(tmp_path: Path) -> None:
    """ARQ with the CPU settings is a cell of the equal preset ("not run yet" until it runs); ARQ with the paper's
    sampler (a GPU's cell) gets a row only once its record is in the store, and the count says so."""
    import shutil

    copy = tmp_path / "store"
    copy.mkdir()
    for f in (store.STORE / "equal").glob("*.json"):  # BC and ARQ's records: the rest would only slow the render
        if f.name.startswith(("bc__", "arq__")):
            shutil.copy(f, copy / f.name)
    out = tmp_path / "out"
    assert offline_rl.main(["--preset", "equal", "--report-only", "--out", str(out), "--store", str(copy)]) == 0
    text = (out / "report.md").read_text()
    assert "| suite/hopper/medium-expert | arq | (not run yet) |" in text and "arq-paper" not in text
    n_cells = 3 * 6 * 11  # seeds x sets x (BC, %BC-10, %BC-25, TD3+BC, IQL, ASPC, TD3+BC-rc, VACO x 3, ARQ)
    assert f"of {n_cells} cells finished." in text

    # a record of the paper-sampler variant, with the hyper-parameters the code would use for it now
    rec = json.loads((copy / "arq__suite_hopper_medium-v0__s0.json").read_text())
    rec |= {"algo": "arq-paper", "variant_sets": [], "score_last3": 61.0,
            "hparams": rec["hparams"] | store._round(store.expected_hparams("arq", grid_cells.arq_sets(
                argparse.Namespace(arq_bm_steps=50_000, arq_q_steps=None, steps=50_000), [])))}
    (copy / "arq-paper__suite_hopper_medium-v0__s0.json").write_text(json.dumps(rec))
    assert offline_rl.main(["--preset", "equal", "--report-only", "--out", str(out), "--store", str(copy)]) == 0
    text = (out / "report.md").read_text()
    assert "| suite/hopper/medium-v0 | arq-paper | 61.0 (n=1) |" in text
    assert "| suite/hopper/medium-expert | arq-paper |" not in text  # no "not run yet" rows for it
    assert f"of {n_cells} cells finished, plus 1 arq-paper cell(s) (run on a GPU)." in text
    assert "arq-paper" in (out / "headline.md").read_text().splitlines()[2]


def test_table_rows_from_records() -> None:
    def rec(algo: str, seed: int, curve: list[float]) -> dict:
        return {"algo": algo, "dataset": "d", "seed": seed, "policy_steps": 30, "wall_time_s": 1.0, "stats": {},
                "eval_curve": [[10 * i, v] for i, v in enumerate(curve)], "score_last3": store.last3(
                    [[10 * i, v] for i, v in enumerate(curve)]), "final_normalized_score": curve[-1]}

    recs = [rec("bc", 0, [0, 10, 20, 30]), rec("bc", 1, [0, 30, 40, 50]),
            rec("bc-top10", 0, [0, 60, 70, 80]), rec("bc-top10", 1, [0, 80, 90, 100])]
    t = grid_report.table(recs, ["bc", "bc-top10", "td3bc"], ["d"]).splitlines()
    # bc: seed scores 20 and 40 -> 30.0 ± 14.1; bc-top10: 70 and 90 -> 80.0 ± 14.1, Welch t = 50 / sqrt(200)
    assert t[2].startswith("| d | bc | 30.0 ± 14.1 (n=2) | 40.0 |  |")
    assert t[3].startswith(f"| d | bc-top10 | 80.0 ± 14.1 (n=2) | 90.0 | {50 / math.sqrt(200):.2f} |")
    assert t[4] == "| d | td3bc | (not run yet) | | | | | |"


def test_an_arq_row_shows_its_candidate_cost_and_the_cpu_settings_bias() -> None:
    cand = dict(grid_report.ARQ_CPU_SETTINGS, seconds=1500.0, valid_fraction=0.99)
    rec = {"algo": "arq", "dataset": "d", "seed": 0, "policy_steps": 30, "wall_time_s": 1.0,
           "stats": {"candidates": cand}, "eval_curve": [[10, 40.0]], "score_last3": 40.0,
           "final_normalized_score": 40.0}
    lines = grid_report.table([rec], ["arq"], ["d"]).splitlines()
    assert lines[2].endswith("| candidates 25 min, 99.0% kept; CPU settings † |")
    assert lines[-1] == grid_report.ARQ_CPU_NOTE and "+2.5 nats" in lines[-1]
    paper = dict(cand, sampler_steps=500, corrector_steps=1, ode_steps=100, ode_method="rk4", trace="exact")
    lines = grid_report.table([rec | {"stats": {"candidates": paper}}], ["arq"], ["d"]).splitlines()
    assert lines[2].endswith("| candidates 25 min, 99.0% kept |") and len(lines) == 3


# ------------------------------------------------------------------------------------------ filtered BC


def test_top_trajectories_keeps_the_best_episodes_and_the_normalisation(tiny_dataset: str) -> None:
    from rl_adapters.data import load_dataset

    data = load_dataset(tiny_dataset)
    sub = data.top_trajectories(0.5)
    best = torch.sort(data.episode_returns, descending=True).values[: math.ceil(0.5 * data.num_episodes)]
    kept = torch.unique(sub.episode_ids)
    assert torch.equal(torch.sort(data.episode_returns[kept], descending=True).values, best)
    assert len(sub) == int(sum((data.episode_ids == e).sum() for e in kept))
    assert torch.equal(sub.obs_mean, data.obs_mean) and torch.equal(sub.obs_std, data.obs_std)
    b = sub.sample(64, sub.make_generator(0))
    assert float(b.returns.min()) >= float(best[-1]) - 1e-4
    # a normalised batch from the subset equals the same rows normalised with the whole data's statistics
    assert torch.equal(b.obs, data.normalize(sub.observations[b.indices]))
    assert data.top_trajectories(1.0) is data
    with pytest.raises(ValueError):
        data.top_trajectories(0.0)


def test_filtered_bc_trains_only_on_the_best_trajectories(tiny_dataset: str, tmp_path: Path) -> None:
    """%BC-50 on a dataset of good (return 40) and bad (a few steps) episodes: every batch it sees is from
    the good episodes, so its loss is BC's loss on the good episodes alone."""
    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset

    data = load_dataset(tiny_dataset)
    algo = make_algorithm("bc", data.obs_dim, data.act_dim, data.stats, top_fraction=0.5, hidden_dim=16)
    train = algo.training_data(data)
    good = data.episode_returns >= data.episode_returns.max() - 1e-6
    assert good.sum() == math.ceil(0.5 * data.num_episodes)
    assert bool(good[train.episode_ids].all()) and len(train) == int(good[data.episode_ids].sum())
    assert make_algorithm("bc", data.obs_dim, data.act_dim, data.stats).training_data(data) is data


def test_lift_is_one_for_equal_weights_and_follows_the_weights(tiny_dataset: str) -> None:
    """A zero-initialised scorer gives every transition the same weight: lift 1.0 exactly; a scorer whose
    output favours the top trajectories' transitions raises it to their share's inverse at most."""
    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset
    from rl_adapters.vaco_analysis import analyze_weights

    data = load_dataset(tiny_dataset)
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, hidden_dim=16, scorer_hidden_dim=8)
    res = analyze_weights(algo=algo, data=data, plot=False)
    assert res["top10_weight_lift"] == pytest.approx(1.0, abs=1e-6) and res["ess_fraction"] == pytest.approx(1.0)
    top = data.top_trajectories(0.1)
    share = len(top) / len(data)
    assert res["top10_transition_share"] == pytest.approx(share)
    w = np.full(len(data), 1.0)
    w[np.isin(data.episode_ids.numpy(), top.episode_ids.unique().numpy())] = 3.0
    expected = 3.0 / w.mean()
    # the same quantity computed by hand for a weight vector that triples the top trajectories
    assert expected == pytest.approx(3.0 / (3.0 * share + (1 - share)))
    assert 1.0 < expected < 1 / share


def test_record_from_a_real_run(tiny_dataset: str, tmp_path: Path, forked_cells: list[list[str]]) -> None:
    """A grid cell's record: scores from the metrics, curves in policy steps, under the size bound (the cell
    trains in a forked process, conftest.py)."""
    argv = ["--algos", "bc-top25", "--datasets", tiny_dataset, "--seeds", "0", "--steps", "40", "--eval-every", "10",
            "--eval-episodes", "1", "--checkpoint-every", "20", "--log-every", "5", "--set", "hidden_dim=16",
            "--set", "batch_size=16", "--workers", "1", "--out", str(tmp_path / "g")]
    assert offline_rl.main(argv) == 0
    path = tmp_path / "g" / "bc-top25__tiny_pendulum_mixed-v0__s0.json"
    rec = json.loads(path.read_text())
    rows = [json.loads(x) for x in (tmp_path / "g" / "runs" / path.stem / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval_normalized_score"]) for r in rows if "eval_normalized_score" in r]
    assert [s for s, _ in rec["eval_curve"]] == [s for s, _ in evals] == [10, 20, 30, 40]
    assert rec["score_last3"] == pytest.approx(np.mean([v for _, v in evals[-3:]]), rel=1e-4)
    assert rec["hparams"]["top_fraction"] == 0.25 and rec["policy_steps"] == 40
    assert rec["git_revision"] and rec["host"] and path.stat().st_size < store.MAX_BYTES
    assert offline_rl.main([*argv, "--plan"]) == 0


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_the_trainer_samples_filtered_bc_from_the_best_trajectories(tiny_dataset: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    seeds: list[int] | None) -> None:
    """Through ``train`` (one seed and a stack of seeds): every batch %BC-50 updates on holds only rows of the
    best half of the episodes, and plain BC sees the others too."""
    from rl_adapters.algorithms.bc import BC
    from rl_adapters.training import TrainConfig, train

    seen: list[float] = []
    real = BC.update

    def spy(self: BC, batch: object) -> dict:
        seen.append(float(batch.returns.min()))  # type: ignore[attr-defined]
        return real(self, batch)

    monkeypatch.setattr(BC, "update", spy)

    def run(top: float, out: str) -> None:
        train(TrainConfig(algo="bc", dataset=tiny_dataset, steps=30, seed=0, seeds=seeds, device="cpu",
                          out=str(tmp_path / out), eval_every=0, eval_episodes=0, checkpoint_every=30, log_every=10,
                          progress=False, plot=False, hparams={"hidden_dim": 16, "batch_size": 32,
                                                               "top_fraction": top}))

    from rl_adapters.data import load_dataset

    best = float(load_dataset(tiny_dataset).episode_returns.max())
    run(0.5, "top")
    assert len(seen) == 30 and min(seen) >= best - 1e-4
    seen.clear()
    run(1.0, "all")
    assert min(seen) < best - 1.0


def test_a_cell_another_live_process_trains_is_left_to_it(tmp_path: Path) -> None:
    """Two grids on one machine (two --next runs) never train one cell together; a dead holder's claim lapses."""
    import os
    import subprocess
    import sys

    lock = tmp_path / "cell.lock"
    assert grid_cells._claim(lock) is None and lock.read_text() == str(os.getpid())
    assert grid_cells._claim(lock) == os.getpid()  # held by a live process (this one)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    lock.write_text(dead.stdout.strip())
    assert grid_cells._claim(lock) is None  # the holder exited: taken over


def test_plan_says_running_and_next_skips_a_cell_another_live_process_trains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Two --next runs on one machine share the cores: the second starts the cells after the ones the first
    is training, and --plan names those "running" (not "todo")."""
    import os

    sel = ["--preset", "equal", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "empty"),
           "--datasets", "suite/hopper/medium-v0", "--algos", "bc,td3bc", "--seeds", "0"]
    (tmp_path / "empty").mkdir()
    first = "bc__suite_hopper_medium-v0__s0"
    lock = grid_cells.lock_path(tmp_path / "out", first)
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getpid()))  # a live holder: this process
    assert offline_rl.main([*sel, "--plan"]) == 0
    out = capsys.readouterr().out
    assert f"running {first}  [pid {os.getpid()}]" in out and "todo    td3bc__suite_hopper_medium-v0__s0" in out
    assert "1 running, 1 todo" in out

    started: list[str] = []
    monkeypatch.setattr(offline_rl.grid, "run_grid", lambda cells, *a: started.extend(c.name for c in cells) or [])
    monkeypatch.setattr(offline_rl, "render", lambda *a: ("", ""))
    assert offline_rl.main([*sel, "--next", "1"]) == 0
    assert started == ["td3bc__suite_hopper_medium-v0__s0"]

    lock.write_text("0")  # no live holder (an unreadable or dead claim): the cell is todo again
    started.clear()
    assert offline_rl.main([*sel, "--next", "1"]) == 0
    assert started == [first]

    # a live group of seeds 0 and 1 (--seeds-per-process) holds seed 0 as well; seed 2's cell is free
    lock.unlink()
    grid_cells.lock_path(tmp_path / "out", "bc__suite_hopper_medium-v0__s0_1").write_text(str(os.getpid()))
    out = argparse.Namespace(out=str(tmp_path / "out"))
    holders = [grid_cells.running_pid(grid_cells.Cell("bc", "suite/hopper/medium-v0", s, "bc"), out) for s in (0, 1, 2)]
    assert holders == [os.getpid(), os.getpid(), None]


def test_an_arq_record_carries_its_candidate_cost(tiny_dataset: str, tmp_path: Path) -> None:
    """The record of an ARQ cell keeps what generating its candidates cost and how many were kept, read from
    the file the run writes (``arq_candidates.json``)."""
    from rl_adapters.data import load_dataset
    from rl_adapters.training import TrainConfig, train

    hp = {"hidden_dim": 16, "batch_size": 32, "bm_steps": 10, "q_steps": 5, "bm_hidden_dim": 16, "bm_blocks": 1,
          "n_candidates": 5, "k": 2, "sampler_steps": 4, "corrector_steps": 0, "ode_steps": 2,
          "ode_method": "heun", "trace": "hutchinson"}
    run = tmp_path / "arq"
    train(TrainConfig(algo="arq", dataset=tiny_dataset, steps=20, seed=0, device="cpu", out=str(run), eval_every=5,
                      eval_episodes=1, checkpoint_every=10, log_every=5, progress=False, plot=False, hparams=hp))
    summary = json.loads((run / "summary.json").read_text())
    rec = store.record_from_run(run, algo="arq", base_algo="arq", variant_sets=[], preset=None, value_steps=15,
                                policy_steps=5, per_update=1, eval_every=5, eval_episodes=1, host="test",
                                summary=summary)
    cand = rec["stats"]["candidates"]
    data = load_dataset(tiny_dataset)
    assert cand["n_candidates"] == 5 and cand["sampler_steps"] == 4 and cand["trace"] == "hutchinson"
    assert cand["seconds"] > 0 and 0 < cand["valid_fraction"] <= 1
    # every observation and each episode's last next-observation
    assert cand["states"] == data.observations.shape[0] + len(set(data.episode_ids.tolist()))
    assert "digest" not in cand
    # the revisions its invocations started at: the last names the record, the others are kept beside it
    rec = store.record_from_run(run, algo="arq", base_algo="arq", variant_sets=[], preset=None, value_steps=15,
                                policy_steps=5, per_update=1, eval_every=5, eval_episodes=1, host="test",
                                summary=summary, revisions=["aaa1111", "aaa1111", "bbb2222", "ccc3333"])
    assert rec["git_revision"] == "ccc3333" and rec["earlier_git_revisions"] == ["aaa1111", "bbb2222"]


def test_a_cell_records_the_revision_it_started_at_and_those_a_resume_continued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-hour cell outlives commits: its record names the revision each invocation started at, not HEAD
    when it ends. A fresh start forgets an abandoned run's revisions; a resume adds to them."""
    head = iter(["rev1", "rev2", "rev3"])
    monkeypatch.setattr(store, "git_revision", lambda: next(head))
    path = tmp_path / "cell.revisions"
    assert grid_cells._note_revision(path, resumed=False) == ["rev1"]
    assert grid_cells._note_revision(path, resumed=True) == ["rev1", "rev2"]
    assert grid_cells._note_revision(path, resumed=False) == ["rev3"]
    # a run found trained to the end (only its record missing) adds no revision: nothing ran now
    assert grid_cells._note_revision(path, resumed=True, started=False) == ["rev3"]
    assert json.loads(path.read_text()) == ["rev3"]

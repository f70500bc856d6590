"""benchmarks.grid: the process pool and Ray run the same cells to the same results; runner flag errors;
an interrupted Ray grid, started again, runs only the cells that had not finished.

The default run trains cells in processes forked from the test process (conftest.py's ``forked_cells``) and
runs the Ray driver on an in-process stand-in (:class:`FakeRay`); the slow run (``-m slow``) uses a real local
Ray and real ``python -m rl_adapters`` processes."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import grid, offline_rl
from rl_adapters.training import TIMING_FIELDS

REPO = Path(__file__).resolve().parent.parent
# Fields of a cell's result that measure time (or where it ran), not training.
CELL_TIMING = {"updates_per_s", "wall_time_s", "skipped"}


def _grid_argv(dataset: str, out: Path, algos: str = "bc,td3bc", seeds: str = "0", steps: int = 40) -> list[str]:
    return ["--algos", algos, "--datasets", dataset, "--seeds", seeds, "--steps", str(steps),
            "--eval-every", "20", "--eval-episodes", "1", "--checkpoint-every", "20", "--log-every", "10",
            "--set", "hidden_dim=16", "--set", "batch_size=16", "--workers", "2", "--out", str(out)]


def _cell_results(out: Path) -> dict[str, Any]:
    """Every cell's result and metrics.jsonl, without the timing fields."""
    res = {}
    for p in sorted(out.glob("*__s*.json")):
        d = {k: v for k, v in json.loads(p.read_text()).items() if k not in CELL_TIMING}
        rows = [json.loads(x) for x in (out / "runs" / p.stem / "metrics.jsonl").read_text().splitlines() if x]
        d["metrics"] = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
        res[p.stem] = d
    return res


@pytest.mark.parametrize("module,argv", [
    ("offline_rl", ["--ray"]),
    ("offline_rl", ["--ray-address", "auto"]),
    ("vaco_bench", ["grid", "--ray"]),
    ("aspc_bench", ["--ray"]),
])
def test_ray_flag_without_ray_is_one_line_exit_2(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray" in err and '.[sweep]' in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,flag", [
    (["--gpus-per-cell", "0.5"], "--gpus-per-cell"),  # without --ray
    (["--ray", "--gpus-per-cell", "2"], "--gpus-per-cell"),
    (["--ray", "--ray-cpus", "0"], "--ray-cpus"),
    (["--progress-every", "0"], "--progress-every"),
])
def test_runner_flag_errors(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", object())  # the check must fail on the value, installed or not
    with pytest.raises(SystemExit) as e:
        offline_rl.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err


class FakeRay(types.ModuleType):
    """The part of Ray's API that benchmarks/grid.py uses, in this process: a task runs when it is submitted
    (its arguments pickled and unpickled on the way, as Ray ships them to a worker) and ``get`` returns its
    result. The driver's code runs as on Ray; the default run's stand-in for the slow real-Ray test."""

    class exceptions:  # ray.exceptions
        class RayError(Exception):
            pass

    def __init__(self) -> None:
        super().__init__("ray")
        self.init_kwargs: dict[str, Any] = {}
        self.task_options: list[dict[str, Any]] = []
        self.results: dict[object, Any] = {}
        self.shut_down = False

    def init(self, **kwargs: Any) -> types.SimpleNamespace:
        self.init_kwargs = kwargs
        return types.SimpleNamespace(dashboard_url=None)

    def remote(self, **options: Any) -> Callable[[Callable[..., Any]], types.SimpleNamespace]:
        def task(fn: Callable[..., Any]) -> types.SimpleNamespace:
            def submit(*args: Any) -> object:
                self.task_options.append(options)
                ref = object()
                self.results[ref] = fn(*pickle.loads(pickle.dumps(args)))
                return ref

            return types.SimpleNamespace(remote=submit)

        return task

    def get(self, ref: object) -> Any:
        return self.results.pop(ref)

    def wait(self, refs: list[object], num_returns: int = 1, timeout: float | None = None):
        return refs[:num_returns], refs[num_returns:]

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(self.init_kwargs["num_cpus"])}

    def cancel(self, ref: object, force: bool = False) -> None:
        self.results.pop(ref, None)

    def shutdown(self) -> None:
        self.shut_down = True


def _same_cells(pool_root: Path, ray_root: Path) -> None:
    pool, ray = _cell_results(pool_root), _cell_results(ray_root)
    assert sorted(pool) == ["bc__tiny_pendulum_mixed-v0__s0", "td3bc__tiny_pendulum_mixed-v0__s0"]
    assert all(r["status"] == "finished" and r["final_normalized_score"] is not None for r in pool.values())
    assert ray == pool

    # Both paths leave the same layout: results, runs, logs, table (Ray adds its dotfile STORAGE_ID).
    def layout(root: Path) -> set[tuple[str, ...]]:
        return {p.relative_to(root).parts[:2] for p in root.rglob("*") if not p.name.startswith(".")}

    assert layout(pool_root) == layout(ray_root)


def test_pool_and_the_ray_driver_give_the_same_cells(tiny_dataset: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                     forked_cells: list[list[str]]) -> None:
    """The Ray path's driver (probe task, capacity, task options, refill, results) on :class:`FakeRay`; cells
    train in forked processes (conftest.py). The slow test below runs the same grid on a real local Ray."""
    assert offline_rl.main(_grid_argv(tiny_dataset, tmp_path / "pool")) == 0
    pool_out = capsys.readouterr().out
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert offline_rl.main([*_grid_argv(tiny_dataset, tmp_path / "ray"), "--ray", "--ray-cpus", "2"]) == 0
    ray_out = capsys.readouterr().out
    assert f"Ray workers import benchmarks and rl_adapters from {REPO}" in ray_out, ray_out
    assert "2 to run on Ray" in ray_out and "2 to run" in pool_out
    assert "Ray: 2 CPUs, 1 per cell: up to 2 cells at once" in ray_out, ray_out
    assert fake.shut_down and fake.results == {}
    # A worker gets this checkout first on its path, one thread, the driver's datasets as an absolute path.
    env = fake.init_kwargs["runtime_env"]["env_vars"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO) and env["OMP_NUM_THREADS"] == "1"
    assert env["MINARI_DATASETS_PATH"] == str(Path(os.environ["MINARI_DATASETS_PATH"]).resolve())
    # the probe takes no CPU; each cell asks for its thread and is retried after a lost node
    assert fake.task_options == [{"num_cpus": 0}] + [
        {"num_cpus": 1, "num_gpus": 0, "max_retries": grid.RAY_MAX_RETRIES}] * 2
    assert len(forked_cells) == 4
    _same_cells(tmp_path / "pool", tmp_path / "ray")


@pytest.mark.slow
def test_pool_and_ray_give_the_same_cells(tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         forked_cells: list[list[str]]) -> None:
    """On a real local Ray (Ray workers' cells are real ``python -m rl_adapters`` processes, the pool's are
    forked, conftest.py): the same results also say that a forked cell trains exactly like a fresh process."""
    pytest.importorskip("ray", reason='Ray is the optional "sweep" extra: pip install -e ".[sweep]"')
    assert offline_rl.main(_grid_argv(tiny_dataset, tmp_path / "pool")) == 0
    assert len(forked_cells) == 2
    pool_out = capsys.readouterr().out
    assert offline_rl.main([*_grid_argv(tiny_dataset, tmp_path / "ray"), "--ray", "--ray-cpus", "2"]) == 0
    ray_out = capsys.readouterr().out
    # The Ray workers (and their cells' training subprocesses) run this checkout, not another install.
    assert f"Ray workers import benchmarks and rl_adapters from {REPO}" in ray_out, ray_out
    assert "2 to run on Ray" in ray_out and "2 to run" in pool_out
    _same_cells(tmp_path / "pool", tmp_path / "ray")


def _trainers(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (the grid's unique --out)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "rl_adapters" in cmd:
                pids.append(int(d.name))
    return pids


STEPS = 4000  # ~10 s per cell: the kill lands well inside the second cell


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("path", ["ray", "pool"])
def test_killed_grid_finishes_only_the_missing_cells(path: str, tiny_dataset: str, tmp_path: Path) -> None:
    """SIGKILL the runner while its second cell trains (after that cell's first checkpoint), start the same
    command again: the first cell is reused untouched, the second resumes from its checkpoint, the third runs;
    no training process outlives the killed runner."""
    ray = ["--ray", "--ray-cpus", "1"] if path == "ray" else []
    if ray:
        pytest.importorskip("ray", reason='Ray is the optional "sweep" extra: pip install -e ".[sweep]"')
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "benchmarks.offline_rl",
           *_grid_argv(tiny_dataset, out, algos="bc", seeds="0,1,2", steps=STEPS), *ray,
           "--workers", "1", "--eval-every", "0", "--checkpoint-every", "200", "--log-every", "100"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    first = out / "bc__tiny_pendulum_mixed-v0__s0.json"
    second = out / "runs" / "bc__tiny_pendulum_mixed-v0__s1" / "checkpoint.pt"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (first.exists() and second.exists()):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "the grid did not reach its second cell's checkpoint"
        time.sleep(0.1)
    assert _trainers(str(out)), "the second cell is not training at the kill: the test would prove nothing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_mtime = first.stat().st_mtime_ns
    assert not (out / "bc__tiny_pendulum_mixed-v0__s1.json").exists()
    deadline = time.monotonic() + 30
    while _trainers(str(out)) and time.monotonic() < deadline:  # the kill reaches the trainer (through Ray)
        time.sleep(0.2)
    # A surviving trainer would still be running now or would have finished its run (summary.json).
    assert _trainers(str(out)) == [], "a training process outlived the killed runner"
    assert not (second.parent / "summary.json").exists(), "the second cell kept training after the kill"
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 cells: 1 finished earlier, 2 to run" in again.stdout, again.stdout
    assert "bc__tiny_pendulum_mixed-v0__s1: resuming from its checkpoint" in again.stdout, again.stdout
    assert first.stat().st_mtime_ns == first_mtime
    assert sorted(p.name for p in out.glob("*__s*.json")) == [f"bc__tiny_pendulum_mixed-v0__s{s}.json" for s in range(3)]
    assert all(json.loads(p.read_text())["steps"] == STEPS for p in out.glob("*__s*.json"))


def test_trained_cell_without_result_is_not_trained_again(tiny_dataset: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          forked_cells: list[list[str]]) -> None:
    """A runner killed between a cell's last update and its result file: the next run writes the result from
    the finished run (``--resume`` of a finished run is refused) instead of failing the cell."""
    argv = _grid_argv(tiny_dataset, tmp_path / "g", algos="bc")
    assert offline_rl.main(argv) == 0
    result = tmp_path / "g" / "bc__tiny_pendulum_mixed-v0__s0.json"
    before = json.loads(result.read_text())
    log = tmp_path / "g" / "logs" / "bc__tiny_pendulum_mixed-v0__s0.log"
    log_size = log.stat().st_size
    result.unlink()
    capsys.readouterr()
    assert offline_rl.main(argv) == 0
    assert "bc__tiny_pendulum_mixed-v0__s0: trained by an earlier invocation" in capsys.readouterr().out
    assert json.loads(result.read_text()) == before
    assert log.stat().st_size == log_size  # no training process ran


def test_seeds_per_process_writes_each_seeds_result(tiny_dataset: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    forked_cells: list[list[str]]) -> None:
    """--seeds-per-process: the seeds of a BC / TD3+BC cell train in one process and keep their own results;
    seed k's run starts from seed k's weights, so its loss curve matches the separate cell's to float rounding."""
    sep, grouped = tmp_path / "separate", tmp_path / "grouped"
    assert offline_rl.main(_grid_argv(tiny_dataset, sep, algos="bc", seeds="0,1", steps=20)) == 0
    argv = [*_grid_argv(tiny_dataset, grouped, algos="bc,td3bc", seeds="0,1", steps=20), "--seeds-per-process"]
    assert offline_rl.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cells: 0 finished earlier, 2 to run" in out  # two groups of two seeds
    for algo in ("bc", "td3bc"):
        for s in (0, 1):
            r = json.loads((grouped / f"{algo}__tiny_pendulum_mixed-v0__s{s}.json").read_text())
            assert r["seed"] == s and r["seeds_in_process"] == [0, 1] and r["status"] == "finished"
            assert (grouped / "runs" / f"{algo}__tiny_pendulum_mixed-v0__s0_1" / f"seed{s}" / "summary.json").exists()
    for s in (0, 1):
        losses = lambda root, run: [r["actor_loss"] for r in map(json.loads, (root / "runs" / run / "metrics.jsonl")
                                                                 .read_text().splitlines()) if "actor_loss" in r]
        a = losses(sep, f"bc__tiny_pendulum_mixed-v0__s{s}")
        b = losses(grouped, f"bc__tiny_pendulum_mixed-v0__s0_1/seed{s}")
        assert a == pytest.approx(b, rel=1e-3)
    # a second invocation finds every seed's result and trains nothing
    assert offline_rl.main(argv) == 0
    assert "4 cells: 4 finished earlier, 0 to run" in capsys.readouterr().out


def test_the_eta_does_not_count_a_value_phase_restored_from_the_cache(tmp_path: Path, capsys) -> None:
    """A cell that took its first 40 of 100 updates from a value cache shows them as done, but the rate the ETA
    divides by counts only the updates trained: 10 + 10 here, not 60."""
    from benchmarks.grid_cells import Cell

    cells = [Cell("vaco-k_step", "d", 0, "vaco", steps=100), Cell("bc", "d", 0, "bc", steps=100)]
    runs = tmp_path / "runs"
    for c in cells:
        (runs / c.name).mkdir(parents=True)
        (runs / c.name / "metrics.jsonl").write_text("")
    progress = grid.Progress("t", cells, tmp_path)
    progress.t0 -= 10.0  # ten seconds in
    (runs / cells[0].name / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (40, 50)))
    (runs / cells[0].name / "value_phase.json").write_text(json.dumps({"from": "cache", "steps": 40}))
    (runs / cells[1].name / "metrics.jsonl").write_text(json.dumps({"step": 10}) + "\n")
    assert progress.updates(cells) == 60 and progress.trained(cells) == 20
    line = progress.line(cells)
    # The ETA weighs updates by COST_MS (K-step VACO 29 ms, BC 3.6 ms): 10 x 29 + 10 x 3.6 = 326 ms of work
    # trained in 10 s, 50 x 29 + 90 x 3.6 = 1774 to go: ~54 s (counting the cached 40 as trained: ~12 s)
    m = re.search(r"30% of 200 updates, elapsed 0m1\ds, ETA ~(\d+)m(\d+)s$", line)
    assert m and 53 <= 60 * int(m[1]) + int(m[2]) <= 55, line
    progress.cell_done(cells[0], {"skipped": True})
    assert progress.trained(cells[1:]) == 20  # the finished cell's trained updates still count, its cached ones not


def test_the_eta_of_an_arq_cell_weighs_each_phase_by_its_cost(tmp_path: Path) -> None:
    """Mid-way through ARQ's Q-only phase (83 ms an update), the 50k policy updates left (9.6 ms) are ~8 min,
    not another 50k Q-only updates' ~70: the ETA divides the work left by the work rate."""
    from benchmarks.grid_cells import ARQ_PHASE_MS, make_cells

    args = argparse.Namespace(steps=50_000, arq_bm_steps=50_000, arq_q_steps=None, set=[], vaco_value_steps=0)
    (cell,) = make_cells([("arq", "d", 0)], args)
    assert cell.steps == 150_000
    m = ARQ_PHASE_MS
    assert cell.work(50_000) == pytest.approx(50_000 * m["bm"])
    assert cell.work(75_000) == pytest.approx(50_000 * m["bm"] + m["candidates"] + 24_999 * m["q"])
    assert cell.work(150_000) - cell.work(100_000) == pytest.approx(50_000 * m["policy"])

    run = tmp_path / "runs" / cell.name
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 75_000}) + "\n")
    (run / "checkpoint.pt").write_bytes(b"")  # resumed: its 75,000 updates are kept
    progress = grid.Progress("t", [cell], tmp_path)
    progress.t0 -= 100.0
    (run / "metrics.jsonl").write_text(json.dumps({"step": 76_000}) + "\n")  # 1,000 Q-only updates in 100 s
    eta = re.search(r"ETA ~(\d+)m(\d+)s$", progress.line([cell]))
    # the rate is 1,000 x 83 ms of work in 100 s; 24,000 x 83 ms + 50,000 x 9.6 ms are left: ~50 min (counting
    # updates alike: 74,000 at 10/s, ~2 h)
    want = (24_000 * m["q"] + 50_000 * m["policy"]) / (1_000 * m["q"] / 100.0)
    assert eta and abs(60 * int(eta[1]) + int(eta[2]) - want) < 5, (eta, want)


def test_the_eta_ignores_what_a_folder_that_restarts_logged_before(tmp_path: Path) -> None:
    """A run folder with metrics but no checkpoint (killed before its first one) is trained again from update
    0: its old 60 updates are neither progress at the start nor a debt that hides the ETA."""
    from benchmarks.grid_cells import Cell

    cell = Cell("bc", "d", 0, "bc", steps=100)
    run = tmp_path / "runs" / cell.name
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 60}) + "\n")
    progress = grid.Progress("t", [cell], tmp_path)
    assert progress.start_updates == 0
    progress.t0 -= 10.0
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10}) + "\n")  # the restarted run, 10 s in
    m = re.search(r"10% of 100 updates, elapsed 0m1\ds, ETA ~(\d+)m(\d+)s$", progress.line([cell]))
    assert m and 89 <= 60 * int(m[1]) + int(m[2]) <= 91, progress.line([cell])  # 90 updates at 1/s


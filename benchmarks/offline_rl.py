"""Grid runner for offline RL: algorithms x datasets x seeds, one worker process per cell (pool or Ray).

Each cell is ``python -m rl_adapters train`` in its own process with one torch thread, so N workers
use N cores (and share the GPU with ``--device cuda``).  A finished cell leaves
``<out>/<cell>.json`` and is skipped on the next invocation; an interrupted cell with a checkpoint
is resumed (``--resume``), so re-running the same command completes an interrupted grid.
The aggregate (mean +- std over seeds of the final normalised score, 10 evaluation episodes per
seed, updates/s, wall time) goes to ``<out>/table.md`` and, with ``--report``, to the
"Offline RL baselines" section of docs/benchmarks.md.

Presets (``--preset``; explicit flags override them):

* ``quick``: every algorithm family on hopper medium-replay and medium-expert, VACO with all three
  solvers, 1 seed, 3k updates; about 12 minutes on 2 CPU cores. Checks the whole pipeline and gives a
  first ranking, not paper-grade numbers.
* ``mid``: the full preset's eight algorithm variants on hopper medium-expert and halfcheetah medium and
  medium-expert (the sets of this suite where the algorithms separate; hopper medium-replay and halfcheetah
  medium-replay are dominated by the learner's early episodes, see the baselines section), 3 seeds, 20k
  updates: 72 cells, about 7 core-hours at one thread per cell. Scores are not converged at 20k updates;
  rankings between variants are what it is for.
* ``full``: the comparison users come for: BC, TD3+BC, IQL, VACO (one-step / K-step / implicit), ASPC
  and its fixed-alpha twin on the hopper and halfcheetah medium, medium-replay and medium-expert sets,
  3 seeds, 100k updates: 144 cells, about 50 core-hours at one thread per cell (VACO K-step and implicit
  are two thirds of it), i.e. ~3.5 h on a 16-core host. Small MLPs time-slice badly when many processes
  share one GPU, so run it with CPU workers (``--device cpu --workers 16``); it resumes where it stopped,
  so it can be spread over several runs.

* ``equal``: the comparison at **equal policy budgets** (RL fidelity issue): BC, TD3+BC, IQL, ASPC, TD3+BC-rc
  and VACO x {one-step, K-step, implicit} on hopper and halfcheetah medium-expert, medium-replay and
  medium, 3 seeds, 50k *policy* updates each. VACO's IQL value phase (``--vaco-value-steps``, default
  the same 50k, the paper's 1:1 ratio) comes on top of its 50k bi-level updates and is said so in the
  report; its learning curves are plotted against policy updates. 144 cells, about 42 core-hours at one
  thread per cell (VACO K-step and implicit are 60% of it).

VACO's solver is an axis of its own: ``--solvers one_step,k_step,implicit`` expands an algorithm named
``vaco`` into one cell per solver. Each grid writes its own report section (``--section``) with a table
and a learning-curve plot (mean evaluation score over seeds against updates, one panel per dataset).

Baselines as measured for docs/benchmarks.md (18 cells, 16 cores)::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.offline_rl --device cpu --workers 18 --report

Quick preset on a small CPU box::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.offline_rl --preset quick --workers 2 --report

The cells run through ``benchmarks/grid.py`` (the runner) and ``benchmarks/grid_cells.py`` (one cell, its
variants and budget): a local process pool by default, Ray with ``--ray`` (this
machine's cores) or ``--ray-address ADDR`` (a cluster sharing a filesystem), with the same cells, results
layout and report; docs/rl.md "Benchmark grids on one machine or a Ray cluster" has the cluster steps::

    python -m benchmarks.offline_rl --preset full --ray-address auto --device cpu --out /shared/results/offline_rl_full
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks import grid, grid_report, store
from benchmarks._report import REPORT, note, write_section
from benchmarks.grid_cells import (
    COST_MS,
    VARIANTS,
    Cell,
    arq_phases,
    cell_status,
    group_seeds,
    make_cells,
    parse_seeds,
    result_dir,
    retire_stale,
    running_pid,
)

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATASETS = "suite/hopper/medium-v0,suite/halfcheetah/medium-replay-v0"

PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": "suite/hopper/medium-replay-v0,suite/hopper/medium-expert",
        "seeds": "0",
        "steps": 3_000,
        "eval_every": 1_000,
        "eval_episodes": 5,
        "checkpoint_every": 1_000,
        "section": "offline_rl_quick",
    },
    "mid": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": "suite/hopper/medium-expert,suite/halfcheetah/medium-v0,suite/halfcheetah/medium-expert",
        "seeds": "0,1,2",
        "steps": 20_000,
        "eval_every": 2_000,
        "eval_episodes": 10,
        "checkpoint_every": 2_000,
        "section": "offline_rl_mid",
    },
    "full": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": ",".join(f"suite/{env}/{kind}" for env in ("hopper", "halfcheetah")
                             for kind in ("medium-v0", "medium-replay-v0", "medium-expert")),
        "seeds": "0,1,2",
        "steps": 100_000,
        "eval_every": 10_000,
        "eval_episodes": 10,
        "checkpoint_every": 10_000,
        "section": "offline_rl_full",
    },
    "equal": {
        # arq: the CPU sampler settings; arq-paper (a GPU's cells) is shown where the store has it (SHOWN_IF_STORED)
        "algos": "bc,bc-top10,bc-top25,td3bc,iql,vaco,aspc,td3bc-rc,arq",
        "datasets": ",".join(f"suite/{env}/{kind}" for env in ("hopper", "halfcheetah")
                             for kind in ("medium-expert", "medium-replay-v0", "medium-v0")),
        "seeds": "0,1,2",
        "steps": 50_000,
        "vaco_value_steps": 50_000,
        "eval_every": 5_000,
        "eval_episodes": 10,
        "checkpoint_every": 5_000,
        "section": "offline_rl_equal",
    },
}


#: Variants a preset's section shows only where the store has their records, without "not run yet" rows: cells
#: that only a GPU affords (``python -m benchmarks.gpu_campaign`` runs them), so that a CPU's ``--next`` never
#: starts one.
SHOWN_IF_STORED: dict[str, list[str]] = {"equal": ["arq-paper"]}


def expand_solvers(algos: list[str], solvers: list[str]) -> list[str]:
    """``vaco`` -> ``vaco-<solver>`` for each solver: the one-step / K-step / implicit axis."""
    out: list[str] = []
    for a in algos:
        out += [f"vaco-{s}" for s in solvers] if a == "vaco" else [a]
    return out


def hosts_line(results: list[dict], datasets: list[str]) -> str:
    """Which machine ran which dataset's cells, when a grid was spread over more than one."""
    hosts = {r["host"] for r in results if r.get("host")}
    if len(hosts) < 2:
        return ""
    parts = []
    for h in sorted(hosts):
        ds = [d.replace("suite/", "") for d in datasets
              if any(r.get("host") == h and r.get("dataset") == d for r in results)]
        parts.append(f"{h}: {', '.join(ds)}")
    return ("Cells ran on more than one machine (updates/s compare only within a machine): "
            + "; ".join(parts) + ".")


#: The order ``--next`` runs the equal preset in: first the cells of the VACO comparison (issue "VACO that
#: reweights": BC, %BC-10, %BC-25 and VACO's three solvers on the medium-expert and medium-replay sets), seed
#: by seed so that every method gets a first seed early; then the rest of the preset; ARQ last.
ORDER_TIERS: dict[str, list[tuple[list[str], list[str]]]] = {
    "equal": [
        (["bc", "bc-top10", "bc-top25", "vaco-one_step", "vaco-k_step", "vaco-implicit"],
         [f"suite/{e}/{k}" for k in ("medium-expert", "medium-replay-v0") for e in ("hopper", "halfcheetah")]),
        (["bc", "bc-top10", "bc-top25", "td3bc", "iql", "aspc", "td3bc-rc", "vaco-one_step", "vaco-k_step",
          "vaco-implicit"],
         [f"suite/{e}/{k}" for k in ("medium-expert", "medium-replay-v0", "medium-v0") for e in ("hopper", "halfcheetah")]),
        (["arq-paper", "arq"], [f"suite/{e}/{k}" for k in ("medium-v0", "medium-replay-v0", "medium-expert") for e in ("hopper", "halfcheetah")]),
    ],
}


def ordered(cells: list[Cell], preset: str | None) -> list[Cell]:
    """``cells`` in the preset's priority order (:data:`ORDER_TIERS`): tier, then seed, then dataset, then
    algorithm; cells of no tier come last, longest first."""
    tiers = ORDER_TIERS.get(preset or "", [])

    def key(c: Cell) -> tuple:
        for t, (algos, datasets) in enumerate(tiers):
            if c.algo in algos and c.dataset in datasets:
                return (t, c.seed, datasets.index(c.dataset), algos.index(c.algo))
        return (len(tiers), -COST_MS.get(c.algo, max(COST_MS.values())), c.seed, c.dataset, c.algo)

    return sorted(cells, key=key)


def plan_state(c: Cell, args: argparse.Namespace) -> tuple[str, str]:
    """:func:`cell_status` with "running" for an unfinished cell a live process trains under ``--out``; kept
    apart from the store's state because the rendered report must not depend on who runs what."""
    st, why = cell_status(c, args)
    pid = running_pid(c, args) if st != "done" else None
    return ("running", f"pid {pid}" + (f"; stored record {why}" if why else "")) if pid else (st, why)


def render(args: argparse.Namespace, algos: list[str], datasets: list[str], img: Path) -> tuple[str, str]:
    """The report section and its headline table from the stored records alone (no run folder, date or
    revision); figures go to ``img`` and are linked as ``img/<name>``."""
    recs = store.load(result_dir(args))
    cells = make_cells([(a, d, s) for d in datasets for a in algos for s in parse_seeds(args.seeds)], args)
    extra = [a for a in SHOWN_IF_STORED.get(args.preset or "", [])
             if a not in algos and any(r.get("algo") == a for r in recs.values())]
    current, stale = [], []
    for c in cells + make_cells([(a, d, s) for d in datasets for a in extra for s in parse_seeds(args.seeds)], args):
        st, why = cell_status(c, args)
        if st == "done":
            current.append(recs[c.name])
        elif st == "stale":
            stale.append(f"{c.name} ({why})")
    shown = algos + [a for a in extra if any(r["algo"] == a for r in current)]
    n_extra = sum(r["algo"] in extra for r in current)
    body = grid_report.table(current, shown, datasets, if_run=extra)
    figs = ""
    for kind, ok, caption in (
        ("curves", lambda p: grid_report.learning_curves(current, shown, datasets, p), "learning curves"),
        ("vaco_weights", lambda p: grid_report.vaco_weights(current, p), "VACO trajectory weight vs return"),
        ("vaco_weight_stats", lambda p: grid_report.train_curve_panel(
            current, [("w_ess", "batch ESS fraction"), ("w_raw_mean", "raw sigmoid weight, batch mean"),
                      ("hypergrad_rms_over_eps", "hypergradient RMS / Adam eps")], "vaco", p), "VACO weight statistics"),
        ("aspc_alpha", lambda p: grid_report.train_curve_panel(current, [("alpha", "alpha")], "aspc", p),
         "ASPC alpha over training"),
    ):
        png = img / f"{args.section}_{kind}.png"
        if ok(png):
            figs += f"\n![{caption}](img/{png.name})\n"
    revs = sorted({v for r in current for v in [r.get("git_revision", "?"), *r.get("earlier_git_revisions", [])]})
    title = {"offline_rl": "Offline RL baselines"}.get(args.section, f"Offline RL grid ({args.preset or 'custom'} preset)")
    readings = note(args.section)
    # The committed store's name, not wherever --store points: a copy of the records renders the same text.
    store_rel = f"benchmarks/results/{args.preset}" if args.preset else os.path.relpath(result_dir(args), ROOT)
    headline = (f"Score per cell: the mean of its last three evaluations; cell: mean over seeds (n). "
                f"{args.steps} policy steps. Section: [{title}](#{_anchor(title)}).\n\n"
                + grid_report.summary(current, shown, datasets))
    return (
        f"## {title}\n\n"
        f"Rendered from the committed cell records in `{store_rel}/` alone "
        f"(`python -m benchmarks.offline_rl{' --preset ' + args.preset if args.preset else ''} --report-only`); "
        f"{len(current) - n_extra} of {len(cells)} cells finished"
        + (f", plus {n_extra} {'/'.join(shown[len(algos):])} cell(s) (run on a GPU)" if n_extra else "")
        + (f", {len(stale)} stale (recorded with other settings; `--next` reruns them)" if stale else "")
        + f". Cells ran at git {', '.join(revs) if revs else '-'}; each record names its machine.\n\n"
        f"**Budget:** {args.steps} policy gradient steps per cell (equal budget = equal policy steps: VACO K-step "
        "runs steps/K outer updates of K policy steps each); TD3+BC, TD3+BC-rc and ASPC update the actor every "
        "second iteration, so their actor takes half as many steps"
        + (f"; VACO cells first train {args.vaco_value_steps} IQL value-only updates (not policy steps)"
           if args.vaco_value_steps else "")
        + _arq_budget(args, shown)
        + f". Batch 256. **Score:** the mean of a seed's last three evaluations ({args.eval_episodes} episodes "
        f"each, every {args.eval_every} policy steps), then mean ± sample std (ddof 1) over seeds; n=1 shows no ±. "
        "Normalised score = 100 (R - ref_min) / (ref_max - ref_min).\n"
        + (f"\n{hosts_line(current, datasets)}\n" if hosts_line(current, datasets) else "")
        + f"\n{body}\n"
        + figs
        + (f"\n{readings}" if readings else "")
    ), headline


def _arq_budget(args: argparse.Namespace, algos: list[str]) -> str:
    """The budget sentence's clause on ARQ's phases before its policy steps ("" without ARQ cells)."""
    arq = [a for a in algos if VARIANTS.get(a, (a, []))[0] == "arq"]
    if not arq:
        return ""
    bm, q = arq_phases(args, VARIANTS.get(arq[0], ("arq", []))[1])
    if not q:
        return f"; ARQ cells first train {bm} behaviour-model updates (not policy steps)"
    return (f"; ARQ cells first train {bm} behaviour-model and then {q} Q-only updates (not policy steps; the "
            "paper's order, with Q frozen during the policy steps)")


def _anchor(title: str) -> str:
    """GitHub's anchor of a markdown heading."""
    import re

    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="quick (about 12 min on 2 CPU cores), mid (~7 core-hours), full (~50 core-hours) or equal "
                        "(~42 core-hours); flags below override it")
    p.add_argument("--algos", default="bc,td3bc,iql")
    p.add_argument("--solvers", default="one_step,k_step,implicit",
                   help="VACO solvers: an algorithm named 'vaco' runs once per solver")
    p.add_argument("--datasets", default=DEFAULT_DATASETS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=30_000, help="policy updates per cell")
    p.add_argument("--vaco-value-steps", type=int, default=0,
                   help="IQL value-only updates a VACO cell takes before its --steps bi-level updates "
                        "(0: VACO splits --steps by its value_fraction, as the quick/mid/full presets do)")
    p.add_argument("--arq-bm-steps", type=int, default=50_000,
                   help="behaviour-model updates an ARQ cell takes before its Q-only and --steps policy updates")
    p.add_argument("--arq-q-steps", type=int, default=None,
                   help="Q-only updates an ARQ cell takes between its behaviour model and its --steps policy updates "
                        "(default: --steps, the paper's 1:1; none with --set schedule=joint)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (each worker process uses it)")
    p.add_argument("--workers", type=int, default=None,
                   help="cells at once (default: cores - 1 on the local pool; with --ray, as many as the cluster fits)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per cell (default 1; keep workers x threads <= cores, see docs/rl.md)")
    p.add_argument("--seeds-per-process", action="store_true",
                   help="train the seeds of a BC / TD3+BC / IQL / ASPC cell together in one process (bilevel-rl train "
                        "--seeds; docs/benchmarks.md 'Throughput' measures what it buys); each seed keeps its result")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=5_000)
    p.add_argument("--log-every", type=int, default=1_000)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter for every cell"
    )
    p.add_argument("--out", default="results/offline_rl",
                   help="run folders, checkpoints and logs (not committed)")
    p.add_argument("--store", default=None,
                   help="folder of the finished cells' records (default with --preset: the committed "
                        "benchmarks/results/<preset>; without: --out)")
    p.add_argument("--next", type=int, default=None, metavar="N",
                   help="run only the next N unfinished (or stale) cells of the selection, in the preset's "
                        "priority order (benchmarks/offline_rl.py ORDER_TIERS); cells another live process "
                        "is training under the same --out are skipped, so two --next runs share the cores")
    p.add_argument("--plan", action="store_true",
                   help="print every selected cell in priority order with its state (done / stale / running / "
                        "todo) and exit")
    p.add_argument("--report", action="store_true", help="write the section into docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: render the section from the stored records alone (with --report: into "
                        "docs/benchmarks.md)")
    p.add_argument("--note", default="", help="extra line for the report (e.g. 'smoke run')")
    p.add_argument("--section", default="offline_rl", help="docs/benchmarks.md section this grid writes")
    grid.add_arguments(p)
    if argv is None:
        argv = sys.argv[1:]
    pre = p.parse_known_args(argv)[0].preset
    if pre is not None:
        # Preset values become defaults, so any flag given explicitly still wins.
        p.set_defaults(**PRESETS[pre], out=f"results/offline_rl_{pre}", store=str(store.STORE / pre))
    args = p.parse_args(argv)
    for flag, val in (("--steps", args.steps), ("--workers", args.workers), ("--log-every", args.log_every),
                      ("--threads", args.threads), ("--next", args.next)):
        if val is not None and val < 1:
            p.error(f"{flag} must be >= 1, got {val}")
    grid.check_arguments(p, args)
    if args.vaco_value_steps < 0:
        p.error(f"--vaco-value-steps must be >= 0, got {args.vaco_value_steps}")
    if args.arq_q_steps is not None and args.arq_q_steps < 1:
        p.error(f"--arq-q-steps must be >= 1, got {args.arq_q_steps}")
    os.environ.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    algos = expand_solvers(args.algos.split(","), args.solvers.split(","))
    unknown = [a for a in algos if VARIANTS.get(a, (a, []))[0] not in _registered()]
    if unknown:
        p.error(f"--algos: unknown {', '.join(unknown)}; choose from {', '.join(sorted(set(_registered()) | set(VARIANTS)))}")
    datasets = args.datasets.split(",")
    cells = ordered(make_cells([(a, d, s) for d in datasets for a in algos for s in parse_seeds(args.seeds)], args),
                    args.preset)
    if args.plan:
        states = [plan_state(c, args) for c in cells]
        for c, (st, why) in zip(cells, states):
            print(f"{st:7s} {c.name}" + (f"  [{why}]" if why else ""))
        counts = {k: sum(st == k for st, _ in states) for k in ("done", "stale", "running", "todo")}
        print(f"[offline_rl] {len(cells)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        return 0
    t0 = time.perf_counter()
    results: list[dict] = []
    if not args.report_only:
        todo = cells
        if args.next is not None:
            todo = [c for c in cells if plan_state(c, args)[0] in ("stale", "todo")][: args.next]
            print(f"[offline_rl] next {len(todo)} cells: {', '.join(c.name for c in todo) or 'none left'}", flush=True)
        for c in todo:
            if cell_status(c, args)[0] == "stale":
                retire_stale(c, args)
        if todo:
            results = grid.run_grid(group_seeds(todo, args) if args.seeds_per_process else todo, args, "offline_rl")
    wall = time.perf_counter() - t0
    whole = _preset_selection(p, args) if args.report and args.preset else None
    narrowed = whole is not None and (whole[1], whole[2], whole[0].seeds) != (algos, datasets, args.seeds)
    section, headline = render(args, algos, datasets,
                               REPORT.parent / "img" if args.report and not narrowed else Path(args.out) / "img")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "report.md").write_text(section)
    (Path(args.out) / "headline.md").write_text(headline)
    print("| dataset" + section.split("\n\n| dataset", 1)[1].split("\n\n")[0] if "\n\n| dataset" in section else section)
    if not args.report_only:
        print(f"[offline_rl] wall time {wall:.0f}s")
    if args.report:
        if narrowed:
            # docs/benchmarks.md holds the preset's section: a run narrowed to a few cells must not shrink it
            section, headline = render(*whole, REPORT.parent / "img")
            print(f"[offline_rl] docs/benchmarks.md: rendered the whole {args.preset} preset from the store "
                  "(--algos/--solvers/--datasets/--seeds narrow what runs, not the committed section)")
        write_section(args.section, section)
        write_section(f"{args.section}_headline", headline)
    return grid.exit_code(results)


def _preset_selection(p: argparse.ArgumentParser, args: argparse.Namespace
                      ) -> tuple[argparse.Namespace, list[str], list[str]]:
    """``args`` with the preset's own algorithms, solvers, datasets and seeds: what its docs section shows."""
    sel = {k: PRESETS[args.preset].get(k, p.get_default(k)) for k in ("algos", "solvers", "datasets", "seeds")}
    whole = argparse.Namespace(**(vars(args) | sel))
    return whole, expand_solvers(sel["algos"].split(","), sel["solvers"].split(",")), sel["datasets"].split(",")


def _registered() -> list[str]:
    from rl_adapters.algorithms import ALGORITHMS

    return list(ALGORITHMS)


if __name__ == "__main__":
    sys.exit(main())

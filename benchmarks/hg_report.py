"""The hypergradients section of docs/benchmarks.md from a run's results (benchmarks/hypergradients.py): tables,
plots, the raw JSON under docs/data/, and the reading people wrote for the run.

The "Reading" paragraphs are benchmarks/notes/hypergradients-<device>-<preset>.md; the note's first line,
``<!-- run: git REV -->``, names the run it reads, and a section rendered from another run says that its reading
is of an earlier one. (Until git fe6aa82 the reading was generated from the numbers by benchmarks/hg_reading.py;
its last texts are the notes.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks._report import note, pyplot, save_figure, write_section

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"


def fmt_bytes(b: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def plot_accuracy(acc: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = {"ours": "o", "higher": "s", "torchopt": "^", "Betty": "D"}
    for ax, (name, res) in zip(axes, acc.items()):
        for r in res["rows"]:
            ax.scatter(r["time_s"] * 1e3, max(r["err_true"], 1e-16), marker=markers[r["family"]], s=28)
            ax.annotate(r["solver"].replace(" it.", "").replace("K-step ", ""), (r["time_s"] * 1e3,
                        max(r["err_true"], 1e-16)), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall time per hypergradient (ms)")
        ax.set_ylabel("relative error vs true bilevel hypergradient")
        ax.set_title(f"{name} (float64; o ours, s higher, ^ torchopt, D Betty)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_speed(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    ok = [r for r in rows if "median_s" in r and r["group"] != "one-step"]
    kmax = max(r["K"] for r in ok)
    hmax = max(r["hidden"] for r in ok)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax in axes.flat:  # > 10 lines: tab10 would repeat colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    methods = sorted({r["method"] for r in ok})
    for method in methods:
        style = "-" if any(r["library"] == "ours" for r in ok if r["method"] == method) else "--"
        by_n = sorted((r for r in ok if r["method"] == method and r["K"] == kmax), key=lambda r: r["params"])
        by_k = sorted((r for r in ok if r["method"] == method and r["hidden"] == hmax), key=lambda r: r["K"])
        for ax, pts, key, x in ((axes[0, 0], by_n, "median_s", "params"), (axes[0, 1], by_n, "peak_bytes", "params"),
                                (axes[1, 0], by_k, "median_s", "K"), (axes[1, 1], by_k, "peak_bytes", "K")):
            if pts:
                ax.plot([r[x] for r in pts], [r[key] * (1e3 if key == "median_s" else 2**-20) for r in pts],
                        style, marker="o", label=method)
    for ax, title in ((axes[0, 0], f"time vs inner params (K={kmax})"), (axes[0, 1], f"peak memory vs params (K={kmax})"),
                      (axes[1, 0], f"time vs K (h={hmax})"), (axes[1, 1], f"peak memory vs K (h={hmax})")):
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("ms" if "time" in title else "MiB")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    L: list[str] = []
    L.append(f"## Hypergradients ({meta['preset']} preset, {meta['device']}, {meta['dtype']})\n")
    L.append(f"Command: `{meta['command']}` (git {meta['git']}, {meta['date']}, total {meta['wall_s']:.0f} s)  ")
    L.append(f"Machine: {meta['machine']}  ")
    L.append(f"Raw numbers: `docs/data/hypergradients-{report_tag(meta)}.json`. Betty: {meta['betty']}.\n")

    # ---- accuracy
    L.append("### Accuracy (float64)\n")
    L.append("Every solver starts at the exact inner optimum theta*. *err vs true* is the relative error "
             "against the true hypergradient of the bilevel problem, dG/dlambda with G = g(theta*(lambda)). "
             "One-step and K-step differentiate the K-step SGD map from theta* (lr = 1/L), which is a "
             "different function; their *err vs own* is against central finite differences of that "
             "unrolled map (an independent unroll), so it measures implementation error only, while "
             "*err vs true* measures the bias of the approximation (from theta*, K-step SGD unrolling "
             "equals a K-term Neumann series with step 1/L). Implicit rows use inner_steps=0 (theta is "
             "already theta*), so their error is the linear solve's; Neumann / fixed point estimate their "
             "step by 10 power iterations (included in the time). Times are median wall time of one "
             "`hypergradient` call.\n")
    for name, r in res["accuracy"].items():
        extra = "" if r["reference_vs_fd"] is None else (
            f"; reference agrees with finite differences of the re-solved optimum to {r['reference_vs_fd']:.1e}")
        L.append(f"**{name}** (true hypergradient: {r['reference']}{extra}; |true| = {r['true_norm']:.3g})\n")
        L.append("| solver | err vs true | err vs own target | time (ms) |")
        L.append("|---|---:|---:|---:|")
        for row in r["rows"]:
            own = "-" if row["err_own"] is None or row["family"] != "ours" and "K=" not in row["solver"] else (
                f"{row['err_own']:.1e}")
            if row["err_own"] is not None and row["solver"].startswith(("implicit", "torchopt custom", "Betty")):
                own = "(= true)"
            L.append(f"| {row['solver']} | {row['err_true']:.2e} | {own} | {row['time_s'] * 1e3:.2f} |")
        L.append("")
    L.append(f"![accuracy vs time](img/hypergradients_{report_tag(meta)}_accuracy.png)\n")

    # ---- speed
    L.append("### Speed and peak memory per hypergradient\n")
    L.append("MLP 64-h-h-10 (tanh), cross-entropy, batch "
             f"{meta['batch']}, outer variables = log weight decay of the 3 weight matrices, inner "
             "optimiser SGD(lr=0.1) in every library. K inner steps from the same theta; implicit methods "
             "take K plain steps then 10 linear-solver iterations (Neumann / fixed point step = lr, no power "
             "iteration; torchopt CG without early stop). Time: min and median over repeats after warm-up "
             f"(cuda synchronised). Peak memory: {meta['memory_method']}. *x best peer* = ours / fastest "
             "(min time) or leanest non-ours method of the same group at the same size and K (>1 means we are slower)."
             + (" The methods of one size and K were timed side by side, one call each per round, and the time "
                "ratio is of median thread CPU times (on a shared CPU another process's load disturbs them "
                "least; on a GPU, of min wall times)." if any("time_ratio_basis" in r for r in res["speed"]) else "")
             + "\n")
    speed = res["speed"]
    L.append("| group | method | params | K | time ms, min (median) | x best peer | peak mem | x best peer |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in speed:
        if "median_s" not in r:
            L.append(f"| {r['group']} | {r['method']} | {fmt_params(r['params'])} | {r['K']} | "
                     f"n/a: {r['error']} | | | |")
            continue
        tr = f"{r['time_ratio']:.2f}" if "time_ratio" in r and r["library"] == "ours" else ""
        mr = f"{r['mem_ratio']:.2f}" if "mem_ratio" in r and r["library"] == "ours" else ""
        L.append(f"| {r['group']} | {r['method']} | {fmt_params(r['params'])} | {r['K']} | "
                 f"{r['min_s'] * 1e3:.2f} ({r['median_s'] * 1e3:.2f}) | {tr} | {fmt_bytes(r['peak_bytes'])} | {mr} |")
    L.append(f"\n![speed and memory](img/hypergradients_{report_tag(meta)}_speed.png)\n")

    # ---- checkpointing
    L.append("### Would checkpointing the reverse unroll pay?\n")
    if any(r["method"].startswith("checkpoint every") for r in res["checkpoint"]):
        # Runs from before KStepSolver(checkpoint=) shipped timed a prototype of the same algorithm.
        L.append("The *checkpoint every s steps* rows were measured on a prototype of the same algorithm "
                 "(`hg_peers.checkpointed_unroll`, since removed) before `KStepSolver(checkpoint=)` shipped, and "
                 "have not been re-measured with the shipped solver; rerun the command above to replace them. "
                 "*err* is the relative difference to `KStepSolver(mode='reverse')`.\n")
    else:
        L.append("`KStepSolver(mode='reverse', checkpoint=s)` stores the unroll every s steps and recomputes each "
                 "segment in the backward pass (same RNG and buffers, so the result is the plain unroll's); "
                 "s = 1 and s = round(sqrt(K)). Same MLP, SGD inner steps. *err* is the relative difference to "
                 "`KStepSolver(mode='reverse')`.\n")
    rerun = res["meta"].get("checkpoint_rerun")
    if rerun:  # this table alone was measured again (``--sections checkpoint``), not the rest of the section
        L.append(f"This table alone was re-measured: `{rerun['command']}` (git {rerun['git']}, {rerun['date']}; "
                 f"{rerun['machine']}){'; ' + rerun['note'] if rerun.get('note') else ''}.\n")
    L.append("| K | method | params | time ms, min (median) | peak mem | err |")
    L.append("|---:|---|---:|---:|---:|---:|")
    for r in res["checkpoint"]:
        L.append(f"| {r['K']} | {r['method']} | {fmt_params(r['params'])} | {r['min_s'] * 1e3:.2f} ({r['median_s'] * 1e3:.2f}) | "
                 f"{fmt_bytes(r['peak_bytes'])} | {r['err_vs_reverse']:.1e} |")
    L.append("")

    # ---- reweighting
    rw = res["reweighting"]
    L.append("### Data reweighting (digits, 40% flipped training labels)\n")
    L.append(f"1000 training samples (40% labels flipped to another class), 100 clean validation, 697 test; MLP "
             f"64-64-10; SGD(lr 0.3, momentum 0.9), {rw['inner_steps']} full-batch inner steps for every method; "
             "one learnable logit per training sample (weight 2 sigmoid(w)), Adam(0.05) on the clean validation "
             "loss. AUC: how well the learned weights rank clean above flipped samples (0.5 = chance). "
             f"Mean +- std over {len(next(iter(rw['results'].values())))} seed(s).\n")
    L.append("| method | test accuracy | AUC clean vs flipped | time (s) |")
    L.append("|---|---:|---:|---:|")
    for m, runs in rw["results"].items():
        accs = torch.tensor([r["test_acc"] for r in runs])
        aucs = torch.tensor([r["auc"] for r in runs])
        times = torch.tensor([r["time_s"] for r in runs])
        sd = (lambda t: f" +- {t.std():.3f}" if len(t) > 1 else "")
        auc = "-" if torch.isnan(aucs).all() else f"{aucs.mean():.3f}{sd(aucs)}"
        L.append(f"| {m} | {accs.mean():.3f}{sd(accs)} | {auc} | {times.mean():.1f} |")
    L.append("")
    L.append("### Reading\n")
    L.append(reading(meta))
    return "\n".join(L)


def reading(meta: dict[str, Any]) -> str:
    """The reading of the run in ``benchmarks/notes/hypergradients-<tag>.md`` (without its first line, which names
    the run it reads); a note written for another run is shown with a line saying so."""
    name = f"hypergradients-{report_tag(meta)}"
    text = note(name)
    if not text:
        return f"(no reading written for this run yet: benchmarks/notes/{name}.md)"
    first, _, rest = text.partition("\n")
    if not first.startswith("<!-- run: git "):
        return text.strip("\n")
    rev = first.removeprefix("<!-- run: git ").removesuffix(" -->").strip()
    stale = "" if rev == meta.get("git") else (
        f"*This reading is of the run at git {rev}, not of the numbers above (git {meta.get('git')}); "
        f"rewrite benchmarks/notes/{name}.md.*\n\n")
    return stale + rest.strip("\n")


def report_tag(meta: dict[str, Any]) -> str:
    """Device and preset of a run: each (e.g. ``cuda-full``, ``cpu-quick``) has its own report section and
    plots, so a quick CPU re-run never overwrites the GPU table."""
    return f"{meta['device']}-{meta['preset']}"


def write_report(res: dict[str, Any]) -> None:
    tag = report_tag(res["meta"])
    IMG.mkdir(parents=True, exist_ok=True)
    plot_accuracy(res["accuracy"], IMG / f"hypergradients_{tag}_accuracy.png")
    plot_speed(res["speed"], IMG / f"hypergradients_{tag}_speed.png")
    data = ROOT / "docs" / "data" / f"hypergradients-{tag}.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({k: v for k, v in res.items() if k != "reading"}, indent=1, default=str))
    write_section(f"hypergradients-{tag}", markdown(res))
    print(f"wrote docs/benchmarks.md section 'hypergradients-{tag}'")

"""Mixed-mode K-step (``KStepSolver(mode="mixed")``) against reverse mode: memory and time per hypergradient.

On the hypergradient benchmark's MLP (64 -> h -> h -> 10 tanh, cross-entropy, outer variables: log weight
decay of the three weight matrices; inner SGD), for each batch size and K, of reverse mode, mixed mode, and
mixed mode with ``hvp="reverse"``:

* **saved bytes**: the peak, over one ``hypergradient()`` call, of the bytes of tensors saved for backward
  that are alive at once, counted with ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, however
  many ops save it). Mixed mode saves its stored iterates through ``ctx.save_for_backward``, so they are
  counted; reverse mode's are the graphs of the K unrolled steps;
* **peak live bytes**: the peak total size of tensors created during the call and still alive
  (``benchmarks.hg_peers.LiveBytes``, the CPU stand-in for ``torch.cuda.max_memory_allocated``);
* **time**: median wall time of a hypergradient on one thread;
* **max rel diff**: ``|mixed - reverse| / |reverse|`` of the hypergradients (float32 here; the float64
  equality tests are tests/test_mixed_mode.py).

Run ``python -m benchmarks.mixed_mode [--hidden 128 --batches 128 1024 --ks 5 20 100 --repeats 3] [--report]``;
prints the section, and with ``--report`` writes the ``mixed_mode`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import torch
import torchopt

import bilevel
from benchmarks._report import command_line, git_revision, machine_description, write_section
from benchmarks.hg_peers import peak_memory
from benchmarks.hg_problems import mlp_problem
from bilevel import SavedBytes

VARIANTS = {"reverse": {"mode": "reverse"}, "mixed": {"mode": "mixed"},
            "mixed, hvp=reverse": {"mode": "mixed", "hvp": "reverse"}}


def solver_call(hidden: int, batch: int, k: int, variant: str, opt: str) -> Callable[[], list[torch.Tensor]]:
    fp = mlp_problem(hidden, batch, "cpu", torch.float32)
    inner = torchopt.sgd(lr=fp.lr) if opt == "sgd" else torchopt.adam(lr=1e-3)
    s = bilevel.KStepSolver(fp.bilevel_problem(), inner, torch.optim.SGD(fp.hyper.parameters(), lr=0.0),
                            steps=k, **VARIANTS[variant])
    return lambda: s.hypergradient(fp.inner_batch, fp.outer_batch)


def measure(hidden: int, batch: int, k: int, variant: str, opt: str, repeats: int) -> dict[str, Any]:
    fn = solver_call(hidden, batch, k, variant, opt)
    out = fn()  # warm-up
    gc.collect()
    with SavedBytes() as meter:
        fn()
    gc.collect()
    live = peak_memory(fn, "cpu")["peak_bytes"]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"hypergrad": out, "saved_peak": meter.peak, "saved_total": meter.total, "live_peak": live,
            "time_s": times[len(times) // 2]}


def mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 20, 100])
    ap.add_argument("--opt", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--report", action="store_true", help="write the 'mixed_mode' section of docs/benchmarks.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = sum(p.numel() for p in mlp_problem(args.hidden, 8, "cpu", torch.float32).model.parameters())
    setup = (
        f"MLP 64-{args.hidden}-{args.hidden}-10 (tanh, cross-entropy, {params} inner parameters, float32), outer "
        f"variables: 3 log weight decays; `KStepSolver(steps=K, mode=...)`, inner `torchopt.{args.opt}`. "
        "`mixed` is forward-over-reverse (`torch.autograd.forward_ad`), `mixed, hvp=reverse` takes the same "
        "products by a double backward through one step's gradient. *Saved*: peak bytes of tensors saved for "
        "backward and alive at once during one `hypergradient()` (`torch.autograd.graph.saved_tensors_hooks`, "
        "each storage once; mixed mode's stored iterates are saved through `ctx.save_for_backward` and "
        "counted). *Live*: peak bytes of all tensors created during the call and alive at once "
        "(`hg_peers.LiveBytes`, temporaries included). Time: median of "
        f"{args.repeats} calls, one thread (a shared, loaded machine: read the ratios). "
        "Rel diff: `|mixed - reverse| / |reverse|` (float32; float64 equality is in tests/test_mixed_mode.py)."
    )
    header = ("| batch | K | method | saved (MiB) | saved / reverse | live (MiB) | live / reverse | time (ms) | "
              "time / reverse | rel diff |")
    lines = ["## Mixed-mode K-step vs reverse mode", "", f"Command: `{command_line()}` (git {git_revision()})  ",
             f"Machine: {machine_description()}", "", setup, "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for batch in args.batches:
        for k in args.ks:
            res = {v: measure(args.hidden, batch, k, v, args.opt, args.repeats) for v in VARIANTS}
            rev = res["reverse"]
            for v, r in res.items():
                diff = max(float((a - b).norm() / b.norm()) for a, b in zip(r["hypergrad"], rev["hypergrad"]))
                row = (f"| {batch} | {k} | {v} | {mib(r['saved_peak'])} | {r['saved_peak'] / rev['saved_peak']:.3f} | "
                       f"{mib(r['live_peak'])} | {r['live_peak'] / rev['live_peak']:.3f} | {r['time_s'] * 1e3:.1f} | "
                       f"{r['time_s'] / rev['time_s']:.2f} | {diff:.1e} |")
                lines.append(row)
                print(row, flush=True)
    text = "\n".join(lines) + "\n"
    if args.report:
        write_section("mixed_mode", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

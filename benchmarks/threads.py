"""Updates/s of small offline-RL networks at several torch thread counts, idle or with busy neighbours.

    python -m benchmarks.threads                    # 1 thread vs all cores, idle
    python -m benchmarks.threads --busy 2           # the same while 2 busy-loop processes share the cores

Each measurement runs in a fresh process (the thread count of a process is best set once), on random
batches (256x256 MLPs, batch 256, HalfCheetah-sized spaces). The readings behind the default
``--threads 1`` of ``bilevel-rl train`` are in docs/rl.md "Threads".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
import numpy as np, torch
threads, seconds, algos = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].split(",")
torch.set_num_threads(threads)
from rl_adapters.algorithms import make_algorithm
from rl_adapters.data import Batch, DatasetStats
obs, act, batch_size = 17, 6, 256
stats = DatasetStats(np.zeros(obs, np.float32), np.ones(obs, np.float32), -np.ones(act, np.float32),
                     np.ones(act, np.float32))
g = torch.Generator().manual_seed(0)
batch = Batch(torch.randn(batch_size, obs, generator=g), torch.rand(batch_size, act, generator=g) * 2 - 1,
              torch.randn(batch_size, generator=g), torch.randn(batch_size, obs, generator=g),
              torch.zeros(batch_size))
out = {"threads": threads}
for name in algos:
    algo = make_algorithm(name, obs, act, stats)
    for _ in range(20):
        algo.update(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        algo.update(batch)
        n += 1
    out[name] = round(n / (time.perf_counter() - t0), 1)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma-separated thread counts")
    p.add_argument("--algos", default="td3bc,iql")
    p.add_argument("--seconds", type=float, default=6.0, help="measured time per algorithm and thread count")
    p.add_argument("--busy", type=int, default=0, help="busy-loop processes to run alongside (simulated load)")
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("OMP_NUM_THREADS", None)  # the child sets its own count
    env.pop("MKL_NUM_THREADS", None)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(0.5 if busy else 0.0)
        for t in args.threads.split(","):
            res = subprocess.run([sys.executable, "-c", CHILD, t, str(args.seconds), args.algos], env=env,
                                 capture_output=True, text=True, check=True)
            print(json.dumps(json.loads(res.stdout) | {"busy_processes": args.busy}), flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()

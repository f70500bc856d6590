"""Deprecated spelling of ``python -m rl_adapters train ARGS`` (``bilevel-rl train ARGS``).

Kept only because benchmark grids started before the switch spawn every cell as ``python -m
rl_adapters.train`` from a parent process that is still running; remove once no such grid is left.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

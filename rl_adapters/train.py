"""``python -m rl_adapters.train ARGS`` is ``bilevel-rl train ARGS``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

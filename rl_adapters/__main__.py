"""``python -m rl_adapters ...`` is ``bilevel-rl ...``."""

import sys

from .cli import main

sys.exit(main())

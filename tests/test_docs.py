"""The worked example in docs/quickstart.md runs as written and does what the text claims."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_quickstart_reweighting_example_downweights_flipped_labels():
    code = re.findall(r"```python\n(.*?)```", (DOCS / "quickstart.md").read_text(), re.S)[0]
    torch.set_num_threads(1)
    scope: dict = {}
    exec(compile(code, "docs/quickstart.md", "exec"), scope)
    w, flipped = scope["w"], scope["flipped"]
    assert w[~flipped].mean() > 3 * w[flipped].mean()

"""What every benchmark script shares to write its report: one section of docs/benchmarks.md, the readings
people wrote for it (benchmarks/notes/), the header line of a run, and figures.

Each benchmark script owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; a
re-run replaces only its own section, so scripts can run in any order and on different machines.

The command-line convention of the scripts (``python -m benchmarks.X``): ``main(argv: list[str] | None = None)
-> int``; nothing under docs/ is written without ``--report``; ``--report-only`` runs nothing and renders from
the data a previous run saved (where a script saves any).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
NOTES = Path(__file__).resolve().parent / "notes"
HEADER = "# Benchmarks\n\nEvery number below is produced by a script in `benchmarks/`; each section names its command.\n"


def machine_description(device: str = "cpu") -> str:
    """CPU model, cores, GPU (if used), torch version and date, for a report's header line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU {cpu} ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts.append(f"torch {torch.__version__}")
    parts.append(f"python {platform.python_version()}")
    parts.append(_dt.date.today().isoformat())
    return ", ".join(parts)


def command_line() -> str:
    """The command that is running, as ``python -m benchmarks.<script> ARGS``."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    script = f"-m {spec.name}" if spec is not None and spec.name else os.path.relpath(sys.argv[0])
    return "python " + " ".join([script] + sys.argv[1:])


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPORT.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, body: str, path: Path = REPORT) -> None:
    """Replace (or append) section ``name`` of the report with ``body`` (markdown)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def note(name: str) -> str:
    """The text of ``benchmarks/notes/<name>.md`` (a reading written by people, appended to a section), or ""."""
    path = NOTES / f"{name}.md"
    return path.read_text() if path.exists() else ""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, png: Path, dpi: int = 100) -> None:
    """Save ``fig`` to ``png`` (its folder made) without software/date metadata, so that the same data give the
    same bytes, and close it."""
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)

"""benchmarks/ keeps its shape: one CLI convention for every script, no module over 500 lines, no import circle,
and a section rendered from saved data and a note renders as docs/benchmarks.md has it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = {p.stem: p for p in BENCH.glob("*.py") if p.stem != "__init__"}


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text())


def _imports(name: str) -> set[str]:
    """Every ``benchmarks.X`` a module imports, at module level or inside a function."""
    deps = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("benchmarks.")}
    return deps & set(MODULES) - {name}


SCRIPTS = sorted(n for n in MODULES if any(isinstance(f, ast.FunctionDef) and f.name == "main"
                                           for f in _tree(n).body))


def test_no_module_over_500_lines() -> None:
    assert {n: len(p.read_text().splitlines()) for n, p in MODULES.items()
            if len(p.read_text().splitlines()) > 500} == {}


def test_no_import_circle() -> None:
    graph = {n: _imports(n) for n in MODULES}
    done: set[str] = set()

    def visit(n: str, path: tuple[str, ...]) -> None:
        assert n not in path, f"import circle: {' -> '.join(path[path.index(n):] + (n,))}"
        if n not in done:
            for d in graph[n]:
                visit(d, path + (n,))
            done.add(n)

    for n in graph:
        visit(n, ())
    # nothing imports a script
    assert {n: sorted(graph[n] & set(SCRIPTS)) for n in graph if graph[n] & set(SCRIPTS)} == {}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_the_cli_convention(name: str) -> None:
    """``main(argv: list[str] | None = None) -> int`` and a ``--report`` flag (nothing under docs/ is written
    without it)."""
    main = next(f for f in _tree(name).body if isinstance(f, ast.FunctionDef) and f.name == "main")
    assert [a.arg for a in main.args.args] == ["argv"] and ast.unparse(main.args.args[0].annotation) == "list[str] | None"
    assert ast.unparse(main.returns) == "int"
    assert '"--report"' in MODULES[name].read_text()
    assert '"--write"' not in MODULES[name].read_text() and '"--no-report"' not in MODULES[name].read_text()


def test_hypergradients_cpu_section_renders_from_its_data_and_note() -> None:
    """The CPU section of docs/benchmarks.md is docs/data/hypergradients-cpu-quick.json rendered with the reading
    in benchmarks/notes/hypergradients-cpu-quick.md."""
    from benchmarks import hg_report
    from benchmarks._report import REPORT

    res = json.loads((REPORT.parent / "data" / "hypergradients-cpu-quick.json").read_text())
    text = REPORT.read_text()
    section = text.split("<!-- BEGIN hypergradients-cpu-quick -->\n", 1)[1].split("\n<!-- END", 1)[0]
    assert hg_report.markdown(res).rstrip() == section
    # a reading written for another run says so
    res["meta"]["git"] = "0000000"
    assert hg_report.reading(res["meta"]).startswith("*This reading is of the run at git ")

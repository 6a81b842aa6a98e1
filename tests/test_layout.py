"""The layout's rules, read from the import graph of the source (every import statement, function-local ones too):
no import cycle between first-party modules, nothing outside `cli/` imports `cli/`, and nothing outside `testbed/`
(and the tests) imports `testbed/`."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "profiler", "workloads", "reports", "testbed")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> first-party modules it imports (a package's __init__ counts only when imported by name)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def _top(mod: str) -> str:
    return mod.partition(".")[0]


def test_no_import_cycle():
    graph = import_graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_only_cli_imports_cli_and_only_the_lab_imports_the_lab():
    graph = import_graph()
    bad = sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        if (_top(d) == "cli" and _top(m) != "cli") or (_top(d) == "testbed" and _top(m) != "testbed")
    )
    assert not bad, "\n".join(bad)


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "workloads.tuning_db" in graph["workloads.compile"]
    assert any(_top(d) == "profiler" for d in graph["testbed.lab"])

"""The layout's rules, read from the import graph of the source (every import statement, function-local ones too):
one import name (`autlearn`), no import cycle between first-party modules, the layers
cli -> pipelines / reports -> engine -> workloads -> profiler with no arrow back up, and nothing outside `testbed/`
(and the tests) imports `testbed/`."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "pipelines", "reports", "engine", "workloads", "profiler", "device_scripts", "testbed")
# the floor of each top-level package: a module imports only its own package or lower floors
FLOORS = {"cli": 5, "pipelines": 4, "reports": 4, "engine": 3, "workloads": 2, "profiler": 1, "device_scripts": 0}


def _module(path: Path) -> str:
    """`autlearn.X...` of a file under the top-level folder X (linked into autlearn/)."""
    parts = ["autlearn", *path.relative_to(ROOT).with_suffix("").parts]
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
    """The top-level package (`cli`, `engine`, ...) of `autlearn.cli.main`."""
    return mod.split(".")[1]


def test_no_import_cycle():
    graph = import_graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_no_arrow_back_up_and_only_the_lab_imports_the_lab():
    """cli -> pipelines / reports -> engine -> workloads -> profiler: a module imports its own package or a lower
    floor (function-local imports included); the lab is a plugin that nothing else imports."""
    graph = import_graph()
    bad = sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        if (_top(d) == "testbed" and _top(m) != "testbed")
        or (_top(m) in FLOORS and _top(d) != _top(m) and FLOORS[_top(d)] >= FLOORS[_top(m)])
    )
    assert not bad, "\n".join(bad)


def test_one_import_name():
    """Every first-party import goes through `autlearn` (the folders are also importable from the repository's
    root, which would load a second copy of each module)."""
    bare = []
    for top in (*PACKAGES, "tests", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare, "\n".join(bare)


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "autlearn.workloads.tuning_db" in graph["autlearn.workloads.compile"]
    assert any(_top(d) == "profiler" for d in graph["autlearn.testbed.lab"])


def test_a_function_local_import_says_why():
    """Module-level imports are the rule; an import inside a function carries a one-line reason (a comment on it or
    on the line above): a library that takes seconds to load (torch, tvm), an optional one (ray), a name clash."""
    silent = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            lines = path.read_text().splitlines()
            tree = ast.parse("\n".join(lines), str(path))
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        near = [lines[node.lineno - 2], lines[node.lineno - 1], lines[node.end_lineno - 1]]
                        if not any("#" in line for line in near):
                            silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not silent, "function-local imports without a reason: " + ", ".join(sorted(set(silent)))


def test_the_generic_pruner_knows_no_family():
    """workloads/pruning/ works through the family's Strategy: it imports no family module and compares nothing
    to a family or strategy name."""
    names = {"mobilenet", "lstm", "filter", "svd"}
    graph = import_graph()
    bad = [f"{m} imports {d}" for m, deps in graph.items() for d in deps if ".pruning" in m and ".families" in d]
    for path in (ROOT / "workloads" / "pruning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} compares to {c!r}" for c in consts if c in names]
    assert not bad, "\n".join(bad)


MAX_PARAMETERS = 10


def test_no_function_takes_more_than_ten_parameters():
    """Long parameter lists become settings objects (frozen dataclasses; a click command takes a group of options
    as one, `autlearn.cli.options.option_group`). Counted: every parameter but a method's self/cls; *args and
    **kwargs one each."""
    long = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for fn in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    continue
                a = fn.args
                positional = [*a.posonlyargs, *a.args]
                n = len(positional) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
                if positional and positional[0].arg in ("self", "cls"):
                    n -= 1
                if n > MAX_PARAMETERS:
                    name = getattr(fn, "name", "<lambda>")
                    long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {name} ({n})")
    assert not long, f"functions over {MAX_PARAMETERS} parameters: " + ", ".join(sorted(long))

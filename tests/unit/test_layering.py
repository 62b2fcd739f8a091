"""Layering: fedkit.net imports neither fedkit.sim nor fedkit.experiment, and fedkit's packages
import each other without a circle.

The import graph is read from the source with ``ast`` — every ``import``, also those inside
functions and ``TYPE_CHECKING`` blocks, since a lazy import is a dependency too. A node is a
subpackage (``fedkit.net``) or a top-level module (``fedkit.run``). Entry points — ``__main__``
modules and the command-line modules (``cli.py``, ``*_cli.py``) that :mod:`fedkit.cli` mounts —
are the application layer on top: they may import any package, and a test checks that no library
module imports them (so leaving them out of the package graph cannot hide a circle).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import fedkit

SRC = Path(fedkit.__file__).parent
FORBIDDEN_FOR_NET = ("fedkit.sim", "fedkit.experiment")


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of every fedkit module ``path`` imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package.split(".")[: len(package.split(".")) - n.level + 1]
                name = ".".join([*base, n.module] if n.module else base)
            else:
                name = n.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in n.names)  # `from pkg import module`
    return {f for f in found if f == "fedkit" or f.startswith("fedkit.")}


def is_entry_point(module: str) -> bool:
    """``__main__`` modules and command-line modules (``fedkit.cli``, ``….cli``, ``…_cli``)."""
    last = module.rpartition(".")[2]
    return last in ("__main__", "cli") or last.endswith("_cli")


def _node(module: str) -> str:
    """``fedkit.net.worker`` → ``fedkit.net``; ``fedkit.run`` → ``fedkit.run``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def import_graph(root: Path = SRC) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The package-level graph ``{node: nodes it imports}`` and the module-level imports."""
    graph: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = _module(path, root)
        modules[module] = _imports(path, module)
        if is_entry_point(module):
            continue
        src = _node(module)
        graph.setdefault(src, set())
        for target in modules[module]:
            dst = _node(target)
            if dst != src and dst != "fedkit":
                graph[src].add(dst)
    return graph, modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_sees_known_edges() -> None:
    """Guards the reader itself: the edge → library imports it must find."""
    graph, _ = import_graph()
    assert {"fedkit.net", "fedkit.sim", "fedkit.run"} <= graph["fedkit.experiment"]
    assert "fedkit.run" in graph["fedkit.net"]


def test_cycle_finder_finds_the_old_circle() -> None:
    """experiment/config.py → net/experiment.py → experiment/runner.py, as the tree once was."""
    graph = {
        "fedkit.experiment": {"fedkit.net", "fedkit.sim"},
        "fedkit.net": {"fedkit.experiment", "fedkit.run"},
        "fedkit.sim": {"fedkit.run"},
        "fedkit.run": set(),
    }
    assert cycles(graph) == [["fedkit.experiment", "fedkit.net"]]
    graph["fedkit.net"].discard("fedkit.experiment")
    assert cycles(graph) == []


def test_net_source_imports_neither_sim_nor_experiment() -> None:
    _, modules = import_graph()
    bad = {
        m: sorted(t for t in targets if t.startswith(FORBIDDEN_FOR_NET))
        for m, targets in modules.items()
        if m.startswith("fedkit.net")
    }
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_library_module_imports_an_entry_point() -> None:
    _, modules = import_graph()
    bad = {
        m: sorted(t for t in targets if is_entry_point(t) and t in modules)
        for m, targets in modules.items()
        if not is_entry_point(m)
    }
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_import_circle_among_fedkit_packages() -> None:
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_importing_every_net_module_loads_no_sim_or_experiment_module() -> None:
    """In a fresh interpreter: what ``import fedkit.net.*`` pulls in, transitively."""
    code = """
import importlib, json, pkgutil, sys
import fedkit.net
names = [m.name for m in pkgutil.walk_packages(fedkit.net.__path__, "fedkit.net.")]
for name in names:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules
             if m in ("fedkit.sim", "fedkit.experiment")
             or m.startswith(("fedkit.sim.", "fedkit.experiment.")))
print(json.dumps({"imported": names, "bad": bad}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"fedkit.net.coordinator", "fedkit.net.worker", "fedkit.net.state"} <= set(
        result["imported"]
    )
    assert result["bad"] == []

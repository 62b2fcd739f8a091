"""The core seams hold structurally: executors and deployment never look inside algorithms or
accumulators, and the vectorised executor holds no algorithm code."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "fedkit"
CORE = {"algorithm.py", "aggregate.py", "client.py", "params.py"}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "proto" not in p.parts)


def _classes_defined(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                out.add(node.name)
    return out


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _isinstance_targets(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            for sub in ast.walk(node.args[1]):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
                elif isinstance(sub, ast.Attribute):
                    names.add(sub.attr)
    return names


def test_no_isinstance_on_algorithm_or_accumulator_types_outside_the_core() -> None:
    algorithm_types = _classes_defined(sorted((SRC / "algorithms").glob("*.py")))
    accumulators = {"MeanAcc", "StackAcc"}
    forbidden = algorithm_types | accumulators
    assert {"FedAvg", "Scaffold", "FedProx", "ScaffoldMessage"} <= forbidden  # the scan sees them
    offenders = {
        str(p.relative_to(SRC)): sorted(_isinstance_targets(p) & forbidden)
        for p in _modules()
        if p.name not in CORE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_executors_and_deployment_import_no_algorithm() -> None:
    for p in [*(SRC / "sim").glob("*.py"), *(SRC / "net").glob("*.py"), SRC / "run.py"]:
        bad = {m for m in _imports(p) if m.startswith("fedkit.algorithms")}
        assert not bad, f"{p.relative_to(SRC)} imports {sorted(bad)}"


def test_vectorized_executor_holds_no_algorithm_code() -> None:
    text = (SRC / "sim" / "vectorized.py").read_text()
    tree = ast.parse(text)
    assert not any(
        isinstance(n, ast.Call) and getattr(n.func, "id", None) == "isinstance"
        for n in ast.walk(tree)
    )
    for word in ("scaffold", "fedprox", "control", "Scaffold", "FedProx", "mu="):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        body = code.split('"""', 2)[2]  # after the module docstring
        assert word not in body, word

"""Imports point down and form no circle: flows -> tasks -> hypernet; in tasks, steps -> shared layer.

Every import counts, also those inside functions (lazy imports are still dependencies); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "hypernet")
LAYER = {"hypernet": 0, "tasks": 1, "flows": 2}
# tasks/: the refresh's steps, the operations beside them, and the shared layer (everything else).
STEPS = {"detect", "record", "sweep", "generate", "gate", "dispatch", "register", "retire", "finish"}
STEPS |= {"release"}
OPERATIONS = {"lifecycle", "audit"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines |= set(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def kind(module: str) -> str:
    """hypernet / flows, or for tasks: step, operation or shared."""
    top, _, rest = module.partition(".")
    if top != "tasks":
        return top
    head = rest.partition(".")[0]
    return "step" if head in STEPS else "operation" if head in OPERATIONS else "shared"


def upward(src: str, dst: str) -> bool:
    if LAYER[dst.partition(".")[0]] > LAYER[src.partition(".")[0]]:
        return True
    rank = {"shared": 0, "step": 1, "operation": 2}
    a, b = kind(src), kind(dst)
    if a in rank and b in rank:
        return rank[b] > rank[a] or (a == b == "step" and src != dst)  # steps do not call each other
    return False


def test_imports_point_down() -> None:
    bad = sorted(f"{src} -> {dst}" for src, dsts in graph().items() for dst in dsts if upward(src, dst))
    assert bad == []


def test_there_is_no_import_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_every_step_of_the_flow_is_a_module_of_its_name() -> None:
    from flows import refresh

    names = {
        obj.name for obj in vars(refresh).values() if hasattr(obj, "fn") and hasattr(obj, "task_run_name")
    }
    assert names == STEPS
    assert all((REPO / "tasks" / f"{step}.py").is_file() for step in STEPS)


def test_the_rules_catch_upward_and_sideways_imports() -> None:
    assert upward("hypernet.model", "tasks.runtime") and upward("tasks.runtime", "tasks.generate")
    assert upward("tasks.generate", "tasks.gate") and not upward("tasks.lifecycle", "tasks.release")
    assert "tasks.runtime" in graph()["tasks.generate"]

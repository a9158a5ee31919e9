"""Layers point one way (cli -> flows -> library -> engine) and no module imports itself back.

A small AST check over every module of the package and the flows, counting imports written inside
functions too (they hide cycles from a plain import-time check). Why not import-linter: one more
dependency for about forty lines, and it ignores function-level imports unless configured per module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("b12pipeline", "flows")
LAYERS = {"engine": 0, "library": 1, "flows": 2, "cli": 3}
# The engine decides findings from frames and rule data it is handed: it reads no files (rule files
# are read by b12pipeline/rulesets.py) and starts nothing, so none of these may appear in it.
ENGINE_FORBIDDEN = {"prefect", "great_expectations", "shutil", "subprocess", "sqlalchemy", "pyarrow", "yaml"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (absolute names)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def layer(name: str) -> int:
    if name.startswith("b12pipeline.cli"):
        return LAYERS["cli"]
    if name.split(".")[0] == "flows":
        return LAYERS["flows"]
    if name.startswith("b12pipeline.engine"):
        return LAYERS["engine"]
    return LAYERS["library"]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imported(name, path) if m in mods and m != name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component larger than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_check_sees_function_level_imports_and_cycles():
    tree = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(tree) == [["a", "b", "c"]]
    mods = modules()
    assert "b12pipeline.engine.evaluate" in mods and "flows.nightly" in mods
    # run.py imports the nightly flow inside a function: the edge must be seen.
    assert "flows.nightly" in imported("b12pipeline.cli.run", mods["b12pipeline.cli.run"])


def test_layers_point_one_way():
    upward = [
        f"{name} imports {target}"
        for name, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert upward == [], "cli -> flows -> library -> engine; these point the other way:\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(graph())
    assert found == [], "import cycles (function-level imports included):\n" + "\n".join(map(" <-> ".join, found))


def test_engine_does_no_io():
    mods = modules()
    bad = [
        f"{name} imports {target}"
        for name, path in sorted(mods.items())
        if layer(name) == LAYERS["engine"]
        for target in sorted(imported(name, path))
        if target.split(".")[0] in ENGINE_FORBIDDEN
    ]
    assert bad == [], "the engine reads no files and starts nothing:\n" + "\n".join(bad)

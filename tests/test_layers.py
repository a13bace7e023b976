"""The package's layers, read from the imports themselves: rooms point down only, and no module cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gptq_chat"
TESTS = "tests"
# Higher imports lower, never the reverse; loading and models are peers (a checkpoint and where models live).
RANKS = {"engine": 0, "loading": 1, "models": 1, "chat": 2, "api": 3, "ui": 4, "doctor": 4}
ONLY_FROM_OUTSIDE = {"testing": "tests and bench.py", "ui": "tests, app.py and ui itself", TESTS: "tests"}


def imports(path: Path) -> set[str]:
    """Every gptq_chat module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            found |= {
                f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module for a in node.names
            }
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == TESTS:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith((PACKAGE, TESTS))}
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


GRAPH = {module_name(p): imports(p) for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def room(module: str) -> str:
    """A module's room (`gptq_chat.engine.network` -> "engine"); "tests" for the test suite's helpers."""
    parts = module.split(".")
    return TESTS if parts[0] == TESTS else parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_rooms_point_down_only(module: str) -> None:
    here = room(module)
    for target in GRAPH[module]:
        there = room(target)
        if there in ONLY_FROM_OUTSIDE and there != here:
            raise AssertionError(f"{module} imports {target}: {there}/ is for {ONLY_FROM_OUTSIDE[there]} only")
        if here in RANKS and there in RANKS:
            assert RANKS[there] <= RANKS[here], f"{module} ({here}) imports {target}, a room above it ({there})"


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module not in done:
            for target in sorted(GRAPH.get(module, ())):
                visit(target, [*path, module])
            done.add(module)

    for module in GRAPH:
        visit(module, [])

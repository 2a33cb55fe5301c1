"""The shape of the package, checked so that it stays as the README's module table says.

Issue 10 split the code by concern; these keep it split: only `stocksched.storage` talks to
Redis, the HTTP server imports nothing from the CLI, there are no import cycles, and no
module, class or function grows past the sizes a reader can hold in mind.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stocksched"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 50


def modules() -> Iterator[tuple[str, ast.Module, int]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        text = path.read_text(encoding="utf-8")
        yield name, ast.parse(text), len(text.splitlines())


def imported(name: str, tree: ast.Module) -> set[str]:
    """Every module ``name`` imports, wherever the import sits (lazy ones included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against the importing package
                parts = name.split(".")[: -node.level]
                base = ".".join([*parts, node.module])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


ALL = {name: (tree, lines) for name, tree, lines in modules()}


def test_only_the_storage_package_imports_redis() -> None:
    offenders = sorted(
        name
        for name, (tree, _) in ALL.items()
        if not name.startswith("stocksched.storage")
        and any(m == "redis" or m.startswith("redis.") for m in imported(name, tree))
    )
    assert offenders == []


def test_the_http_server_imports_nothing_from_the_cli() -> None:
    offenders = sorted(
        name
        for name, (tree, _) in ALL.items()
        if name.startswith(("stocksched.http", "stocksched.facade", "stocksched.views"))
        and any(m.startswith("stocksched.cli") for m in imported(name, tree))
    )
    assert offenders == []


def test_no_import_cycles_between_modules() -> None:
    # Only imports at module level form cycles that matter at import time; lazy imports
    # inside functions are how the CLI keeps start-up fast and are not edges here.
    graph: dict[str, set[str]] = {}
    for name, (tree, _) in ALL.items():
        edges: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks are not imports
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= imported(name, ast.Module(body=[node], type_ignores=[]))
        graph[name] = {m for m in edges if m in ALL and m != name}

    seen: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        if node in stack:
            cycle = [*stack[stack.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ re-exporting its own modules is not a cycle
            if not nxt.startswith(node + ".") and not node.startswith(nxt + "."):
                visit(nxt)
        stack.pop()
        seen.add(node)

    for name in sorted(graph):
        visit(name)


def test_modules_classes_and_functions_stay_readable() -> None:
    too_big: list[str] = []
    for name, (tree, lines) in ALL.items():
        if lines > MAX_MODULE_LINES:
            too_big.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS_LINES:
                too_big.append(f"class {name}.{node.name}: {size} lines")
            elif (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and size > MAX_FUNCTION_LINES
            ):
                too_big.append(f"function {name}.{node.name}: {size} lines")
    assert too_big == []

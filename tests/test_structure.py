"""The package's structure, as the architecture page states it (docs/architecture.md).

Arrows point down: each layer imports only from the layers below it, and the core never
imports the applications. Every public module says what it exports (``__all__``), every
exported name is documented, and no core function grows past ~80 lines without a reason
written beside it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import seqjax

PACKAGE = Path(seqjax.__file__).parent

# Bottom to top; a module may import from its own layer and the ones before it.
LAYERS = [
    ["_types", "_checks", "_tree"],
    ["cells"],
    ["tuning"],
    ["methods", "_kernels"],
    ["unroll"],
    ["layers", "embedded", "losses"],
    ["models", "generate"],
    ["train", "sharding", "checkpoint", "forecast", "reservoir", "diagnostics"],
    ["interop"],
    ["apps"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_LINES = 80


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, parts


def _top(parts) -> str | None:
    return parts[0] if parts else None


def _seqjax_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqjax"):
            names = node.module.split(".")[1:]
            if names:
                yield node.lineno, names[0]
            else:  # from seqjax import a, b
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("seqjax."):
                    yield node.lineno, alias.name.split(".")[1]


def test_arrows_point_down():
    wrong = []
    for path, parts in _modules():
        top = _top(parts)
        if top is None:  # seqjax/__init__.py re-exports the API
            continue
        assert top in RANK, f"{path}: place module {top!r} in a layer of LAYERS"
        for line, imported in _seqjax_imports(ast.parse(path.read_text())):
            if imported in RANK and RANK[imported] > RANK[top]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports seqjax.{imported}")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def _function_lengths(tree: ast.AST, source_lines: list[str]):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring does not count
            if not body:
                continue
            start, end = body[0].lineno, node.end_lineno
            code = [
                line
                for line in source_lines[start - 1 : end]
                if line.strip() and not line.strip().startswith("#")
            ]
            yield node, len(code)


def test_core_functions_are_short_or_say_why():
    """A function over MAX_LINES lines of code carries ``# long: <reason>`` on its def line."""
    long = []
    for path, parts in _modules():
        if _top(parts) == "apps":
            continue
        text = path.read_text()
        lines = text.splitlines()
        for node, count in _function_lengths(ast.parse(text), lines):
            if count > MAX_LINES and "# long:" not in lines[node.lineno - 1]:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {count}")
    assert not long, "functions over 80 lines without a reason:\n" + "\n".join(long)


@pytest.mark.parametrize("module", seqjax.SUBMODULES)
def test_public_modules_list_and_document_their_api(module):
    try:
        mod = importlib.import_module(module)
    except ImportError as err:  # an optional dependency (matplotlib, torch) is missing
        pytest.skip(f"{module}: {err}")
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    undocumented = [
        name
        for name in mod.__all__
        if (inspect.isfunction(obj := getattr(mod, name)) or inspect.isclass(obj))
        and not inspect.getdoc(obj)
    ]
    assert not undocumented, f"{module}: no docstring for {undocumented}"


def test_the_top_level_api_is_documented():
    for name in seqjax.__all__:
        obj = getattr(seqjax, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), name


def test_every_cell_subclasses_the_typed_base():
    from tests.registry import CELLS

    for name, cell in CELLS.items():
        assert isinstance(cell, seqjax.Cell), name

"""Every public name has a page in the API reference, and every public value a doc comment.

The public API is ``seqjax.__all__`` plus the ``__all__`` of each module in
``seqjax.SUBMODULES`` (tests/test_structure.py checks that its classes and functions have
docstrings). The pages come from ``docs/_ext/seqjax_api.py``, which the Sphinx build runs;
these tests run its page generator without Sphinx and hold its output to that list.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

import seqjax

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load_generator():
    spec = importlib.util.spec_from_file_location("seqjax_api", DOCS / "_ext" / "seqjax_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


api = _load_generator()
PAGES = api.api_pages()
PUBLIC = {module: importlib.import_module(module).__all__ for module in api.public_modules()}


def _page_of(module: str, name: str) -> str:
    """The page that documents ``module.name``: its own, or the one of the object it re-exports."""
    obj = getattr(importlib.import_module(module), name)
    for rel, text in PAGES.items():
        if not rel.startswith(f"{api.API_DIR}/{api.GENERATED}/"):
            continue
        current = re.search(r"^\.\. currentmodule:: (\S+)$", text, re.M).group(1)
        documented = re.search(r"^\.\. auto\w+:: (\S+)$", text, re.M).group(1)
        if documented == name and getattr(importlib.import_module(current), name) is obj:
            return rel
    raise AssertionError(f"{module}.{name}: no page in the API reference")


def _table_rows(text: str) -> set[str]:
    rows = set()
    for block in re.findall(r"\.\. autosummary::\n(?:   :.*\n)*\n((?:   \S.*\n)+)", text):
        rows |= {row.strip().lstrip("~") for row in block.splitlines()}
    return rows


def test_the_public_api_is_the_generators_input():
    assert api.public_modules() == ["seqjax", *seqjax.SUBMODULES]
    assert sum(len(names) for names in PUBLIC.values()) > 300  # the walk reached every module


@pytest.mark.parametrize("module", list(PUBLIC))
def test_every_public_name_has_a_page_and_a_row_in_its_modules_table(module):
    page = PAGES[f"{api.API_DIR}/{module}.rst"]
    rows = _table_rows(page)
    for name in PUBLIC[module]:
        target = _page_of(module, name).rpartition("/")[2].removesuffix(".rst")
        assert target.rpartition(".")[2] == name, (module, name, target)
        assert name in rows or target in rows, f"{module}.{name} is missing from its table"


def test_every_page_is_reachable_and_names_a_public_object():
    index = PAGES[f"{api.API_DIR}/index.rst"]
    listed = set(re.findall(r"^   (seqjax\S*)$", index, re.M))
    assert listed >= set(PUBLIC), "a public module is missing from the API index"
    public = {f"{m}.{n}" for m, names in PUBLIC.items() for n in names}
    for rel in PAGES:
        if rel.startswith(f"{api.API_DIR}/{api.GENERATED}/"):
            assert rel.rpartition("/")[2].removesuffix(".rst") in public, rel


def test_a_new_public_name_gets_a_page(monkeypatch):
    """The reference follows ``__all__``: a name added there gets a page with no docs edit."""

    def added():
        """A function that only this test exports."""

    monkeypatch.setattr(seqjax.losses, "added", added, raising=False)
    monkeypatch.setattr(seqjax.losses, "__all__", [*seqjax.losses.__all__, "added"])
    pages = api.api_pages()
    assert f"{api.API_DIR}/{api.GENERATED}/seqjax.losses.added.rst" in pages
    assert "added" in _table_rows(pages[f"{api.API_DIR}/seqjax.losses.rst"])


@pytest.mark.parametrize("module", list(PUBLIC))
def test_every_public_module_and_value_is_documented(module):
    """Modules need a docstring; values (not classes or functions) a ``#:`` doc comment."""
    mod = importlib.import_module(module)
    assert inspect.getdoc(mod), f"{module} has no docstring"
    undocumented = [
        name
        for name in PUBLIC[module]
        if not (inspect.isclass(obj := getattr(mod, name)) or callable(obj))
        and not api.data_doc(module, name)
    ]
    assert not undocumented, f"{module}: no '#:' doc comment for {undocumented}"


def test_a_value_without_a_doc_comment_is_caught(tmp_path, monkeypatch):
    (tmp_path / "fake_public.py").write_text(
        '"""A module."""\n#: documented.\nGOOD = 1\nBAD = 2\nINLINE = 3  #: inline.\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert api.data_doc("fake_public", "GOOD") == "documented."
    assert api.data_doc("fake_public", "INLINE") == "inline."
    assert api.data_doc("fake_public", "BAD") is None


def test_namedtuple_fields_are_documented_by_their_shape_comments():
    fields = api.field_comments(seqjax.LSTMParams)
    assert fields == {
        "w_x": "[I, 4H] input weights",
        "w_h": "[H, 4H] recurrent weights",
        "b": "[4H] bias",
    }
    assert api._comment_to_rst("[*B, H] hidden state") == "``[*B, H]`` hidden state"

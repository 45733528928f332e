"""The API reference, generated from the public API itself.

The public API is ``seqjax.__all__`` plus the ``__all__`` of every module in
``seqjax.SUBMODULES``. :func:`api_pages` turns that list into reStructuredText pages, one per
module, whose ``autosummary`` tables give every public name a page of its own; a new public
name gets its page without an edit here. A name exported by several modules (the top level
re-exports the submodules; ``seqjax.reservoir`` re-exports the echo-state cell) has one page,
under the module that defines it, and the other tables link to it.

This file imports no Sphinx at module level, so ``tests/test_docs.py`` checks the pages
without a Sphinx build; :func:`setup` is the Sphinx extension that writes them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

API_DIR = "api"  # relative to the docs' source directory
GENERATED = "generated"  # autosummary's per-name pages, under API_DIR


@dataclass(frozen=True)
class Entry:
    """One public name: where users import it, and where its page lives."""

    module: str  # the public module that exports it
    name: str
    home: str  # the public module whose page documents it

    @property
    def target(self) -> str:
        return f"{self.home}.{self.name}"

    @property
    def has_own_page(self) -> bool:
        return self.home == self.module


def public_modules() -> list[str]:
    import seqjax

    return ["seqjax", *seqjax.SUBMODULES]


def _home(module: str, name: str, obj: object, modules: list[str]) -> str:
    """The public module that documents ``obj``: the one it is defined under, when that
    module exports it under the same name; else ``module`` itself (data has no
    ``__module__``, and a value exported under a new name gets a page of its own)."""
    defined = getattr(obj, "__module__", None) if inspect.isclass(obj) or callable(obj) else None
    if isinstance(defined, str):
        owners = [m for m in modules[1:] if defined == m or defined.startswith(m + ".")]
        for owner in sorted(owners, key=len, reverse=True):
            mod = importlib.import_module(owner)
            if name in getattr(mod, "__all__", ()) and getattr(mod, name) is obj:
                return owner
    if module == "seqjax":  # the top level only re-exports: find the submodule that owns it
        for owner in modules[1:]:
            mod = importlib.import_module(owner)
            if name in getattr(mod, "__all__", ()) and getattr(mod, name) is obj:
                return owner
    return module


def entries() -> dict[str, list[Entry]]:
    """Every public name, by the public module that exports it (in ``__all__`` order)."""
    modules = public_modules()
    found: dict[str, list[Entry]] = {}
    for module in modules:
        mod = importlib.import_module(module)
        found[module] = [
            Entry(module, name, _home(module, name, getattr(mod, name), modules))
            for name in mod.__all__
        ]
    return found


def _title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def _table(names: list[str]) -> str:
    rows = "".join(f"   {name}\n" for name in names)
    return f".. autosummary::\n   :nosignatures:\n\n{rows}\n"


def _directive(obj: object) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def _name_page(entry: Entry) -> str:
    """One name's page. Orphan: reached from its module's table, not from the sidebar (a
    sidebar of every name would cost each page of the site a 300-entry navigation tree)."""
    obj = getattr(importlib.import_module(entry.module), entry.name)
    directive = _directive(obj)
    options = ""
    if directive == "autoclass":
        options = "   :members:\n   :show-inheritance:\n"
    elif directive == "autodata" and (len(repr(obj)) > 100 or "<" in repr(obj)):
        options = "   :no-value:\n"  # a long or object-laden repr says less than the doc
    return (
        ":orphan:\n\n"
        + _title(entry.target)
        + f"\n.. currentmodule:: {entry.module}\n\n.. {directive}:: {entry.name}\n{options}"
    )


def _module_page(module: str, items: list[Entry]) -> str:
    parts = [
        _title(f"``{module}``"),
        f".. automodule:: {module}\n   :no-members:\n",
        f".. currentmodule:: {module}\n",
    ]
    own = [e.name for e in items if e.has_own_page]
    if own:
        parts.append(_table(own))
    if module == "seqjax":
        parts.append(
            "Module attributes\n-----------------\n\n"
            ".. autodata:: SUBMODULES\n   :no-value:\n\n"
            ".. py:data:: __version__\n\n"
            "   The installed version (from the package metadata; ``pyproject.toml`` is its one\n"
            "   source). ``seqjax --version`` prints the same.\n\n"
            # the tables name their targets in full: no current module to prefix them with
            ".. currentmodule:: None\n"
        )
        by_home: dict[str, list[Entry]] = {}
        for e in items:
            by_home.setdefault(e.home, []).append(e)
        for home, group in by_home.items():
            parts.append(_title(f"From :mod:`{home}`", "-"))
            parts.append(_table([f"~{e.target}" for e in group]))
        return "\n".join(parts)
    others = [e for e in items if not e.has_own_page]
    if others:
        parts.append(_title("Re-exported here", "-"))
        parts.append(_table([f"~{e.target}" for e in others]))
    return "\n".join(parts)


def packages(modules: list[str]) -> list[str]:
    """The packages above public modules that are not public modules themselves
    (``seqjax.apps``, ``seqjax.interop``): each gets a page with its docstring."""
    return sorted({m.rpartition(".")[0] for m in modules if m.count(".") >= 2} - set(modules))


def _package_page(package: str, modules: list[str]) -> str:
    children = "".join(f"* :mod:`{m}`\n" for m in modules if m.startswith(package + "."))
    return (
        _title(f"``{package}``")
        + f"\n.. automodule:: {package}\n   :no-members:\n\nIts public modules:\n\n{children}"
    )


def _index_page(modules: list[str]) -> str:
    ordered = ["seqjax._types"]
    for module in modules:
        parent = module.rpartition(".")[0]
        if parent in packages(modules) and parent not in ordered:
            ordered.append(parent)
        ordered.append(module)
    rows = "".join(f"   {module}\n" for module in ordered)
    return (
        _title("API reference")
        + "\nThe public API is ``seqjax.__all__`` (the top level) plus the ``__all__`` of every\n"
        "module in :data:`seqjax.SUBMODULES`; each name has one page, under the module that\n"
        "defines it. :mod:`seqjax._types` is the shape vocabulary every docstring uses.\n\n"
        ".. toctree::\n   :maxdepth: 1\n\n" + rows
    )


def _types_page() -> str:
    return (
        _title("Shapes: ``seqjax._types``") + "\n.. automodule:: seqjax._types\n\n"
        ".. currentmodule:: seqjax._types\n\n"
        ".. py:data:: Array\n\n   :class:`jax.Array`.\n\n"
        ".. py:data:: PRNGKey\n\n   A :class:`jax.Array` of keys, from :func:`jax.random.key`.\n\n"
        ".. py:data:: PyTree\n\n   Any pytree (a NamedTuple, tuple, dict or array).\n"
    )


def api_pages() -> dict[str, str]:
    """The API reference: ``{path relative to the docs' source: reStructuredText}``."""
    found = entries()
    pages = {
        f"{API_DIR}/index.rst": _index_page(list(found)),
        f"{API_DIR}/seqjax._types.rst": _types_page(),
    }
    for package in packages(list(found)):
        pages[f"{API_DIR}/{package}.rst"] = _package_page(package, list(found))
    for module, items in found.items():
        pages[f"{API_DIR}/{module}.rst"] = _module_page(module, items)
        for entry in items:
            if entry.has_own_page:
                pages[f"{API_DIR}/{GENERATED}/{entry.target}.rst"] = _name_page(entry)
    return pages


def write_api_pages(srcdir: Path) -> list[Path]:
    """Write :func:`api_pages` under ``srcdir``, touching only files whose text changed
    (so an incremental build rereads only what changed); remove stale module pages."""
    written = []
    pages = api_pages()
    for rel, text in pages.items():
        path = srcdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    for path in (srcdir / API_DIR).rglob("*.rst"):
        if str(path.relative_to(srcdir)) not in pages:
            path.unlink()
    return written


# -- NamedTuple fields: their shape comments are their documentation -------------------------


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` for a class body's annotated fields with a trailing comment,
    e.g. ``w_x: Array  # [I, 4H] input weights``."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    source = inspect.cleandoc("\n" + source) if source.startswith((" ", "\t")) else source
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found = {}
    for node in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else ():
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.lineno in comments:
                found[node.target.id] = comments[node.lineno]
    return found


def data_doc(module: str, name: str) -> str | None:
    """The doc comment of a module-level value: ``#:`` lines above its assignment, a ``#:``
    at the end of its line, or a string right after it; followed through ``from X import``
    to the module that assigns it. None when it has none."""
    mod = importlib.import_module(module)
    try:
        source = inspect.getsource(mod)
    except (OSError, TypeError):
        return None
    lines = source.splitlines()
    tree = ast.parse(source)
    for i, node in enumerate(tree.body):
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        if name in targets:
            above, row = [], node.lineno - 2
            while row >= 0 and lines[row].lstrip().startswith("#:"):
                above.insert(0, lines[row].lstrip()[2:].strip())
                row -= 1
            if above:
                return "\n".join(above)
            if "#:" in lines[node.lineno - 1]:
                return lines[node.lineno - 1].split("#:", 1)[1].strip()
            after = tree.body[i + 1] if i + 1 < len(tree.body) else None
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                if isinstance(after.value.value, str):
                    return inspect.cleandoc(after.value.value)
            return None
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            origin = importlib.util.resolve_name("." * node.level + (node.module or ""), module)
            if node.level and mod.__spec__ and not mod.__spec__.submodule_search_locations:
                origin = importlib.util.resolve_name(
                    "." * node.level + (node.module or ""), module.rpartition(".")[0]
                )
            return data_doc(origin, name)
    return None


def _data_docstring(app, what, name, obj, options, lines) -> None:
    """A value's doc comment, wherever it is assigned (autodoc reads only the module it
    documents, so a re-exported value would otherwise show its type's docstring)."""
    if what != "data":
        return
    module, _, attr = name.rpartition(".")
    if module in sys.modules:
        doc = data_doc(module, attr)
        if doc:
            lines[:] = doc.splitlines()


def _is_namedtuple(cls: object) -> bool:
    return inspect.isclass(cls) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def _field_docstring(app, what, name, obj, options, lines) -> None:
    """Replace ``Alias for field number N`` by the field's shape comment, when it has one."""
    if what not in ("property", "attribute") or not lines:
        return
    if not lines[0].startswith("Alias for field number"):
        return
    owner_name, _, field = name.rpartition(".")
    module_name, _, class_name = owner_name.rpartition(".")
    cls = getattr(sys.modules.get(module_name), class_name, None)
    if _is_namedtuple(cls):
        comment = field_comments(cls).get(field)
        if comment:
            lines[:] = [_comment_to_rst(comment)]


def _comment_to_rst(comment: str) -> str:
    """A source comment as reST: a leading shape ``[...]`` as code, the rest as plain text."""
    shape, rest = "", comment
    if comment.startswith("[") and "]" in comment:
        end = comment.index("]") + 1
        shape, rest = f"``{comment[:end]}`` ", comment[end:].lstrip()
    for char in "\\*`|_":
        rest = rest.replace(char, "\\" + char)
    return shape + rest


def _defined_outside(cls: type, name: str) -> bool:
    """Whether the docstring ``cls.name`` shows comes from a class outside seqjax (a Flax
    module's ``setup``): such members are Flax's to document, not ours."""
    for klass in cls.__mro__:
        member = klass.__dict__.get(name)
        if member is not None and getattr(member, "__doc__", None):
            return not klass.__module__.startswith("seqjax")
    return False


def _skip_member(app, what, name, obj, skip, options):
    """Skip a method that seqjax overrides without a docstring of its own, where the one it
    would inherit is a foreign library's (Flax's ``setup``)."""
    if what != "class" or skip or getattr(obj, "__doc__", "") is not None:
        return None
    qualname = getattr(obj, "__qualname__", "")
    owner = getattr(sys.modules.get(getattr(obj, "__module__", "")), qualname.split(".")[0], None)
    if inspect.isclass(owner) and _defined_outside(owner, name):
        return True
    return None


def _public_bases(app, name, obj, options, bases) -> None:
    """Show a private base class (``_NewtonMethod``) as the public classes it derives from."""
    i = 0
    while i < len(bases):
        base = bases[i]
        if base.__name__.startswith("_") and base.__module__.startswith("seqjax"):
            bases[i : i + 1] = [b for b in base.__bases__ if b not in bases]
        else:
            i += 1


def _write(app, config) -> None:
    write_api_pages(Path(app.srcdir))


# -- Cross-references: one page per object, many names for it -------------------------------

# Where annotations name a public class by its private home, the public name to link.
PUBLIC_NAMES = {
    "jax.jaxlib._jax.Array": "jax.Array",
    "jaxlib._jax.Array": "jax.Array",
    "jax._src.mesh.Mesh": "jax.sharding.Mesh",
    "flax.nnx.module.Module": "flax.nnx.Module",
    "flax.linen.module.Module": "flax.linen.Module",
    "optax._src.base.GradientTransformation": "optax.GradientTransformation",
    "jax.P": "jax.sharding.PartitionSpec",
}


def aliases() -> dict[str, str]:
    """``{name a docstring may use: the documented target}``: every re-export
    (``seqjax.LSTMCell`` is documented as ``seqjax.cells.LSTMCell``), and the bare names of
    the top-level API (``Stack`` in any docstring is :class:`seqjax.layers.Stack`)."""
    found = {}
    for module, items in entries().items():
        for e in items:
            if not e.has_own_page:
                found[f"{e.module}.{e.name}"] = e.target
            if module == "seqjax":
                found[e.name] = e.target
    return found


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    if not hasattr(app, "_seqjax_aliases"):
        app._seqjax_aliases = {**aliases(), **PUBLIC_NAMES}
    target = app._seqjax_aliases.get(node["reftarget"])
    if target is None:
        return None
    from sphinx.ext import intersphinx

    node = node.deepcopy()
    node["reftarget"] = target
    domain = env.get_domain("py")
    found = domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
    )
    return found if found is not None else intersphinx.missing_reference(app, env, node, contnode)


def setup(app):
    # At config-inited, before Sphinx lists the source files: autosummary then sees the
    # pages and generates a stub for every name in their tables.
    app.connect("config-inited", _write)
    app.connect("autodoc-process-docstring", _field_docstring)
    app.connect("autodoc-process-docstring", _data_docstring)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-skip-member", _skip_member)
    # Before intersphinx's own handler (priority 500), which would give up on these names.
    app.connect("missing-reference", _missing_reference, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

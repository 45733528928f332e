"""Sphinx configuration of the seqjax documentation.

Build (from the repository root; the README says the same):

    python -m sphinx -j auto -W --keep-going -b html docs docs/_build/html

``-W`` turns every warning into an error; ``nitpicky`` (below) makes a broken cross-reference
a warning; a tutorial cell that raises fails the build (``nb_execution_raise_on_error``), and
``-T`` prints that cell's traceback. ``-j auto`` reads (and so executes the tutorials) on every
core; the build takes a few minutes on 2 CPU cores, most of it executing the tutorials.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import seqjax  # noqa: E402

project = "seqjax"
author = "seqjax developers"
copyright = "seqjax developers"
release = seqjax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "myst_nb",
    "seqjax_api",
]

exclude_patterns = ["_build", "_ext", "_inv", "**.ipynb_checkpoints"]
nitpicky = True
# Flax's private types, seen in the signatures and bases of the linen and NNX adapters; Flax's
# own reference documents none of them under a name a link could use.
nitpick_ignore = [
    ("py:class", "flax.core.scope.Scope"),
    ("py:class", "flax.linen.module._Sentinel"),
    ("py:class", "flax.linen.recurrent.RNNCellBase"),
    ("py:class", "flax.nnx.nn.recurrent.RNNCellBase"),
    # seqjax's own private types in public signatures: the time axis the parallel methods
    # evaluate on (``evaluate_on``) and the Newton methods' common base in SequenceParallel's
    # ``solver`` type; their public faces are DEER, QuasiDEER and SequenceParallel.
    ("py:class", "seqjax.methods._parallel.Local"),
    ("py:class", "seqjax.methods._newton._NewtonMethod"),
]

# -- Parallel reading ----------------------------------------------------------------------
# Sphinx reads the sorted documents in consecutive chunks, one chunk per process at a time, so
# the ten executed tutorials (docs/tutorials/, most of the build's time) would share one
# chunk and run one after another. Dealing the documents out round-robin instead spreads them
# over the chunks; the site is the same. (Left as Sphinx has it if its internals move.)
import sphinx.builders as _builders  # noqa: E402

if hasattr(_builders, "make_chunks"):
    _consecutive_chunks = _builders.make_chunks

    def _dealt_chunks(arguments, nproc, maxbatch=10):
        count = len(_consecutive_chunks(arguments, nproc, maxbatch))
        return [list(arguments[i::count]) for i in range(count)]

    _builders.make_chunks = _dealt_chunks

# -- API reference ---------------------------------------------------------------------------
# seqjax_api writes every page (docs/_ext/seqjax_api.py); autosummary draws the tables.
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

# -- Links to the libraries seqjax builds on -------------------------------------------------
# The build reads its inventories from docs/_inv, so it needs no network (CI reaches only the
# package registries). python.inv is CPython 3.11's own (Debian's python3.11-doc); the
# others list just the objects these pages link to, at their addresses on each project's
# site (docs/_inv/*.txt, compiled below). SEQJAX_DOCS_LIVE_INVENTORIES=1 fetches the live
# inventories instead, to check the local ones against them.
SITES = {
    "python": "https://docs.python.org/3.11/",
    "numpy": "https://numpy.org/doc/stable/",
    "jax": "https://docs.jax.dev/en/latest/",
    "flax": "https://flax.readthedocs.io/en/latest/",  # NNX
    "flax_linen": "https://flax-linen.readthedocs.io/en/latest/",
    "optax": "https://optax.readthedocs.io/en/latest/",
}


def _inventory(name: str) -> str:
    """The local inventory of ``name``: docs/_inv/NAME.inv, or NAME.txt compiled to one."""
    import zlib

    given = DOCS / "_inv" / f"{name}.inv"
    if given.exists():
        return str(given)
    lines = (DOCS / "_inv" / f"{name}.txt").read_text().splitlines()
    body = "".join(f"{line}\n" for line in lines if line and not line.startswith("#"))
    header = f"# Sphinx inventory version 2\n# Project: {name}\n# Version: \n"
    header += "# The remainder of this file is compressed using zlib.\n"
    out = DOCS / "_build" / "_inv" / f"{name}.inv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(header.encode() + zlib.compress(body.encode()))
    return str(out)


if os.environ.get("SEQJAX_DOCS_LIVE_INVENTORIES") == "1":
    intersphinx_mapping = {name: (url, None) for name, url in SITES.items()}
else:
    intersphinx_mapping = {name: (url, _inventory(name)) for name, url in SITES.items()}

# -- Notebooks (the tutorials): executed on every build; a cell that raises fails it ---------
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 300
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# -- HTML ------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"seqjax {release}"

"""Strict numerics for every test, a PRNG key fixture, and one tolerance helper."""

from __future__ import annotations

import os

# Compilation dominates most tests. XLA's cheapest backend (LLVM) optimisation level cuts
# the suite's time by about a fifth; it changes how fast the compiled code runs, not what it
# computes (no fast-math either way). Set before JAX starts its backend, so every test and
# every subprocess a test starts (examples, benchmark quick runs) inherits it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

import jax  # noqa: E402
import numpy as np
import pytest

# float64 gradient checks need x64; arrays stay float32 wherever a dtype is given.
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def strict_numerics():
    """No implicit dtype or rank promotion inside tests: seqjax must never rely on either.

    Scoped to tests (not global) so the docstring examples run as a user would run them.
    """
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(autouse=True, scope="module")
def fresh_compilation_caches():
    """Each test module leaves JAX's caches of traced and compiled functions cleared.

    A worker of the full run otherwise holds every executable of every module it ran (its
    memory grew to ~6 GB), and in that state an XLA:CPU compile segfaulted in three of three
    full runs on 2026-11-24 (twice in the same test, which passes alone and in its module).
    """
    yield
    jax.clear_caches()


@pytest.fixture
def key():
    return jax.random.key(0)


def tree_allclose(actual, expected, *, rtol: float, atol: float) -> None:
    """Assert two pytrees have the same structure and allclose leaves."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), (
        jax.tree.structure(actual),
        jax.tree.structure(expected),
    )
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def random_like(tree, key, scale: float = 1.0):
    """A pytree of the same structure, shapes and dtypes, filled with scaled normal noise."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [scale * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    )

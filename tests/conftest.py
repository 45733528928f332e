"""Strict numerics for every test, a PRNG key fixture, and one tolerance helper."""

from __future__ import annotations

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)  # float64 gradient checks; arrays stay float32 unless asked


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

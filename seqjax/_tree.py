"""Small pytree helpers shared by the evaluation methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax._types import Array, PyTree


def select(mask: Array, new: PyTree, old: PyTree) -> PyTree:
    """Leaf by leaf, ``new`` where ``mask`` holds and ``old`` elsewhere.

    ``mask`` has the leaves' shape without their last (feature) axis: ``[*B]`` for carries,
    ``[T, *B]`` for stacked states.
    """
    return jax.tree.map(lambda n, o: jnp.where(mask[..., None], n, o), new, old)


def zeros_like(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, tree)

"""Where truncated BPTT cuts the carry: the window borders of ``unroll(..., truncate=k)``.

Shared by both derivatives of :func:`seqjax.unroll` (JAX's transpose of the scan, and the
structured one in ``_structured.py``), so that they cut at the same places.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax._types import Array, PyTree


def window_border(t: Array, truncate: int, reverse: bool, num_steps: int, lengths: Array | None):
    """Whether the carry entering step ``t`` crosses a window border: ``[]``, or ``[*B]``.

    Borders lie at ``k, 2k, ...`` counted from step 0: the carry entering step ``t`` from
    ``t - 1`` (forwards) or from ``t + 1`` (backwards) is cut when that step boundary is a
    multiple of ``k``. Only boundaries strictly inside a sequence count (``lengths``, else
    ``T``): a padded sequence holds its carry through the padded steps, and a cut there
    would sever the returned carry (forwards) or the initial one (backwards) from the
    window it belongs to, which an unpadded sequence of the same length would not.
    """
    entering = t + 1 if reverse else t
    end = num_steps if lengths is None else lengths
    return (entering % truncate == 0) & (entering > 0) & (entering < end)


def where_border(border: Array, cut: PyTree, carry: PyTree) -> PyTree:
    """``cut`` where ``border`` (``[]`` or ``[*B]``) holds, else ``carry``, leaf by leaf."""

    def pick(c, a):
        mask = border if jnp.ndim(border) == 0 else border[..., None]
        return jnp.where(mask, c, a)

    return jax.tree.map(pick, cut, carry)


def stop_at_border(border: Array, carry: PyTree) -> PyTree:
    """``carry`` with ``lax.stop_gradient`` applied where ``border`` holds."""
    return where_border(border, jax.tree.map(jax.lax.stop_gradient, carry), carry)

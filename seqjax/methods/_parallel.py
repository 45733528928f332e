"""What the methods that run in parallel over time share.

``lax.scan`` pays a fixed cost per step, so at ``T = 10^4 .. 10^6`` the loop, not the
arithmetic, is the cost. The parallel methods (:class:`~seqjax.Associative`,
:class:`~seqjax.DEER`, :class:`~seqjax.QuasiDEER`) find every state at once; this module
turns those states into :func:`seqjax.unroll`'s results (the outputs are one ``vmap`` of the
step over time) and holds the affine-recurrence solver they all use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqjax import _checks, _tree
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell
from seqjax.methods._base import Inputs, ParallelInfo

# solve(px [T, *B, G], carry, fresh, valid [T, *B] | None) -> (states [T, *B, ...], info)
Solver = Callable[[Array, PyTree, PyTree, Array | None], tuple[PyTree, ParallelInfo]]


def evaluate(cell: Cell, params: PyTree, inputs: Inputs, solve: Solver):
    """``(carry, ys, info)`` from the states that ``solve`` finds for every step at once."""
    xs, carry, reverse, resets = inputs.xs, inputs.carry, inputs.reverse, inputs.resets
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    px = cell.project(params, xs)  # [T, *B, G]: every step at once, whatever the backend
    valid = None
    if inputs.lengths is not None:
        valid = _checks.valid_steps(inputs.lengths, num_steps)  # [T, *B]
    fresh = cell.init_carry(batch_shape, jax.tree.leaves(carry)[0].dtype)
    if num_steps == 0:
        spec = jax.ShapeDtypeStruct(px.shape[1:], px.dtype)
        y = jax.eval_shape(cell.step, params, carry, spec)[1]
        info = ParallelInfo.exact(jax.tree.leaves(carry)[0].dtype)
        return carry, jnp.zeros((0, *y.shape), y.dtype), info
    states, info = solve(px, carry, fresh, valid)
    final = jax.tree.map(lambda s: s[0] if reverse else s[-1], states)
    prev = shift(states, carry, reverse)  # the carry entering each step
    if resets is not None:
        prev = _tree.select(resets, jax.tree.map(lambda f: f[None], fresh), prev)
    # Every step at once, each on the batch [*B]: a cell may draw noise per row (zoneout).
    _, ys = jax.vmap(lambda c, p: cell.step(params, c, p))(prev, px)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return final, ys, info


def shift(states: PyTree, first: PyTree, reverse: bool) -> PyTree:
    """The state entering each step: ``states`` shifted one step in time, ``first`` at the start."""

    def shift(s, f):
        if reverse:
            return jnp.concatenate([s[1:], f[None].astype(s.dtype)])
        return jnp.concatenate([f[None].astype(s.dtype), s[:-1]])

    return jax.tree.map(shift, states, first)


def _affine_combine(dense: bool):
    """Composition of affine maps ``s -> J s + c``: first ``x``, then ``y`` (an associative op)."""

    def combine(x, y):
        (j1, c1), (j2, c2) = x, y
        if dense:
            # Full float32 products: TF32 (the GPU default) would stall Newton above tol.
            mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
            return mm(j2, j1), mm(j2, c1[..., None])[..., 0] + c2
        return j2 * j1, j2 * c1 + c2

    return combine


def solve_affine(jac: Array, c: Array, s0: Array, reverse: bool, dense: bool) -> Array:
    """All ``s_t = J_t s_{t-1} + c_t`` from ``s0`` (``s_{-1}``), along axis 0, by associative scan.

    ``jac`` is ``[T, ..., D, D]`` (dense) or like ``c`` (diagonal, possibly complex).
    """
    first = -1 if reverse else 0
    if dense:
        c = c.at[first].add((jac[first] @ s0[..., None])[..., 0])
    else:
        c = c.at[first].add(jac[first] * s0)
    jac = jac.at[first].set(jnp.zeros_like(jac[first]))
    _, states = jax.lax.associative_scan(_affine_combine(dense), (jac, c), reverse=reverse)
    return states

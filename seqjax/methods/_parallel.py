"""What the methods that run in parallel over time share.

``lax.scan`` pays a fixed cost per step, so at ``T = 10^4 .. 10^6`` the loop, not the
arithmetic, is the cost. The parallel methods (:class:`~seqjax.Associative`,
:class:`~seqjax.DEER`, :class:`~seqjax.QuasiDEER`) find every state at once; this module
turns those states into :func:`seqjax.unroll`'s results (the outputs are one ``vmap`` of the
step over time) and holds the affine-recurrence solvers they all use.

Every operation that reaches across time steps goes through a *time axis* object:
:data:`LOCAL` (:class:`Local`), the whole sequence on this device, or
:class:`~seqjax.methods._sequence_parallel.Split`, one chunk of it per device of a mesh
axis, inside ``shard_map``. The methods' math is written once, against that interface.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from seqjax import _checks, _tree
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell
from seqjax.methods._base import Inputs, ParallelInfo

# solve(px [T, *B, G], carry, fresh, valid [T, *B] | None) -> (states [T, *B, ...], info)
Solver = Callable[[Array, PyTree, PyTree, Array | None], tuple[PyTree, ParallelInfo]]


def evaluate(cell: Cell, params: PyTree, inputs: Inputs, solve: Solver, time: Local | None = None):
    """``(carry, ys, info)`` from the states that ``solve`` finds for every step at once.

    ``time`` is the time axis ``inputs`` lie on (default :data:`LOCAL`): with a
    :class:`~seqjax.methods._sequence_parallel.Split`, ``inputs`` hold this device's chunk.
    """
    time = LOCAL if time is None else time
    xs, carry, reverse, resets = inputs.xs, inputs.carry, inputs.reverse, inputs.resets
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    px = cell.project(params, xs)  # [T, *B, G]: every step at once, whatever the backend
    valid = None
    if inputs.lengths is not None:
        valid = time.valid_steps(inputs.lengths, num_steps)  # [T, *B]
    fresh = cell.init_carry(batch_shape, jax.tree.leaves(carry)[0].dtype)
    if num_steps == 0:
        spec = jax.ShapeDtypeStruct(px.shape[1:], px.dtype)
        y = jax.eval_shape(cell.step, params, carry, spec)[1]
        info = ParallelInfo.exact(jax.tree.leaves(carry)[0].dtype)
        return carry, jnp.zeros((0, *y.shape), y.dtype), info
    states, info = solve(px, carry, fresh, valid)
    final = time.final(states, reverse)
    prev = time.shift(states, carry, reverse)  # the carry entering each step
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


def _logaddexp(x: Array, y: Array) -> Array:
    """``log(exp x + exp y)`` whose gradient stays finite when both are ``-inf``."""
    m = jnp.maximum(x, y)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    total = jnp.exp(x - m) + jnp.exp(y - m)
    positive = total > 0
    safe = jnp.where(positive, total, jnp.ones_like(total))
    return jnp.where(positive, m + jnp.log(safe), jnp.full_like(total, -jnp.inf))


def log_combine(x, y):
    """Composition of ``h -> A h + B`` held as ``(log A, log B)``: first ``x``, then ``y``."""
    (la1, lb1), (la2, lb2) = x, y
    return la1 + la2, _logaddexp(lb1 + la2, lb2)


def affine_combine(dense: bool):
    """The associative operator of :func:`solve_affine` (``dense``: ``[D, D]`` Jacobians)."""
    return _affine_combine(dense)


def apply_affine(jac: Array, c: Array, s: Array, dense: bool) -> Array:
    """``J s + c`` for dense ``J`` ``[..., D, D]`` or diagonal ``J`` (shaped like ``c``)."""
    if dense:
        mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        return mm(jac, s[..., None])[..., 0] + c
    return jac * s + c


def solve_log_affine(log_a: Array, log_b: Array, h0: Array, reverse: bool) -> Array:
    """All ``h_t = a_t h_{t-1} + b_t`` from ``h0`` with ``a, b > 0`` given as logarithms.

    ``h_t = A_t h0 + B_t`` with ``log A, log B`` from a log-space scan (Feng et al., 2024),
    so long products of ``a`` never underflow; ``h0`` (any sign) stays linear.
    """
    big_a, big_b = jax.lax.associative_scan(log_combine, (log_a, log_b), reverse=reverse)
    return jnp.exp(big_a) * h0[None].astype(big_a.dtype) + jnp.exp(big_b)


@dataclass(frozen=True)
class Local:
    """The whole time axis on this device: what the parallel methods do across steps.

    Each operation takes time-major arrays ``[T, ...]``. A time axis split over devices
    (:class:`~seqjax.methods._sequence_parallel.Split`) implements the same operations on
    each device's chunk ``[T / D, ...]`` with collectives, so that the results are those of
    this class on the whole sequence.
    """

    def valid_steps(self, lengths: Array, num_steps: int) -> Array:
        """``[T, *B]``: True at the steps before each sequence's length."""
        return _checks.valid_steps(lengths, num_steps)

    def shift(self, states: PyTree, first: PyTree, reverse: bool) -> PyTree:
        """The state entering each step (:func:`shift`)."""
        return shift(states, first, reverse)

    def final(self, states: PyTree, reverse: bool) -> PyTree:
        """The state after the last step of the recurrence (the first step when reversed)."""
        return jax.tree.map(lambda s: s[0] if reverse else s[-1], states)

    def solve_affine(self, jac: Array, c: Array, s0: Array, reverse: bool, dense: bool) -> Array:
        """:func:`solve_affine`."""
        return solve_affine(jac, c, s0, reverse, dense)

    def solve_log_affine(self, log_a: Array, log_b: Array, h0: Array, reverse: bool) -> Array:
        """:func:`solve_log_affine`."""
        return solve_log_affine(log_a, log_b, h0, reverse)

    def max(self, x: Array) -> Array:
        """The maximum of ``x`` (a per-chunk maximum) over the whole sequence (and over
        every device taking part, so that a loop it decides runs alike everywhere)."""
        return x

    def at_start(self, x: PyTree, reverse: bool) -> PyTree:
        """``x`` from the chunk that holds the recurrence's first step, zero elsewhere."""
        return x

    def scan(self, body: Callable, init: PyTree, xs: PyTree, reverse: bool):
        """``lax.scan(body, init, xs)`` over the whole sequence: ``(carry, ys)``."""
        return jax.lax.scan(body, init, xs, reverse=reverse)


LOCAL = Local()

"""The associative scan: cells whose recurrence is linear in the state, in ``O(log T)`` depth."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, LinearRecurrence, LogCoefficients, supports
from seqjax.methods._base import Inputs, Method, ParallelInfo
from seqjax.methods._parallel import LOCAL, Local, evaluate


@dataclass(frozen=True)
class Associative(Method):
    """Evaluate a linear recurrence with one ``jax.lax.associative_scan``.

    For cells that :func:`~seqjax.cells.supports` :class:`~seqjax.cells.LinearRecurrence`
    (``h_t = a_t * h_{t-1} + b_t`` elementwise: :class:`~seqjax.MinGRUCell`,
    :class:`~seqjax.MinLSTMCell`, :class:`~seqjax.LRUCell`): the coefficients of every step
    at once, then ``O(log T)`` combine levels. Lengths and resets live inside the scan
    elements: a reset step has ``a = 0`` and ``b`` from the fresh state, a step past a
    sequence's length ``a = 1, b = 0``. Cells with
    :class:`~seqjax.cells.LogCoefficients` are scanned in log space, as Feng et al. (2024)
    do, so that long products of ``a`` never underflow. Exact up to rounding; gradients by
    JAX's autodiff of the scan.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import MinGRUCell, unroll
        >>> cell = MinGRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (50, 2, 3))      # [T, B, I]
        >>> _, ys = unroll(cell, params, xs, method="associative")
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-5))
        True
    """

    def check(self, cell: Cell) -> None:
        if not supports(cell, LinearRecurrence):
            raise ValueError(
                "Associative needs a cell whose recurrence is linear in the state (one that "
                "supports LinearRecurrence: MinGRUCell, MinLSTMCell, LRUCell); got "
                f"{type(cell).__name__}: use method='deer' or 'quasi_deer'"
            )

    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        carry, ys, _ = self.run_with_info(cell, params, inputs)
        return carry, ys

    def run_with_info(self, cell, params, inputs):
        return self.evaluate_on(cell, params, inputs, LOCAL)

    def evaluate_on(self, cell: Cell, params: PyTree, inputs: Inputs, time: Local):
        """:meth:`run_with_info` on the time axis ``time`` (``inputs`` hold its chunk)."""

        def solve(px, carry, fresh, valid):
            states = _linear_states(cell, params, px, carry, fresh, valid, inputs, time)
            return states, ParallelInfo.exact(jax.tree.leaves(carry)[0].dtype)

        return evaluate(cell, params, inputs, solve, time)


def _linear_states(cell, params, px, carry, fresh, valid, inputs: Inputs, time: Local) -> PyTree:
    """Every state ``[T, *B, ...]`` of a linear recurrence, by one associative scan."""
    resets, reverse = inputs.resets, inputs.reverse
    h0, fresh_state = cell.to_state(carry), cell.to_state(fresh)
    if supports(cell, LogCoefficients):
        # h_t = A_t h0 + B_t with log A, log B from a log-space scan; h0 (any sign) stays linear.
        # A reset zeroes A_t and leaves b: the minimal cells' fresh state is zero.
        log_a, log_b = cell.log_coefficients(params, px)
        if resets is not None:
            log_a = jnp.where(resets[..., None], jnp.full_like(log_a, -jnp.inf), log_a)
        if valid is not None:
            log_a = jnp.where(valid[..., None], log_a, jnp.zeros_like(log_a))
            log_b = jnp.where(valid[..., None], log_b, jnp.full_like(log_b, -jnp.inf))
        h = time.solve_log_affine(log_a, log_b, h0, reverse)
    else:
        a, b = cell.coefficients(params, px)
        if resets is not None:
            r = resets[..., None]
            b = jnp.where(r, a * fresh_state[None].astype(a.dtype) + b, b)
            a = jnp.where(r, jnp.zeros_like(a), a)
        if valid is not None:
            a = jnp.where(valid[..., None], a, jnp.ones_like(a))
            b = jnp.where(valid[..., None], b, jnp.zeros_like(b))
        h = time.solve_affine(a, b, h0.astype(a.dtype), reverse, dense=False)
    states = cell.from_state(h)
    return jax.tree.map(lambda s, c: s.astype(c.dtype), states, carry)

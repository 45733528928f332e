"""The persistent Pallas kernel: the whole recurrence in one launch, ``W_h`` resident on chip.

:class:`Pallas` runs :func:`seqjax._kernels.pallas_rnn.recurrence` for the three classic
cells. It is chosen only explicitly: the tuning table picks it nowhere until it is measured
faster on a GPU (see ``docs/performance.md``), and on the CPU it runs in Pallas's interpret
mode, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, RecurWeight
from seqjax.cells._elman import ElmanCell
from seqjax.cells._gru import GRUCell
from seqjax.cells._lstm import LSTMCarry, LSTMCell
from seqjax.methods._base import Inputs, Method


def _kind(cell: Cell):
    """The kernel's :class:`~seqjax._kernels.pallas_rnn.Kind` for ``cell``, or None."""
    from seqjax._kernels import pallas_rnn

    if type(cell) is LSTMCell:
        return pallas_rnn.LSTM
    if type(cell) is GRUCell and cell.reset_after:
        return pallas_rnn.GRU
    if type(cell) is ElmanCell and cell.activation is jnp.tanh:
        return pallas_rnn.ELMAN_TANH
    if type(cell) is ElmanCell and cell.activation is jax.nn.relu:
        return pallas_rnn.ELMAN_RELU
    return None


@dataclass(frozen=True)
class Pallas(Method):
    """Evaluate with one persistent Pallas kernel over all steps (GPU; interpret mode on CPU).

    For :class:`~seqjax.LSTMCell`, :class:`~seqjax.GRUCell` (reset-after) and
    :class:`~seqjax.ElmanCell` (tanh or relu): the input projection is one matmul over all
    steps, then one kernel launch runs every step with ``W_h`` held on chip, tiled over the
    batch; its derivative is a second kernel over the gate cotangents, with the weight
    gradients as one matmul after (``jax.grad`` and ``jax.vjp``; forward mode raises). Lengths,
    resets and reverse are honoured; ``truncate`` is not offered. The state is kept in
    float32 for bfloat16 inputs.

    Measured only in interpret mode so far (values and gradients equal ``Scan``'s): the
    tuning table does not choose it.

    Attributes:
        block_batch: sequences per kernel instance (a power of two; None: 16 to 64).
        interpret: run the kernel in Pallas's interpreter (None: on the CPU only).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell, Pallas, unroll
        >>> cell = GRUCell(3, 4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (6, 2, 3))
        >>> _, ys = unroll(cell, params, xs, method=Pallas())
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-5))
        True
    """

    block_batch: int | None = None
    interpret: bool | None = None

    def __post_init__(self):
        if self.interpret is not None:
            _checks.flag("interpret", self.interpret, "Pallas")
        if self.block_batch is not None:
            size = _checks.positive_int("block_batch", self.block_batch, "Pallas")
            if size & (size - 1):
                raise ValueError(f"Pallas: block_batch must be a power of two; got {size}")

    def check(self, cell: Cell) -> None:
        if _kind(cell) is None:
            raise TypeError(
                "Pallas runs LSTMCell, GRUCell(reset_after=True) and ElmanCell (tanh or relu) "
                f"only, so the cell must be one of them; got {cell!r}: use Scan"
            )

    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        from seqjax._kernels import pallas_rnn

        kind = _kind(cell)
        xs, carry = inputs.xs, inputs.carry
        num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
        rows = math.prod(batch_shape)
        px = cell.project(params, xs).reshape(num_steps, rows, -1)

        def rows_of(a):
            return None if a is None else a.reshape(rows, *a.shape[len(batch_shape) :])

        if isinstance(cell, LSTMCell):
            h0, c0 = rows_of(carry.h), rows_of(carry.c)
        else:
            h0, c0 = rows_of(carry), None
        valid = None
        if inputs.lengths is not None:
            valid = _checks.valid_steps(inputs.lengths, num_steps).reshape(num_steps, rows)
        resets = None if inputs.resets is None else inputs.resets.reshape(num_steps, rows)
        b_h = params.b_h if isinstance(cell, GRUCell) else None
        w_h = cast(RecurWeight, cell).recur_weight(params)  # one of the kinds _kind accepts
        ys, h, c = pallas_rnn.recurrence(
            kind, w_h, b_h, px, h0, c0, valid=valid, resets=resets,
            reverse=inputs.reverse, block_batch=self.block_batch, interpret=self.interpret,
        )  # fmt: skip
        ys = ys.reshape(num_steps, *batch_shape, -1)
        h = h.reshape(*batch_shape, -1)
        final = LSTMCarry(h=h, c=c.reshape(*batch_shape, -1)) if c is not None else h
        return final, ys

"""``unroll`` over token ids, with the embedding folded into the cell's input projection.

A language model embeds ids and projects them: ``px = table[ids] W_x + b``, ``T * B`` rows
through ``W_x`` forward and twice more backward (``dW_x`` and ``d table[ids]``). When the
vocabulary is smaller than the number of tokens, the same ``px`` is one row of the
projected table, ``(table W_x + b)[ids]``: ``V`` rows through ``W_x``, then a lookup per
step, and backward a scatter-add of the gate cotangents into ``V`` rows. For the char-LM
(V = 256, 2048 tokens per window, I = 64, H = 256) that cut an update on XLA:CPU from 28.8
to 25.4 ms on one device and from 21.9 to 20.3 ms on two (2-core EPYC, jax 0.10.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import (
    Cell,
    CellWrapper,
    JacobianDiagonal,
    LinearRecurrence,
    LogCoefficients,
    ProjectWeight,
    RecurWeight,
    SplitStep,
    SummedUpdate,
    supports,
)
from seqjax.methods import Method
from seqjax.unroll import unroll

__all__ = ["embedded_unroll"]


@dataclass(frozen=True)
class _Lookup(CellWrapper):
    """``cell`` reading a token id per step (as a float ``[*B, 1]``), its projection looked up.

    Params: ``(projected, cell_params)``, ``projected`` ``[V + 1, G]`` the cell's projection
    of every table row and a last row of NaN for ids outside ``[0, V)``. Every capability of
    the step is the wrapped cell's (only the projection changes); the projection weight is
    not (the projection is a lookup).
    """

    cell: Cell
    forwards = frozenset(
        {SplitStep, SummedUpdate, RecurWeight, JacobianDiagonal, LinearRecurrence, LogCoefficients}
    )

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return 1

    def init(self, key, dtype=jnp.float32):
        raise TypeError("embedded_unroll's lookup cell has no params of its own to draw")

    def inner_params(self, params):
        return params[1]

    def check_params(self, params, where: str = "unroll") -> None:
        self.cell.check_params(params[1], where)  # the projected table is built here

    def project(self, params, ids: Array) -> Array:
        # "clip" keeps the lookup a plain gather: the default ("fill") adds a bounds select
        # that XLA:CPU fused into one of the step's elementwise kernels, which made the
        # folded char-LM 7% slower than the unfolded one. Ids are in range here:
        # embedded_unroll maps bad ones to the NaN row.
        return jnp.take(params[0], ids[..., 0].astype(jnp.int32), axis=0, mode="clip")


# The scan reads each id as a float32, exact below 2**24 (the last row is the NaN one).
_MAX_VOCAB = 2**24 - 1


def can_fold(cell: Cell, vocab_size: int) -> bool:
    """Whether the fold is exact for ``cell``: it names ``project_weight`` (so ``project``
    is an affine map of each row alone) and ``V`` ids fit a float32 exactly."""
    return supports(cell, ProjectWeight) and vocab_size <= _MAX_VOCAB


def embedded_unroll(
    cell: Cell,
    params: PyTree,
    table: Array,
    ids: Array,
    carry: PyTree | None = None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    truncate: int | None = None,
    time_axis: int = 0,
    method: Method | str | None = None,
    fold: bool | None = None,
) -> tuple[PyTree, Array]:
    """``unroll(cell, params, table[ids], carry)``, the embedding folded into the projection.

    Args:
        cell, params, carry: as for :func:`seqjax.unroll`.
        table: the embedding ``[V, I]`` (e.g. ``Embedding``'s ``params.table``).
        ids: token ids ``[T, *B]`` (time on ``time_axis``, an axis of ``ids``: -1 is its
            last), integers. As in
            :class:`seqjax.Embedding`, negative ids count from the end and ids outside
            ``[-V, V)`` give NaN inputs.
        fold: look up ``cell.project(params, table)`` per step (True), or embed and unroll
            as written (False). ``None`` (default): fold when the cell names its
            ``project_weight`` and ``V`` is at most the number of tokens ``T * prod(B)``
            (``V`` rows through ``W_x`` instead of ``T * prod(B)``).
            Results are the same either way, to float rounding.
        lengths, resets, reverse, truncate, method: as for :func:`seqjax.unroll`.

    Returns:
        ``(carry, ys)`` as :func:`seqjax.unroll`, ``ys`` ``[T, *B, H]``.

    Raises:
        TypeError: ``ids`` are not integers.
        ValueError: ``table`` is not ``[V, cell.input_size]``, ``time_axis`` is not an axis
            of ``ids``, or ``fold=True`` for a cell that does not name ``project_weight``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import Embedding, LSTMCell, embedded_unroll, unroll
        >>> embed, cell = Embedding(10, 3), LSTMCell(3, 4)
        >>> table = embed.init(jax.random.key(0)).table
        >>> params = cell.init(jax.random.key(1))
        >>> ids = jnp.array([[1, 2], [3, 4], [5, 9]])          # [T, B]
        >>> _, ys = embedded_unroll(cell, params, table, ids, fold=True)
        >>> _, expected = unroll(cell, params, table[ids])
        >>> ys.shape, bool(jnp.allclose(ys, expected, atol=1e-6))
        ((3, 2, 4), True)
    """
    where = "embedded_unroll"
    if not isinstance(cell, Cell):
        raise TypeError(f"{where}: cell must be a seqjax cell instance; got {cell!r}")
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"embedded_unroll: ids must be integers; got dtype {ids.dtype}")
    table = jnp.asarray(table)
    if table.ndim != 2 or table.shape[1] != cell.input_size:
        raise ValueError(
            f"embedded_unroll: table must be [V, I] with I = {cell.input_size} (the cell's "
            f"input_size); got shape {table.shape}"
        )
    if ids.ndim < 1 or not (_checks.is_int(time_axis) and -ids.ndim <= time_axis < ids.ndim):
        raise ValueError(
            f"embedded_unroll: time_axis must name an axis of ids (shape {ids.shape}); got "
            f"time_axis={time_axis}"
        )
    time_axis %= ids.ndim  # an axis of ids; xs gain a feature axis after it
    vocab = table.shape[0]
    if fold is not None:
        fold = _checks.flag("fold", fold, where)
    if fold is None:
        fold = can_fold(cell, vocab) and vocab <= ids.size
    elif fold and not can_fold(cell, vocab):
        raise ValueError(
            f"embedded_unroll: fold=True needs a cell whose project is affine per row (one "
            f"that names project_weight) and V <= {_MAX_VOCAB}; got {type(cell).__name__} "
            f"and V = {vocab}"
        )
    options: dict[str, Any] = dict(
        lengths=lengths, resets=resets, reverse=reverse, truncate=truncate, time_axis=time_axis,
        method=method,
    )  # fmt: skip
    if not fold:
        return unroll(cell, params, jnp.take(table, ids, axis=0), carry, **options)
    cell.check_params(params, where)  # before project reads them
    projected = cell.project(params, table)
    projected = jnp.concatenate([projected, jnp.full_like(projected[:1], jnp.nan)])
    ids = _checks.wide_int(ids)  # ids + V and ids < V would wrap in uint8 (the char-LM's V = 256)
    ids = jnp.where(ids < 0, ids + vocab, ids)
    ids = jnp.where((ids >= 0) & (ids < vocab), ids, vocab)
    xs = ids.astype(jnp.float32)[..., None]
    return unroll(_Lookup(cell), (projected, params), xs, carry, **options)

"""Variational (per-sequence) input and recurrent dropout, as a wrapper around any cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._base import (
    CellWrapper,
    JacobianDiagonal,
    Noisy,
    RecurWeight,
    SplitStep,
    SummedUpdate,
    with_noise,
)
from seqjax.cells._common import bernoulli
from seqjax.cells._elman import ElmanCell
from seqjax.cells._layernorm import LayerNormLSTMCell
from seqjax.cells._lstm import LSTMCell
from seqjax.cells._lstmp import LSTMProjCell
from seqjax.cells._peephole import PeepholeLSTMCell

# Cells whose step reads the state h only through the recurrent matmul ``h W_h``: masking h
# before the step is then exactly dropout on the recurrent connections. A GRU also carries h
# itself into ``h' = (1 - z) n + z h``, where a mask would erase memory, so it is not here.
_RECURRENT_DROPOUT_CELLS = (ElmanCell, LSTMCell, LayerNormLSTMCell, PeepholeLSTMCell, LSTMProjCell)


class DropoutMasks(NamedTuple):
    """Per-sequence masks of a :class:`VariationalDropoutCell`, values 0 or ``1 / (1 - rate)``."""

    input: Array | None  # [*B, I], or None (no input dropout)
    recurrent: Array | None  # [*B, H], or None (no recurrent dropout)


class DropoutParams(NamedTuple):
    """Parameters of a :class:`VariationalDropoutCell`."""

    cell: PyTree  # the wrapped cell's params
    masks: DropoutMasks | None = None  # None: dropout off (what ``init`` gives)


def _mask(key: PRNGKey, rate: float, shape: tuple[int, ...], dtype) -> Array:
    keep = 1.0 - rate
    kept = bernoulli(key, keep, shape)
    return jnp.where(kept, jnp.asarray(1.0 / keep, dtype), jnp.zeros((), dtype))


def _params_dtype(params: PyTree):
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.result_type(leaf)
    return jnp.float32


@dataclass(frozen=True)
class VariationalDropoutCell(CellWrapper):
    """Variational dropout on a cell's inputs and recurrent state: one mask per sequence.

    Gal & Ghahramani, "A theoretically grounded application of dropout in recurrent neural
    networks", NeurIPS 2016. Each sequence ``b`` draws ``m_x[b] ~ Bernoulli(1 - p_x) / (1 -
    p_x)`` over the ``I`` inputs and ``m_h[b] ~ Bernoulli(1 - p_h) / (1 - p_h)`` over the ``H``
    hidden units once, and uses them at every step::

        x_t -> m_x * x_t                      (before project: every input weight sees it)
        h_{t-1} -> m_h * h_{t-1}              (where the step reads h: the recurrent matmul)

    for an LSTM: ``[i, f, g, o] = (m_x * x) W_x + (m_h * h) W_h + b``; the cell state ``c``
    is never masked. Dropout between stacked layers is the input dropout of the upper layer.

    How the masks reach the step: they live in the params, ``DropoutParams(cell, masks)``.
    ``init`` gives ``masks=None`` (dropout off); :meth:`with_noise` (or
    :func:`seqjax.with_noise` for a whole model) returns params with masks ``[*B, I]`` and
    ``[*B, H]`` drawn from an explicit key. Held in the params, the masks are constant over
    time whatever :func:`seqjax.unroll` does (lengths, reverse, resets, truncation) and in
    :class:`~seqjax.Stack` and :class:`~seqjax.Bidirectional`. Draw them inside the loss, so
    that gradients reach only the plain params. A sequence row keeps its masks across the
    ``resets`` of a stream; a new batch (a new key) draws new ones.

    With ``masks=None``, or rates 0, or ``with_noise(..., deterministic=True)``, every method
    is exactly the wrapped cell's (the same operations, bit for bit).

    * Carry and output: the wrapped cell's (``[*B, H]`` leaves).
    * Capabilities: always :class:`~seqjax.cells.Noisy`; the wrapped cell's split step (so
      the structured derivative), summed update, recurrent weight (``recur_input`` masks
      ``h``) and Jacobian diagonal are kept; its projection weight is not, since the input
      mask makes the projection a different matrix for each sequence.
    * Recurrent dropout needs a cell that reads ``h`` only through its recurrent matmul:
      :class:`~seqjax.ElmanCell`, :class:`~seqjax.LSTMCell` and its layer-normalised,
      peephole and projection variants. A GRU also carries ``h`` through ``h' = (1 - z) n +
      z h``; masking it there would erase memory, so GRUs take ``recurrent_rate=0`` (input
      dropout, or :class:`~seqjax.ZoneoutCell`, regularise them instead).

    Attributes:
        cell: the wrapped cell.
        input_rate: ``p_x``, the probability of dropping an input feature, in ``[0, 1)``.
        recurrent_rate: ``p_h``, the probability of dropping a hidden unit, in ``[0, 1)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, unroll
        >>> cell = VariationalDropoutCell(LSTMCell(3, 4), input_rate=0.25, recurrent_rate=0.25)
        >>> params = cell.init(jax.random.key(0))              # masks None: dropout off
        >>> noisy = cell.with_noise(params, jax.random.key(1), batch_shape=(2,))
        >>> noisy.masks.input.shape, noisy.masks.recurrent.shape
        ((2, 3), (2, 4))
        >>> carry, ys = unroll(cell, noisy, jnp.ones((6, 2, 3)))
        >>> ys.shape
        (6, 2, 4)
    """

    cell: Any
    input_rate: float = 0.0
    recurrent_rate: float = 0.0
    # Not ProjectWeight: with an input mask, project is (m_x * x) W_x, a matrix per sequence.
    forwards = frozenset({SplitStep, SummedUpdate, RecurWeight, JacobianDiagonal})
    own = frozenset({Noisy})

    @property
    def shared_rows(self) -> bool:  # type: ignore[override]
        return False  # the masks are per sequence, [*B, I] and [*B, H]

    def __post_init__(self):
        super().__post_init__()
        for name in ("input_rate", "recurrent_rate"):
            rate = getattr(self, name)
            if not _checks.is_real(rate) or not 0.0 <= rate < 1.0:
                raise ValueError(
                    f"VariationalDropoutCell: {name} must be a number in [0, 1); got {rate!r}"
                )
        if self.recurrent_rate and not isinstance(self.cell, _RECURRENT_DROPOUT_CELLS):
            raise ValueError(
                "VariationalDropoutCell: recurrent dropout needs a cell that reads h only "
                "through its recurrent matmul ("
                + ", ".join(t.__name__ for t in _RECURRENT_DROPOUT_CELLS)
                + f"); got {type(self.cell).__name__}. Use recurrent_rate=0 (input dropout "
                "only) or ZoneoutCell for it"
            )

    def init(self, key: PRNGKey, dtype=jnp.float32) -> DropoutParams:
        """The wrapped cell's params, masks None (dropout off)."""
        return DropoutParams(cell=self.cell.init(key, dtype), masks=None)

    def with_noise(
        self,
        params: DropoutParams,
        key: PRNGKey | None,
        batch_shape: tuple[int, ...] = (),
        *,
        deterministic: bool = False,
    ) -> DropoutParams:
        """``params`` with masks ``[*B, I]`` and ``[*B, H]`` drawn from ``key``.

        A rate of 0 gives a None mask; ``deterministic=True`` gives ``masks=None``. The
        wrapped cell's own noise (if it is itself a wrapper) is drawn too.
        """
        if key is None and not deterministic:
            raise ValueError(
                "VariationalDropoutCell.with_noise: key must be a PRNG key unless "
                "deterministic=True; got None"
            )
        if key is None:  # deterministic, as checked above
            inner = with_noise(self.cell, params.cell, None, batch_shape, deterministic=True)
            return DropoutParams(cell=inner, masks=None)
        key_input, key_recurrent, key_inner = jax.random.split(key, 3)
        inner = with_noise(
            self.cell, params.cell, key_inner, batch_shape, deterministic=deterministic
        )
        if deterministic or (self.input_rate == 0 and self.recurrent_rate == 0):
            return DropoutParams(cell=inner, masks=None)
        batch_shape, dtype = tuple(batch_shape), _params_dtype(params.cell)
        masks = DropoutMasks(
            input=_mask(key_input, self.input_rate, (*batch_shape, self.input_size), dtype)
            if self.input_rate
            else None,
            recurrent=_mask(
                key_recurrent, self.recurrent_rate, (*batch_shape, self.hidden_size), dtype
            )
            if self.recurrent_rate
            else None,
        )
        return DropoutParams(cell=inner, masks=masks)

    def project(self, params: DropoutParams, xs: Array) -> Array:
        """``[..., *B, I] -> [..., *B, G]``: the wrapped projection of ``m_x * xs``."""
        mask = None if params.masks is None else params.masks.input
        if mask is not None:
            shape = jnp.shape(xs)
            if len(shape) < mask.ndim or shape[len(shape) - mask.ndim :] != mask.shape:
                raise ValueError(
                    "VariationalDropoutCell.project: xs must end with the input mask's shape "
                    f"[*B, I] = {mask.shape} (draw masks with the batch shape of xs); got "
                    f"shape {shape}"
                )
            xs = xs * jnp.broadcast_to(mask.astype(xs.dtype), shape)
        return self.cell.project(params.cell, xs)

    def enter(self, params: DropoutParams, carry: PyTree) -> PyTree:
        """The carry with ``m_h * h`` in place of ``h`` (unchanged without a recurrent mask)."""
        mask = None if params.masks is None else params.masks.recurrent
        if mask is None:
            return carry
        state_is_h = not hasattr(carry, "h")  # an array carry is h itself (Elman)
        h = carry if state_is_h else carry.h
        if h.shape != mask.shape:
            raise ValueError(
                "VariationalDropoutCell.step: the recurrent mask must have the shape of h, "
                f"{h.shape} (draw masks with the batch shape of the carry); got {mask.shape}"
            )
        h = h * mask.astype(h.dtype)
        return h if state_is_h else carry._replace(h=h)

    def jacobian_diagonal(self, params: DropoutParams, carry: PyTree, px: Array) -> PyTree:
        """The wrapped cell's diagonal at the masked state, its ``h`` part times ``m_h``."""
        diag = self.cell.jacobian_diagonal(params.cell, self.enter(params, carry), px)
        mask = None if params.masks is None else params.masks.recurrent
        if mask is None:
            return diag
        if not hasattr(diag, "h"):
            return diag * mask.astype(diag.dtype)
        return diag._replace(h=diag.h * mask.astype(diag.h.dtype))

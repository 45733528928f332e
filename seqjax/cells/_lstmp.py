"""The LSTM with a recurrent projection layer (LSTMP; PyTorch's ``proj_size``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell
from seqjax.cells._common import _draw_dtype, affine, glorot_uniform
from seqjax.cells._lstm import LSTMCarry


class LSTMProjParams(NamedTuple):
    """Parameters of an :class:`LSTMProjCell`; gate blocks in the order i, f, g, o."""

    w_x: Array  # [I, 4C] input weights
    w_h: Array  # [H, 4C] recurrent weights (from the projected state)
    b: Array  # [4C] bias
    w_r: Array  # [C, H] projection


def _orthogonal(key: PRNGKey, shape: tuple[int, int], num_blocks: int, dtype) -> Array:
    """``[n, num_blocks * m]``: an independent (semi-)orthogonal ``n x m`` block per gate."""
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, num_blocks)
    return jnp.concatenate([init(k, shape, _draw_dtype(dtype)) for k in keys], axis=1).astype(dtype)


@dataclass(frozen=True)
class LSTMProjCell(Cell):
    """LSTM whose hidden state is a learned projection of the cell output to ``H`` units.

    Sak, Senior & Beaufays, "Long short-term memory recurrent neural network architectures
    for large scale acoustic modeling", Interspeech 2014 (LSTMP); the same cell as PyTorch's
    ``nn.LSTM(..., proj_size=P)``::

        [i, f, g, o] = x W_x + h W_h + b               (gate order i, f, g, o; each C wide)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)     (c: [*B, C])
        h' = (sigmoid(o) * tanh(c')) W_r               (h: [*B, H], W_r: [C, H])

    The recurrent matmul reads the small projected state: ``W_h`` is ``[H, 4C]`` instead
    of ``[C, 4C]``, which is the point of the cell (fewer recurrent weights and a smaller
    output for the same memory size ``C``).

    Names: the protocol's ``hidden_size`` is the size of the state ``h`` and of the output,
    so here ``hidden_size = H`` is PyTorch's ``proj_size`` and ``cell_size = C`` is
    PyTorch's ``hidden_size``. ``seqjax.interop.torch`` converts weights and states both
    ways with ``nn.LSTM(input_size=I, hidden_size=C, proj_size=H)`` (which needs ``H < C``).

    * Carry: :class:`~seqjax.LSTMCarry` ``(h [*B, H], c [*B, C])``; the output is ``h'``.
    * Gate pre-activations (``project``): ``G = 4C``.
    * Initialisation: ``w_x`` Glorot uniform, ``w_h`` one semi-orthogonal ``H x C`` block per
      gate, ``w_r`` semi-orthogonal, ``b`` zeros except the forget block (``forget_bias``).

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``, the projected state and output size (PyTorch's ``proj_size``).
        cell_size: ``C``, the cell-state and gate width (PyTorch's ``hidden_size``).
        forget_bias: initial forget-gate bias.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = LSTMProjCell(input_size=3, hidden_size=2, cell_size=5)
        >>> params = cell.init(jax.random.key(0))
        >>> params.w_h.shape, params.w_r.shape                     # [H, 4C], [C, H]
        ((2, 20), (5, 2))
        >>> carry, y = cell.apply(params, cell.init_carry((4,)), jnp.ones((4, 3)))
        >>> carry.h.shape, carry.c.shape, y.shape
        ((4, 2), (4, 5), (4, 2))
    """

    input_size: int
    hidden_size: int
    cell_size: int
    forget_bias: float = 1.0

    def __post_init__(self):
        super().__post_init__()  # the sizes and forget_bias
        _checks.sizes(self, ("cell_size",), "LSTMProjCell")

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LSTMProjParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh, kr = jax.random.split(key, 3)
        cells, hidden = self.cell_size, self.hidden_size
        b = jnp.zeros((4 * cells,), dtype).at[cells : 2 * cells].set(self.forget_bias)
        return LSTMProjParams(
            w_x=glorot_uniform(kx, (self.input_size, 4 * cells), dtype),
            w_h=_orthogonal(kh, (hidden, cells), 4, dtype),
            b=b,
            w_r=_orthogonal(kr, (cells, hidden), 1, dtype),
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LSTMCarry:
        """The zero state: ``h`` ``[*B, H]`` and ``c`` ``[*B, C]``."""
        return LSTMCarry(
            h=jnp.zeros((*batch_shape, self.hidden_size), dtype),
            c=jnp.zeros((*batch_shape, self.cell_size), dtype),
        )

    def project(self, params: LSTMProjParams, xs: Array) -> Array:
        """``[..., I] -> [..., 4C]``: ``x W_x + b`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b)

    def step(self, params: LSTMProjParams, carry: LSTMCarry, px: Array) -> tuple[LSTMCarry, Array]:
        """One step from the projected input ``px`` ``[*B, 4C]``; returns ``(carry, h)``."""
        gates = px + carry.h @ params.w_h
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = (jax.nn.sigmoid(o) * jnp.tanh(c)) @ params.w_r
        return LSTMCarry(h=h, c=c), h

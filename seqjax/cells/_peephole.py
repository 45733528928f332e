"""The LSTM with peephole connections (Gers & Schmidhuber, 2000)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell
from seqjax.cells._common import affine, glorot_uniform, orthogonal_blocks, zeros_carry
from seqjax.cells._lstm import LSTMCarry


class PeepholeLSTMParams(NamedTuple):
    """Parameters of a :class:`PeepholeLSTMCell`; gate blocks in the order i, f, g, o."""

    w_x: Array  # [I, 4H] input weights
    w_h: Array  # [H, 4H] recurrent weights
    b: Array  # [4H] bias
    p_i: Array  # [H] peephole c -> input gate
    p_f: Array  # [H] peephole c -> forget gate
    p_o: Array  # [H] peephole c' -> output gate


@dataclass(frozen=True)
class PeepholeLSTMCell(Cell):
    """LSTM whose gates also see the cell state through diagonal (peephole) weights.

    Gers & Schmidhuber, "Recurrent nets that time and count", IJCNN 2000; the form of
    Gers, Schraudolph & Schmidhuber, JMLR 3 (2002), with the forget gate::

        [a_i, a_f, a_g, a_o] = x W_x + h W_h + b      (gate order i, f, g, o)
        i = sigmoid(a_i + p_i * c)                    (c: the previous cell state)
        f = sigmoid(a_f + p_f * c)
        c' = f * c + i * tanh(a_g)
        o = sigmoid(a_o + p_o * c')                   (c': the new cell state)
        h' = o * tanh(c')

    ``p_i, p_f, p_o`` are vectors: each unit's gates see only its own cell (diagonal
    peepholes), so the step costs one more elementwise product per gate.

    * Carry: :class:`~seqjax.LSTMCarry` ``(h, c)``, each ``[*B, H]``; the output is ``h'``.
    * Gate pre-activations (``project``): ``G = 4H``.
    * Initialisation: as :class:`~seqjax.LSTMCell`; peepholes 0, so an initialised cell
      computes what a plain LSTM with the same weights computes.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        forget_bias: initial forget-gate bias.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = PeepholeLSTMCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry((2,)), jnp.ones((2, 3)))
        >>> params.p_o.shape, y.shape
        ((4,), (2, 4))
    """

    input_size: int
    hidden_size: int
    forget_bias: float = 1.0

    def init(self, key: PRNGKey, dtype=jnp.float32) -> PeepholeLSTMParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh = jax.random.split(key)
        hidden = self.hidden_size
        b = jnp.zeros((4 * hidden,), dtype).at[hidden : 2 * hidden].set(self.forget_bias)
        zeros = jnp.zeros((hidden,), dtype)
        return PeepholeLSTMParams(
            w_x=glorot_uniform(kx, (self.input_size, 4 * hidden), dtype),
            w_h=orthogonal_blocks(kh, hidden, 4, dtype),
            b=b,
            p_i=zeros,
            p_f=zeros,
            p_o=zeros,
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LSTMCarry:
        """The zero state, ``h`` and ``c`` each ``[*B, H]``."""
        zeros = zeros_carry(batch_shape, self.hidden_size, dtype)
        return LSTMCarry(h=zeros, c=zeros)

    def project(self, params: PeepholeLSTMParams, xs: Array) -> Array:
        """``[..., I] -> [..., 4H]``: ``x W_x + b`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b)

    def step(
        self, params: PeepholeLSTMParams, carry: LSTMCarry, px: Array
    ) -> tuple[LSTMCarry, Array]:
        """One step from the projected input ``px`` ``[*B, 4H]``; returns ``(carry, h)``."""
        c = carry.c
        a_i, a_f, a_g, a_o = jnp.split(px + carry.h @ params.w_h, 4, axis=-1)
        i = jax.nn.sigmoid(a_i + c * jnp.broadcast_to(params.p_i, c.shape))
        f = jax.nn.sigmoid(a_f + c * jnp.broadcast_to(params.p_f, c.shape))
        c = f * c + i * jnp.tanh(a_g)
        o = jax.nn.sigmoid(a_o + c * jnp.broadcast_to(params.p_o, c.shape))
        h = o * jnp.tanh(c)
        return LSTMCarry(h=h, c=c), h

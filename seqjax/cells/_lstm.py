"""The long short-term memory cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell
from seqjax.cells._common import (
    affine,
    block_diagonals,
    glorot_uniform,
    orthogonal_blocks,
    zeros_carry,
)


class LSTMParams(NamedTuple):
    """Parameters of an :class:`LSTMCell`; gate blocks in the order i, f, g, o."""

    w_x: Array  # [I, 4H] input weights
    w_h: Array  # [H, 4H] recurrent weights
    b: Array  # [4H] bias


class LSTMCarry(NamedTuple):
    """State of an :class:`LSTMCell`."""

    h: Array  # [*B, H] hidden state (the output)
    c: Array  # [*B, H] cell state


@dataclass(frozen=True)
class LSTMCell(Cell):
    """LSTM cell with fused gates: one input and one recurrent matmul per step.

    Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 9 (1997), with
    the forget gate of Gers et al. (2000)::

        [i, f, g, o] = x W_x + h W_h + b          (gate order i, f, g, o, as in PyTorch)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    * Carry: :class:`LSTMCarry` ``(h, c)``, each ``[*B, H]``; the output ``y`` is ``h'``.
    * Gate pre-activations (``project``): ``G = 4H``.
    * Initialisation: ``w_x`` Glorot uniform, ``w_h`` one orthogonal block per gate, ``b``
      zeros except the forget block, set to ``forget_bias`` (default 1.0; Jozefowicz et
      al., 2015): a forget gate open at the start lets gradients flow through ``c`` early.
    * Capabilities: :class:`~seqjax.cells.SummedUpdate` (so :class:`~seqjax.cells.SplitStep`),
      :class:`~seqjax.cells.ProjectWeight`, :class:`~seqjax.cells.RecurWeight`,
      :class:`~seqjax.cells.JacobianDiagonal`.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        forget_bias: initial value of the forget-gate bias (0.0 gives plain zeros).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = LSTMCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry((2,)), jnp.ones((2, 3)))
        >>> carry.c.shape, y.shape
        ((2, 4), (2, 4))
    """

    input_size: int
    hidden_size: int
    forget_bias: float = 1.0

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LSTMParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh = jax.random.split(key)
        hidden = self.hidden_size
        b = jnp.zeros((4 * hidden,), dtype).at[hidden : 2 * hidden].set(self.forget_bias)
        return LSTMParams(
            w_x=glorot_uniform(kx, (self.input_size, 4 * hidden), dtype),
            w_h=orthogonal_blocks(kh, hidden, 4, dtype),
            b=b,
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LSTMCarry:
        """The zero state, ``h`` and ``c`` each ``[*B, H]``."""
        zeros = zeros_carry(batch_shape, self.hidden_size, dtype)
        return LSTMCarry(h=zeros, c=zeros)

    def project(self, params: LSTMParams, xs: Array) -> Array:
        """``[..., I] -> [..., 4H]``: ``x W_x + b`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b)

    def project_weight(self, params: LSTMParams) -> Array:
        """``W_x`` ``[I, 4H]``: ``project`` is ``x W_x`` plus a constant (see ``Cell``)."""
        return params.w_x

    def recur_weight(self, params: LSTMParams) -> Array:
        """``W_h`` ``[H, 4H]``: ``recur`` is ``recur_input(carry) W_h`` (see ``Cell``)."""
        return params.w_h

    def recur_input(self, params: LSTMParams, carry: LSTMCarry) -> Array:
        """The part of the carry ``recur`` multiplies: ``h``, ``[*B, H]``."""
        return carry.h

    def recur(self, params: LSTMParams, carry: LSTMCarry) -> Array:
        """The recurrent matmul ``h W_h``, ``[*B, 4H]`` (linear in ``w_h``)."""
        return carry.h @ params.w_h

    def update(
        self, params: LSTMParams, carry: LSTMCarry, px: Array, r: Array
    ) -> tuple[LSTMCarry, Array]:
        """The elementwise update from ``px`` and ``r = recur(params, carry)``, ``[*B, 4H]``."""
        return self.update_summed(params, carry, px + r)

    def update_summed(
        self, params: LSTMParams, carry: LSTMCarry, z: Array
    ) -> tuple[LSTMCarry, Array]:
        """The update from the gate pre-activations ``z = px + r``, ``[*B, 4H]``."""
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMCarry(h=h, c=c), h

    def step(self, params: LSTMParams, carry: LSTMCarry, px: Array) -> tuple[LSTMCarry, Array]:
        """One step from the projected input ``px`` ``[*B, 4H]``; returns ``(carry, h)``."""
        return self.update(params, carry, px, self.recur(params, carry))

    def jacobian_diagonal(self, params: LSTMParams, carry: LSTMCarry, px: Array) -> LSTMCarry:
        """``d carry' / d carry`` on its diagonal, shaped like the carry, without forming the
        ``[H, H]`` Jacobian (used by :class:`~seqjax.QuasiDEER`)."""
        gates = px + carry.h @ params.w_h
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        si, sf, so, tg = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o), jnp.tanh(g)
        c = sf * carry.c + si * tg
        tc = jnp.tanh(c)
        d_i, d_f, d_g, d_o = block_diagonals(params.w_h, 4, carry.h.shape)
        dc_dh = sf * (1 - sf) * d_f * carry.c + si * (1 - si) * d_i * tg + si * (1 - tg * tg) * d_g
        dh_dh = so * (1 - so) * d_o * tc + so * (1 - tc * tc) * dc_dh
        return LSTMCarry(h=dh_dh, c=sf)

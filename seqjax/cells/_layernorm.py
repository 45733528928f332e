"""Layer-normalised LSTM and GRU cells (Ba, Kiros & Hinton, 2016)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell
from seqjax.cells._common import glorot_uniform, orthogonal_blocks, zeros_carry
from seqjax.cells._lstm import LSTMCarry


def layer_norm(a: Array, gain: Array, bias: Array | None = None, eps: float = 1e-5) -> Array:
    """``gain * (a - mean(a)) / sqrt(var(a) + eps) + bias`` over the last axis of ``a``.

    Args:
        a: ``[..., F]``; mean and (biased) variance are taken over ``F`` for each entry of
            the leading dims, so a time step, a sequence and a unit never share statistics.
            They are computed in at least float32; the result has the dtype of ``a``.
        gain: ``[F]``.
        bias: ``[F]`` or None.
        eps: added to the variance.

    Example:
        >>> import jax.numpy as jnp
        >>> y = layer_norm(jnp.array([[1.0, 2.0, 3.0]]), jnp.ones(3))
        >>> [round(v, 3) for v in y[0].tolist()]
        [-1.225, 0.0, 1.225]
    """
    # Statistics in at least float32: in float16, rsqrt(var + eps) near var = 0 has a
    # derivative (var + eps)^-1.5 / 2 that overflows, and eps = 1e-5 is subnormal.
    dtype = a.dtype
    a = a.astype(jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype)
    mean = jnp.mean(a, axis=-1, keepdims=True)
    centred = a - jnp.broadcast_to(mean, a.shape)
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    y = centred * jnp.broadcast_to(jax.lax.rsqrt(var + eps), a.shape)
    y = y.astype(dtype) * jnp.broadcast_to(gain, a.shape)
    return y if bias is None else y + jnp.broadcast_to(bias, a.shape)


class LayerNormLSTMParams(NamedTuple):
    """Parameters of a :class:`LayerNormLSTMCell`; gate blocks in the order i, f, g, o."""

    w_x: Array  # [I, 4H] input weights
    w_h: Array  # [H, 4H] recurrent weights
    b: Array  # [4H] gate bias (the two LN biases of the paper sum into it)
    g_x: Array  # [4H] gain of LN(x W_x)
    g_h: Array  # [4H] gain of LN(h W_h)
    g_c: Array  # [H] gain of LN(c')
    b_c: Array  # [H] bias of LN(c')


@dataclass(frozen=True)
class LayerNormLSTMCell(Cell):
    """LSTM with layer normalisation of the gate pre-activations and of the cell state.

    Ba, Kiros & Hinton, "Layer normalization", arXiv:1607.06450 (2016), section 3.1::

        [i, f, g, o] = LN(x W_x; g_x) + LN(h W_h; g_h) + b      (each LN over all 4H)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(LN(c'; g_c, b_c))

    ``LN(a; g, b) = g * (a - mean(a)) / sqrt(var(a) + eps) + b`` over the feature axis of one
    step of one sequence (:func:`layer_norm`). The paper's two gate-LN biases add to ``b``
    and are kept as that one bias. ``project`` computes ``LN(x W_x; g_x) + b`` for all steps
    at once (the statistics are per step, so this stays time-parallel).

    * Carry: :class:`~seqjax.LSTMCarry` ``(h, c)``, each ``[*B, H]``; the output is ``h'``.
    * Gate pre-activations (``project``): ``G = 4H``.
    * Initialisation: as :class:`~seqjax.LSTMCell` (``w_x`` Glorot uniform, ``w_h``
      orthogonal per gate, forget-gate bias ``forget_bias``); gains 1, ``b_c`` 0.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        forget_bias: initial forget-gate bias.
        eps: added to each variance.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = LayerNormLSTMCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry((2,)), jnp.ones((2, 3)))
        >>> carry.c.shape, y.shape
        ((2, 4), (2, 4))
    """

    input_size: int
    hidden_size: int
    forget_bias: float = 1.0
    eps: float = 1e-5

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LayerNormLSTMParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh = jax.random.split(key)
        hidden = self.hidden_size
        b = jnp.zeros((4 * hidden,), dtype).at[hidden : 2 * hidden].set(self.forget_bias)
        return LayerNormLSTMParams(
            w_x=glorot_uniform(kx, (self.input_size, 4 * hidden), dtype),
            w_h=orthogonal_blocks(kh, hidden, 4, dtype),
            b=b,
            g_x=jnp.ones((4 * hidden,), dtype),
            g_h=jnp.ones((4 * hidden,), dtype),
            g_c=jnp.ones((hidden,), dtype),
            b_c=jnp.zeros((hidden,), dtype),
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LSTMCarry:
        """The zero state, ``h`` and ``c`` each ``[*B, H]``."""
        zeros = zeros_carry(batch_shape, self.hidden_size, dtype)
        return LSTMCarry(h=zeros, c=zeros)

    def project(self, params: LayerNormLSTMParams, xs: Array) -> Array:
        """``[..., I] -> [..., 4H]``: ``LN(x W_x; g_x) + b`` for any number of steps at once."""
        return layer_norm(xs @ params.w_x, params.g_x, params.b, self.eps)

    def step(
        self, params: LayerNormLSTMParams, carry: LSTMCarry, px: Array
    ) -> tuple[LSTMCarry, Array]:
        """One step from the projected input ``px`` ``[*B, 4H]``; returns ``(carry, h)``."""
        gates = px + layer_norm(carry.h @ params.w_h, params.g_h, eps=self.eps)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(layer_norm(c, params.g_c, params.b_c, self.eps))
        return LSTMCarry(h=h, c=c), h


class LayerNormGRUParams(NamedTuple):
    """Parameters of a :class:`LayerNormGRUCell`; gate blocks in the order r, z, n."""

    w_x: Array  # [I, 3H] input weights
    w_h: Array  # [H, 3H] recurrent weights
    b_x: Array  # [3H] input-side bias
    b_h: Array  # [3H] recurrent-side bias (its n block sits inside r * (...))
    g_x: Array  # [3H] gain of LN(x W_x)
    g_h: Array  # [3H] gain of LN(h W_h)


@dataclass(frozen=True)
class LayerNormGRUCell(Cell):
    """GRU (reset-after form) with layer normalisation of both gate pre-activations.

    Ba, Kiros & Hinton's recipe for the LSTM (arXiv:1607.06450, 2016) applied to the GRU
    of Cho et al. (2014) in PyTorch's reset-after form (the paper gives no GRU equations;
    this places LN where it does for the LSTM, on each of the two summed inputs)::

        a_x = LN(x W_x; g_x) + b_x          a_h = LN(h W_h; g_h) + b_h     (each over 3H)
        r = sigmoid(a_xr + a_hr)            z = sigmoid(a_xz + a_hz)
        n = tanh(a_xn + r * a_hn)
        h' = (1 - z) * n + z * h

    The state ``h`` itself is not normalised: it is also the memory ``z * h`` carries.

    * Carry: ``h``, an array ``[*B, H]``; the output is ``h'``.
    * Gate pre-activations (``project``): ``G = 3H``.
    * Initialisation: ``w_x`` Glorot uniform, ``w_h`` orthogonal per gate, biases 0,
      gains 1.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        eps: added to each variance.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = LayerNormGRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry(), jnp.ones(3))
        >>> y.shape
        (4,)
    """

    input_size: int
    hidden_size: int
    eps: float = 1e-5

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LayerNormGRUParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh = jax.random.split(key)
        hidden = self.hidden_size
        return LayerNormGRUParams(
            w_x=glorot_uniform(kx, (self.input_size, 3 * hidden), dtype),
            w_h=orthogonal_blocks(kh, hidden, 3, dtype),
            b_x=jnp.zeros((3 * hidden,), dtype),
            b_h=jnp.zeros((3 * hidden,), dtype),
            g_x=jnp.ones((3 * hidden,), dtype),
            g_h=jnp.ones((3 * hidden,), dtype),
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """The zero state ``h``, ``[*B, H]``."""
        return zeros_carry(batch_shape, self.hidden_size, dtype)

    def project(self, params: LayerNormGRUParams, xs: Array) -> Array:
        """``[..., I] -> [..., 3H]``: ``LN(x W_x; g_x) + b_x`` for any number of steps."""
        return layer_norm(xs @ params.w_x, params.g_x, params.b_x, self.eps)

    def step(self, params: LayerNormGRUParams, carry: Array, px: Array) -> tuple[Array, Array]:
        """One step from the projected input ``px`` ``[*B, 3H]``; returns ``(h, h)``."""
        h = carry
        a_h = layer_norm(h @ params.w_h, params.g_h, params.b_h, self.eps)
        x_r, x_z, x_n = jnp.split(px, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(a_h, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, h

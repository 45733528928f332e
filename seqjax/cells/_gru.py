"""The gated recurrent unit."""

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


class GRUParams(NamedTuple):
    """Parameters of a :class:`GRUCell`; gate blocks in the order r, z, n."""

    w_x: Array  # [I, 3H] input weights
    w_h: Array  # [H, 3H] recurrent weights
    b_x: Array  # [3H] input-side bias
    b_h: Array  # [3H] recurrent-side bias (its n block sits inside r * (...) when reset_after)


@dataclass(frozen=True)
class GRUCell(Cell):
    """Gated recurrent unit, in the reset-after form (default) or the original reset-before form.

    Cho et al., "Learning phrase representations using RNN encoder-decoder", EMNLP 2014.
    Gate order r (reset), z (update), n (candidate), as in PyTorch and cuDNN::

        r = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
        z = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
        n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))      reset_after=True (PyTorch, cuDNN,
                                                           Flax): one recurrent matmul
        n = tanh(x W_xn + b_xn + (r * h) W_hn + b_hn)      reset_after=False (Cho et al.):
                                                           a second, dependent matmul
        h' = (1 - z) * n + z * h

    * Carry: ``h``, an array ``[*B, H]``; the output ``y`` is ``h'``.
    * Gate pre-activations (``project``): ``G = 3H``.
    * Initialisation: ``w_x`` Glorot uniform, ``w_h`` one orthogonal block per gate, biases
      zero.
    * Capabilities: :class:`~seqjax.cells.SplitStep` (its update reads ``r`` apart from
      ``px``: ``r * h_n``), :class:`~seqjax.cells.ProjectWeight`,
      :class:`~seqjax.cells.RecurWeight`, :class:`~seqjax.cells.JacobianDiagonal`.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        reset_after: apply the reset gate after the recurrent matmul (True) or before it.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = GRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry(), jnp.ones(3))
        >>> y.shape
        (4,)
    """

    input_size: int
    hidden_size: int
    reset_after: bool = True

    def init(self, key: PRNGKey, dtype=jnp.float32) -> GRUParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh = jax.random.split(key)
        hidden = self.hidden_size
        return GRUParams(
            w_x=glorot_uniform(kx, (self.input_size, 3 * hidden), dtype),
            w_h=orthogonal_blocks(kh, hidden, 3, dtype),
            b_x=jnp.zeros((3 * hidden,), dtype),
            b_h=jnp.zeros((3 * hidden,), dtype),
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """The zero state ``h``, ``[*B, H]``."""
        return zeros_carry(batch_shape, self.hidden_size, dtype)

    def project(self, params: GRUParams, xs: Array) -> Array:
        """``[..., I] -> [..., 3H]``: ``x W_x + b_x`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b_x)

    def project_weight(self, params: GRUParams) -> Array:
        """``W_x`` ``[I, 3H]``: ``project`` is ``x W_x`` plus a constant (see ``Cell``)."""
        return params.w_x

    def recur_weight(self, params: GRUParams) -> Array:
        """The columns of ``W_h`` that ``recur`` multiplies ``h`` by (``[H, 3H]``, or
        ``[H, 2H]`` reset-before); ``recur`` is ``h`` times this plus a constant."""
        return params.w_h if self.reset_after else params.w_h[:, : 2 * self.hidden_size]

    def recur_input(self, params: GRUParams, carry: Array) -> Array:
        """The part of the carry ``recur`` multiplies: ``h`` itself, ``[*B, H]``."""
        return carry

    def recur(self, params: GRUParams, carry: Array) -> Array:
        """The recurrent matmul: ``h W_h + b_h``, ``[*B, 3H]`` (reset-after); in the
        reset-before form only its r and z blocks, ``[*B, 2H]``, since the candidate's
        recurrent matmul reads ``r * h`` and stays in :meth:`update`."""
        if self.reset_after:
            return affine(carry, params.w_h, params.b_h)
        hidden = self.hidden_size
        return affine(carry, params.w_h[:, : 2 * hidden], params.b_h[: 2 * hidden])

    def update(self, params: GRUParams, carry: Array, px: Array, r: Array) -> tuple[Array, Array]:
        """The gate update from ``px`` ``[*B, 3H]`` and ``r = recur(params, carry)``."""
        h = carry
        hidden = self.hidden_size
        x_r, x_z, x_n = jnp.split(px, 3, axis=-1)
        if self.reset_after:
            h_r, h_z, h_n = jnp.split(r, 3, axis=-1)
            r = jax.nn.sigmoid(x_r + h_r)
            z = jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
        else:
            h_r, h_z = jnp.split(r, 2, axis=-1)
            r = jax.nn.sigmoid(x_r + h_r)
            z = jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + affine(r * h, params.w_h[:, 2 * hidden :], params.b_h[2 * hidden :]))
        h = (1.0 - z) * n + z * h
        return h, h

    def step(self, params: GRUParams, carry: Array, px: Array) -> tuple[Array, Array]:
        """One step from the projected input ``px`` ``[*B, 3H]``; returns ``(h, h)``."""
        return self.update(params, carry, px, self.recur(params, carry))

    def jacobian_diagonal(self, params: GRUParams, h: Array, px: Array) -> Array:
        """``d carry' / d carry`` on its diagonal, shaped like the carry, without forming the
        ``[H, H]`` Jacobian (used by :class:`~seqjax.QuasiDEER`)."""
        hidden = self.hidden_size
        x_r, x_z, x_n = jnp.split(px, 3, axis=-1)
        d_r, d_z, d_n = block_diagonals(params.w_h, 3, h.shape)
        b_h = jnp.broadcast_to(params.b_h, (*h.shape[:-1], 3 * hidden))
        if self.reset_after:
            h_r, h_z, h_n = jnp.split(h @ params.w_h + b_h, 3, axis=-1)
            r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            dn_pre = r * (1 - r) * d_r * h_n + r * d_n
        else:
            w_r, w_n = params.w_h[:, :hidden], params.w_h[:, 2 * hidden :]
            h_r, h_z = jnp.split(
                h @ params.w_h[:, : 2 * hidden] + b_h[..., : 2 * hidden], 2, axis=-1
            )
            r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + (r * h) @ w_n + b_h[..., 2 * hidden :])
            # d/dh_i of ((r * h) W_n)_i
            #   = sum_j W_r[i, j] r_j (1 - r_j) h_j W_n[j, i] + r_i W_n[i, i]
            dn_pre = jnp.einsum("ij,...j,ji->...i", w_r, r * (1 - r) * h, w_n) + r * d_n
        dz = z * (1 - z) * d_z
        return (1 - z) * (1 - n * n) * dn_pre + z + (h - n) * dz

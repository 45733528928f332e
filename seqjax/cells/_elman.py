"""The Elman (vanilla) recurrent cell."""

from __future__ import annotations

from collections.abc import Callable
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


class ElmanParams(NamedTuple):
    """Parameters of an :class:`ElmanCell`."""

    w_x: Array  # [I, H] input weights
    w_h: Array  # [H, H] recurrent weights
    b: Array  # [H] bias


@dataclass(frozen=True)
class ElmanCell(Cell):
    """Elman (vanilla) RNN cell: ``h' = f(x W_x + h W_h + b)``.

    Elman, "Finding structure in time", Cognitive Science 14 (1990). The same cell as
    PyTorch's ``nn.RNN`` (whose two biases ``b_ih + b_hh`` sum to ``b``) and Flax's
    ``SimpleCell``.

    * Carry: ``h``, an array ``[*B, H]``; the output ``y`` is the new ``h``.
    * Gate pre-activations (``project``): ``G = H``.
    * Initialisation: ``w_x`` Glorot uniform, ``w_h`` orthogonal, ``b`` zeros.
    * Capabilities: :class:`~seqjax.cells.SummedUpdate`, :class:`~seqjax.cells.ProjectWeight`,
      :class:`~seqjax.cells.RecurWeight`, :class:`~seqjax.cells.JacobianDiagonal`.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        activation: the nonlinearity ``f``, ``jnp.tanh`` (default) or ``jax.nn.relu``
            (any elementwise function works; PyTorch interop knows those two).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = ElmanCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry((2,)), jnp.ones((2, 3)))
        >>> y.shape
        (2, 4)
    """

    input_size: int
    hidden_size: int
    activation: Callable[[Array], Array] = jnp.tanh

    def init(self, key: PRNGKey, dtype=jnp.float32) -> ElmanParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        kx, kh = jax.random.split(key)
        return ElmanParams(
            w_x=glorot_uniform(kx, (self.input_size, self.hidden_size), dtype),
            w_h=orthogonal_blocks(kh, self.hidden_size, 1, dtype),
            b=jnp.zeros((self.hidden_size,), dtype),
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """The zero state ``h``, ``[*B, H]``."""
        return zeros_carry(batch_shape, self.hidden_size, dtype)

    def project(self, params: ElmanParams, xs: Array) -> Array:
        """``[..., I] -> [..., H]``: ``x W_x + b`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b)

    def project_weight(self, params: ElmanParams) -> Array:
        """``W_x`` ``[I, H]``: ``project`` is ``x W_x`` plus a constant (see ``Cell``)."""
        return params.w_x

    def recur_weight(self, params: ElmanParams) -> Array:
        """``W_h`` ``[H, H]``: ``recur`` is ``h W_h`` (see ``Cell``)."""
        return params.w_h

    def recur_input(self, params: ElmanParams, carry: Array) -> Array:
        """The part of the carry ``recur`` multiplies: ``h`` itself, ``[*B, H]``."""
        return carry

    def recur(self, params: ElmanParams, carry: Array) -> Array:
        """The recurrent matmul ``h W_h``, ``[*B, H]`` (linear in ``w_h``)."""
        return carry @ params.w_h

    def update(self, params: ElmanParams, carry: Array, px: Array, r: Array) -> tuple[Array, Array]:
        """The elementwise update ``f(px + r)``; ``px`` and ``r`` are ``[*B, H]``."""
        return self.update_summed(params, carry, px + r)

    def update_summed(self, params: ElmanParams, carry: Array, z: Array) -> tuple[Array, Array]:
        """The update ``f(z)`` from ``z = px + r``, ``[*B, H]``."""
        h = self.activation(z)
        return h, h

    def step(self, params: ElmanParams, carry: Array, px: Array) -> tuple[Array, Array]:
        """One step from the projected input ``px`` ``[*B, H]``; returns ``(h, h)``."""
        return self.update(params, carry, px, self.recur(params, carry))

    def jacobian_diagonal(self, params: ElmanParams, h: Array, px: Array) -> Array:
        """``d carry' / d carry`` on its diagonal, shaped like the carry, without forming the
        ``[H, H]`` Jacobian (used by :class:`~seqjax.QuasiDEER`)."""
        u = px + h @ params.w_h
        _, slope = jax.jvp(self.activation, (u,), (jnp.ones_like(u),))  # f'(u), f elementwise
        (d,) = block_diagonals(params.w_h, 1, u.shape)
        return slope * d

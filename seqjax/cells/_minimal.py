"""Minimal gated cells whose recurrence is linear in the state: minGRU and minLSTM.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs all we needed?" (2024). Their gates
read only the input, so ``h_t = a_t * h_{t-1} + b_t`` with ``a_t, b_t`` computed for every step at
once: both cells offer ``coefficients`` (and ``log_coefficients``), and
``unroll(..., method="associative")`` evaluates them with an associative scan in
``O(log T)`` depth. ``step``/``apply`` run the same recurrence one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell, LogCoefficients
from seqjax.cells._common import affine, glorot_uniform, zeros_carry


def positive_activation(x: Array) -> Array:
    """``g(x) = x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below: positive, continuous, ~linear."""
    return jnp.where(x >= 0, jnp.maximum(x, 0) + 0.5, jax.nn.sigmoid(x))


def log_positive_activation(x: Array) -> Array:
    """``log g(x)``, computed without forming ``g`` (no log of a tiny sigmoid)."""
    return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0) + 0.5), -jax.nn.softplus(-x))


class MinGRUParams(NamedTuple):
    """Parameters of a :class:`MinGRUCell`; column blocks in the order z, candidate."""

    w_x: Array  # [I, 2H] input weights
    b: Array  # [2H] bias


class MinLSTMParams(NamedTuple):
    """Parameters of a :class:`MinLSTMCell`; column blocks in the order f, i, candidate."""

    w_x: Array  # [I, 3H] input weights
    b: Array  # [3H] bias


def _init(key: PRNGKey, input_size: int, width: int, dtype):
    return glorot_uniform(key, (input_size, width), dtype), jnp.zeros((width,), dtype)


@dataclass(frozen=True)
class MinGRUCell(Cell):
    """minGRU: a GRU whose gates see only the input, so the recurrence is linear in ``h``.

    Feng et al. (2024), "Were RNNs all we needed?"::

        [k_z, k_h] = x W_x + b                      (gate order z, candidate)
        z  = sigmoid(k_z)
        h~ = g(k_h) if log_space else k_h           g(v) = v + 0.5 (v >= 0), sigmoid(v) (v < 0)
        h' = (1 - z) * h + z * h~  =  a * h + b

    * Carry: ``h``, an array ``[*B, H]``; the output ``y`` is ``h'``.
    * Gate pre-activations (``project``): ``G = 2H``.
    * ``coefficients(params, px) -> (a, b)``, each ``[..., H]``: ``a = 1 - z``, ``b = z * h~``.
    * ``log_space`` (default True, the variant the paper trains with): the candidate passes
      through ``g`` so ``b > 0``, and the parallel evaluation runs in log space
      (``log_coefficients``) so that long products of ``a`` never underflow. With a zero initial
      state ``h`` stays positive. ``log_space=False`` is the paper's plain version.
    * Initialisation: ``w_x`` Glorot uniform, ``b`` zeros.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        log_space: use the positive candidate ``g`` and log-space parallel evaluation.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = MinGRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry((2,)), jnp.ones((2, 3)))
        >>> a, b = cell.coefficients(params, cell.project(params, jnp.ones((2, 3))))
        >>> bool(jnp.allclose(y, a * 0.0 + b))
        True
    """

    input_size: int
    hidden_size: int
    log_space: bool = True

    def init(self, key: PRNGKey, dtype=jnp.float32) -> MinGRUParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        return MinGRUParams(*_init(key, self.input_size, 2 * self.hidden_size, dtype))

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """The zero state ``h``, ``[*B, H]``."""
        return zeros_carry(batch_shape, self.hidden_size, dtype)

    def project(self, params: MinGRUParams, xs: Array) -> Array:
        """``[..., I] -> [..., 2H]``: ``x W_x + b`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b)

    def coefficients(self, params: MinGRUParams, px: Array) -> tuple[Array, Array]:
        """``(a, b)``, each ``[..., H]``, with ``h' = a * h + b``, from ``px`` ``[..., 2H]``."""
        k_z, k_h = jnp.split(px, 2, axis=-1)
        candidate = positive_activation(k_h) if self.log_space else k_h
        return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * candidate

    def to_state(self, carry: Array) -> Array:
        """The state the coefficients act on: ``h`` itself."""
        return carry

    def from_state(self, state: Array) -> Array:
        """The carry of a state ``h``: itself."""
        return state

    def supports(self, capability: type) -> bool:
        """As :meth:`Cell.supports`; log coefficients only with ``log_space``."""
        if capability is LogCoefficients:
            return self.log_space
        return super().supports(capability)

    def log_coefficients(self, params: MinGRUParams, px: Array) -> tuple[Array, Array]:
        """``(log a, log b)``, each ``[..., H]`` (``log_space`` only: needs ``b > 0``)."""
        _require_log_space(self)
        k_z, k_h = jnp.split(px, 2, axis=-1)
        return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_positive_activation(k_h)

    def step(self, params: MinGRUParams, carry: Array, px: Array) -> tuple[Array, Array]:
        """One step from the projected input ``px`` ``[*B, 2H]``; returns ``(h, h)``."""
        a, b = self.coefficients(params, px)
        h = a * carry + b
        return h, h


@dataclass(frozen=True)
class MinLSTMCell(Cell):
    """minLSTM: an LSTM whose gates see only the input, normalised so ``f' + i' = 1``.

    Feng et al. (2024), "Were RNNs all we needed?"::

        [k_f, k_i, k_h] = x W_x + b                 (gate order f, i, candidate)
        f = sigmoid(k_f),  i = sigmoid(k_i)
        f' = f / (f + i),  i' = i / (f + i)         (time-independent scale of the state)
        h~ = g(k_h) if log_space else k_h           g as in :class:`MinGRUCell`
        h' = f' * h + i' * h~  =  a * h + b

    * Carry: ``h``, an array ``[*B, H]``; the output ``y`` is ``h'``.
    * Gate pre-activations (``project``): ``G = 3H``.
    * ``coefficients(params, px) -> (a, b)``: ``a = f'``, ``b = i' * h~``; in log space
      ``log f' = -softplus(d)``, ``log i' = -softplus(-d)`` with
      ``d = softplus(-k_f) - softplus(-k_i) = log(i / f)``.
    * ``log_space`` (default True) as in :class:`MinGRUCell`.
    * Initialisation: ``w_x`` Glorot uniform, ``b`` zeros.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``.
        log_space: use the positive candidate ``g`` and log-space parallel evaluation.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = MinLSTMCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry(), jnp.ones(3))
        >>> y.shape
        (4,)
    """

    input_size: int
    hidden_size: int
    log_space: bool = True

    def init(self, key: PRNGKey, dtype=jnp.float32) -> MinLSTMParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        return MinLSTMParams(*_init(key, self.input_size, 3 * self.hidden_size, dtype))

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """The zero state ``h``, ``[*B, H]``."""
        return zeros_carry(batch_shape, self.hidden_size, dtype)

    def project(self, params: MinLSTMParams, xs: Array) -> Array:
        """``[..., I] -> [..., 3H]``: ``x W_x + b`` for any number of steps at once."""
        return affine(xs, params.w_x, params.b)

    def _gates(self, px: Array):
        k_f, k_i, k_h = jnp.split(px, 3, axis=-1)
        return jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i), k_h

    def coefficients(self, params: MinLSTMParams, px: Array) -> tuple[Array, Array]:
        """``(a, b)``, each ``[..., H]``, with ``h' = a * h + b``, from ``px`` ``[..., 3H]``."""
        d, k_h = self._gates(px)
        candidate = positive_activation(k_h) if self.log_space else k_h
        return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * candidate

    def to_state(self, carry: Array) -> Array:
        """The state the coefficients act on: ``h`` itself."""
        return carry

    def from_state(self, state: Array) -> Array:
        """The carry of a state ``h``: itself."""
        return state

    def supports(self, capability: type) -> bool:
        """As :meth:`Cell.supports`; log coefficients only with ``log_space``."""
        if capability is LogCoefficients:
            return self.log_space
        return super().supports(capability)

    def log_coefficients(self, params: MinLSTMParams, px: Array) -> tuple[Array, Array]:
        """``(log a, log b)``, each ``[..., H]`` (``log_space`` only: needs ``b > 0``)."""
        _require_log_space(self)
        d, k_h = self._gates(px)
        return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_positive_activation(k_h)

    def step(self, params: MinLSTMParams, carry: Array, px: Array) -> tuple[Array, Array]:
        """One step from the projected input ``px`` ``[*B, 3H]``; returns ``(h, h)``."""
        a, b = self.coefficients(params, px)
        h = a * carry + b
        return h, h


def _require_log_space(cell) -> None:
    if not cell.log_space:
        raise ValueError(
            f"{type(cell).__name__}.log_coefficients: needs log_space=True (a positive "
            f"candidate, so that log b exists); got log_space={cell.log_space}"
        )

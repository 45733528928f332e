"""The linear recurrent unit: a complex diagonal linear recurrence with a stable parametrisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell
from seqjax.cells._common import _draw_dtype, zeros_carry


class LRUParams(NamedTuple):
    """Parameters of an :class:`LRUCell` (the state has ``H`` complex units)."""

    nu_log: Array  # [H] log(-log|lambda|): |lambda| = exp(-exp(nu_log)) < 1 for any value
    theta_log: Array  # [H] log of the phase of lambda
    gamma_log: Array  # [H] log of the input normalisation sqrt(1 - |lambda|^2)
    w_in_re: Array  # [I, H] input matrix B, real part
    w_in_im: Array  # [I, H] input matrix B, imaginary part
    w_out_re: Array  # [H, H] output matrix C, real part
    w_out_im: Array  # [H, H] output matrix C, imaginary part
    w_skip: Array  # [I, H] feedthrough D


class LRUCarry(NamedTuple):
    """State of an :class:`LRUCell`: the complex state ``s = re + i im``."""

    re: Array  # [*B, H]
    im: Array  # [*B, H]


def _complex(re: Array, im: Array) -> Array:
    """``re + i im``; half precision is widened to float32 (there is no complex32)."""
    dtype = jnp.promote_types(re.dtype, jnp.float32)
    return jax.lax.complex(re.astype(dtype), im.astype(dtype))


@dataclass(frozen=True)
class LRUCell(Cell):
    """Linear recurrent unit: a diagonal complex linear recurrence with a real readout.

    Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting recurrent neural
    networks for long sequences", ICML 2023::

        lambda = exp(-exp(nu_log) + i exp(theta_log))         |lambda| < 1 for any nu_log
        gamma  = exp(gamma_log)                               (init sqrt(1 - |lambda|^2))
        s'     = lambda * s + gamma * (x B)                   (complex, elementwise in s)
        y      = Re(s' C) + x D

    * Carry: :class:`LRUCarry` ``(re, im)``, each ``[*B, H]``: the complex state split in real
      parts, so that every carry leaf is real like every other cell's. The output ``y`` is
      ``[*B, H]``.
    * Gate pre-activations (``project``): ``G = 3H``: ``[Re(x B), Im(x B), x D]``.
    * ``coefficients(params, px) -> (a, b)``: complex ``[..., H]``, ``a = lambda``,
      ``b = gamma * (x B)``, for the complex state ``to_state(carry)``
      (``from_state`` is its inverse): a :class:`~seqjax.cells.LinearRecurrence`, which
      ``unroll(..., method="associative")`` evaluates with an associative scan.
    * Initialisation (the paper's): ``|lambda|^2`` uniform on ``[r_min^2, r_max^2]``, phase
      uniform on ``[0, max_phase]``, ``gamma_log`` as above; ``B`` complex normal with
      variance ``1 / (2 I)`` per part, ``C`` complex normal with variance ``1 / H`` per part.
      ``D``: the paper's diagonal skip needs ``I = H``; here it is a dense ``[I, H]`` map,
      normal with variance ``1 / I``.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``, complex state units and output features.
        r_min: smallest initial eigenvalue modulus.
        r_max: largest initial eigenvalue modulus.
        max_phase: largest initial eigenvalue phase.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = LRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> carry, y = cell.apply(params, cell.init_carry((2,)), jnp.ones((2, 3)))
        >>> carry.re.shape, y.shape
        ((2, 4), (2, 4))
    """

    input_size: int
    hidden_size: int
    r_min: float = 0.0
    r_max: float = 0.99
    max_phase: float = 2 * math.pi

    def __post_init__(self):
        super().__post_init__()
        # |lambda| is drawn between r_min and r_max: outside [0, 1) nu_log is NaN (r = 1 makes
        # it -inf, a unit that never forgets); a phase range <= 0 makes theta_log NaN.
        r_min = _checks.number("r_min", self.r_min, "LRUCell", low=0.0, high=1.0, high_open=True)
        _checks.number("r_max", self.r_max, "LRUCell", low=r_min, high=1.0, high_open=True)
        _checks.number("max_phase", self.max_phase, "LRUCell", low=0.0, low_open=True)

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LRUParams:
        """Draw parameters; ``dtype`` is the parameter dtype."""
        n, i = self.hidden_size, self.input_size
        draw = _draw_dtype(dtype)
        k_mod, k_phase, k_bre, k_bim, k_cre, k_cim, k_d = jax.random.split(key, 7)
        # minval > 0: log(0) would make nu_log infinite when r_min = 0.
        u1 = jax.random.uniform(k_mod, (n,), draw, minval=1e-6)
        u2 = jax.random.uniform(k_phase, (n,), draw)
        mod_sq = u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2
        nu_log = jnp.log(-0.5 * jnp.log(mod_sq))
        gamma_log = 0.5 * jnp.log1p(-mod_sq)
        params = LRUParams(
            nu_log=nu_log,
            theta_log=jnp.log(self.max_phase * jnp.maximum(u2, 1e-6)),
            gamma_log=gamma_log,
            w_in_re=jax.random.normal(k_bre, (i, n), draw) / math.sqrt(2 * i),
            w_in_im=jax.random.normal(k_bim, (i, n), draw) / math.sqrt(2 * i),
            w_out_re=jax.random.normal(k_cre, (n, n), draw) / math.sqrt(n),
            w_out_im=jax.random.normal(k_cim, (n, n), draw) / math.sqrt(n),
            w_skip=jax.random.normal(k_d, (i, n), draw) / math.sqrt(i),
        )
        return jax.tree.map(lambda a: a.astype(dtype), params)

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LRUCarry:
        """The zero state, ``re`` and ``im`` each ``[*B, H]``."""
        zeros = zeros_carry(batch_shape, self.hidden_size, dtype)
        return LRUCarry(re=zeros, im=zeros)

    def project(self, params: LRUParams, xs: Array) -> Array:
        """``[..., I] -> [..., 3H]``: ``[Re(x B), Im(x B), x D]`` for any number of steps."""
        w = jnp.concatenate([params.w_in_re, params.w_in_im, params.w_skip], axis=-1)
        return xs @ w

    def _eigenvalues(self, params: LRUParams, shape) -> tuple[Array, Array, Array]:
        """``(Re lambda, Im lambda, gamma)``, each broadcast to ``shape``."""
        modulus = jnp.exp(-jnp.exp(params.nu_log))
        phase = jnp.exp(params.theta_log)
        parts = (modulus * jnp.cos(phase), modulus * jnp.sin(phase), jnp.exp(params.gamma_log))
        re, im, gamma = (jnp.broadcast_to(p, shape) for p in parts)
        return re, im, gamma

    def coefficients(self, params: LRUParams, px: Array) -> tuple[Array, Array]:
        """Complex ``(a, b)``, each ``[..., H]``: ``s' = a * s + b`` for ``px`` ``[..., 3H]``."""
        bu_re, bu_im, _ = jnp.split(px, 3, axis=-1)
        lam_re, lam_im, gamma = self._eigenvalues(params, bu_re.shape)
        return _complex(lam_re, lam_im), _complex(gamma * bu_re, gamma * bu_im)

    def to_state(self, carry: LRUCarry) -> Array:
        """The complex state ``re + i im`` ``[*B, H]`` that ``coefficients`` acts on."""
        return _complex(carry.re, carry.im)

    def from_state(self, state: Array) -> LRUCarry:
        """The carry of a complex state ``[*B, H]`` (inverse of ``to_state``)."""
        return LRUCarry(re=jnp.real(state), im=jnp.imag(state))

    def step(self, params: LRUParams, carry: LRUCarry, px: Array) -> tuple[LRUCarry, Array]:
        """One step from the projected input ``px`` ``[*B, 3H]``; returns ``(carry, y)``."""
        bu_re, bu_im, skip = jnp.split(px, 3, axis=-1)
        lam_re, lam_im, gamma = self._eigenvalues(params, bu_re.shape)
        re = lam_re * carry.re - lam_im * carry.im + gamma * bu_re
        im = lam_re * carry.im + lam_im * carry.re + gamma * bu_im
        y = re @ params.w_out_re - im @ params.w_out_im + skip
        return LRUCarry(re=re, im=im), y

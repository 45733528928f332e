"""The echo-state (reservoir) cell and the spectral-radius estimate that scales its reservoir."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PRNGKey
from seqjax.cells._base import Cell
from seqjax.cells._common import _draw_dtype, affine, bernoulli, zeros_carry

# ``sparse=None`` stores the reservoir as a BCOO matrix below this connectivity, dense
# above: on XLA:CPU a BCOO product costs about as much per stored entry as ~35 dense
# multiply-adds (benchmarks/results/cpu-esn_vs_reservoirpy.md, "storage"). A fixed rule, not
# a per-backend one: the parameters' structure must not depend on where they were drawn.
SPARSE_BELOW = 0.03


def _sparse():
    """``jax.experimental.sparse``, imported when a reservoir needs it (it pulls SciPy)."""
    from jax.experimental import sparse

    return sparse


def is_bcoo(w) -> bool:
    """Whether ``w`` is a BCOO matrix (without importing the sparse package for a dense one)."""
    return type(w).__name__ == "BCOO" and isinstance(w, _sparse().BCOO)


# ``spectral_radius(method="auto")`` computes every eigenvalue of reservoirs up to this many
# units and iterates above it. LAPACK's dense eigenvalues cost O(H^3): 0.01 s at H=200,
# 0.34 s at 1000, 1.5 s at 2000 (numpy, float64, idle 2-core CPU); the iteration is cheaper
# but only an estimate.
EXACT_UP_TO = 2048
METHODS = ("auto", "eigvals", "iterative")


def spectral_radius(
    w,
    key: PRNGKey | None = None,
    *,
    method: str = "auto",
    num_vectors: int = 16,
    num_iters: int = 300,
) -> Array:
    """The spectral radius (largest ``|eigenvalue|``) of a square matrix ``w``.

    ``method``:

    * ``"eigvals"``: exact. Every eigenvalue of the dense matrix from LAPACK (``numpy``'s
      ``eigvals``, in float64 on the host, through :func:`jax.pure_callback`, so under
      ``jit`` and on any backend). Cost ``O(H^3)``; not differentiable.
    * ``"iterative"``: an estimate from products ``v @ w`` only (so a BCOO ``w`` stays
      sparse): block power (subspace) iteration on ``p = num_vectors`` orthonormal vectors,
      re-orthonormalised by QR every step, then a Rayleigh-Ritz step: the spectral radius
      of the small ``p x p`` matrix ``S = Q^T w^T Q``, found by repeated squaring
      (``rho(S) = lim ||S^k||^(1/k)``). A block and not one vector because a real matrix
      whose dominant eigenvalues are a complex-conjugate pair (the common case for random
      reservoirs) makes single-vector power iteration rotate forever; a real subspace of
      dimension ``p >= 2`` holds both members of the pair. Ritz values converge at rate
      ``|lambda_{p+1} / lambda_1|`` per iteration, slowly for large random reservoirs,
      whose eigenvalues crowd the edge of a disk (about 3e-3 relative at H=2000), and may
      *overshoot* when ``w`` is far from normal and rank-deficient (a reservoir with about
      one connection per unit: 0.56 instead of 1 was seen at H=200, connectivity 0.005).
    * ``"auto"`` (default): ``"eigvals"`` up to ``EXACT_UP_TO`` (2048) units, ``"iterative"``
      above.

    Args:
        w: ``[H, H]`` dense array or ``jax.experimental.sparse.BCOO``.
        key: draws the iteration's starting block; a fixed key when None.
        method: ``"auto"``, ``"eigvals"`` or ``"iterative"``.
        num_vectors: ``p``, the iteration's block size.
        num_iters: subspace iterations.

    Returns:
        ``[]`` the radius, float32 (or w's dtype if wider).

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[0.0, -2.0], [2.0, 0.0]])     # eigenvalues +-2i: power iteration
        >>> round(float(spectral_radius(w, method="iterative")), 4)  # one vector never settles
        2.0
        >>> round(float(spectral_radius(jnp.array([[0.5, 9.0], [0.0, 0.25]]))), 4)  # not a norm
        0.5
    """
    if method not in METHODS:
        raise ValueError(f"spectral_radius: method must be one of {METHODS}; got {method!r}")
    size = w.shape[0]
    if w.ndim != 2 or w.shape[1] != size:
        raise ValueError(f"spectral_radius: w must be a square matrix [H, H]; got shape {w.shape}")
    dtype = _draw_dtype(w.dtype)  # at least float32
    if method == "eigvals" or (method == "auto" and size <= EXACT_UP_TO):
        dense = w.todense() if is_bcoo(w) else jnp.asarray(w)
        host = functools.partial(_host_radius, dtype=dtype)
        result = jax.ShapeDtypeStruct((), dtype)
        return jax.pure_callback(host, result, dense, vmap_method="sequential")
    if is_bcoo(w):
        w = _sparse().BCOO((w.data.astype(dtype), w.indices), shape=w.shape)
    else:
        w = jnp.asarray(w, dtype)
    p = min(num_vectors, size)
    key = jax.random.key(0) if key is None else key
    q, _ = jnp.linalg.qr(jax.random.normal(key, (size, p), dtype))

    def apply_t(q):  # w^T q, from the supported product q^T w
        return (q.T @ w).T

    def body(_, q):
        return jnp.linalg.qr(apply_t(q))[0]

    if p < size:  # with p = H the block spans everything: S is similar to w already
        q = jax.lax.fori_loop(0, num_iters, body, q)
    return _small_spectral_radius(q.T @ apply_t(q))


def _host_radius(w, dtype):
    """``max |eigvals(w)|`` of a ``[..., H, H]`` numpy array (a vmapped call adds axes)."""
    return np.abs(np.linalg.eigvals(np.asarray(w, np.float64))).max(axis=-1).astype(dtype)


def _small_spectral_radius(s: Array, num_squarings: int = 60) -> Array:
    """``rho(s)`` of a small matrix by Gelfand's formula on ``s^(2^k)``, normalised each step."""

    def body(_, state):
        m, log_scale, weight = state
        m = m @ m
        norm = jnp.maximum(jnp.linalg.norm(m), jnp.finfo(m.dtype).tiny)
        # s^(2^k) = exp(log_scale / weight) ... kept as log(norm) per unit power
        return m / norm, 2.0 * log_scale + jnp.log(norm), 2.0 * weight

    norm0 = jnp.maximum(jnp.linalg.norm(s), jnp.finfo(s.dtype).tiny)
    one = jnp.ones((), s.dtype)
    _, log_scale, weight = jax.lax.fori_loop(
        0, num_squarings, body, (s / norm0, jnp.log(norm0), one)
    )
    return jnp.exp(log_scale / weight)


class EchoStateParams(NamedTuple):
    """Parameters of an :class:`EchoStateCell`.

    The random arrays are stored at unit scale and the scalings apart, so that each scaling
    can be trained (or differentiated) on its own. Leaves not in the cell's ``trainable``
    pass through ``lax.stop_gradient``: their gradient is zero.
    """

    w_in: Array  # [I, H] input weights, entries +-1 (a fraction input_connectivity nonzero)
    w: Array  # [H, H] reservoir weights with spectral radius 1: dense, or a BCOO matrix
    b: Array  # [H] bias at unit scale, entries +-1
    input_scaling: Array  # [I] per-feature input gain
    spectral_radius: Array  # [] spectral radius of the reservoir in use, spectral_radius * w
    bias_scaling: Array  # [] bias gain
    leak_rate: Array  # [H] per-unit leak rate a in (0, 1]


def _as_tuple_or_float(value, size: int, name: str, where: str):
    if _checks.is_real(value):
        return float(value)
    try:
        values = None if isinstance(value, str) else tuple(value)
    except TypeError:  # not iterable
        values = None
    if values is None or not all(_checks.is_real(v) for v in values):
        raise ValueError(f"{where}: {name} must be a number or {size} numbers; got {value!r}")
    values = tuple(float(v) for v in values)
    if len(values) != size:
        raise ValueError(f"{where}: {name} must be a number or {size} numbers; got {len(values)}")
    return values


@dataclass(frozen=True)
class EchoStateCell(Cell):
    """Echo-state network reservoir: a fixed random recurrent layer of leaky-integrator units.

    Jaeger, "The echo state approach to analysing and training recurrent neural networks",
    GMD Report 148 (2001); Jaeger & Haas, Science 304 (2004); leaky units as in Lukosevicius,
    "A practical guide to applying echo state networks" (2012)::

        x' = (1 - a) * x + a * f(rho * (x @ W) + (u * s_in) @ W_in + s_b * b)

    with ``W`` scaled to spectral radius 1 (so ``rho`` is the reservoir's spectral radius),
    ``s_in`` the per-feature input scaling, ``s_b`` the bias scaling and ``a`` the per-unit
    leak rate. The update is ReservoirPy's ``Reservoir`` (0.4) written for row vectors.

    * Carry: the state ``x``, ``[*B, H]``; the output ``y`` is ``x'``. Gate pre-activations
      (``project``): ``G = H``, ``(u * s_in) @ W_in + s_b * b``.
    * Initialisation (a pure function of the key, like every seqjax cell), ReservoirPy 0.4's
      defaults in distribution: ``W`` has ``max(1, round(connectivity * H^2))`` nonzero
      entries at uniformly drawn distinct positions (so each unit's number of incoming
      connections varies, binomially), weights ``N(0, 1)`` (ReservoirPy's ``normal``,
      through ``scipy.sparse.random_array``); ``W`` is then divided by its spectral radius,
      from :func:`spectral_radius`: exact (every eigenvalue, LAPACK) up to 2048 units,
      an iterative estimate above. Connections too few to form a cycle give radius 0,
      which no scaling fixes: ``init`` raises (under a trace, where it cannot, ``w`` is
      NaN). ``W_in`` has
      ``max(1, round(input_connectivity * I * H))`` entries ``+-1`` at uniformly drawn
      positions, zeros elsewhere (ReservoirPy's ``bernoulli``); ``b`` is ``+-1`` everywhere
      (ReservoirPy 0.4 has no bias by default: ``bias_scaling = 0``, the default here, is
      the same). With ``fixed_fan_in`` every unit instead draws exactly
      ``k = max(1, round(connectivity * H))`` incoming connections (ReservoirPy's
      ``normal(degree=k, direction="in")``): no unit is left without recurrent input at
      low connectivity. On the Mackey-Glass benchmark (benchmarks/esn_vs_reservoirpy.py,
      100 seeds) the two layouts gave errors that could not be told apart.
    * Storage: ``w`` is a ``jax.experimental.sparse.BCOO`` matrix when ``sparse`` is True,
      a dense ``[H, H]`` array when False. None (default) is resolved at construction, from
      the connectivity alone (BCOO below ``SPARSE_BELOW`` = 3 %, the break-even measured on
      XLA:CPU), and recorded in the field: the parameters' structure never depends on the
      backend, so a checkpoint restores anywhere. Set it explicitly on an accelerator,
      where dense products are usually faster.
    * Gradients: fixed weights (all leaves by default) sit behind ``lax.stop_gradient``;
      name leaves in ``trainable`` to train them, e.g. ``trainable=("leak_rate",
      "spectral_radius", "input_scaling")`` for hyperparameter gradients.

    Attributes:
        input_size: ``I``.
        hidden_size: ``H``, the number of reservoir units.
        spectral_radius: ``rho``, the largest ``|eigenvalue|`` of the reservoir matrix.
        leak_rate: ``a``, a number or ``H`` numbers in ``(0, 1]``.
        connectivity: fraction of reservoir connections, in ``(0, 1]``.
        input_scaling: ``s_in``, a number or ``I`` numbers.
        input_connectivity: fraction of nonzero input weights, in ``(0, 1]``.
        bias_scaling: ``s_b`` (0 turns the bias off).
        activation: ``f``, ``jnp.tanh`` by default.
        sparse: reservoir storage (see above).
        trainable: names of :class:`EchoStateParams` fields that get gradients; True for
            all of them (a fully trained recurrent network), False or ``()`` for none.
        fixed_fan_in: every unit gets exactly ``fan_in`` incoming reservoir connections
            (True), or the ``round(connectivity * H^2)`` connections fall anywhere (False,
            ReservoirPy's draw).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import unroll
        >>> cell = EchoStateCell(input_size=1, hidden_size=100, spectral_radius=1.25,
        ...                      leak_rate=0.3, input_scaling=0.5)
        >>> params = cell.init(jax.random.key(0))
        >>> _, states = unroll(cell, params, jnp.ones((50, 4, 1)))     # [T, B, H]
        >>> states.shape
        (50, 4, 100)
    """

    input_size: int
    hidden_size: int
    spectral_radius: float = 0.9
    leak_rate: float | tuple[float, ...] = 1.0
    connectivity: float = 0.1
    input_scaling: float | tuple[float, ...] = 1.0
    input_connectivity: float = 0.1
    bias_scaling: float = 0.0
    activation: Callable[[Array], Array] = jnp.tanh
    sparse: bool | None = None
    trainable: bool | tuple[str, ...] = ()
    fixed_fan_in: bool = False

    def __post_init__(self):
        where = "EchoStateCell"
        super().__post_init__()
        leak = _as_tuple_or_float(self.leak_rate, self.hidden_size, "leak_rate", where)
        scaling = _as_tuple_or_float(self.input_scaling, self.input_size, "input_scaling", where)
        object.__setattr__(self, "leak_rate", leak)
        object.__setattr__(self, "input_scaling", scaling)
        leaks = leak if isinstance(leak, tuple) else (leak,)
        if not all(0.0 < a <= 1.0 for a in leaks):
            raise ValueError(f"{where}: leak_rate must lie in (0, 1]; got {self.leak_rate!r}")
        scalings = scaling if isinstance(scaling, tuple) else (scaling,)
        if not all(np.isfinite(s) for s in scalings):
            raise ValueError(f"{where}: input_scaling must be finite; got {self.input_scaling!r}")
        _checks.number("bias_scaling", self.bias_scaling, where)
        for name in ("connectivity", "input_connectivity"):
            value = getattr(self, name)
            if not _checks.is_real(value) or not 0.0 < value <= 1.0:
                raise ValueError(f"{where}: {name} must lie in (0, 1]; got {value!r}")
        if not isinstance(self.fixed_fan_in, bool):
            raise ValueError(f"{where}: fixed_fan_in must be a bool; got {self.fixed_fan_in!r}")
        if self.sparse is None:  # resolved here, so the choice is recorded in the cell
            object.__setattr__(self, "sparse", self.connectivity < SPARSE_BELOW)
        elif not isinstance(self.sparse, bool):
            raise ValueError(f"{where}: sparse must be a bool or None; got {self.sparse!r}")
        radius = self.spectral_radius
        if not _checks.is_real(radius) or not 0.0 <= radius < float("inf"):
            raise ValueError(f"{where}: spectral_radius must be >= 0 and finite; got {radius!r}")
        trainable = self.trainable
        if isinstance(trainable, bool):
            trainable = EchoStateParams._fields if trainable else ()
        trainable = (trainable,) if isinstance(trainable, str) else trainable
        names = isinstance(trainable, tuple | list) and all(isinstance(t, str) for t in trainable)
        if not names:
            raise ValueError(
                f"{where}: trainable must be True, False, a field name of EchoStateParams or a "
                f"tuple of them; got {self.trainable!r}"
            )
        trainable = tuple(trainable)
        unknown = sorted(set(trainable) - set(EchoStateParams._fields))
        if unknown:
            raise ValueError(
                f"{where}: trainable must name fields of EchoStateParams "
                f"{EchoStateParams._fields}; got unknown {unknown}"
            )
        object.__setattr__(self, "trainable", trainable)

    @property
    def fan_in(self) -> int:
        """Incoming reservoir connections per unit with ``fixed_fan_in``,
        ``max(1, round(connectivity * H))`` (about the mean otherwise)."""
        return max(1, round(self.connectivity * self.hidden_size))

    def init(self, key: PRNGKey, dtype=jnp.float32) -> EchoStateParams:
        """Draw the reservoir; ``dtype`` is the parameter dtype.

        Connections and values are drawn in float32 for every ``dtype`` (the spectral radius is
        then estimated in ``dtype``, at least float32), so one key gives one reservoir:
        float32 and float64 params differ only by rounding.
        """
        dtype = jnp.dtype(dtype)
        inputs, hidden = self.input_size, self.hidden_size
        num_in = max(1, round(self.input_connectivity * inputs * hidden))
        if self.fixed_fan_in:
            num_w = self.fan_in * hidden
        else:
            num_w = max(1, round(self.connectivity * hidden * hidden))
        w_in, w, b = _draw_weights(
            key, inputs, hidden, num_w, self.fixed_fan_in, num_in, self.sparse, dtype
        )
        values = w.data if is_bcoo(w) else w
        if not isinstance(values, jax.core.Tracer) and bool(jnp.isnan(values).any()):
            raise ValueError(
                f"EchoStateCell.init: connectivity must give the reservoir a cycle (spectral "
                f"radius 0 cannot be scaled to spectral_radius={self.spectral_radius}); got "
                f"connectivity={self.connectivity}, whose {num_w} connections among {hidden} "
                f"units form no cycle: raise connectivity or hidden_size, or draw with another key"
            )
        return EchoStateParams(
            w_in=w_in,
            w=w,
            b=b,
            input_scaling=jnp.broadcast_to(jnp.asarray(self.input_scaling, dtype), (inputs,)),
            spectral_radius=jnp.asarray(self.spectral_radius, dtype),
            bias_scaling=jnp.asarray(self.bias_scaling, dtype),
            leak_rate=jnp.broadcast_to(jnp.asarray(self.leak_rate, dtype), (hidden,)),
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """The zero state ``x``, ``[*B, H]``."""
        return zeros_carry(batch_shape, self.hidden_size, dtype)

    def _fixed(self, params: EchoStateParams) -> EchoStateParams:
        """``params`` with every leaf outside ``trainable`` behind ``lax.stop_gradient``."""
        trainable = cast(tuple[str, ...], self.trainable)  # __post_init__ made it a tuple
        return EchoStateParams(
            *(
                leaf if name in trainable else jax.lax.stop_gradient(leaf)
                for name, leaf in zip(EchoStateParams._fields, params, strict=True)
            )
        )

    def project(self, params: EchoStateParams, xs: Array) -> Array:
        """``[..., I] -> [..., H]``: ``(u * s_in) @ W_in + s_b * b`` for any number of steps."""
        p = self._fixed(params)
        scaled = xs * jnp.broadcast_to(p.input_scaling, xs.shape)
        return affine(scaled, p.w_in, p.bias_scaling * p.b)

    def step(self, params: EchoStateParams, carry: Array, px: Array) -> tuple[Array, Array]:
        """One leaky-integrator step from the projected input ``px`` ``[*B, H]``."""
        p = self._fixed(params)
        recurrent = p.spectral_radius * (carry @ p.w)
        a = jnp.broadcast_to(p.leak_rate, carry.shape)
        x = (1 - a) * carry + a * self.activation(recurrent + px)
        return x, x


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7))
def _draw_weights(key, inputs, hidden, num_w, fixed_fan_in, num_in, sparse, dtype):
    """``(w_in [I, H], w [H, H], b [H])`` at unit scale, ``w`` rescaled to spectral radius 1.

    ``w`` has ``num_w`` nonzeros: ``num_w / H`` per unit when ``fixed_fan_in``, else placed
    uniformly over the matrix. One compiled program per shape and storage (a few hundred
    eager ops otherwise); cells that differ only in scalings, leak rates, activation or
    ``trainable`` share it.
    """
    draw = _draw_dtype(dtype)
    k_src, k_w, k_in_pos, k_in_sign, k_b, k_rho = jax.random.split(key, 6)
    # Values drawn in float32 whatever the dtype, like the positions: one key is one reservoir
    # (float64 params hold the float32 draw exactly), so float32 and float64 runs differ only
    # in arithmetic. The spectral radius is then estimated and divided out in ``draw``.
    if fixed_fan_in:
        k = num_w // hidden
        src = _fixed_fan_in_sources(k_src, hidden, k)  # [H, k]
        dst = jnp.broadcast_to(jnp.arange(hidden, dtype=src.dtype)[:, None], (hidden, k))
        values = jax.random.normal(k_w, (hidden, k), jnp.float32).astype(draw)
        src, dst, values = src.reshape(-1), dst.reshape(-1), values.reshape(-1)
    else:
        src, dst = _uniform_positions(k_src, hidden, num_w)
        values = jax.random.normal(k_w, (num_w,), jnp.float32).astype(draw)
    if sparse:
        indices = jnp.stack([src, dst], axis=-1)
        w = _sparse().BCOO((values, indices), shape=(hidden, hidden))
    else:
        w = jnp.zeros((hidden, hidden), draw).at[src, dst].set(values)
    rho = spectral_radius(w, k_rho)
    # No cycle among the connections (too few of them): every eigenvalue is 0 and no scaling
    # reaches the radius asked for. NaN weights rather than ones divided by ~0 (``init``
    # raises instead when it runs outside a trace).
    typical = jnp.linalg.norm(w.data if sparse else w) / hidden**0.5  # ~rho for random W
    rho = jnp.where(rho > 1e-6 * typical, rho, jnp.nan)
    if sparse:
        w = _sparse().BCOO(
            ((w.data / rho).astype(dtype), w.indices),
            shape=w.shape,
            indices_sorted=False,
            unique_indices=True,
        )
    else:
        w = (w / rho).astype(dtype)
    w_in = _sparse_signs(k_in_pos, k_in_sign, inputs * hidden, num_in, dtype)
    b = jnp.where(bernoulli(k_b, 0.5, (hidden,)), 1.0, -1.0)
    return w_in.reshape(inputs, hidden), w, b.astype(dtype)


def _sparse_signs(key_positions: PRNGKey, key_signs: PRNGKey, size: int, count: int, dtype):
    """``[size]``: ``count`` entries ``+-1`` (equally likely) at distinct uniformly drawn
    positions, zeros elsewhere; ReservoirPy's ``bernoulli`` initialiser, flattened."""
    # Ranks only: float32 draws whatever the dtype and x64 setting, so the same key gives the
    # same connections everywhere.
    uniform = jax.random.uniform(key_positions, (size,), jnp.float32)
    positions = jax.lax.top_k(uniform, count)[1]
    signs = jnp.where(bernoulli(key_signs, 0.5, (count,)), 1.0, -1.0)
    return jnp.zeros((size,), jnp.float32).at[positions].set(signs).astype(dtype)


def _fixed_fan_in_sources(key: PRNGKey, hidden: int, k: int) -> Array:
    """``[H, k]``: row ``j`` holds ``k`` distinct units drawn uniformly, the sources of unit
    ``j``: the top ``k`` of ``H`` uniform draws. Past 4096 units, row by row in chunks, so
    memory stays O(H k) for large sparse reservoirs."""
    if hidden <= 4096:
        return jax.lax.top_k(jax.random.uniform(key, (hidden, hidden), jnp.float32), k)[1]
    return jax.lax.map(
        lambda kk: jax.lax.top_k(jax.random.uniform(kk, (hidden,), jnp.float32), k)[1],
        jax.random.split(key, hidden),
        batch_size=256,
    )


def _uniform_positions(
    key: PRNGKey, hidden: int, count: int, rank_limit: int = 2**24
) -> tuple[Array, Array]:
    """``(src [count], dst [count])``: ``count`` distinct entries of an ``[H, H]`` matrix, every
    set of ``count`` entries equally likely (ReservoirPy's ``scipy.sparse.random_array``),
    sorted by ``(dst, src)``.

    Up to ``rank_limit`` entries (H <= 4096 by default), or above half full: the ``count``
    smallest of ``H^2`` uniform draws. Larger sparse matrices, in O(count) memory: draw
    ``count`` entries with replacement, then redraw every repeat until none is left. The
    rule treats all entries alike, so the set it ends with is a uniformly random one; each
    round leaves about a fraction ``count / H^2`` of the repeats, so a few rounds finish it.
    """
    size = hidden * hidden
    if size <= rank_limit or 2 * count > size:
        flat = jnp.argsort(jax.random.uniform(key, (size,), jnp.float32))[:count]
        flat = flat.astype(jnp.int32)
        dst, src = jax.lax.sort((flat % hidden, flat // hidden), num_keys=2)
        return src, dst

    def repeats(dst, src):  # on (dst, src)-sorted pairs: True at each second and later copy
        same = (dst[1:] == dst[:-1]) & (src[1:] == src[:-1])
        return jnp.concatenate([jnp.zeros((1,), bool), same])

    def redraw(state):
        key, dst, src, again = state
        key, k_dst, k_src = jax.random.split(key, 3)
        dst = jnp.where(again, jax.random.randint(k_dst, (count,), 0, hidden, jnp.int32), dst)
        src = jnp.where(again, jax.random.randint(k_src, (count,), 0, hidden, jnp.int32), src)
        dst, src = jax.lax.sort((dst, src), num_keys=2)
        return key, dst, src, repeats(dst, src)

    everywhere = jnp.ones((count,), bool)
    zero = jnp.zeros((count,), jnp.int32)
    state = redraw((key, zero, zero, everywhere))
    _, dst, src, _ = jax.lax.while_loop(lambda s: jnp.any(s[3]), redraw, state)
    return src, dst

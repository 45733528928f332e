"""DEER and quasi-DEER: any cell, evaluated by Newton iterations over the whole trajectory.

* :class:`DEER` (Lim et al., ICLR 2024): linearise every step around the current guess,
  ``s_t = J_t s_{t-1} + c_t``, solve that linear recurrence with an associative scan over
  dense ``[D, D]`` Jacobians (forward-mode products of ``step``; ``D`` is the carry size,
  ``2H`` for an LSTM), repeat until the residual ``max_t |s_t - step(s_{t-1})|`` is at most
  ``tol``. Quadratic convergence near the solution; ``O(T D^2)`` memory and ``O(T D^3)``
  work per iteration.
* :class:`QuasiDEER` (Gonzalez et al., NeurIPS 2024): the same with only the diagonal of each
  Jacobian, clipped to ``[-1, 1]`` so the linear recurrence cannot blow up: ``O(T D)``
  memory, more (cheaper) iterations. The diagonal is the cell's own when it supports
  :class:`~seqjax.cells.JacobianDiagonal` (no dense Jacobian formed), autodiff otherwise.
  ``damping`` shrinks the Jacobian, ``J / (1 + damping)``, towards the Picard iteration
  (``J = 0``), a cheap stand-in for the trust region of ELK.

Both keep the fixed point of the sequential scan: an approximate Jacobian only changes how
fast they get there. When the residual is still above ``tol`` after ``max_iters`` (chaotic
dynamics do not parallelise) the result falls back to sequential evaluation (``lax.cond``),
and :func:`seqjax.unroll_with_info` reports iterations, residual and whether it converged.
Gradients use the implicit function theorem (``custom_vjp``): the adjoint ``lambda_t = g_t +
J_{t+1}^T lambda_{t+1}`` is one linear scan backwards with exact Jacobians, then all parameter
gradients come from one time-parallel VJP. They equal the BPTT gradients of the sequential
scan; forward-mode differentiation is not supported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, jacobian_diagonal, row_jacobians
from seqjax.methods._base import Inputs, Method, ParallelInfo
from seqjax.methods._parallel import LOCAL, Local, evaluate

DERIVATIVES = ("parallel", "sequential")


@dataclass(frozen=True)
class _NewtonMethod(Method):
    """Options shared by :class:`DEER` and :class:`QuasiDEER`."""

    tol: float | None = None
    max_iters: int | None = None
    damping: float = 0.0
    fallback: bool = True
    derivative: str = "parallel"

    dense: ClassVar[bool] = True
    default_max_iters: ClassVar[int] = 32

    def __post_init__(self):
        where = type(self).__name__
        if self.derivative not in DERIVATIVES:
            raise ValueError(
                f"{where}: derivative must be one of {DERIVATIVES}; got {self.derivative!r}"
            )
        if isinstance(self.damping, bool) or not (
            isinstance(self.damping, int | float | np.integer | np.floating) and self.damping >= 0
        ):
            raise ValueError(f"{where}: damping must be a number >= 0; got {self.damping!r}")
        if self.tol is not None and (
            isinstance(self.tol, bool)
            or not isinstance(self.tol, int | float | np.integer | np.floating)
            or not self.tol > 0
        ):
            raise ValueError(
                f"{where}: tol must be > 0 (or None for the dtype's default); got {self.tol!r}"
            )
        if self.max_iters is not None and (
            not _checks.is_int(self.max_iters) or self.max_iters < 0
        ):
            raise ValueError(
                f"{where}: max_iters must be a non-negative int; got {self.max_iters!r}"
            )
        if not isinstance(self.fallback, bool):
            raise ValueError(f"{where}: fallback must be a bool; got {self.fallback!r}")

    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        carry, ys, _ = self.run_with_info(cell, params, inputs)
        return carry, ys

    def run_with_info(self, cell, params, inputs):
        return self.evaluate_on(cell, params, inputs, LOCAL)

    def evaluate_on(self, cell: Cell, params: PyTree, inputs: Inputs, time: Local):
        """:meth:`run_with_info` on the time axis ``time`` (``inputs`` hold its chunk)."""

        def solve(px, carry, fresh, valid):
            state_dtype = jax.tree.leaves(carry)[0].dtype
            tol = self.tol
            if tol is None:
                tol = {2: 1e-2, 4: 1e-6}.get(jnp.dtype(state_dtype).itemsize, 1e-12)
            max_iters = self.default_max_iters if self.max_iters is None else self.max_iters
            config = _Newton(
                cell=cell,
                layout=_Layout.of(carry, px.ndim - 2),
                batch_shape=tuple(px.shape[1:-1]),
                dense=self.dense,
                reverse=inputs.reverse,
                tol=float(tol),
                max_iters=int(max_iters),
                damping=float(self.damping),
                fallback=self.fallback,
                derivative=self.derivative,
                time=time,
            )
            return _newton(config, params, px, carry, valid, inputs.resets)

        return evaluate(cell, params, inputs, solve, time)


@dataclass(frozen=True)
class DEER(_NewtonMethod):
    """Newton iterations over the whole trajectory with exact Jacobians (any cell).

    Attributes:
        tol: stop when ``max_t |s_t - step(s_{t-1})| <= tol`` (absolute, on every carry
            entry). Default ``1e-6`` for 32-bit states, ``1e-12`` for 64-bit, ``1e-2`` for
            16-bit.
        max_iters: most iterations before falling back (default 32; at most ``T`` are ever
            needed in exact arithmetic).
        damping: ``J / (1 + damping)``; 0 is plain Newton.
        fallback: evaluate sequentially when the iteration has not converged (default True).
        derivative: the backward pass: ``"parallel"`` (the adjoint by an associative scan
            over dense Jacobians, ``O(T D^2)`` memory) or ``"sequential"`` (a ``lax.scan``
            of per-step VJPs, ``O(T D)`` memory). Both give the exact BPTT gradient.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import DEER, LSTMCell, unroll_with_info
        >>> cell = LSTMCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (64, 3))
        >>> carry, ys, info = unroll_with_info(cell, params, xs, method=DEER(tol=1e-6))
        >>> bool(info.converged), int(info.iterations) < 32
        (True, True)
    """


@dataclass(frozen=True)
class QuasiDEER(_NewtonMethod):
    """Newton iterations with only the diagonal of each Jacobian (any cell).

    Attributes are those of :class:`DEER`; ``max_iters`` defaults to 128 (more, cheaper
    iterations), and ``derivative`` still uses exact Jacobians.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell, QuasiDEER, unroll
        >>> cell = GRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (50, 2, 3))
        >>> _, ys = unroll(cell, params, xs, method=QuasiDEER(damping=0.1))
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-5))
        True
    """

    dense: ClassVar[bool] = False
    default_max_iters: ClassVar[int] = 128


@dataclass(frozen=True)
class _Layout:
    """How a carry pytree maps to one state vector ``[..., D]`` (leaves joined on the last axis)."""

    treedef: Any
    sizes: tuple[int, ...]
    dtypes: tuple[Any, ...]

    @classmethod
    def of(cls, carry: PyTree, batch_ndim: int) -> _Layout:
        leaves, treedef = jax.tree.flatten(carry)
        sizes = tuple(int(np.prod(a.shape[batch_ndim:], dtype=int)) for a in leaves)
        if any(a.ndim != batch_ndim + 1 for a in leaves):
            raise ValueError(
                "DEER: every carry leaf must be [*B, H] for the Newton methods; "
                f"got shapes {[a.shape for a in leaves]}"
            )
        return cls(treedef, sizes, tuple(jnp.dtype(a.dtype) for a in leaves))

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, carry: PyTree) -> Array:
        leaves = jax.tree.leaves(carry)
        dtype = jnp.result_type(*self.dtypes)
        return jnp.concatenate([a.astype(dtype) for a in leaves], axis=-1)

    def unflatten(self, s: Array) -> PyTree:
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        parts = jnp.split(s, cuts, axis=-1)
        return self.treedef.unflatten(
            [p.astype(d) for p, d in zip(parts, self.dtypes, strict=True)]
        )


@dataclass(frozen=True)
class _Newton:
    """Static configuration of one DEER / quasi-DEER solve (hashable: a custom_vjp static arg)."""

    cell: Any
    layout: _Layout
    batch_shape: tuple[int, ...]  # the cell's batch [*B], flattened to N rows by the solver
    dense: bool
    reverse: bool
    tol: float
    max_iters: int
    damping: float
    fallback: bool
    derivative: str
    time: Local = LOCAL  # where the time axis lies: every reach across steps goes through it

    def fresh(self, batch: int, dtype) -> Array:
        return self.layout.flatten(self.cell.init_carry((batch,), dtype))

    def on_batch(self, fn, s: Array, px: Array) -> Array:
        """``fn(carry, px) -> carry`` on state vectors ``[N, D]`` or ``[T, N, D]``, the cell
        called on its own batch ``[*B]`` (once per step under ``vmap``): a cell may draw noise
        per row of ``[*B]`` (zoneout) or hold per-row masks in its params (dropout)."""

        def one(s, px):
            rows = s.shape[0]
            s, px = s.reshape(*self.batch_shape, -1), px.reshape(*self.batch_shape, -1)
            out = self.layout.flatten(fn(self.layout.unflatten(s), px))
            return out.reshape(rows, -1)

        return jax.vmap(one)(s, px) if s.ndim == 3 else one(s, px)

    def step(self, params, s_in: Array, px: Array) -> Array:
        """``step`` on state vectors ``[N, D]`` or ``[T, N, D]``."""
        return self.on_batch(lambda c, p: self.cell.step(params, c, p)[0], s_in, px)

    def effective(self, params, s_prev, px, valid, reset):
        """The step as the scan sees it: a reset enters the fresh state, a padded step no-ops."""
        fresh = self.fresh(1, s_prev.dtype)[0]
        s_in = jnp.where(reset[..., None], jnp.broadcast_to(fresh, s_prev.shape), s_prev)
        return jnp.where(valid[..., None], self.step(params, s_in, px), s_prev)

    def dense_jacobian(self, params, s_prev, px, valid, reset) -> Array:
        """``[T, N, D, D]``: exact Jacobians of the effective step w.r.t. the entering state."""
        return row_jacobians(lambda s: self.effective(params, s, px, valid, reset), s_prev)


def _newton(config: _Newton, params, px, carry, valid, resets):
    """Solve for every state with (quasi-)Newton iterations; states as carries ``[T, *B, ...]``."""
    num_steps, batch_shape = px.shape[0], px.shape[1:-1]
    batch = int(np.prod(batch_shape, dtype=int))
    h0 = config.layout.flatten(carry).reshape(batch, -1)
    px2 = px.reshape(num_steps, batch, px.shape[-1])
    valid2 = (
        jnp.ones((num_steps, batch), bool) if valid is None else valid.reshape(num_steps, batch)
    )
    reset2 = (
        jnp.zeros((num_steps, batch), bool) if resets is None else resets.reshape(num_steps, batch)
    )
    states, info = _newton_states(config, params, px2, h0, valid2, reset2)
    states = states.reshape(num_steps, *batch_shape, -1)
    return config.layout.unflatten(states), info


def _linearise(config: _Newton, params, px, s, h0, valid, reset):
    """At the guess ``s`` ``[T, N, D]``: the entering states, ``f(s_{t-1})`` and the Jacobians."""
    s_prev = config.time.shift(s, h0, config.reverse)
    fresh = config.fresh(1, s.dtype)
    s_in = jnp.where(reset[..., None], jnp.broadcast_to(fresh, s.shape), s_prev)
    mask_v = valid[..., None]
    f = jnp.where(mask_v, config.step(params, s_in, px), s_prev)
    if config.dense:
        jac = config.dense_jacobian(params, s_prev, px, valid, reset)
        eye = jnp.broadcast_to(jnp.eye(s.shape[-1], dtype=s.dtype), jac.shape)
        valid_only = (valid & ~reset)[..., None, None]
        jac = jnp.where(
            valid_only, jac / (1.0 + config.damping), jnp.where(mask_v[..., None], 0, eye)
        )
    else:
        diag = config.on_batch(
            lambda c, p: jacobian_diagonal(config.cell, params, c, p), s_in, px
        ).astype(s.dtype)
        diag = jnp.clip(diag, -1.0, 1.0) / (1.0 + config.damping)
        diag = jnp.where(reset[..., None], jnp.zeros_like(diag), diag)
        jac = jnp.where(mask_v, diag, jnp.ones_like(diag))
    return s_prev, f, jac


def _apply_jacobian(jac: Array, s: Array, dense: bool) -> Array:
    return (jac @ s[..., None])[..., 0] if dense else jac * s


def _sequential_states(config: _Newton, params, px, h0, valid, reset) -> Array:
    """The states by ``lax.scan``: the fallback, and the reference the Newton iterates approach."""

    def body(s, inputs):
        p, v, r = inputs
        s = config.effective(params, s, p, v, r)
        return s, s

    _, states = config.time.scan(body, h0, (px, valid, reset), config.reverse)
    return states


def _newton_forward(config: _Newton, params, px, h0, valid, reset):
    dense = config.dense
    guess = jnp.broadcast_to(h0, (px.shape[0], *h0.shape))

    def residual(s, f):
        return config.time.max(jnp.max(jnp.abs(s - f)))

    def iterate(state):
        k, s, s_prev, f, jac, _ = state
        c = f - _apply_jacobian(jac, s_prev, dense)
        s = config.time.solve_affine(jac, c, h0, config.reverse, dense)
        s_prev, f, jac = _linearise(config, params, px, s, h0, valid, reset)
        return k + 1, s, s_prev, f, jac, residual(s, f)

    def keep_going(state):
        k, *_, res = state
        return (k < config.max_iters) & ~(res <= config.tol)  # NaN residual: keep going

    s_prev, f, jac = _linearise(config, params, px, guess, h0, valid, reset)
    init = (jnp.zeros((), jnp.int32), guess, s_prev, f, jac, residual(guess, f))
    iterations, states, *_, res = jax.lax.while_loop(keep_going, iterate, init)
    converged = res <= config.tol
    if config.fallback:
        states = jax.lax.cond(
            converged,
            lambda: states,
            lambda: _sequential_states(config, params, px, h0, valid, reset),
        )
    return states, ParallelInfo(iterations, res, converged)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _newton_states(config: _Newton, params, px, h0, valid, reset):
    return _newton_forward(config, params, px, h0, valid, reset)


def _newton_states_fwd(config, params, px, h0, valid, reset):
    states, info = _newton_forward(config, params, px, h0, valid, reset)
    return (states, info), (params, px, h0, valid, reset, states)


def _newton_states_bwd(config: _Newton, residuals, cotangents):
    """Implicit-function-theorem VJP: one backward linear scan, then one time-parallel VJP."""
    params, px, h0, valid, reset, states = residuals
    g_states = cotangents[0]
    time = config.time
    s_prev = time.shift(states, h0, config.reverse)
    effective = functools.partial(config.effective, valid=valid, reset=reset)
    _, vjp = jax.vjp(effective, params, s_prev, px)
    if config.derivative == "parallel":
        jac_t = jnp.swapaxes(config.dense_jacobian(params, s_prev, px, valid, reset), -1, -2)
        # lambda_t = g_t + J_next^T lambda_next, next = t + 1 (t - 1 when the scan ran reversed):
        # the Jacobians shifted against the direction of the recurrence, zero past its end.
        jac_next = time.shift(jac_t, jnp.zeros_like(jac_t[0]), not config.reverse)
        adjoint = time.solve_affine(
            jac_next, g_states, jnp.zeros_like(h0), not config.reverse, dense=True
        )
    else:

        def body(pulled, inputs):
            s, p, v, r, g = inputs
            lam = g + pulled
            _, vjp_one = jax.vjp(lambda s: config.effective(params, s, p, v, r), s)
            return vjp_one(lam)[0], lam

        _, adjoint = time.scan(
            body, jnp.zeros_like(h0), (s_prev, px, valid, reset, g_states), not config.reverse
        )
    g_params, g_prev, g_px = vjp(adjoint)
    g_h0 = time.at_start(g_prev[-1] if config.reverse else g_prev[0], config.reverse)
    return g_params, g_px, g_h0, None, None


_newton_states.defvjp(_newton_states_fwd, _newton_states_bwd)

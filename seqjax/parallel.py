"""Evaluate a cell across the time axis in parallel: associative scans, DEER and quasi-DEER.

``lax.scan`` pays a fixed cost per step, so at ``T = 10^4 .. 10^6`` the loop, not the arithmetic,
is the cost. :func:`unroll_parallel` has the arguments and results of :func:`seqjax.unroll` and
three ways to spend parallel work instead of sequential steps:

* ``method="associative"``: cells whose recurrence is elementwise linear in the state offer
  ``coefficients(params, px) -> (a, b)`` (``h_t = a_t * h_{t-1} + b_t``; minGRU, minLSTM, the
  LRU) and run as one ``jax.lax.associative_scan``, ``O(log T)`` deep. Lengths and resets
  live inside the scan elements: a reset step has ``a = 0`` and ``b`` from the fresh state, a
  step past a sequence's length ``a = 1, b = 0``. Cells with ``log_space=True`` are scanned in
  log space (``log_coefficients``), as Feng et al. (2024) do.
* ``method="deer"`` (Lim et al., ICLR 2024): any cell. Newton's method on the whole trajectory:
  linearise every step around the current guess, ``s_t = J_t s_{t-1} + c_t``, solve that linear
  recurrence with an associative scan over dense ``[D, D]`` Jacobians (``jax.jacfwd`` of
  ``step``; ``D`` is the carry size, ``2H`` for an LSTM), repeat until the residual
  ``max_t |s_t - step(s_{t-1})|`` is at most ``tol``. Quadratic convergence near the solution;
  ``O(T D^2)`` memory and ``O(T D^3)`` work per iteration.
* ``method="quasi_deer"`` (Gonzalez et al., NeurIPS 2024): the same with only the diagonal of
  each Jacobian, clipped to ``[-1, 1]`` so the linear recurrence cannot blow up: ``O(T D)``
  memory, more (cheaper) iterations. The diagonal is analytic for Elman, GRU and LSTM cells
  (no dense Jacobian is formed), a cell's own ``jacobian_diagonal`` method when it has one,
  and autodiff otherwise. ``damping`` shrinks the Jacobian, ``J / (1 + damping)``, towards
  the Picard iteration (``J = 0``), a cheap stand-in for the trust region of ELK.

Both Newton methods keep the fixed point of the sequential scan: any approximate Jacobian only
changes how fast they get there. When the residual is still above ``tol`` after ``max_iters``
(chaotic dynamics do not parallelise) the result falls back to sequential evaluation
(``lax.cond``), and :func:`unroll_parallel_with_info` reports iterations, residual and whether it
converged. Gradients of the Newton methods use the implicit function theorem (``custom_vjp``):
the adjoint ``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` is one linear scan backwards with exact
Jacobians, then all parameter gradients come from one time-parallel VJP. They equal the BPTT
gradients of the sequential scan; forward-mode differentiation is not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, Cell, PyTree

METHODS = ("associative", "deer", "quasi_deer")
ADJOINTS = ("parallel", "sequential")
_DEFAULT_MAX_ITERS = {"deer": 32, "quasi_deer": 128}


class ParallelInfo(NamedTuple):
    """How a parallel evaluation went (scalars; under ``vmap`` one per mapped element).

    Attributes:
        iterations: Newton iterations taken (linear solves), int32; 0 for ``associative``.
        residual: ``max_t |s_t - step(s_{t-1})|`` over the state of the last Newton iterate
            (before any fallback); 0 for ``associative``.
        converged: whether ``residual <= tol`` within ``max_iters``. False means the returned
            result is the sequential fallback's (or, with ``fallback=False``, unconverged).
    """

    iterations: Array
    residual: Array
    converged: Array


# --------------------------------------------------------------------------- public entry points


def unroll_parallel(
    cell: Cell,
    params: PyTree,
    xs: Array,
    carry: PyTree | None = None,
    *,
    method: str = "associative",
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    time_axis: int = 0,
    tol: float | None = None,
    max_iters: int | None = None,
    damping: float = 0.0,
    fallback: bool = True,
    adjoint: str = "parallel",
) -> tuple[PyTree, Array]:
    """Run ``cell`` over a sequence in parallel over time; the results of :func:`seqjax.unroll`.

    Args:
        cell: any cell; ``method="associative"`` needs ``cell.coefficients``.
        params: the cell's parameters.
        xs: inputs ``[T, *B, I]`` (or with the time axis at ``time_axis``); floating.
        carry: initial state with leaves ``[*B, H]``; the cell's zero state when omitted.
        method: ``"associative"``, ``"deer"`` or ``"quasi_deer"`` (see the module docstring).
        lengths: valid length of each sequence, integers ``[*B]`` in ``[0, T]``, as in
            :func:`seqjax.unroll`: padded steps keep the carry and output zeros.
        reverse: run from the last valid step back to the first; ``ys[t]`` is for ``xs[t]``.
        resets: booleans ``[T, *B]`` (time on ``time_axis``): start afresh from the cell's zero
            state at those steps.
        time_axis: axis of ``xs`` (and of ``ys``) that is time.
        tol: Newton methods: stop when ``max_t |s_t - step(s_{t-1})| <= tol`` (absolute, on
            every carry entry). Default ``1e-6`` for 32-bit states, ``1e-12`` for 64-bit,
            ``1e-2`` for 16-bit.
        max_iters: Newton methods: most iterations before falling back (default 32 for
            ``deer``, 128 for ``quasi_deer``; at most ``T`` are ever needed in exact arithmetic).
        damping: Newton methods: ``J / (1 + damping)``; 0 is plain (quasi-)Newton.
        fallback: evaluate sequentially when the iteration has not converged (default True).
        adjoint: Newton methods' backward pass: ``"parallel"`` (an associative scan over dense
            Jacobians, ``O(T D^2)`` memory) or ``"sequential"`` (a ``lax.scan`` of per-step
            VJPs, ``O(T D)`` memory). Both give the exact BPTT gradient.

    Returns:
        ``(carry, ys)``: the final carry (leaves ``[*B, H]``) and outputs ``[T, *B, H]`` in the
        layout of ``xs``: :func:`seqjax.unroll`'s up to rounding when the iteration converged
        (``tol`` bounds each step's residual; on a chaotic cell the trajectory's error can be
        that residual amplified through the steps after it), or the sequential fallback.

    Raises:
        TypeError: ``xs`` is not floating, ``lengths`` not integer or ``resets`` not bool.
        ValueError: a shape does not match the cell, ``lengths`` lies outside ``[0, T]``, an
            option is unknown, or ``associative`` is asked of a cell without ``coefficients``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell, MinGRUCell, unroll
        >>> from seqjax.parallel import unroll_parallel
        >>> xs = jax.random.normal(jax.random.key(1), (50, 2, 3))          # [T, B, I]
        >>> cell = MinGRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> _, ys = unroll_parallel(cell, params, xs, method="associative")
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-5))
        True
        >>> cell = GRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> _, ys = unroll_parallel(cell, params, xs, method="quasi_deer")
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-5))
        True
    """
    carry, ys, _ = unroll_parallel_with_info(
        cell, params, xs, carry, method=method, lengths=lengths, reverse=reverse,
        resets=resets, time_axis=time_axis, tol=tol, max_iters=max_iters, damping=damping,
        fallback=fallback, adjoint=adjoint,
    )  # fmt: skip
    return carry, ys


def unroll_parallel_with_info(
    cell: Cell,
    params: PyTree,
    xs: Array,
    carry: PyTree | None = None,
    *,
    method: str = "associative",
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    time_axis: int = 0,
    tol: float | None = None,
    max_iters: int | None = None,
    damping: float = 0.0,
    fallback: bool = True,
    adjoint: str = "parallel",
) -> tuple[PyTree, Array, ParallelInfo]:
    """:func:`unroll_parallel`, also returning a :class:`ParallelInfo` convergence report.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell
        >>> from seqjax.parallel import unroll_parallel_with_info
        >>> cell = LSTMCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (64, 3))
        >>> carry, ys, info = unroll_parallel_with_info(cell, params, xs, method="deer")
        >>> bool(info.converged), bool(info.residual <= 1e-6), int(info.iterations) < 32
        (True, True, True)
    """
    where = "unroll_parallel"
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {METHODS}; got {method!r}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"{where}: adjoint must be one of {ADJOINTS}; got {adjoint!r}")
    if not damping >= 0:
        raise ValueError(f"{where}: damping must be >= 0; got {damping!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"{where}: tol must be > 0 (or None for the dtype's default); got {tol!r}")
    if max_iters is not None and (not _checks.is_int(max_iters) or max_iters < 0):
        raise ValueError(f"{where}: max_iters must be a non-negative int; got {max_iters!r}")
    if method == "associative" and not hasattr(cell, "coefficients"):
        raise ValueError(
            f"{where}: method='associative' needs a cell whose recurrence is linear in the "
            f"state, with a coefficients(params, px) method (MinGRUCell, MinLSTMCell, "
            f"LRUCell); got {type(cell).__name__}: use method='deer' or 'quasi_deer'"
        )
    xs = _checks.floating_array("xs", xs, where)
    axis = _checks.time_axis_of("xs", xs.shape, time_axis, where)
    _checks.feature_size("xs", xs.shape, cell.input_size, where)
    xs = jnp.moveaxis(xs, axis, 0)
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    px = cell.project(params, xs)  # [T, *B, G]: every step at once, whatever the backend
    expected = jax.eval_shape(lambda: cell.init_carry(batch_shape, px.dtype))
    if carry is None:
        carry = cell.init_carry(batch_shape, px.dtype)
    else:
        _checks.carry_matches(carry, expected, where)
    valid = None
    if lengths is not None:
        lengths = _checks.lengths_array(lengths, batch_shape, num_steps, where)
        valid = _checks.valid_steps(lengths, num_steps)  # [T, *B]
    if resets is not None:
        resets = _checks.resets_array(resets, xs.shape[:-1], axis, where)
    fresh = cell.init_carry(batch_shape, jax.tree.leaves(carry)[0].dtype)

    state_dtype = jax.tree.leaves(carry)[0].dtype
    no_info = ParallelInfo(jnp.zeros((), jnp.int32), jnp.zeros((), state_dtype), jnp.array(True))
    if num_steps == 0:
        y = jax.eval_shape(cell.step, params, carry, jax.ShapeDtypeStruct(px.shape[1:], px.dtype))[
            1
        ]
        return carry, jnp.moveaxis(jnp.zeros((0, *y.shape), y.dtype), 0, axis), no_info
    if method == "associative":
        states = _linear_states(cell, params, px, carry, fresh, valid, resets, reverse)
        info = no_info
    else:
        if tol is None:
            tol = {2: 1e-2, 4: 1e-6}.get(jnp.dtype(state_dtype).itemsize, 1e-12)
        if max_iters is None:
            max_iters = _DEFAULT_MAX_ITERS[method]
        config = _Newton(
            cell=cell, layout=_Layout.of(carry, len(batch_shape)), batch_shape=tuple(batch_shape),
            dense=method == "deer",
            reverse=reverse, tol=float(tol), max_iters=max_iters, damping=float(damping),
            fallback=fallback, adjoint=adjoint,
        )  # fmt: skip
        states, info = _newton(config, params, px, carry, valid, resets)

    final = jax.tree.map(lambda s: s[0] if reverse else s[-1], states)
    prev = _shift(states, carry, reverse)  # the carry entering each step
    if resets is not None:
        prev = _select(resets, jax.tree.map(lambda f: f[None], fresh), prev)
    # Every step at once, each on the batch [*B]: a cell may draw noise per row (zoneout).
    _, ys = jax.vmap(lambda c, p: cell.step(params, c, p))(prev, px)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return final, jnp.moveaxis(ys, 0, axis), info


# --------------------------------------------------------------------------- shared pieces


def _select(mask: Array, new: PyTree, old: PyTree) -> PyTree:
    """Per sequence (``mask`` ``[T, *B]``): ``new`` where True, ``old`` elsewhere."""
    return jax.tree.map(lambda n, o: jnp.where(mask[..., None], n, o), new, old)


def _shift(states: PyTree, first: PyTree, reverse: bool) -> PyTree:
    """The state entering each step: ``states`` shifted one step in time, ``first`` at the start."""

    def shift(s, f):
        if reverse:
            return jnp.concatenate([s[1:], f[None].astype(s.dtype)])
        return jnp.concatenate([f[None].astype(s.dtype), s[:-1]])

    return jax.tree.map(shift, states, first)


def _affine_combine(dense: bool):
    """Composition of affine maps ``s -> J s + c``: first ``x``, then ``y`` (an associative op)."""

    def combine(x, y):
        (j1, c1), (j2, c2) = x, y
        if dense:
            # Full float32 products: TF32 (the GPU default) would stall Newton above tol.
            mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
            return mm(j2, j1), mm(j2, c1[..., None])[..., 0] + c2
        return j2 * j1, j2 * c1 + c2

    return combine


def _solve_affine(jac: Array, c: Array, s0: Array, reverse: bool, dense: bool) -> Array:
    """All ``s_t = J_t s_{t-1} + c_t`` from ``s0`` (``s_{-1}``), along axis 0, by associative scan.

    ``jac`` is ``[T, ..., D, D]`` (dense) or like ``c`` (diagonal, possibly complex).
    """
    first = -1 if reverse else 0
    if dense:
        c = c.at[first].add((jac[first] @ s0[..., None])[..., 0])
    else:
        c = c.at[first].add(jac[first] * s0)
    jac = jac.at[first].set(jnp.zeros_like(jac[first]))
    _, states = jax.lax.associative_scan(_affine_combine(dense), (jac, c), reverse=reverse)
    return states


# --------------------------------------------------------------------------- linear cells


def _logaddexp(x: Array, y: Array) -> Array:
    """``log(exp x + exp y)`` whose gradient stays finite when both are ``-inf``."""
    m = jnp.maximum(x, y)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    total = jnp.exp(x - m) + jnp.exp(y - m)
    positive = total > 0
    safe = jnp.where(positive, total, jnp.ones_like(total))
    return jnp.where(positive, m + jnp.log(safe), jnp.full_like(total, -jnp.inf))


def _log_combine(x, y):
    (la1, lb1), (la2, lb2) = x, y
    return la1 + la2, _logaddexp(lb1 + la2, lb2)


def _linear_states(cell, params, px, carry, fresh, valid, resets, reverse) -> PyTree:
    """Every state ``[T, *B, ...]`` of a cell with ``coefficients``, by one associative scan."""
    to_state = getattr(cell, "to_state", lambda c: c)
    from_state = getattr(cell, "from_state", lambda s: s)
    h0, fresh_state = to_state(carry), to_state(fresh)
    if getattr(cell, "log_space", False) and hasattr(cell, "log_coefficients"):
        # h_t = A_t h0 + B_t with log A, log B from a log-space scan; h0 (any sign) stays linear.
        # A reset zeroes A_t and leaves b: the minimal cells' fresh state is zero.
        log_a, log_b = cell.log_coefficients(params, px)
        if resets is not None:
            log_a = jnp.where(resets[..., None], jnp.full_like(log_a, -jnp.inf), log_a)
        if valid is not None:
            log_a = jnp.where(valid[..., None], log_a, jnp.zeros_like(log_a))
            log_b = jnp.where(valid[..., None], log_b, jnp.full_like(log_b, -jnp.inf))
        big_a, big_b = jax.lax.associative_scan(_log_combine, (log_a, log_b), reverse=reverse)
        h = jnp.exp(big_a) * h0[None].astype(big_a.dtype) + jnp.exp(big_b)
    else:
        a, b = cell.coefficients(params, px)
        if resets is not None:
            r = resets[..., None]
            b = jnp.where(r, a * fresh_state[None].astype(a.dtype) + b, b)
            a = jnp.where(r, jnp.zeros_like(a), a)
        if valid is not None:
            a = jnp.where(valid[..., None], a, jnp.ones_like(a))
            b = jnp.where(valid[..., None], b, jnp.zeros_like(b))
        h = _solve_affine(a, b, h0.astype(a.dtype), reverse, dense=False)
    states = from_state(h)
    return jax.tree.map(lambda s, c: s.astype(c.dtype), states, carry)


# --------------------------------------------------------------------------- Jacobian diagonals


def jacobian_diagonal(cell: Cell, params: PyTree, carry: PyTree, px: Array) -> PyTree:
    """The diagonal of ``d step(carry)[0] / d carry``, shaped like the carry.

    The cell's own ``jacobian_diagonal(params, carry, px)`` method when it has one (analytic,
    no ``[H, H]`` Jacobian formed: :class:`~seqjax.ElmanCell`, :class:`~seqjax.GRUCell`,
    :class:`~seqjax.LSTMCell`); otherwise the diagonal of the dense Jacobian from
    ``jax.jacfwd`` (``D`` forward passes per step).

    Args:
        cell: any cell.
        params: its parameters.
        carry: the state entering the step, leaves ``[*B, H]``.
        px: the projected input ``[*B, G]``.

    Returns:
        A pytree like ``carry``: entry ``i`` is ``d carry'_i / d carry_i``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell
        >>> cell = GRUCell(input_size=2, hidden_size=3)
        >>> params = cell.init(jax.random.key(0))
        >>> h, px = jnp.full(3, 0.5), cell.project(params, jnp.ones(2))
        >>> dense = jax.jacfwd(lambda h: cell.step(params, h, px)[0])(h)
        >>> bool(jnp.allclose(jacobian_diagonal(cell, params, h, px), jnp.diagonal(dense)))
        True
    """
    own = getattr(cell, "jacobian_diagonal", None)
    if own is not None:
        return own(params, carry, px)
    layout = _Layout.of(carry, jax.tree.leaves(carry)[0].ndim - 1)
    s = layout.flatten(carry)
    dense = _row_jacobians(
        lambda s: layout.flatten(cell.step(params, layout.unflatten(s), px)[0]), s
    )
    return layout.unflatten(jnp.diagonal(dense, axis1=-2, axis2=-1))


def _row_jacobians(f: Callable[[Array], Array], s: Array) -> Array:
    """``[..., D, D]``: the Jacobian of each row of ``f(s)`` with respect to the same row of ``s``.

    ``f`` maps ``[..., D]`` to ``[..., D]`` row by row (a step of a batch), so one
    forward-mode product per state coordinate, applied to every row at once, gives a column of
    every row's Jacobian. ``f`` sees the whole batch, as a step does in the scan: a cell may draw
    noise per row, which one row at a time would not reproduce.
    """

    def column(e):
        return jax.jvp(f, (s,), (jnp.broadcast_to(e, s.shape),))[1]

    columns = jax.vmap(column)(jnp.eye(s.shape[-1], dtype=s.dtype))  # [D (j), ..., D (i)]
    return jnp.moveaxis(columns, 0, -1)


# --------------------------------------------------------------------------- Newton (DEER)


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
                "unroll_parallel: every carry leaf must be [*B, H] for the Newton methods; "
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
    adjoint: str

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
        return _row_jacobians(lambda s: self.effective(params, s, px, valid, reset), s_prev)


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
    s_prev = _shift(s, h0, config.reverse)
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

    _, states = jax.lax.scan(body, h0, (px, valid, reset), reverse=config.reverse)
    return states


def _newton_forward(config: _Newton, params, px, h0, valid, reset):
    dense = config.dense
    guess = jnp.broadcast_to(h0, (px.shape[0], *h0.shape))

    def residual(s, f):
        return jnp.max(jnp.abs(s - f))

    def iterate(state):
        k, s, s_prev, f, jac, _ = state
        c = f - _apply_jacobian(jac, s_prev, dense)
        s = _solve_affine(jac, c, h0, config.reverse, dense)
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
    s_prev = _shift(states, h0, config.reverse)
    effective = functools.partial(config.effective, valid=valid, reset=reset)
    _, vjp = jax.vjp(effective, params, s_prev, px)
    if config.adjoint == "parallel":
        jac_t = jnp.swapaxes(config.dense_jacobian(params, s_prev, px, valid, reset), -1, -2)
        zero = jnp.zeros_like(jac_t[:1])
        # lambda_t = g_t + J_next^T lambda_next, next = t + 1 (t - 1 when the scan ran reversed)
        if config.reverse:
            jac_next = jnp.concatenate([zero, jac_t[:-1]])
        else:
            jac_next = jnp.concatenate([jac_t[1:], zero])
        adjoint = _solve_affine(
            jac_next, g_states, jnp.zeros_like(h0), not config.reverse, dense=True
        )
    else:

        def body(pulled, inputs):
            s, p, v, r, g = inputs
            lam = g + pulled
            _, vjp_one = jax.vjp(lambda s: config.effective(params, s, p, v, r), s)
            return vjp_one(lam)[0], lam

        _, adjoint = jax.lax.scan(
            body,
            jnp.zeros_like(h0),
            (s_prev, px, valid, reset, g_states),
            reverse=not config.reverse,
        )
    g_params, g_prev, g_px = vjp(adjoint)
    g_h0 = g_prev[-1] if config.reverse else g_prev[0]
    return g_params, g_px, g_h0, None, None


_newton_states.defvjp(_newton_states_fwd, _newton_states_bwd)

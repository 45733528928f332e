"""Training: sequence losses with masks, BPTT and truncated-BPTT steps, the optax recipe.

Two forms of truncated BPTT:

1. *Inside one loss*: ``unroll(..., truncate=k)`` runs the whole sequence forwards and cuts
   the carry's gradient every ``k`` steps; train it with :func:`bptt_step`.
2. *Streamed windows*: :func:`tbptt_step` makes one optimizer update per window of a long
   stream and hands the carry (without gradient) to the next window; :func:`tbptt_scan`
   runs many windows inside one ``lax.scan``.

Every step reports the loss and the global gradient norm *before* clipping, so exploding
gradients are visible while clipping hides their effect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import _checks
from seqjax._types import Array, PyTree

__all__ = [
    "StepMetrics",
    "apply_gradients",
    "bptt_step",
    "default_optimizer",
    "global_norm",
    "stream_windows",
    "tbptt_scan",
    "tbptt_step",
    "window_loss",
]


class StepMetrics(NamedTuple):
    """What every training step reports."""

    loss: Array  # [] the loss the update followed
    grad_norm: Array  # [] global L2 norm of the gradient before clipping
    skipped: Array | int = 0  # [] 1 where skip_nonfinite left the update out (int32)


def default_optimizer(
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    max_norm: float | None = 1.0,
    max_value: float | None = None,
) -> optax.GradientTransformation:
    """The default recipe: optional clipping by value, clipping by global norm, then Adam.

    The optimizer's state and arithmetic are float32 for half-precision parameters (float16,
    bfloat16), and the updates are cast back to each parameter's dtype: Adam's ``eps`` of
    1e-8 rounds to 0 in float16, so a float16 Adam divides by zero on its first update.
    (Float32 and wider parameters are untouched: the recipe is then exactly optax's.)

    Args:
        learning_rate: Adam's step size, a positive finite number (or an optax schedule, or
            a traced scalar, e.g. read from a training state under ``jit``).
        max_norm: rescale the gradient when its global L2 norm exceeds this (Pascanu et
            al., 2013); None turns it off.
        max_value: clip every gradient entry to ``[-max_value, max_value]`` first; off
            when None.

    Example:
        >>> import jax.numpy as jnp
        >>> optimizer = default_optimizer(1e-2, max_norm=1.0)
        >>> state = optimizer.init({"w": jnp.zeros(3)})
    """
    parts = []
    where = "default_optimizer"
    # A bound <= 0 would freeze or reverse the gradient; a NaN or negative step size would
    # train to NaN (or away from the minimum) without a word.
    for name, bound in (("max_value", max_value), ("max_norm", max_norm)):
        if bound is not None:
            _checks.positive_number(name, bound, where)
    if isinstance(learning_rate, jax.core.Tracer):  # a step size read from a traced state
        if jnp.shape(learning_rate) != () or not jnp.issubdtype(learning_rate.dtype, jnp.floating):
            raise ValueError(
                f"{where}: learning_rate must be a scalar float; got {learning_rate.aval}"
            )
    elif not callable(learning_rate):
        value = learning_rate
        if isinstance(value, jax.Array | np.ndarray) and np.shape(value) == ():
            value = value.item()  # a concrete scalar array: checked by its value
        rate = _checks.positive_number("learning_rate", value, where)
        if rate == float("inf"):
            raise ValueError(f"{where}: learning_rate must be finite; got {learning_rate!r}")
    if max_value is not None:
        parts.append(optax.clip(max_value))
    if max_norm is not None:
        parts.append(optax.clip_by_global_norm(max_norm))
    parts.append(optax.adam(learning_rate))
    return _half_in_float32(optax.chain(*parts))


def _widened(tree: PyTree) -> PyTree:
    """Half-precision leaves as float32; every other leaf as it is (the same object)."""

    def widen(a):
        dtype = jnp.result_type(a)
        if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
            return a.astype(jnp.float32)
        return a

    return jax.tree.map(widen, tree)


def _half_in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` run in float32 for half-precision parameters, its updates cast back."""

    def init(params):
        return inner.init(_widened(params))

    def update(updates, state, params=None):
        dtypes = jax.tree.map(jnp.result_type, updates)
        widened = None if params is None else _widened(params)
        updates, state = inner.update(_widened(updates), state, widened)
        return jax.tree.map(lambda u, d: u.astype(d), updates, dtypes), state

    return optax.GradientTransformation(init, update)


def global_norm(tree: PyTree) -> Array:
    """The global L2 norm of a pytree of arrays (what every step reports before clipping)."""
    # optax.tree.norm replaced optax.global_norm (deprecated) in newer optax.
    return optax.tree.norm(tree) if hasattr(optax, "tree") else optax.global_norm(tree)


def apply_gradients(optimizer, params: PyTree, opt_state, grads: PyTree):
    """``(params, opt_state)`` after one update of ``optimizer`` with ``grads``."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _apply_or_skip(optimizer, params, opt_state, grads, loss, grad_norm, skip_nonfinite):
    """One update, or with ``skip_nonfinite`` none where the loss or gradient is not finite."""
    new_params, new_state = apply_gradients(optimizer, params, opt_state, grads)
    if not skip_nonfinite:
        return new_params, new_state, StepMetrics(loss, grad_norm, jnp.zeros((), jnp.int32))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    skipped = (~finite).astype(jnp.int32)
    return (
        keep(new_params, params),
        keep(new_state, opt_state),
        StepMetrics(loss, grad_norm, skipped),
    )


def _check_step_args(loss_fn, optimizer, where: str) -> None:
    """Named errors when the step is built, not a bare ``TypeError`` at its first call."""
    _checks.function("loss_fn", loss_fn, where)
    init, update = getattr(optimizer, "init", None), getattr(optimizer, "update", None)
    if not (callable(init) and callable(update)):
        raise TypeError(
            f"{where}: optimizer must be an optax GradientTransformation (with init and update, "
            f"e.g. default_optimizer(1e-3)); got {optimizer!r}"
        )


def bptt_step(
    loss_fn: Callable[[PyTree, Any], Array],
    optimizer: optax.GradientTransformation,
    *,
    skip_nonfinite: bool = False,
) -> Callable[[PyTree, Any, Any], tuple[PyTree, Any, StepMetrics]]:
    """A training step by backpropagation through time: ``value_and_grad`` through the loss.

    Args:
        loss_fn: ``loss_fn(params, batch) -> []`` scalar loss, typically running
            :func:`seqjax.unroll` (with ``truncate=k`` for truncated BPTT in one loss).
        optimizer: any optax ``GradientTransformation``, e.g. :func:`default_optimizer`.
        skip_nonfinite: where the loss or the gradient norm is NaN or infinite, leave the
            params and the optimizer state as they were and report ``skipped = 1`` (as optax's
            ``apply_if_finite`` does); off by default, so that divergence is seen.

    Returns:
        ``step(params, opt_state, batch) -> (params, opt_state, StepMetrics)``, pure and
        ready for ``jax.jit``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import ElmanCell, unroll
        >>> cell = ElmanCell(1, 8)
        >>> def loss_fn(params, batch):
        ...     xs, target = batch
        ...     carry, _ = unroll(cell, params, xs)
        ...     return jnp.mean((carry.sum(-1) - target) ** 2)
        >>> optimizer = default_optimizer(1e-2)
        >>> step = jax.jit(bptt_step(loss_fn, optimizer))
        >>> params = cell.init(jax.random.key(0))
        >>> opt_state = optimizer.init(params)
        >>> batch = (jnp.ones((5, 4, 1)), jnp.ones(4))
        >>> params, opt_state, metrics = step(params, opt_state, batch)
        >>> metrics.grad_norm.shape
        ()
    """

    _check_step_args(loss_fn, optimizer, "bptt_step")

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        grad_norm = global_norm(grads)
        return _apply_or_skip(optimizer, params, opt_state, grads, loss, grad_norm, skip_nonfinite)

    return step


def tbptt_step(
    loss_fn: Callable[[PyTree, PyTree, Any], tuple[Array, PyTree]],
    optimizer: optax.GradientTransformation,
    *,
    skip_nonfinite: bool = False,
) -> Callable[[PyTree, Any, PyTree, Any], tuple[PyTree, Any, PyTree, StepMetrics]]:
    """One streamed truncated-BPTT update: a window in, the carry for the next window out.

    Args:
        loss_fn: ``loss_fn(params, carry, window) -> (loss, next_carry)``: runs the model
            over one window from ``carry`` and returns the loss and the carry to hand to
            the next window (the carry after the last step; in the k1/k2 form, the carry
            after the first ``k1`` steps, see :func:`window_loss`).
        optimizer: any optax ``GradientTransformation``.
        skip_nonfinite: as for :func:`bptt_step` (the carry still moves on to the next
            window: a skipped update does not replay the window).

    Returns:
        ``step(params, opt_state, carry, window) -> (params, opt_state, next_carry,
        StepMetrics)``. ``next_carry`` carries no gradient: nothing flows across window
        borders. With a single window spanning the whole sequence this is exactly BPTT.
    """

    _check_step_args(loss_fn, optimizer, "tbptt_step")

    def step(params, opt_state, carry, window):
        carry = jax.lax.stop_gradient(carry)
        (loss, next_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, carry, window)
        grad_norm = global_norm(grads)
        params, opt_state, metrics = _apply_or_skip(
            optimizer, params, opt_state, grads, loss, grad_norm, skip_nonfinite
        )
        return params, opt_state, jax.lax.stop_gradient(next_carry), metrics

    return step


def _windows_k(k1, k2, where: str) -> tuple[int, int]:
    """``(k1, k2)`` checked: positive ints with ``k1 <= k2`` (``k2`` defaults to ``k1``)."""
    k1 = _checks.positive_int("k1", k1, where)
    k2 = k1 if k2 is None else _checks.positive_int("k2", k2, where)
    if k2 < k1:
        raise ValueError(f"{where}: k2 must be >= k1 = {k1}; got k2={k2}")
    return k1, k2


def window_loss(
    forward: Callable[[PyTree, PyTree, Array, Array | None], tuple[PyTree, Array]],
    loss: Callable[[Array, Array], Array],
    *,
    k1: int,
    k2: int | None = None,
) -> Callable[[PyTree, PyTree, Any], tuple[Array, PyTree]]:
    """The ``loss_fn`` of :func:`tbptt_step` for windows from :func:`stream_windows`.

    Each window holds ``k2`` steps; the loss counts its last ``k1`` (so over the stream
    every step after the first ``k2 - k1`` counts exactly once) and backpropagates through
    all ``k2``; the carry after the first ``k1`` steps starts the next window, which
    begins ``k1`` steps later. With ``k2 = k1`` this is plain streamed truncated BPTT.

    Args:
        forward: ``forward(params, carry, xs, resets) -> (carry, outputs)`` over time-major
            ``xs`` ``[k, *B, ...]`` with ``resets`` ``[k, *B]`` or None (e.g. a
            :class:`seqjax.Stack` called with ``resets=``).
        loss: ``loss(outputs, targets) -> []`` over ``[k1, *B, ...]``, e.g.
            :func:`cross_entropy`.
        k1: steps between updates; ``k2``: steps backpropagated (default ``k1``).

    Returns:
        ``loss_fn(params, carry, (xs, targets, resets)) -> (loss, next_carry)``, where
        ``xs`` and ``targets`` are ``[k2, *B, ...]`` and ``resets`` ``[k2, *B]`` or None.
    """
    k1, k2 = _windows_k(k1, k2, "window_loss")
    _checks.function("forward", forward, "window_loss")
    _checks.function("loss", loss, "window_loss")

    def part(a, start, stop):
        return None if a is None else a[start:stop]

    def loss_fn(params, carry, window):
        xs, targets, resets = window
        if xs.shape[0] != k2:
            raise ValueError(
                f"window_loss: windows must hold k2 = {k2} steps; got {xs.shape[0]} "
                f"(shape {xs.shape})"
            )
        next_carry, ys = forward(params, carry, xs[:k1], part(resets, 0, k1))
        if k2 > k1:
            _, tail = forward(params, next_carry, xs[k1:], part(resets, k1, k2))
            ys = jnp.concatenate([ys, tail])
        return loss(ys[k2 - k1 :], targets[k2 - k1 :]), next_carry

    return loss_fn


def tbptt_scan(step, params, opt_state, carry, windows):
    """Run ``step`` (from :func:`tbptt_step`) over stacked windows inside one ``lax.scan``.

    Args:
        step: a streamed truncated-BPTT step.
        params, opt_state, carry: the state before the first window.
        windows: a pytree whose leaves have a leading window axis ``[W, ...]``; window
            ``w`` is the pytree of the leaves' ``w``-th entries.

    Returns:
        ``(params, opt_state, carry, metrics)`` after the last window; ``metrics`` leaves
        are ``[W]``, one entry per update.
    """

    def body(state, window):
        params, opt_state, carry = state
        params, opt_state, carry, metrics = step(params, opt_state, carry, window)
        return (params, opt_state, carry), metrics

    (params, opt_state, carry), metrics = jax.lax.scan(body, (params, opt_state, carry), windows)
    return params, opt_state, carry, metrics


def stream_windows(stream: Array, *, k1: int, k2: int | None = None, time_axis: int = 0):
    """Cut a long stream ``[N, ...]`` into overlapping windows for k1/k2 truncated BPTT.

    Window ``w`` covers steps ``[w * k1, w * k1 + k2)``; consecutive windows overlap by
    ``k2 - k1`` steps, so an update every ``k1`` steps backpropagates ``k2`` steps. With
    ``k2 = k1`` (the default) the windows tile the stream. Any tail shorter than a window
    is dropped.

    Args:
        stream: ``[N, ...]`` with time on ``time_axis``.
        k1: steps between updates (the stride), ``>= 1``.
        k2: steps backpropagated per update (the window length), ``>= k1``.

    Returns:
        ``[W, k2, ...]`` windows (time on axis 1, whatever ``time_axis`` was).

    Example:
        >>> import jax.numpy as jnp
        >>> stream_windows(jnp.arange(7), k1=2, k2=3).tolist()
        [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    """
    k1, k2 = _windows_k(k1, k2, "stream_windows")
    stream = jnp.asarray(stream)
    if not _checks.is_int(time_axis) or not -stream.ndim <= time_axis < stream.ndim:
        raise ValueError(
            f"stream_windows: time_axis must name an axis of stream (shape {stream.shape}); got "
            f"time_axis={time_axis!r}"
        )
    stream = jnp.moveaxis(stream, time_axis, 0)
    length = stream.shape[0]
    if length < k2:
        raise ValueError(
            f"stream_windows: stream must hold at least k2 = {k2} steps; got {length} steps, "
            f"fewer than one window of {k2} steps"
        )
    starts = jnp.arange(0, length - k2 + 1, k1)
    index = starts[:, None] + jnp.arange(k2)[None, :]
    return stream[index]

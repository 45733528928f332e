"""Losses and metrics over sequences, with masks: the one place each is defined.

Every masked reduction here accumulates in at least float32 (:func:`masked_mean`): a float16
sum of 50k per-token losses overflows, and a bfloat16 count of tokens rounds above 256.
Positions outside the mask never reach a value or a gradient (a NaN there is harmless).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import _checks
from seqjax._types import Array

__all__ = [
    "cross_entropy",
    "mase",
    "masked_mean",
    "mean_squared_error",
    "nrmse",
    "rmse",
    "sequence_mask",
]


def masked_mean(values: Array, mask: Array | None = None, *, axis=None, average: bool = True):
    """Mean (or sum) of ``values`` where ``mask``, over ``axis``, accumulated in >= float32.

    Args:
        values: any shape.
        mask: booleans of ``values``' shape (or broadcastable to it); all when None.
        axis: the axes reduced (all when None).
        average: divide by the number of valid entries (at least 1), or return the sum.

    Returns:
        The reduction, in ``values``' dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([1.0, 2.0, 100.0], jnp.float16)
        >>> float(masked_mean(x, jnp.array([True, True, False])))
        1.5
    """
    values = _checks.floating_array("values", values, "masked_mean")
    wide = jnp.float32 if jnp.finfo(values.dtype).bits < 32 else values.dtype
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:  # 0/1 numbers would count as weights in the mean's count
            raise TypeError(
                f"masked_mean: mask must be booleans (for 0/1 numbers use mask.astype(bool)); "
                f"got dtype {mask.dtype}"
            )
        if not _broadcasts(mask.shape, values.shape):
            raise ValueError(
                f"masked_mean: mask must broadcast to the shape of values, {values.shape}; got "
                f"shape {mask.shape}"
            )
    if mask is None:
        total = values.astype(wide).sum(axis=axis)
        count = jnp.asarray(values.size if axis is None else _count(values.shape, axis), wide)
    else:
        mask = jnp.broadcast_to(mask, values.shape)
        total = jnp.where(mask, values, jnp.zeros_like(values)).astype(wide).sum(axis=axis)
        count = jnp.maximum(mask.sum(axis=axis), 1).astype(wide)
    return (total / count if average else total).astype(values.dtype)


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` (NumPy's rule, one way)."""
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1], strict=False))


def _count(shape, axis) -> int:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    count = 1
    for a in axes:
        count *= shape[a]
    return count


def _loss_mask(mask: Array | None, shape: tuple[int, ...], where: str) -> Array | None:
    """``mask`` checked: booleans of the per-position losses' ``shape`` (None passes)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"{where}: mask must be booleans (True where a position counts; for 0/1 numbers "
            f"use mask.astype(bool)); got dtype {mask.dtype}"
        )
    if mask.shape != shape:
        raise ValueError(
            f"{where}: mask must have the shape of the per-step losses, {shape}; got {mask.shape}"
        )
    return mask


def cross_entropy(
    logits: Array, targets: Array, mask: Array | None = None, *, average: bool = True
) -> Array:
    """Softmax cross-entropy in nats over valid positions.

    Targets outside ``[0, V)`` at valid positions are an error: concrete ones raise a
    ValueError naming them; traced ones (under ``jit``, where they cannot be checked) make
    the loss NaN (and the gradient at those positions), so the mistake shows instead of
    scoring another class
    (a target of -1 would otherwise read the last class). Targets at masked positions may
    hold anything (a padding id such as -100).

    Args:
        logits: ``[..., V]`` unnormalised log-probabilities (e.g. ``[T, *B, V]``).
        targets: ``[...]`` integer class ids in ``[0, V)``.
        mask: ``[...]`` booleans, True where a position counts (e.g. from
            :func:`sequence_mask`); all positions when None.
        average: mean over valid positions (True) or their sum.

    Example:
        >>> import jax.numpy as jnp
        >>> logits = jnp.zeros((3, 2, 4))                     # uniform over 4 classes
        >>> round(float(cross_entropy(logits, jnp.zeros((3, 2), jnp.int32))), 4)    # log 4
        1.3863
    """
    targets = jnp.asarray(targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"cross_entropy: targets must be integer ids; got dtype {targets.dtype}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: targets must have shape logits.shape[:-1] = {logits.shape[:-1]}; "
            f"got {targets.shape}"
        )
    mask = _loss_mask(mask, targets.shape, "cross_entropy")
    vocab = logits.shape[-1]
    outside = (targets < 0) | (targets >= vocab)
    if mask is not None:
        outside = outside & mask
    if not isinstance(outside, jax.core.Tracer) and bool(outside.any()):
        bad = np.unique(np.asarray(targets)[np.asarray(outside)])
        raise ValueError(
            f"cross_entropy: targets must lie in [0, V) = [0, {vocab}) at the positions that "
            f"count (mask them out otherwise); got {bad[:10].tolist()}"
        )
    if mask is not None:  # padded logits may be NaN; 0 * NaN would reach the gradient
        logits = jnp.where(mask[..., None], logits, jnp.zeros_like(logits))
        targets = jnp.where(mask, targets, jnp.zeros_like(targets))
    # Traced targets outside [0, V): a NaN loss and gradient rather than another class's. Added,
    # not selected: a where would give those positions a zero gradient, and the step a finite
    # update that skips them while the loss says NaN.
    poison = jnp.where(outside[..., None], jnp.full_like(logits, jnp.nan), jnp.zeros_like(logits))
    logits = logits + poison
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return _reduce(losses, mask, average)


def mean_squared_error(
    predictions: Array, targets: Array, mask: Array | None = None, *, average: bool = True
) -> Array:
    """Squared error summed over features, averaged (or summed) over valid positions.

    Args:
        predictions: ``[..., O]``.
        targets: ``[..., O]``.
        mask: ``[...]`` booleans over positions (features excluded); all when None.
        average: mean over valid positions (True) or their sum.

    Example:
        >>> import jax.numpy as jnp
        >>> float(mean_squared_error(jnp.ones((2, 3)), jnp.zeros((2, 3))))
        3.0
    """
    if predictions.shape != targets.shape:
        raise ValueError(
            f"mean_squared_error: targets must have the shape of predictions, "
            f"{predictions.shape}; got {targets.shape}"
        )
    mask = _loss_mask(mask, predictions.shape[:-1], "mean_squared_error")
    error = predictions - targets
    if mask is not None:  # as in cross_entropy: NaN at padded positions stays out
        error = jnp.where(mask[..., None], error, jnp.zeros_like(error))
    return _reduce(jnp.sum(error**2, axis=-1), mask, average)


def sequence_mask(lengths: Array, num_steps: int, *, time_axis: int = 0) -> Array:
    """Booleans ``[T, *B]`` (time on ``time_axis``), True for steps before each length.

    Lengths are not checked against ``num_steps`` (they may be traced): a length past it marks
    every step, a negative one none, as traced lengths read everywhere in seqjax.

    Example:
        >>> import jax.numpy as jnp
        >>> sequence_mask(jnp.array([2, 0]), 3).astype(int).tolist()
        [[1, 0], [1, 0], [0, 0]]
    """
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"sequence_mask: lengths must be integers; got dtype {lengths.dtype}")
    num_steps = _checks.count("num_steps", num_steps, "sequence_mask")
    ndim = lengths.ndim + 1
    if not _checks.is_int(time_axis) or not -ndim <= time_axis < ndim:
        raise ValueError(
            f"sequence_mask: time_axis must name an axis of the mask [T, *B] ({ndim} dims for "
            f"lengths of shape {lengths.shape}); got time_axis={time_axis!r}"
        )
    return jnp.moveaxis(_checks.valid_steps(lengths, num_steps), 0, time_axis)


def _reduce(values: Array, mask: Array | None, average: bool) -> Array:
    if mask is None:  # jnp.mean and sum accumulate half precision in float32 themselves
        return values.mean() if average else values.sum()
    return masked_mean(values, mask, average=average)


def _errors(predictions, targets, mask, where):
    predictions = _checks.floating_array("predictions", predictions, where)
    targets = _checks.floating_array("targets", targets, where)
    if predictions.shape != targets.shape:
        raise ValueError(
            f"{where}: targets must have the shape of predictions, {predictions.shape}; "
            f"got {targets.shape}"
        )
    if mask is None:
        return predictions - targets, jnp.ones(predictions.shape, bool)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{where}: mask must be booleans; got dtype {mask.dtype}")
    try:
        mask = jnp.broadcast_to(
            mask.reshape(mask.shape + (1,) * (targets.ndim - mask.ndim)), targets.shape
        )
    except ValueError as err:
        raise ValueError(
            f"{where}: mask must have the shape of predictions or a prefix of it "
            f"(e.g. without the feature axis), {predictions.shape}; got {mask.shape}"
        ) from err
    # Zero where masked, before any square: NaN padding then reaches no gradient either.
    errors = jnp.where(mask, predictions - targets, jnp.zeros_like(targets))
    return errors, mask


def rmse(predictions: Array, targets: Array, mask: Array | None = None) -> Array:
    """Root mean squared error over every (valid) entry.

    Args:
        predictions: ``[..., F]``.
        targets: same shape.
        mask: booleans of that shape or a prefix of it (e.g. ``[T, *B]``); all when None.

    Example:
        >>> import jax.numpy as jnp
        >>> float(rmse(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]), jnp.array([True, False])))
        1.0
    """
    errors, mask = _errors(predictions, targets, mask, "rmse")
    return jnp.sqrt(masked_mean(errors**2, mask))


def nrmse(
    predictions: Array, targets: Array, mask: Array | None = None, *, scale: Any = None
) -> Array:
    """RMSE divided by ``scale``: the standard deviation of the (valid) targets when None.

    1.0 is the error of predicting the mean; pass the training series' standard deviation
    as ``scale`` to compare short test windows on one footing.

    Example:
        >>> import jax.numpy as jnp
        >>> targets = jnp.array([1.0, -1.0, 1.0, -1.0])
        >>> float(nrmse(jnp.zeros(4), targets))            # predicting the mean
        1.0
    """
    errors, mask = _errors(predictions, targets, mask, "nrmse")
    if scale is not None and not isinstance(scale, jax.core.Tracer):
        host = np.asarray(scale)
        real = host.dtype != bool and np.issubdtype(host.dtype, np.number)
        real = real and not np.issubdtype(host.dtype, np.complexfloating)
        if not real or not (np.isfinite(host) & (host > 0)).all():
            raise ValueError(
                f"nrmse: scale must be positive and finite (a standard deviation), or None for "
                f"the targets'; got {scale!r}"
            )
    if scale is None:
        targets = jnp.where(mask, targets, jnp.zeros_like(targets))
        mean = masked_mean(targets, mask)
        scale = jnp.sqrt(masked_mean(jnp.where(mask, targets - mean, 0.0) ** 2, mask))
    return jnp.sqrt(masked_mean(errors**2, mask)) / scale


def mase(predictions: Array, targets: Array, history: Array, mask: Array | None = None) -> Array:
    """Mean absolute scaled error (Hyndman & Koehler, 2006).

    The mean absolute error divided by that of the one-step naive forecast on the training
    ``history`` (``mean |x_t - x_{t-1}|``): below 1 beats persistence one step ahead. A
    history that never changes has no naive error to scale by: the result is then ``inf``
    (``nan`` when the forecast is exact too).

    Args:
        predictions, targets: ``[..., F]``; mask: as for :func:`rmse`.
        history: ``[T, *B, F]`` the training series, ``T >= 2``.

    Example:
        >>> import jax.numpy as jnp
        >>> history = jnp.array([0.0, 1.0, 3.0])[:, None]         # naive MAE 1.5
        >>> round(float(mase(jnp.array([[4.0]]), jnp.array([[3.0]]), history)), 6)
        0.666667
    """
    errors, mask = _errors(predictions, targets, mask, "mase")
    history = _checks.series("history", history, "mase")
    if history.shape[0] < 2:
        raise ValueError(f"mase: history must hold at least 2 steps; got shape {history.shape}")
    naive = jnp.mean(jnp.abs(jnp.diff(history, axis=0)))
    return masked_mean(jnp.abs(errors), mask) / naive

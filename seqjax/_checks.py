"""Trace-time argument checks that name the argument, the expected and the received value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_int(value) -> bool:
    """Whether ``value`` is a Python or NumPy integer (a bool is not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def positive_int(name: str, value, where: str) -> int:
    """``value`` as an int if it is a positive Python or NumPy integer (not a bool)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int; got {value!r}")
    return int(value)


def sizes(obj, names: tuple[str, ...], where: str) -> None:
    """Check that the fields ``names`` of a frozen dataclass are positive ints, and store them
    as Python ints (a NumPy int is accepted; a float, a bool or ``0`` is not)."""
    for name in names:
        value = getattr(obj, name)
        if not is_int(value) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive int; got {value!r}")
        object.__setattr__(obj, name, int(value))


def is_real(value) -> bool:
    """Whether ``value`` is a Python or NumPy real number (a bool is not)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def number(
    name: str,
    value,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite real number (not a bool, not NaN or Inf) in
    the range the bounds give (``low_open``/``high_open``: the bound itself excluded)."""
    if low is not None and high is not None:
        expected = (
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
    elif low is not None:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expected = "a finite number"
    ok = is_real(value) and np.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{where}: {name} must be {expected}; got {value!r}")
    return float(value)


def flag(name: str, value, where: str) -> bool:
    """``value`` as a bool if it is a Python or NumPy bool (a truthy string or int is not)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{where}: {name} must be a bool (True or False); got {value!r}")
    return bool(value)


def function(name: str, value, where: str):
    """``value`` if it is callable (an activation, a loss, a step function)."""
    if not callable(value):
        raise TypeError(f"{where}: {name} must be a function (callable); got {value!r}")
    return value


def count(name: str, value, where: str) -> int:
    """``value`` as an int if it is a non-negative Python or NumPy integer (not a bool)."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{where}: {name} must be an int >= 0; got {value!r}")
    return int(value)


def positive_number(name: str, value, where: str) -> float:
    """``value`` as a float if it is a positive Python or NumPy real number (not a bool)."""
    real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not real or not value > 0:
        raise ValueError(f"{where}: {name} must be a positive number; got {value!r}")
    return float(value)


def floating_array(name: str, x, where: str) -> jax.Array:
    """Return ``x`` as an array, raising TypeError unless it has a floating dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{where}: {name} must have a floating dtype (cast integer data with "
            f".astype(jnp.float32), or embed token ids first); got dtype {x.dtype}"
        )
    return x


def time_axis_of(name: str, shape: tuple[int, ...], time_axis: int, where: str) -> int:
    """Normalise ``time_axis`` for an array of ``shape`` whose last axis is features."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"{where}: {name} must have at least 2 dims, [T, *B, I] (time and features); "
            f"got shape {shape}"
        )
    # An int only: True would read as 1 and 1.0 fail inside moveaxis.
    axis = time_axis % ndim if is_int(time_axis) and -ndim <= time_axis < ndim else None
    if axis is None or axis == ndim - 1:
        raise ValueError(
            f"{where}: time_axis must name a non-feature axis of {name} (0 to {ndim - 2} "
            f"for shape {shape}; features are always last); got time_axis={time_axis}"
        )
    return axis


def feature_size(name: str, shape: tuple[int, ...], expected: int, where: str) -> None:
    if shape[-1] != expected:
        hint = ""
        others = [i for i, size in enumerate(shape[:-1]) if size == expected]
        if others:  # channels-first data: the features are there, on another axis
            hint = (
                f"; axis {others[-1]} has {expected} entries: if those are the features, move "
                f"them last with jnp.moveaxis({name}, {others[-1]}, -1)"
            )
        elif expected == 1:
            hint = f"; for one feature per step, add a last axis of size 1: {name}[..., None]"
        raise ValueError(
            f"{where}: {name} must have {expected} features in its last axis (the cell's "
            f"input_size); got shape {shape}{hint}"
        )


def wide_int(a: jax.Array) -> jax.Array:
    """Integer array ``a``, widened to int32 when its dtype is narrower.

    Step counters are built in the lengths' dtype (``arange(T) < lengths``) and token ids are
    shifted by ``V``: in uint8 or int8 both wrap past 255 or 127 and read padding as valid.
    """
    return a.astype(jnp.int32) if a.dtype.itemsize < 4 else a


def valid_steps(lengths, num_steps: int) -> jax.Array:
    """Booleans ``[T, *B]``: True at the steps before each of the integer ``lengths`` ``[*B]``."""
    lengths = wide_int(jnp.asarray(lengths))
    steps = jnp.arange(num_steps, dtype=lengths.dtype).reshape(-1, *([1] * lengths.ndim))
    return steps < lengths[None]


def lengths_array(
    lengths,
    batch_shape: tuple[int, ...],
    num_steps: int,
    where: str,
    name: str = "lengths",
    *,
    xs_shape: tuple[int, ...] | None = None,
    time_axis: int = 0,
) -> jax.Array:
    """Check per-sequence lengths (the argument ``name``): integer, shape ``batch_shape``,
    values in [0, T].

    Concrete lengths outside ``[0, T]`` raise. Traced ones (under ``jit``) cannot be checked,
    so they are clipped to ``[0, T]``: every consumer (``unroll``, ``last_valid``,
    ``mean_valid``, the losses) then reads a length past ``T`` as ``T`` and a negative one as 0.
    Given the caller's ``xs_shape`` and ``time_axis``, a failure names the other time axis
    that the lengths would fit (batch-major data passed as time-major).
    """
    traced = isinstance(lengths, jax.core.Tracer)
    if not traced:
        host = np.asarray(lengths)
        if host.size and (host.min() < 0 or host.max() > num_steps):
            raise ValueError(
                f"{where}: {name} must lie in [0, T] = [0, {num_steps}]; got values from "
                f"{host.min()} to {host.max()}" + _time_axis_hint(lengths, xs_shape, time_axis)
            )
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{where}: {name} must be integers; got dtype {lengths.dtype}")
    if lengths.shape != batch_shape:
        raise ValueError(
            f"{where}: {name} must have the batch shape of xs, {batch_shape}; "
            f"got shape {lengths.shape}"
            + _time_axis_hint(lengths if traced else host, xs_shape, time_axis)
        )
    lengths = wide_int(lengths)
    if traced:
        lengths = jnp.clip(lengths, 0, num_steps).astype(lengths.dtype)
    return lengths


def _time_axis_hint(lengths, xs_shape: tuple[int, ...] | None, time_axis: int) -> str:
    """ "; did you mean time_axis=a?" when ``lengths`` fit xs read with time on axis ``a``:
    their shape is the batch shape that leaves, and (when known) every value is in
    ``[0, xs_shape[a]]``."""
    if xs_shape is None:
        return ""
    known = None if isinstance(lengths, jax.core.Tracer) else np.asarray(lengths)
    for axis in range(len(xs_shape) - 1):
        if axis == time_axis:
            continue
        batch = tuple(size for i, size in enumerate(xs_shape[:-1]) if i != axis)
        if tuple(np.shape(lengths)) != batch:
            continue
        if (
            known is not None
            and known.size
            and not 0 <= known.min() <= known.max() <= xs_shape[axis]
        ):
            continue
        return (
            f"; did you mean time_axis={axis}? Read with time_axis={axis}, xs of shape "
            f"{tuple(xs_shape)} has T = {xs_shape[axis]} steps and batch shape {batch}, which "
            f"these lengths fit (PyTorch's batch_first=True layout is time_axis=1)"
        )
    return ""


def carry_matches(carry, expected, where: str) -> None:
    """Check a user carry against the structure and shapes ``expected`` (a carry or its shapes)."""
    got_def = jax.tree.structure(carry)
    want_def = jax.tree.structure(expected)
    # jaxlib's PyTreeDef reaches mypy as an unresolvable alias (shown "PyTreeDef?").
    if got_def != want_def:  # type: ignore[operator]
        raise ValueError(f"{where}: carry must have structure {want_def}; got {got_def}")
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected), strict=True):
        if jnp.shape(got) != want.shape:
            raise ValueError(
                f"{where}: carry leaves must have shape {want.shape} ([*B, H]); "
                f"got {jnp.shape(got)}"
            )


def resets_array(resets, time_major_shape: tuple[int, ...], axis: int, where: str) -> jax.Array:
    """Check a reset mask laid out like ``xs`` without features; return it time-major bool."""
    resets = jnp.asarray(resets)
    want = list(time_major_shape[1:])
    want.insert(axis, time_major_shape[0])
    if resets.dtype != jnp.bool_:
        raise TypeError(f"{where}: resets must be booleans; got dtype {resets.dtype}")
    if resets.shape != tuple(want):
        raise ValueError(
            f"{where}: resets must have the shape of xs without its feature axis, "
            f"{tuple(want)}; got shape {resets.shape}"
        )
    return jnp.moveaxis(resets, axis, 0)


def series(name: str, series, where: str, min_ndim: int = 2) -> jax.Array:
    series = floating_array(name, series, where)
    if series.ndim < min_ndim:
        raise ValueError(
            f"{where}: {name} must be time-major [T, *B, F] (a univariate series is "
            f"series[:, None]); got shape {series.shape}"
        )
    return series

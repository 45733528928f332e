"""Time-series forecasting: AR(tau) window models, latent-AR recurrent models, baselines, metrics.

A series is time-major, ``[T, *B, F]``: ``F`` values per step (``F = 1`` for a univariate
series), any batch dims ``*B``. Every forecasting model here reads one value and predicts the
next, with the protocol of a cell whose output lives in the input space:

* ``model.init_carry(batch_shape, dtype)``: the state before any value is read;
* ``model.step(params, carry, x [*B, F]) -> (carry, y [*B, F])``: ``y`` predicts the value
  that follows ``x``;
* ``model(params, xs [T, *B, F], carry=None) -> (carry, ys [T, *B, F])``: teacher-forced, one
  step ahead: ``ys[t]`` predicts ``xs[t + 1]`` from the true values up to ``xs[t]``.

:class:`ARModel` predicts from a fixed window of the last ``order`` values (a linear AR(tau)
model, or an MLP on the window); its carry is that window. :class:`LatentAR` runs any cell over
the series and reads the prediction out of its state, so the memory is learned, not fixed.
:func:`forecast` warms a model up on a context (teacher forcing) and then feeds its own
predictions back for ``horizon`` steps under ``lax.scan`` (closed loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._base import Cell
from seqjax.layers import Dense, DenseParams
from seqjax.losses import mean_squared_error
from seqjax.unroll import unroll

__all__ = [
    "ARModel",
    "LatentAR",
    "LatentARParams",
    "ar_windows",
    "closed_loop",
    "fit_linear_ar",
    "forecast",
    "last_value_forecast",
    "one_step_loss",
    "origins",
]


def _sliding(series: Array, order: int, count: int, start: int = 0) -> Array:
    """Windows of ``order`` steps, ``[count, *B, order, F]``; window n starts at ``start + n``."""
    index = start + jnp.arange(count)[:, None] + jnp.arange(order)[None, :]  # [count, order]
    windows = jnp.take(series, index, axis=0)  # [count, order, *B, F]
    return jnp.moveaxis(windows, 1, -2)


def ar_windows(series: Array, order: int) -> tuple[Array, Array]:
    """Cut a series into AR(tau) examples: each window of ``order`` values and the value after it.

    Args:
        series: ``[T, *B, F]``, time-major.
        order: ``tau``, the window length; ``1 <= order < T``.

    Returns:
        ``(windows, targets)``: ``windows[n] = series[n : n + order]`` moved to
        ``[*B, order, F]``, stacked ``[N, *B, order, F]``, and ``targets[n] = series[n + order]``,
        ``[N, *B, F]``, with ``N = T - order``.

    Raises:
        ValueError: ``order`` is not a positive int, or the window is not shorter than the
            series (no value would be left to predict).

    Example:
        >>> import jax.numpy as jnp
        >>> windows, targets = ar_windows(jnp.arange(5.0)[:, None], 3)
        >>> windows[..., 0].tolist(), targets[..., 0].tolist()
        ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [3.0, 4.0])
    """
    series = _checks.series("series", series, "ar_windows")
    order = _checks.positive_int("order", order, "ar_windows")
    if order >= series.shape[0]:
        raise ValueError(
            f"ar_windows: order must be shorter than the series (T = {series.shape[0]}), so "
            f"that at least one value is left to predict; got order = {order}"
        )
    count = series.shape[0] - order
    return _sliding(series, order, count), series[order:]


@dataclass(frozen=True)
class ARModel:
    """AR(tau): the next value from a fixed window of the last ``order`` values.

    ``y_{t+1} = f([x_{t-order+1}, ..., x_t])`` with ``f`` an MLP over the flattened window
    (``hidden_sizes`` hidden layers of ``activation``), or affine when ``hidden_sizes`` is
    empty: the linear AR model that :func:`fit_linear_ar` solves by least squares.

    * Params: a tuple of :class:`seqjax.DenseParams`, bottom first; the first reads
      ``order * F`` features, the window flattened oldest value first.
    * Carry: the window of the last ``order`` values read, ``[*B, order, F]`` (zeros
      initially, a history of zeros).

    Attributes:
        order: ``tau``, the window length.
        features: ``F``, values per step.
        hidden_sizes: widths of the MLP's hidden layers; ``()`` for a linear model.
        activation: the hidden layers' nonlinearity.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = ARModel(order=4, features=1, hidden_sizes=(16,))
        >>> params = model.init(jax.random.key(0))
        >>> model.predict(params, jnp.ones((10, 4, 1))).shape    # [N, order, F] -> [N, F]
        (10, 1)
        >>> carry, ys = model(params, jnp.ones((7, 2, 1)))        # [T, B, F], teacher-forced
        >>> carry.shape, ys.shape
        ((2, 4, 1), (7, 2, 1))
    """

    order: int
    features: int = 1
    hidden_sizes: tuple[int, ...] = ()
    activation: Callable[[Array], Array] = jnp.tanh

    def __post_init__(self):
        _checks.positive_int("order", self.order, "ARModel")
        _checks.positive_int("features", self.features, "ARModel")
        if not isinstance(self.hidden_sizes, Sequence) or isinstance(self.hidden_sizes, str):
            raise ValueError(
                "ARModel: hidden_sizes must be a sequence of positive ints (() for a linear "
                f"model); got {self.hidden_sizes!r}"
            )
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        for size in self.hidden_sizes:
            _checks.positive_int("hidden_sizes entries", size, "ARModel")
        _checks.function("activation", self.activation, "ARModel")

    @property
    def layers(self) -> tuple[Dense, ...]:
        sizes = (self.order * self.features, *self.hidden_sizes, self.features)
        return tuple(Dense(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def init(self, key: PRNGKey, dtype=jnp.float32) -> tuple[DenseParams, ...]:
        keys = jax.random.split(key, len(self.layers))
        return tuple(layer.init(k, dtype) for layer, k in zip(self.layers, keys, strict=True))

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """A history of zeros, ``[*B, order, F]``."""
        return jnp.zeros((*batch_shape, self.order, self.features), dtype)

    def predict(self, params: tuple[DenseParams, ...], windows: Array) -> Array:
        """``[..., order, F]`` windows (oldest value first) -> ``[..., F]`` next values."""
        windows = _checks.floating_array("windows", windows, "ARModel.predict")
        if windows.ndim < 2 or windows.shape[-2:] != (self.order, self.features):
            raise ValueError(
                f"ARModel.predict: windows must have shape [..., order, F] = "
                f"[..., {self.order}, {self.features}]; got shape {windows.shape}"
            )
        h = windows.reshape(*windows.shape[:-2], self.order * self.features)
        *hidden, last = self.layers
        for layer, p in zip(hidden, params[:-1], strict=True):
            h = self.activation(layer(p, h))
        return last(params[-1], h)

    def step(self, params, carry: Array, x: Array) -> tuple[Array, Array]:
        """Read ``x`` ``[*B, F]``: the window moves on by one; ``y`` predicts the next value."""
        window = jnp.concatenate([carry[..., 1:, :], x[..., None, :]], axis=-2)
        return window, self.predict(params, window)

    def __call__(self, params, xs: Array, carry: Array | None = None) -> tuple[Array, Array]:
        """Teacher-forced one-step predictions over ``xs`` ``[T, *B, F]``, without a scan.

        ``ys[t]`` predicts ``xs[t + 1]`` from the window ending at ``xs[t]``; the window
        reaches back into ``carry`` (the ``order`` values before ``xs[0]``; zeros when None).
        Returns ``(carry, ys [T, *B, F])``, ``carry`` the last ``order`` values read.
        """
        xs = _checks.series("xs", xs, "ARModel")
        if xs.shape[-1] != self.features:
            raise ValueError(
                f"ARModel: xs must have F = {self.features} features in its last axis; got "
                f"shape {xs.shape}"
            )
        if carry is None:
            carry = self.init_carry(xs.shape[1:-1], xs.dtype)
        want = (*xs.shape[1:-1], self.order, self.features)
        if jnp.shape(carry) != want:
            raise ValueError(
                f"ARModel: carry must be the window [*B, order, F] = {want} (the last values "
                f"read, batch shape of xs); got shape {jnp.shape(carry)}"
            )
        history = jnp.concatenate([jnp.moveaxis(carry, -2, 0), xs], axis=0)
        windows = _sliding(history, self.order, xs.shape[0], start=1)
        new_carry = jnp.moveaxis(history[-self.order :], 0, -2)
        return new_carry, self.predict(params, windows)


def fit_linear_ar(
    series: Array, order: int, *, ridge: float = 0.0
) -> tuple[ARModel, tuple[DenseParams]]:
    """The linear AR(tau) model with intercept fitted by (ridge) least squares.

    Solves ``min ||[windows, 1] [w; b] - targets||^2 + ridge ||w||^2`` over every window of
    :func:`ar_windows` (of every series in the batch), for all ``F`` outputs at once.

    Args:
        series: ``[T, *B, F]`` training series.
        order: ``tau``, the window length, ``1 <= order < T``.
        ridge: L2 penalty on the weights (not the intercept); ``0`` for ordinary least squares.

    Returns:
        ``(model, params)``: a linear :class:`ARModel` and its parameters; ``params[0].w``
        is ``[order * F, F]``, row ``k * F + f`` the weight of feature ``f`` at lag
        ``order - k`` (the last rows belong to the most recent value).

    Example:
        >>> import jax.numpy as jnp
        >>> x = [1.0, 0.5]
        >>> for _ in range(30): x.append(0.6 * x[-1] + 0.3 * x[-2])     # noiseless AR(2)
        >>> model, params = fit_linear_ar(jnp.asarray(x)[:, None], 2)
        >>> [round(float(w), 4) for w in params[0].w[:, 0]]             # lag 2, lag 1
        [0.3, 0.6]
    """
    series = _checks.series("series", series, "fit_linear_ar")
    # NaN would solve to NaN weights without a word; a negative ridge is not a penalty.
    if not _checks.is_real(ridge) or not 0 <= ridge < float("inf"):
        raise ValueError(f"fit_linear_ar: ridge must be >= 0; got {ridge!r}")
    windows, targets = ar_windows(series, order)
    features = series.shape[-1]
    inputs = windows.reshape(-1, order * features)
    targets = targets.reshape(-1, features)
    design = jnp.concatenate([inputs, jnp.ones((inputs.shape[0], 1), inputs.dtype)], axis=1)
    if ridge == 0:
        solution = jnp.linalg.lstsq(design, targets)[0]
    else:
        penalty = jnp.diag(jnp.concatenate([jnp.ones((order * features,)), jnp.zeros((1,))]))
        gram = design.T @ design + ridge * penalty.astype(design.dtype)
        solution = jnp.linalg.solve(gram, design.T @ targets)
    model = ARModel(order, features)
    return model, (DenseParams(w=solution[:-1], b=solution[-1]),)


class LatentARParams(NamedTuple):
    cell: PyTree
    head: DenseParams  # [H, F] readout


@dataclass(frozen=True)
class LatentAR:
    """A recurrent forecaster: a cell reads the series, a dense head predicts the next value.

    ``h_t = cell(h_{t-1}, x_t)``, ``y_t = W h_t + b`` (``+ x_t`` with ``residual``), where
    ``y_t`` predicts ``x_{t+1}``: the latent state, not a fixed window, holds the past.

    * Params: :class:`LatentARParams` ``(cell, head)``; the head is ``Dense(H, F)``.
    * Carry: the cell's carry.

    Attributes:
        cell: any cell with ``input_size = F`` (a :class:`seqjax.Stack` of cells too).
        residual: predict the change from the current value (``y_t = x_t + W h_t + b``),
            which suits smooth series.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell
        >>> model = LatentAR(GRUCell(1, 8))
        >>> params = model.init(jax.random.key(0))
        >>> carry, ys = model(params, jnp.ones((7, 2, 1)))       # ys[t] predicts xs[t + 1]
        >>> ys.shape
        (7, 2, 1)
    """

    cell: Cell
    residual: bool = False

    def __post_init__(self):
        if not isinstance(self.cell, Cell):
            raise TypeError(f"LatentAR: cell must be a seqjax cell instance; got {self.cell!r}")
        _checks.flag("residual", self.residual, "LatentAR")

    @property
    def features(self) -> int:
        return self.cell.input_size

    @property
    def head(self) -> Dense:
        return Dense(self.cell.hidden_size, self.cell.input_size)

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LatentARParams:
        kc, kh = jax.random.split(key)
        return LatentARParams(self.cell.init(kc, dtype), self.head.init(kh, dtype))

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> PyTree:
        return self.cell.init_carry(batch_shape, dtype)

    def _read_out(self, params: LatentARParams, hs: Array, xs: Array) -> Array:
        ys = self.head(params.head, hs)
        return xs + ys if self.residual else ys

    def step(self, params: LatentARParams, carry: PyTree, x: Array) -> tuple[PyTree, Array]:
        """Read ``x`` ``[*B, F]``; ``y`` ``[*B, F]`` predicts the next value."""
        carry, h = self.cell.apply(params.cell, carry, x)
        return carry, self._read_out(params, h, x)

    def __call__(
        self,
        params: LatentARParams,
        xs: Array,
        carry: PyTree | None = None,
        *,
        lengths: Array | None = None,
    ) -> tuple[PyTree, Array]:
        """Teacher-forced one-step predictions: ``xs`` ``[T, *B, F]`` -> ``ys`` ``[T, *B, F]``.

        With ``lengths`` ``[*B]``, steps at or past a sequence's length leave its carry
        unchanged and predict zeros (as :func:`seqjax.unroll`).
        """
        xs = _checks.series("xs", xs, "LatentAR")
        if lengths is not None:
            lengths = _checks.lengths_array(lengths, xs.shape[1:-1], xs.shape[0], "LatentAR")
            mask = _checks.valid_steps(lengths, xs.shape[0])[..., None]
            xs = jnp.where(mask, xs, jnp.zeros_like(xs))  # padding: inert in both directions
        carry, hs = unroll(self.cell, params.cell, xs, carry, lengths=lengths)
        ys = self._read_out(params, hs, xs)
        if lengths is not None:
            ys = jnp.where(mask, ys, jnp.zeros_like(ys))
        return carry, ys


def _as_dtype_of(value, spec):
    """``value`` in ``spec``'s dtype where a step changes it (a Python scalar stays weak)."""
    if getattr(spec, "weak_type", False) or jnp.result_type(value) == spec.dtype:
        return value
    return jnp.asarray(value, spec.dtype)


def closed_loop(
    step_fn: Callable[[PyTree, PyTree, Array], tuple[PyTree, Array]],
    params: PyTree,
    carry: PyTree,
    x: Array,
    horizon: int,
) -> tuple[PyTree, Array]:
    """Feed a model's predictions back as its next inputs for ``horizon`` steps (``lax.scan``).

    Args:
        step_fn: ``step_fn(params, carry, x [*B, F]) -> (carry, y [*B, F])``, ``y`` the
            predicted next value (e.g. ``model.step``).
        params: the model's parameters.
        carry: the state after the values before ``x`` were read.
        x: ``[*B, F]``, the last observed value.
        horizon: steps to predict, a positive int.

    Returns:
        ``(carry, ys)``: the final carry and the predictions ``[horizon, *B, F]`` of the
        ``horizon`` values after ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> def double(params, carry, x):              # a "model" predicting 2x
        ...     return carry, 2.0 * x
        >>> _, ys = closed_loop(double, None, (), jnp.ones((1,)), 4)
        >>> ys[:, 0].tolist()
        [2.0, 4.0, 8.0, 16.0]
    """
    horizon = _checks.positive_int("horizon", horizon, "closed_loop")
    # The loop carries what the model computes: a bfloat16 context (and the window or state
    # it left) read by float32 params goes on in float32. Cast until a step keeps the types
    # (a window joins the carry with x, so its dtype settles one step after x's).
    x = jnp.asarray(x)
    for _ in range(3):
        new_carry, prediction = jax.eval_shape(step_fn, params, carry, x)
        if prediction.shape != x.shape:
            raise ValueError(
                f"closed_loop: step_fn must predict a value shaped like its input x, {x.shape}, "
                f"to feed it back; got {prediction.shape}"
            )
        before = jax.tree.map(jnp.result_type, (carry, x))
        (carry, x) = jax.tree.map(_as_dtype_of, (carry, x), (new_carry, prediction))
        if jax.tree.map(jnp.result_type, (carry, x)) == before:
            break

    def body(state, _):
        carry, x = state
        carry, y = step_fn(params, carry, x)
        return (carry, y), y

    (carry, _), ys = jax.lax.scan(body, (carry, x), None, length=horizon)
    return carry, ys


def forecast(model, params: PyTree, context: Array, horizon: int, carry: PyTree | None = None):
    """Multi-step forecast: a teacher-forced warm-up on ``context``, then closed loop.

    The model reads ``context[:-1]`` with the true values (teacher forcing), then reads
    ``context[-1]`` and feeds each prediction back as its next input (:func:`closed_loop`).

    Args:
        model: an :class:`ARModel`, a :class:`LatentAR`, or any model with their protocol.
        params: its parameters.
        context: ``[C, *B, F]`` observed values, oldest first. A model with a fixed window
            (an ``order`` attribute) needs ``C >= order`` unless ``carry`` holds the history.
        horizon: steps to predict, a positive int.
        carry: the model's state before ``context[0]`` (its initial carry when None).

    Returns:
        ``[horizon, *B, F]``: predictions of the ``horizon`` values after the context.

    Raises:
        ValueError: ``horizon`` is not a positive int, or the context is empty or shorter
            than the model's window.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model, params = fit_linear_ar(jnp.sin(0.3 * jnp.arange(60.0))[:, None], 2)
        >>> ys = forecast(model, params, jnp.sin(0.3 * jnp.arange(40.0))[:, None], 5)
        >>> truth = jnp.sin(0.3 * jnp.arange(40.0, 45.0))[:, None]
        >>> ys.shape, bool(jnp.abs(ys - truth).max() < 1e-3)
        ((5, 1), True)
    """
    horizon = _checks.positive_int("horizon", horizon, "forecast")
    context = _checks.series("context", context, "forecast")
    need = getattr(model, "order", 1) if carry is None else 1
    if context.shape[0] < need:
        why = "the model's window, when no carry is given" if carry is None else "the last value"
        raise ValueError(
            f"forecast: context must hold at least {need} steps ({why}); got "
            f"{context.shape[0]} steps (shape {context.shape})"
        )
    carry, _ = model(params, context[:-1], carry)
    return closed_loop(model.step, params, carry, context[-1], horizon)[1]


def one_step_loss(
    model, params: PyTree, xs: Array, *, lengths: Array | None = None, skip: int = 0
) -> Array:
    """Teacher-forced mean squared error of one-step predictions over a batch of series.

    Args:
        model: a forecasting model (see the module docstring).
        params: its parameters.
        xs: ``[T, *B, F]`` series, time-major.
        lengths: ``[*B]`` valid lengths; predictions of values at or past a length (and the
            padding they read) do not count.
        skip: do not count the first ``skip`` predictions (a warm-up: a window model's first
            ``order - 1`` predictions read the zero history; a recurrent state needs a few
            steps to settle).

    Returns:
        ``[]``: mean over counted steps and series of the squared error summed over ``F``.
    """
    xs = _checks.series("xs", xs, "one_step_loss")
    if xs.shape[0] < 2:
        raise ValueError(
            f"one_step_loss: xs must hold at least 2 steps (a value and the one it predicts); "
            f"got shape {xs.shape}"
        )
    if not _checks.is_int(skip) or not 0 <= skip < xs.shape[0] - 1:
        raise ValueError(
            f"one_step_loss: skip must be an int in [0, T - 1) = [0, {xs.shape[0] - 1}); "
            f"got {skip!r}"
        )
    skip = int(skip)
    if lengths is not None:
        lengths = _checks.lengths_array(lengths, xs.shape[1:-1], xs.shape[0], "one_step_loss")
        # Padding is inert: zeroed before any model reads it (a window model has no lengths).
        valid = _checks.valid_steps(lengths, xs.shape[0])[..., None]
        xs = jnp.where(valid, xs, jnp.zeros_like(xs))
    _, ys = model(params, xs[:-1])
    dtype = jnp.int32 if lengths is None else lengths.dtype
    steps = jnp.arange(1, xs.shape[0], dtype=dtype).reshape(-1, *([1] * (xs.ndim - 2)))
    mask = jnp.broadcast_to(steps > skip, ys.shape[:-1])
    if lengths is not None:
        mask = mask & (steps < lengths[None])
    return mean_squared_error(ys, xs[1:], mask)


def last_value_forecast(context: Array, horizon: int) -> Array:
    """The naive (persistence) forecast: the last observed value, ``horizon`` times.

    Args:
        context: ``[C, *B, F]``.
        horizon: a positive int.

    Returns:
        ``[horizon, *B, F]``.

    Example:
        >>> import jax.numpy as jnp
        >>> last_value_forecast(jnp.array([[1.0], [2.0]]), 3)[:, 0].tolist()
        [2.0, 2.0, 2.0]
    """
    horizon = _checks.positive_int("horizon", horizon, "last_value_forecast")
    context = _checks.series("context", context, "last_value_forecast")
    if context.shape[0] < 1:
        raise ValueError("last_value_forecast: context must hold at least one step; got none")
    return jnp.broadcast_to(context[-1], (horizon, *context.shape[1:]))


def origins(
    series: Array, starts: Sequence[int] | Array, context_length: int, horizon: int
) -> tuple[Array, Array]:
    """Rolling-origin evaluation sets: for each origin, the context before it and what follows.

    Args:
        series: ``[T, F]`` one series.
        starts: ``[N]`` origins ``o``: ``context_length <= o <= T - horizon``.
        context_length: ``C``, steps of context before each origin.
        horizon: ``H``, steps to forecast from each origin.

    Returns:
        ``(contexts [C, N, F], futures [H, N, F])`` with ``contexts[:, n] = series[o - C : o]``
        and ``futures[:, n] = series[o : o + H]``, ready for a batched :func:`forecast`.

    Example:
        >>> import jax.numpy as jnp
        >>> contexts, futures = origins(jnp.arange(10.0)[:, None], [3, 6], 3, 2)
        >>> contexts[..., 0].T.tolist(), futures[..., 0].T.tolist()
        ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [[3.0, 4.0], [6.0, 7.0]])
    """
    series = _checks.series("series", series, "origins")
    if series.ndim != 2:
        raise ValueError(f"origins: series must be one series [T, F]; got shape {series.shape}")
    context_length = _checks.positive_int("context_length", context_length, "origins")
    horizon = _checks.positive_int("horizon", horizon, "origins")
    first = np.asarray(starts)
    if not np.issubdtype(first.dtype, np.integer) or first.ndim != 1:
        raise TypeError(f"origins: starts must be a 1-D sequence of ints; got {first!r}")
    low, high = context_length, series.shape[0] - horizon
    if first.size and (first.min() < low or first.max() > high):
        raise ValueError(
            f"origins: starts must lie in [context_length, T - horizon] = [{low}, {high}] "
            f"(T = {series.shape[0]}); got values from {first.min()} to {first.max()}"
        )
    back = first[None, :] + np.arange(-context_length, 0)[:, None]  # [C, N]
    ahead = first[None, :] + np.arange(horizon)[:, None]  # [H, N]
    return series[jnp.asarray(back)], series[jnp.asarray(ahead)]

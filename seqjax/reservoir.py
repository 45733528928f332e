"""Echo-state networks: readouts (ridge, online RLS, FORCE, gradient) for reservoir states.

The reservoir is :class:`seqjax.EchoStateCell`, a cell like any other, so its states come
from :func:`seqjax.unroll` (``_, states = unroll(cell, params, xs)``); this module fits and
runs the linear readout on them. :class:`EchoStateNetwork` bundles cell and readout for the
common path::

    esn = EchoStateNetwork(EchoStateCell(1, 500, spectral_radius=1.25, leak_rate=0.3), 1)
    params = esn.fit(esn.init(key), xs, ys, ridge=1e-6, washout=100)   # ridge readout
    predictions = seqjax.forecast.forecast(esn, params, warmup, horizon=84)   # closed loop

Readout features are the reservoir state ``x_t`` ``[*B, H]``, followed by the input
``u_t`` ``[*B, I]`` when ``input_to_readout`` (``F = H`` or ``H + I``); a readout is a
:class:`seqjax.DenseParams` ``(w [F, O], b [O])``, ``y = features @ w + b``.

FORCE learning (Sussillo & Abbott 2009) runs a reservoir driven by its own readout through
fixed feedback weights ``W_fb`` ``[O, H]`` and trains the readout by RLS at every step,
in one ``lax.scan`` (:func:`force_train`); :func:`force_run` then runs it closed loop::

    w_fb = feedback_weights(key, 1, 200)                       # +-1, like ReservoirPy's
    state, carry, _ = force_train(cell, params, w_fb, targets)     # [T, O], RLS every step
    _, outputs = force_run(cell, params, w_fb, state.readout, carry, num_steps=300)

Gradient training goes through :mod:`seqjax.train` unchanged: the fixed reservoir leaves sit
behind ``lax.stop_gradient`` (see ``EchoStateCell.trainable``), so their gradients are zero
and Adam leaves them where they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PRNGKey
from seqjax.cells._common import affine
from seqjax.cells._esn import EchoStateCell, EchoStateParams, _sparse_signs, spectral_radius
from seqjax.layers import DenseParams
from seqjax.unroll import unroll

__all__ = [
    "EchoStateCell",
    "EchoStateNetwork",
    "EchoStateNetworkParams",
    "EchoStateParams",
    "FeedbackCarry",
    "RLSState",
    "feedback_weights",
    "force_run",
    "force_train",
    "from_reservoirpy",
    "readout_features",
    "ridge_regression",
    "rls_init",
    "rls_regression",
    "rls_step",
    "spectral_radius",
]


def from_reservoirpy(
    reservoir, *, dtype=jnp.float64, sparse: bool = False
) -> tuple[EchoStateCell, EchoStateParams]:
    """An :class:`EchoStateCell` and its params holding an initialised ReservoirPy
    ``Reservoir``'s own weights, so both libraries run the very same reservoir.

    ReservoirPy (0.4) computes ``x' = (1 - lr) x + lr f(W x + Win u + bias)`` with column
    vectors and its scalings already inside ``W`` (spectral radius ``sr``) and ``Win``
    (``input_scaling``); the params get ``w = W^T``, ``w_in = Win^T``, ``b = bias``, unit
    ``spectral_radius``, ``input_scaling`` and ``bias_scaling``, and ``leak_rate = lr``. In
    float64 the states then equal ReservoirPy's to rounding (tests/test_reservoir.py).
    ReservoirPy is imported only here (an optional dependency).

    Args:
        reservoir: a ``reservoirpy.nodes.Reservoir`` that has been initialised (run it on one
            step of data, or call ``reservoir.initialize(x)``), with the ``tanh`` activation.
        dtype: the params' dtype.
        sparse: store ``w`` as a BCOO matrix (True) or dense (False).

    Returns:
        ``(cell, params)``; the cell's scalings are placeholders, the params carry them.
    """
    where = "from_reservoirpy"
    from reservoirpy.activationsfunc import tanh as rpy_tanh
    from reservoirpy.nodes import Reservoir

    if not isinstance(reservoir, Reservoir):
        raise TypeError(f"{where}: reservoir must be a reservoirpy Reservoir; got {reservoir!r}")
    if not getattr(reservoir, "initialized", False):
        raise ValueError(
            f"{where}: reservoir must be initialised (its W and Win drawn: run it on some data "
            "or call reservoir.initialize(x) first); got one not initialised"
        )
    if reservoir.activation is not rpy_tanh:
        raise ValueError(
            f"{where}: only the tanh activation is supported; got {reservoir.activation!r}"
        )

    def dense(m):
        return np.asarray(m.toarray() if hasattr(m, "toarray") else m, np.float64)

    w, w_in = dense(reservoir.W), dense(reservoir.Win)  # [H, H], [H, I]
    hidden, inputs = w_in.shape
    bias = np.broadcast_to(np.asarray(reservoir.bias, np.float64).reshape(-1), (hidden,))
    leak = np.broadcast_to(np.asarray(reservoir.lr, np.float64).reshape(-1), (hidden,))
    cell = EchoStateCell(inputs, hidden, sparse=sparse)
    w_t: Any = jnp.asarray(w.T, dtype)  # dense, or a BCOO matrix below
    if sparse:
        from jax.experimental import sparse as jsparse

        w_t = jsparse.BCOO.fromdense(w_t)
    params = EchoStateParams(
        w_in=jnp.asarray(w_in.T, dtype),
        w=w_t,
        b=jnp.asarray(bias, dtype),
        input_scaling=jnp.ones((inputs,), dtype),
        spectral_radius=jnp.ones((), dtype),
        bias_scaling=jnp.ones((), dtype),
        leak_rate=jnp.asarray(leak, dtype),
    )
    return cell, params


def readout_features(states: Array, inputs: Array | None = None) -> Array:
    """``[..., H]`` states, and optionally ``[..., I]`` inputs, as readout features ``[..., F]``."""
    if inputs is None:
        return states
    if inputs.shape[:-1] != states.shape[:-1]:
        raise ValueError(
            f"readout_features: inputs must match the states' leading shape {states.shape[:-1]}; "
            f"got shape {inputs.shape}"
        )
    return jnp.concatenate([states, inputs.astype(states.dtype)], axis=-1)


def _rows(name: str, a: Array, washout: int, time_axis: int, where: str) -> Array:
    """``a`` ``[T, *B, F]`` (time on ``time_axis``) without its first ``washout`` steps, as
    rows ``[N, F]``."""
    a = _checks.floating_array(name, a, where)
    axis = _checks.time_axis_of(name, a.shape, time_axis, where)
    a = jnp.moveaxis(a, axis, 0)
    if not (_checks.is_int(washout) and 0 <= washout < a.shape[0]):
        raise ValueError(
            f"{where}: washout must lie in [0, T) = [0, {a.shape[0]}); got {washout!r}"
        )
    return a[washout:].reshape(-1, a.shape[-1])


def ridge_regression(
    features: Array,
    targets: Array,
    *,
    ridge: float = 0.0,
    washout: int = 0,
    fit_bias: bool = True,
    time_axis: int = 0,
) -> DenseParams:
    """Closed-form ridge readout: ``argmin ||X w + b - Y||^2 + ridge ||w||^2`` (bias free).

    The rows are every step after the first ``washout`` of every series, pooled: one readout
    for all series. For one readout per series, ``jax.vmap`` over the batch axis (example
    below). With ``fit_bias`` the bias is not penalised (features and targets are centred, as
    in ReservoirPy's ``Ridge`` and scikit-learn's ``Ridge``). Solved by a thin SVD of the
    centred features, ``w = V diag(s / (s^2 + ridge)) U^T Y``, never by forming ``X^T X``,
    whose condition number is the square of ``X``'s: that keeps float32 states usable with the
    tiny ridges ESNs need. ``ridge = 0`` gives the minimum-norm least-squares solution (what
    ``numpy.linalg.lstsq`` returns).

    Args:
        features: ``[T, *B, F]`` (time on ``time_axis``), e.g. from :func:`readout_features`.
        targets: ``[T, *B, O]``, in the same layout.
        ridge: the L2 penalty ``>= 0`` on ``w``.
        washout: leading steps of each series left out (the reservoir's transient).
        fit_bias: fit ``b`` (True) or fix it at zero.
        time_axis: the time axis of both arrays.

    Returns:
        :class:`seqjax.DenseParams` ``(w [F, O], b [O])``.

    Example:
        >>> import functools, jax, jax.numpy as jnp
        >>> xs = jax.random.normal(jax.random.key(0), (100, 5, 3))        # [T, B, F]
        >>> ys = xs @ jnp.array([[1.0], [2.0], [-1.0]]) + 0.5              # [T, B, O]
        >>> readout = ridge_regression(xs, ys, washout=10)                 # pooled
        >>> [round(float(v), 3) for v in readout.w[:, 0]], round(float(readout.b[0]), 3)
        ([1.0, 2.0, -1.0], 0.5)
        >>> fit = functools.partial(ridge_regression, ridge=1e-3, time_axis=0)
        >>> per_series = jax.vmap(fit, in_axes=1)(xs, ys)                  # one per series
        >>> per_series.w.shape
        (5, 3, 1)
    """
    where = "ridge_regression"
    _concrete_number("ridge", ridge, where, low=0.0)
    x = _rows("features", features, washout, time_axis, where)
    y = _rows("targets", targets, washout, time_axis, where)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{where}: targets must have the time and batch shape of features "
            f"{features.shape[:-1]}; got shape {targets.shape}"
        )
    y = y.astype(x.dtype)
    if fit_bias:
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        x = x - jnp.broadcast_to(x_mean, x.shape)
        y = y - jnp.broadcast_to(y_mean, y.shape)
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    penalty = jnp.asarray(ridge, x.dtype)
    # s / (s^2 + ridge), with directions of zero singular value dropped (pseudo-inverse).
    cutoff = jnp.finfo(x.dtype).eps * max(x.shape) * jnp.max(s, initial=0.0)
    keep = (s > cutoff) | (penalty > 0)
    denom = jnp.where(keep, s * s + penalty, 1.0)
    gain = jnp.where(keep, s / denom, 0.0)
    w = vt.T @ (jnp.broadcast_to(gain[:, None], (s.shape[0], y.shape[1])) * (u.T @ y))
    if fit_bias:
        b = y_mean - x_mean @ w
    else:
        b = jnp.zeros((y.shape[1],), x.dtype)
    return DenseParams(w=w, b=b)


def _concrete_number(name: str, value, where: str, **bounds) -> None:
    """Check a number that may be traced (vmapped over, say) only where it is concrete: a NaN,
    negative or zero value there gives NaN readouts without a word."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, jax.Array | np.ndarray) and value.ndim == 0:
        value = value.item()  # a concrete 0-d array: its number
    _checks.number(name, value, where, **bounds)


class RLSState(NamedTuple):
    """State of the online recursive-least-squares readout."""

    readout: DenseParams  # w [F, O], b [O]
    p: Array  # [F + 1, F + 1] inverse correlation of the bias-augmented features [x, 1]


def rls_init(
    num_features: int, num_outputs: int, *, alpha: float = 1.0, dtype=jnp.float32
) -> RLSState:
    """A zero readout and ``P = I / alpha`` (``alpha``: the initial ridge on every weight)."""
    num_features = _checks.positive_int("num_features", num_features, "rls_init")
    num_outputs = _checks.positive_int("num_outputs", num_outputs, "rls_init")
    _concrete_number("alpha", alpha, "rls_init", low=0.0, low_open=True)
    size = num_features + 1
    return RLSState(
        readout=DenseParams(
            w=jnp.zeros((num_features, num_outputs), dtype), b=jnp.zeros((num_outputs,), dtype)
        ),
        p=jnp.eye(size, dtype=dtype) / jnp.asarray(alpha, dtype),
    )


def rls_step(
    state: RLSState, feature: Array, target: Array, *, forgetting: float = 1.0
) -> tuple[RLSState, Array]:
    """One recursive-least-squares update from one step's ``feature [F]`` and ``target [O]``.

    The FORCE rule of Sussillo & Abbott (Neuron 63, 2009) is this update applied while the
    network runs: ``k = P r / (lambda + r^T P r)``, ``e = r^T W - y`` (the error before the
    update), ``W <- W - k e^T``, ``P <- (P - k r^T P) / lambda``, with ``r = [x, 1]`` so the
    bias is learned as a weight. With ``forgetting = lambda = 1`` the readout after ``n``
    steps is exactly the ridge solution with penalty ``alpha`` on all weights and the bias.

    Returns:
        ``(state, prediction)``: the updated state and the output *before* the update
        ``[O]`` (the online prediction).
    """
    w, b = state.readout
    r = jnp.concatenate([feature, jnp.ones((1,), feature.dtype)])
    wb = jnp.concatenate([w, b[None]], axis=0)  # [F + 1, O]
    prediction = r @ wb
    pr = state.p @ r
    k = pr / (forgetting + r @ pr)
    wb = wb - jnp.outer(k, prediction - target)
    p = (state.p - jnp.outer(k, pr)) / forgetting
    return RLSState(DenseParams(w=wb[:-1], b=wb[-1]), p), prediction


def rls_regression(
    features: Array,
    targets: Array,
    *,
    alpha: float = 1.0,
    forgetting: float = 1.0,
    washout: int = 0,
    state: RLSState | None = None,
) -> tuple[RLSState, Array]:
    """Online RLS readout over one series, as a ``lax.scan`` of :func:`rls_step`.

    Args:
        features: ``[T, F]``; ``jax.vmap`` over a batch axis for many series.
        targets: ``[T, O]``.
        alpha: initial ridge (``P_0 = I / alpha``) when ``state`` is None.
        forgetting: ``lambda`` in ``(0, 1]``; below 1 old steps are forgotten.
        washout: leading steps skipped (no update, prediction zero).
        state: continue from this state.

    Returns:
        ``(state, predictions [T, O])``: the final state (``state.readout`` is the readout)
        and each step's prediction before its update.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> xs = jax.random.normal(jax.random.key(0), (200, 3))
        >>> ys = xs @ jnp.array([[1.0], [2.0], [-1.0]]) + 0.5
        >>> state, _ = rls_regression(xs, ys, alpha=1e-6)
        >>> [round(float(v), 3) for v in state.readout.w[:, 0]]
        [1.0, 2.0, -1.0]
    """
    where = "rls_regression"
    features = _checks.floating_array("features", features, where)
    targets = _checks.floating_array("targets", targets, where)
    _concrete_number("forgetting", forgetting, where, low=0.0, low_open=True, high=1.0)
    if state is None:
        _concrete_number("alpha", alpha, where, low=0.0, low_open=True)
    if features.ndim != 2 or targets.ndim != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(
            f"{where}: features must be [T, F] and targets [T, O] with the same T (vmap for "
            f"batches); got shapes {features.shape} and {targets.shape}"
        )
    if not (_checks.is_int(washout) and 0 <= washout <= features.shape[0]):
        raise ValueError(f"{where}: washout must lie in [0, T]; got {washout!r}")
    if state is None:
        state = rls_init(features.shape[1], targets.shape[1], alpha=alpha, dtype=features.dtype)
    targets = targets.astype(features.dtype)

    def body(state, step):
        return rls_step(state, *step, forgetting=forgetting)

    final, predictions = jax.lax.scan(body, state, (features[washout:], targets[washout:]))
    skipped = jnp.zeros((washout, targets.shape[1]), predictions.dtype)
    return final, jnp.concatenate([skipped, predictions])


class FeedbackCarry(NamedTuple):
    """Carry of a reservoir driven by its own readout (:func:`force_train`, :func:`force_run`)."""

    x: Array  # [H] reservoir state
    y: Array  # [O] the output fed back at the next step


def feedback_weights(
    key: PRNGKey,
    output_size: int,
    hidden_size: int,
    *,
    scaling: float = 1.0,
    connectivity: float = 1.0,
    dtype=jnp.float32,
) -> Array:
    """Fixed random output-feedback weights ``W_fb`` ``[O, H]``.

    ``round(connectivity * O * H)`` entries (at least one) are ``+-scaling``, equally likely,
    at uniformly drawn positions, the others zero: the draw of the reservoir's input weights
    (ReservoirPy's ``bernoulli``, as its 0.3 ``Reservoir`` drew ``Wfb`` with ``fb_scaling``
    and ``fb_connectivity``; ReservoirPy 0.4 feeds the readout back through ``Win`` instead,
    ``reservoir << readout``). Sussillo & Abbott (2009) draw theirs uniform in ``[-1, 1]``;
    any ``[O, H]`` array works in :func:`force_train`.

    Example:
        >>> import jax
        >>> w_fb = feedback_weights(jax.random.key(0), 1, 100, connectivity=0.5)
        >>> w_fb.shape, int((w_fb != 0).sum())
        ((1, 100), 50)
    """
    where = "feedback_weights"
    output_size = _checks.positive_int("output_size", output_size, where)
    hidden_size = _checks.positive_int("hidden_size", hidden_size, where)
    _checks.number("scaling", scaling, where)
    if not _checks.is_real(connectivity) or not 0.0 < connectivity <= 1.0:
        raise ValueError(f"{where}: connectivity must lie in (0, 1]; got {connectivity!r}")
    count = max(1, round(connectivity * output_size * hidden_size))
    k_positions, k_signs = jax.random.split(key)
    signs = _sparse_signs(k_positions, k_signs, output_size * hidden_size, count, dtype)
    return jnp.asarray(scaling, dtype) * signs.reshape(output_size, hidden_size)


def _feedback_inputs(cell, params, w_fb, xs, num_steps, num_outputs, where):
    """Checks ``w_fb`` and ``xs``; returns the per-step driving ``[T, I]`` inputs or None."""
    if w_fb.shape != (num_outputs, cell.hidden_size):
        raise ValueError(
            f"{where}: w_fb must have shape [O, H] = [{num_outputs}, {cell.hidden_size}]; "
            f"got {w_fb.shape}"
        )
    if xs is None:
        return None
    xs = _checks.floating_array("xs", xs, where)
    if xs.shape != (num_steps, cell.input_size):
        raise ValueError(
            f"{where}: xs must have shape [T, I] = [{num_steps}, {cell.input_size}] (vmap for "
            f"batches); got {xs.shape}"
        )
    return xs.astype(params.w_in.dtype)


def _feedback_carry(cell, carry, num_outputs, dtype) -> FeedbackCarry:
    """``carry`` in ``dtype`` (zeros when None), shapes checked."""
    if carry is None:
        return FeedbackCarry(cell.init_carry((), dtype), jnp.zeros((num_outputs,), dtype))
    if carry.x.shape != (cell.hidden_size,) or carry.y.shape != (num_outputs,):
        raise ValueError(
            f"feedback carry must be FeedbackCarry(x [H], y [O]) = ([{cell.hidden_size}], "
            f"[{num_outputs}]) (vmap for batches); got shapes {carry.x.shape}, {carry.y.shape}"
        )
    return FeedbackCarry(carry.x.astype(dtype), carry.y.astype(dtype))


def _feedback_step(cell, params, w_fb, x, u, y):
    """The reservoir state after one step driven by input ``u`` (None: no input) and fed-back
    output ``y``: ``px = (u * s_in) @ W_in + s_b * b + y @ W_fb``, then the cell's step."""
    if u is None:  # no input: the bias alone, ``project`` of a zero input
        u = jnp.zeros((cell.input_size,), x.dtype)
    px = cell.project(params, u) + y @ w_fb
    return cell.step(params, x, px)[0]


def force_train(
    cell: EchoStateCell,
    params: EchoStateParams,
    w_fb: Array,
    targets: Array,
    xs: Array | None = None,
    carry: FeedbackCarry | None = None,
    state: RLSState | None = None,
    *,
    alpha: float = 1.0,
    forgetting: float = 1.0,
    teacher_forcing: bool = False,
) -> tuple[RLSState, FeedbackCarry, Array]:
    """FORCE learning: train the readout by RLS at every step while its output drives the
    reservoir through fixed feedback weights, in one ``lax.scan``.

    Sussillo & Abbott, "Generating coherent patterns of activity from chaotic neural
    networks", Neuron 63 (2009). Step ``t`` (``u_t`` the optional input, ``y_{t-1}`` the
    output fed back, ``d_t`` the target)::

        x_t = (1 - a) x_{t-1} + a f(rho x_{t-1} W + (u_t s_in) W_in + s_b b + y_{t-1} W_fb)
        readout <- rls_step(readout, x_t, d_t)          # the update of :func:`rls_step`
        y_t = x_t @ w + b                               # with the updated readout

    The fed-back ``y_t`` is the output *after* the step's update (the paper's ``z(t)``; also
    what ReservoirPy 0.4's ``partial_fit`` feeds back): RLS keeps it close to the target from
    the first steps, so the reservoir learns to run on its own output and, once trained,
    :func:`force_run` continues the pattern closed loop. With ``teacher_forcing`` the target
    ``d_{t-1}`` is fed back instead (Jaeger's teacher forcing, learned online).

    Args:
        cell, params: the reservoir; the feedback adds to the cell's projected input.
        w_fb: ``[O, H]`` fixed feedback weights, e.g. :func:`feedback_weights`.
        targets: ``[T, O]`` the signal to produce; ``jax.vmap`` for many series.
        xs: ``[T, I]`` inputs driving the reservoir, or None for none (a pattern generator;
            the reservoir then sees only its bias and the feedback).
        carry: :class:`FeedbackCarry` ``(x [H], y [O])`` before the first step; zeros when
            None. ``carry.y`` is fed back at the first step (teacher forcing too).
        state: :class:`RLSState` to continue from; ``rls_init(H, O, alpha=alpha)`` when None.
        alpha: initial ridge, ``P_0 = I / alpha`` (Sussillo & Abbott: 1 to 100).
        forgetting: RLS forgetting factor ``lambda`` in ``(0, 1]``.
        teacher_forcing: feed back the targets instead of the outputs.

    Returns:
        ``(state, carry, outputs)``: the RLS state (``state.readout`` is the trained readout
        ``DenseParams (w [H, O], b [O])``), the carry after the last step (``carry.y`` the
        value to feed back next: the last output, or the last target under teacher
        forcing), and the outputs ``y_t`` ``[T, O]``.

    Example:
        A pattern generator without input (a chaotic reservoir, ``rho = 1.8``, tamed by
        its feedback), trained on a sum of two sines, then run closed loop:

        >>> import jax, jax.numpy as jnp
        >>> from seqjax.losses import nrmse
        >>> cell = EchoStateCell(1, 200, spectral_radius=1.8, leak_rate=0.5, bias_scaling=0.2)
        >>> params = cell.init(jax.random.key(0))
        >>> w_fb = feedback_weights(jax.random.key(1), 1, 200)
        >>> t = jnp.arange(2300, dtype=jnp.float32)
        >>> target = (jnp.sin(2 * jnp.pi * t / 50) + 0.5 * jnp.sin(2 * jnp.pi * t / 25))[:, None]
        >>> state, carry, _ = force_train(cell, params, w_fb, target[:2000])
        >>> _, generated = force_run(cell, params, w_fb, state.readout, carry, 300)
        >>> bool(nrmse(generated, target[2000:]) < 0.05)        # closed loop, no learning
        True
    """
    where = "force_train"
    _concrete_number("forgetting", forgetting, where, low=0.0, low_open=True, high=1.0)
    if state is None:
        _concrete_number("alpha", alpha, where, low=0.0, low_open=True)
    targets = _checks.floating_array("targets", targets, where)
    if targets.ndim != 2:
        raise ValueError(
            f"{where}: targets must be [T, O] (vmap for batches); got shape {targets.shape}"
        )
    num_steps, num_outputs = targets.shape
    dtype = params.w_in.dtype
    xs = _feedback_inputs(cell, params, w_fb, xs, num_steps, num_outputs, where)
    targets = targets.astype(dtype)
    w_fb = w_fb.astype(dtype)
    carry = _feedback_carry(cell, carry, num_outputs, dtype)
    if state is None:
        state = rls_init(cell.hidden_size, num_outputs, alpha=alpha, dtype=dtype)
    # The value fed back at each step under teacher forcing: carry.y, then the targets.
    teacher = jnp.concatenate([carry.y[None], targets[:-1]])

    def body(loop, step):
        state, carry = loop
        u, target, previous_target = step
        fed_back = previous_target if teacher_forcing else carry.y
        x = _feedback_step(cell, params, w_fb, carry.x, u, fed_back)
        state, _ = rls_step(state, x, target, forgetting=forgetting)
        y = affine(x, state.readout.w, state.readout.b)
        return (state, FeedbackCarry(x, target if teacher_forcing else y)), y

    (final, last), outputs = jax.lax.scan(body, (state, carry), (xs, targets, teacher))
    return final, last, outputs


def force_run(
    cell: EchoStateCell,
    params: EchoStateParams,
    w_fb: Array,
    readout: DenseParams,
    carry: FeedbackCarry | None,
    num_steps: int,
    xs: Array | None = None,
) -> tuple[FeedbackCarry, Array]:
    """Run a reservoir closed loop through its output feedback, with a fixed readout.

    The step of :func:`force_train` without learning: ``x_t`` from ``x_{t-1}``, the input
    ``u_t`` and the fed-back ``y_{t-1}``, then ``y_t = x_t @ w + b``, fed back next.

    Args:
        cell, params, w_fb: the reservoir and its ``[O, H]`` feedback weights.
        readout: ``DenseParams (w [H, O], b [O])``, e.g. ``force_train(...)[0].readout``.
        carry: :class:`FeedbackCarry` ``(x [H], y [O])`` to start from, e.g. the carry
            :func:`force_train` returns; zeros when None.
        num_steps: ``T``.
        xs: ``[T, I]`` inputs, or None for none.

    Returns:
        ``(carry, outputs [T, O])``. Example: see :func:`force_train`.
    """
    where = "force_run"
    num_steps = _checks.count("num_steps", num_steps, where)
    num_outputs = readout.b.shape[-1]
    if readout.w.shape != (cell.hidden_size, num_outputs):
        raise ValueError(
            f"{where}: readout.w must have shape [H, O] = [{cell.hidden_size}, {num_outputs}]; "
            f"got {readout.w.shape}"
        )
    dtype = params.w_in.dtype
    xs = _feedback_inputs(cell, params, w_fb, xs, num_steps, num_outputs, where)
    w_fb = w_fb.astype(dtype)
    carry = _feedback_carry(cell, carry, num_outputs, dtype)

    def body(carry, u):
        x = _feedback_step(cell, params, w_fb, carry.x, u, carry.y)
        y = affine(x, readout.w, readout.b).astype(dtype)
        return FeedbackCarry(x, y), y

    return jax.lax.scan(body, carry, xs, length=num_steps)


class EchoStateNetworkParams(NamedTuple):
    """Parameters of an :class:`EchoStateNetwork`."""

    reservoir: EchoStateParams
    readout: DenseParams  # w [F, O], b [O]


@dataclass(frozen=True)
class EchoStateNetwork:
    """An echo-state reservoir and its linear readout, as one sequence model.

    ``y_t = [x_t, (u_t)] @ w + b`` over the reservoir states of :class:`EchoStateCell`. With
    ``O = I`` it is a forecasting model like :class:`seqjax.forecast.LatentAR`
    (``init_carry``, ``step``, ``__call__``), so :func:`seqjax.forecast.forecast` runs it
    closed loop.
    The readout starts at zero; fit it in closed form (:meth:`fit`), online
    (:func:`rls_regression`) or by gradient (:func:`seqjax.bptt_step` on a loss of
    ``esn(params, xs)``; only ``readout`` and the cell's ``trainable`` leaves move).

    Attributes:
        cell: the reservoir.
        output_size: ``O``.
        input_to_readout: the readout also reads the input ``u_t``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax.apps.series import mackey_glass
        >>> from seqjax.forecast import forecast
        >>> from seqjax.losses import nrmse
        >>> series = jnp.asarray(mackey_glass(700, discard=300), jnp.float32)[:, None]
        >>> esn = EchoStateNetwork(EchoStateCell(1, 200, spectral_radius=0.9,
        ...                                      leak_rate=0.3, input_scaling=0.5), 1)
        >>> params = esn.fit(esn.init(jax.random.key(0)), series[:500], series[1:501],
        ...                  ridge=1e-6, washout=100)
        >>> _, ys = esn(params, series[:600])                 # one-step (teacher forced)
        >>> bool(nrmse(ys[500:], series[501:601]) < 0.05)
        True
        >>> forecast(esn, params, series[:500], horizon=20).shape     # closed loop
        (20, 1)
    """

    cell: EchoStateCell
    output_size: int
    input_to_readout: bool = False

    def __post_init__(self):
        if not isinstance(self.cell, EchoStateCell):
            raise TypeError(f"EchoStateNetwork: cell must be an EchoStateCell; got {self.cell!r}")
        _checks.sizes(self, ("output_size",), "EchoStateNetwork")
        _checks.flag("input_to_readout", self.input_to_readout, "EchoStateNetwork")

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def num_features(self) -> int:
        """``F``: ``H``, plus ``I`` with ``input_to_readout``."""
        return self.cell.hidden_size + (self.cell.input_size if self.input_to_readout else 0)

    def init(self, key: PRNGKey, dtype=jnp.float32) -> EchoStateNetworkParams:
        """The reservoir from ``key`` and a zero readout."""
        readout = DenseParams(
            w=jnp.zeros((self.num_features, self.output_size), dtype),
            b=jnp.zeros((self.output_size,), dtype),
        )
        return EchoStateNetworkParams(self.cell.init(key, dtype), readout)

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        return self.cell.init_carry(batch_shape, dtype)

    def features(
        self,
        params: EchoStateNetworkParams,
        xs: Array,
        carry: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> tuple[Array, Array]:
        """``(carry, features [T, *B, F])``: the reservoir run over ``xs`` ``[T, *B, I]``."""
        carry, states = unroll(self.cell, params.reservoir, xs, carry, time_axis=time_axis)
        return carry, readout_features(states, xs if self.input_to_readout else None)

    def step(self, params: EchoStateNetworkParams, carry: Array, x: Array) -> tuple[Array, Array]:
        """Read ``x`` ``[*B, I]``; ``y`` ``[*B, O]`` is the readout of the new state (with
        ``O = I``, the forecasting protocol of :mod:`seqjax.forecast`: ``y`` predicts the
        next input, and :func:`seqjax.forecast.forecast` runs the network closed loop)."""
        carry, state = self.cell.apply(params.reservoir, carry, x)
        features = readout_features(state, x if self.input_to_readout else None)
        return carry, affine(features, params.readout.w, params.readout.b)

    def __call__(
        self,
        params: EchoStateNetworkParams,
        xs: Array,
        carry: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> tuple[Array, Array]:
        """``(carry, ys [T, *B, O])``: teacher-forced outputs, one per input step."""
        carry, features = self.features(params, xs, carry, time_axis=time_axis)
        return carry, affine(features, params.readout.w, params.readout.b)

    def fit(
        self,
        params: EchoStateNetworkParams,
        xs: Array,
        targets: Array,
        *,
        ridge: float = 0.0,
        washout: int = 0,
        fit_bias: bool = True,
        time_axis: int = 0,
    ) -> EchoStateNetworkParams:
        """``params`` with the ridge readout of :func:`ridge_regression` for ``xs -> targets``
        (``[T, *B, I] -> [T, *B, O]``), all series pooled, starting from zero states."""
        _, features = self.features(params, xs, time_axis=time_axis)
        readout = ridge_regression(
            features,
            targets,
            ridge=ridge,
            washout=washout,
            fit_bias=fit_bias,
            time_axis=time_axis,
        )
        return params._replace(readout=readout)

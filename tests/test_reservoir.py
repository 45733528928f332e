"""Echo-state networks: reservoir construction, readouts, closed-loop forecasting, training."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import sparse as jsparse

from seqjax import DenseParams, EchoStateCell, EchoStateNetwork, bptt_step, unroll
from seqjax.apps.series import mackey_glass
from seqjax.cells._esn import _uniform_positions
from seqjax.forecast import forecast
from seqjax.losses import nrmse
from seqjax.reservoir import (
    EchoStateNetworkParams,
    FeedbackCarry,
    feedback_weights,
    force_run,
    force_train,
    from_reservoirpy,
    readout_features,
    ridge_regression,
    rls_init,
    rls_regression,
    spectral_radius,
)

ROOT = Path(__file__).resolve().parent.parent


def _largest_abs_eigenvalue(w) -> float:
    dense = w.todense() if isinstance(w, jsparse.BCOO) else w
    return float(np.abs(np.linalg.eigvals(np.asarray(dense, np.float64))).max())


# ----------------------------------------------------------------------------- the reservoir


@pytest.mark.parametrize("sparse", [False, True])
def test_from_reservoirpy_gives_reservoirpys_states_and_readout(sparse):
    rpy = pytest.importorskip("reservoirpy.nodes")
    u = mackey_glass(120, discard=100)[:, None]  # [T, I] float64
    mat_gen = pytest.importorskip("reservoirpy.mat_gen")
    # a +-1 bias (ReservoirPy 0.4's default is none) so that its conversion is checked too
    reservoir = rpy.Reservoir(40, lr=0.3, sr=1.25, bias=mat_gen.bernoulli, seed=3)
    expected = reservoir.run(u)  # [T, H] float64, draws W, Win and bias on the data
    cell, params = from_reservoirpy(reservoir, dtype=jnp.float64, sparse=sparse)
    assert isinstance(params.w, jsparse.BCOO) == sparse
    _, states = unroll(cell, params, jnp.asarray(u, jnp.float64))
    # float64 rounding of 120 steps of 40-term sums: observed ~1e-15
    np.testing.assert_allclose(np.asarray(states), expected, rtol=0, atol=1e-12)
    ridge = rpy.Ridge(ridge=1e-6)
    ridge.fit(expected[:-1], u[1:], warmup=20)
    mine = ridge_regression(states[:-1], jnp.asarray(u[1:]), ridge=1e-6, washout=20)
    # Compare outputs, not weights: ReservoirPy solves the normal equations (condition number
    # squared), so weights along weak state directions differ by ~1e-5 relative; the fitted
    # outputs agree far closer than the fit's own error. After the washout only: the first
    # steps' tiny states lie off the fitted range and magnify those weight differences.
    ys = np.asarray(states[20:] @ mine.w + mine.b[None])
    np.testing.assert_allclose(ys, ridge.run(expected[20:]), rtol=0, atol=1e-6 * np.std(u))


def test_from_reservoirpy_errors_are_named():
    rpy = pytest.importorskip("reservoirpy.nodes")
    with pytest.raises(ValueError, match="not initialised"):
        from_reservoirpy(rpy.Reservoir(10, seed=0))
    with pytest.raises(TypeError, match="reservoir must be a reservoirpy Reservoir"):
        from_reservoirpy(object())


def test_float32_and_float64_draw_the_same_reservoir(key):
    cell = EchoStateCell(1, 50, spectral_radius=1.25, sparse=False)
    w32, w64 = cell.init(key, jnp.float32).w, cell.init(key, jnp.float64).w
    assert w64.dtype == jnp.float64
    # same values; only the spectral-radius estimate's rounding differs
    np.testing.assert_allclose(np.asarray(w32, np.float64), np.asarray(w64), rtol=1e-4)


@pytest.mark.parametrize("fixed_fan_in", [False, True], ids=["uniform", "fixed_fan_in"])
def test_reservoir_has_the_spectral_radius_asked_for_dense_or_sparse(fixed_fan_in):
    kwargs = dict(
        spectral_radius=1.25,
        leak_rate=0.3,
        connectivity=0.05,
        bias_scaling=0.2,
        fixed_fan_in=fixed_fan_in,
    )
    dense_cell = EchoStateCell(1, 150, sparse=False, **kwargs)
    sparse_cell = EchoStateCell(1, 150, sparse=True, **kwargs)
    key = jax.random.key(3)
    dense, sparse = dense_cell.init(key), sparse_cell.init(key)
    assert isinstance(sparse.w, jsparse.BCOO) and not isinstance(dense.w, jsparse.BCOO)
    fan_in = np.asarray(dense.w != 0).sum(axis=0)  # nonzeros per column of the (in, out) matrix
    if fixed_fan_in:
        assert (fan_in == dense_cell.fan_in).all()
    else:  # ReservoirPy's draw: round(c H^2) entries anywhere, so the fan-in varies
        assert fan_in.sum() == round(0.05 * 150 * 150) and fan_in.std() > 1.0
    rho = _largest_abs_eigenvalue(dense.w) * float(dense.spectral_radius)
    np.testing.assert_allclose(rho, 1.25, rtol=1e-3)
    # Same draws whatever the storage, so the same states.
    np.testing.assert_allclose(sparse.w.todense(), dense.w, rtol=1e-5, atol=1e-6)
    xs = jax.random.normal(jax.random.key(1), (20, 3, 1), jnp.float32)
    _, ys_dense = unroll(dense_cell, dense, xs)
    _, ys_sparse = unroll(sparse_cell, sparse, xs)
    np.testing.assert_allclose(ys_sparse, ys_dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank_limit", [2**24, 0], ids=["ranks", "redraws"])
def test_uniform_positions_are_distinct_and_spread_like_reservoirpys(rank_limit):
    """Both ways of drawing ``count`` distinct entries of an [H, H] matrix (ranks of H^2
    uniforms; redrawing repeats, used past 4096 units): every entry distinct, sorted by
    (dst, src), and per-unit counts spread like a binomial, as scipy's random_array's do."""
    hidden, count = 400, 8000  # connectivity 0.05
    draw = jax.jit(_uniform_positions, static_argnums=(1, 2, 3))
    src, dst = (np.asarray(a) for a in draw(jax.random.key(0), hidden, count, rank_limit))
    assert src.shape == dst.shape == (count,)
    assert src.min() >= 0 and dst.min() >= 0 and max(src.max(), dst.max()) < hidden
    flat = dst.astype(np.int64) * hidden + src
    assert len(np.unique(flat)) == count and (np.diff(flat) > 0).all()
    binomial_std = np.sqrt(hidden * 0.05 * 0.95)  # 4.36
    for counts in (np.bincount(dst, minlength=hidden), np.bincount(src, minlength=hidden)):
        assert abs(counts.std() / binomial_std - 1) < 0.15


def test_spectral_radius_handles_a_dominant_complex_pair_and_non_normal_matrices():
    """Single-vector power iteration cycles on a rotation; the block method does not."""
    rng = np.random.default_rng(0)
    rotation = np.array([[0.0, -3.0], [0.75, 0.0]])  # eigenvalues +-1.5i, not an isometry
    w = np.zeros((40, 40))
    w[:2, :2] = rotation
    w[2:, 2:] = 0.3 * rng.standard_normal((38, 38)) / np.sqrt(38)
    w += np.triu(rng.standard_normal((40, 40)), 1) * 0.05  # off-normal coupling
    w = jnp.asarray(w, jnp.float32)
    want = _largest_abs_eigenvalue(w)
    np.testing.assert_allclose(float(spectral_radius(w, method="iterative")), want, rtol=1e-4)
    # The plain power iteration's growth ratio keeps swinging on this matrix.
    v = jnp.ones(40, jnp.float32)
    ratios = []
    for _ in range(200):
        u = w @ v
        ratios.append(float(jnp.linalg.norm(u) / jnp.linalg.norm(v)))
        v = u / jnp.linalg.norm(u)
    assert max(abs(r / want - 1) for r in ratios[-20:]) > 1e-2
    # A non-normal (triangular) matrix: the radius is its diagonal's, not its norm.
    tri = np.diag(np.linspace(0.1, 0.8, 30)) + 0.1 * np.triu(np.ones((30, 30)), 1)
    tri = jnp.asarray(tri)
    radius = spectral_radius(tri.astype(jnp.float32), method="iterative")
    np.testing.assert_allclose(float(radius), 0.8, rtol=1e-3)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "bcoo"])
def test_a_reservoir_with_about_one_connection_per_unit_gets_the_radius_asked_for(sparse):
    """Far from normal and rank-deficient: block iteration's Ritz values overshot here (the
    drawn reservoir ended at radius 0.557 for 1.0 asked); "auto" computes every eigenvalue."""
    cell = EchoStateCell(1, 200, spectral_radius=1.0, connectivity=0.005, sparse=sparse)
    params = cell.init(jax.random.key(4))
    w = params.w.todense() if sparse else params.w
    np.testing.assert_allclose(_largest_abs_eigenvalue(w), 1.0, rtol=1e-5)
    exact = spectral_radius(jnp.asarray(w) * 3.0)
    np.testing.assert_allclose(float(exact), 3.0, rtol=1e-5)
    # under jit and vmap, dense or sparse: the exact radius is a host callback
    batch = jnp.stack([w, 2.0 * w])
    np.testing.assert_allclose(jax.jit(jax.vmap(spectral_radius))(batch), [1.0, 2.0], rtol=1e-5)


def test_a_reservoir_without_a_cycle_is_refused():
    """2 connections among 5 units form no cycle: radius 0, which no scaling can change."""
    cell = EchoStateCell(1, 5, spectral_radius=1.25, connectivity=0.1)
    with pytest.raises(ValueError, match="spectral radius 0 .* raise connectivity"):
        cell.init(jax.random.key(0))
    traced = jax.jit(cell.init)(jax.random.key(0))  # no error possible under a trace
    assert bool(jnp.isnan(traced.w).all())
    with pytest.raises(ValueError, match="method must be one of"):
        spectral_radius(jnp.eye(3), method="lapack")


def test_step_is_the_leaky_integrator_equation(key):
    cell = EchoStateCell(
        2,
        8,
        leak_rate=tuple(np.linspace(0.1, 1.0, 8)),
        input_scaling=(0.5, 2.0),
        bias_scaling=0.3,
        connectivity=0.5,
        input_connectivity=0.5,
    )
    p = cell.init(key)
    x = jax.random.normal(jax.random.key(1), (8,), jnp.float32)
    u = jax.random.normal(jax.random.key(2), (2,), jnp.float32)
    a = np.linspace(0.1, 1.0, 8)
    pre = (
        0.9 * np.asarray(x) @ np.asarray(p.w)
        + (np.asarray(u) * [0.5, 2.0]) @ np.asarray(p.w_in)
        + 0.3 * np.asarray(p.b)
    )
    want = (1 - a) * np.asarray(x) + a * np.tanh(pre)
    np.testing.assert_allclose(cell.apply(p, x, u)[1], want, rtol=1e-5, atol=1e-6)
    assert set(np.unique(np.asarray(p.b))) == {-1.0, 1.0}
    assert int((np.asarray(p.w_in) != 0).sum()) == round(0.5 * 2 * 8)


def test_fixed_leaves_get_zero_gradients_unless_trainable(key):
    xs = jax.random.normal(jax.random.key(1), (6, 2, 1), jnp.float32)

    def grads(cell):
        params = cell.init(key)
        return jax.grad(lambda p: jnp.sum(unroll(cell, p, xs)[1] ** 2))(params)

    fixed = grads(EchoStateCell(1, 10, bias_scaling=0.5))
    assert all(not bool(jnp.any(g != 0)) for g in jax.tree.leaves(fixed))
    some = grads(EchoStateCell(1, 10, bias_scaling=0.5, trainable=("leak_rate", "input_scaling")))
    assert bool(jnp.any(some.leak_rate != 0)) and bool(jnp.any(some.input_scaling != 0))
    assert not bool(jnp.any(some.w != 0)) and not bool(jnp.any(some.spectral_radius != 0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"leak_rate": 0.0}, "leak_rate must lie in"),
        ({"leak_rate": (0.5, 0.5)}, "leak_rate must be a number or 4 numbers"),
        ({"connectivity": 1.5}, "connectivity must lie in"),
        ({"spectral_radius": -1.0}, "spectral_radius must be >= 0"),
        ({"trainable": ("weights",)}, "trainable must name fields"),
        ({"fixed_fan_in": 1}, "fixed_fan_in must be a bool"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EchoStateCell(2, 4, **kwargs)


# ----------------------------------------------------------------------------- readouts


def _states(key, batch=(3,), steps=40, hidden=12):
    cell = EchoStateCell(2, hidden, spectral_radius=0.9, leak_rate=0.5, connectivity=0.5)
    params = cell.init(key, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(5), (steps, *batch, 2), jnp.float64)
    _, states = unroll(cell, params, xs)
    targets = jnp.stack([xs[..., 0] * xs[..., 1], jnp.roll(xs[..., 0], 1, axis=0)], axis=-1)
    return xs, states, targets


@pytest.mark.parametrize("fit_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("ridge", [0.0, 0.3], ids=["lstsq", "ridge"])
def test_ridge_readout_equals_numpy_lstsq(key, fit_bias, ridge):
    xs, states, targets = _states(key)
    washout = 5
    features = readout_features(states, xs)
    readout = ridge_regression(features, targets, ridge=ridge, washout=washout, fit_bias=fit_bias)
    x = np.asarray(features[washout:]).reshape(-1, features.shape[-1])
    y = np.asarray(targets[washout:]).reshape(-1, 2)
    if fit_bias:
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    # ridge: least squares on [X; sqrt(ridge) I] with a zero row block; the bias column's
    # penalty row stays zero (the bias is not penalised).
    penalty = np.sqrt(ridge) * np.eye(x.shape[1])
    if fit_bias:
        penalty[-1, -1] = 0.0
    x_aug = np.concatenate([x, penalty])
    y_aug = np.concatenate([y, np.zeros((x.shape[1], 2))])
    want = np.linalg.lstsq(x_aug, y_aug, rcond=None)[0]
    got = np.concatenate([readout.w, readout.b[None]]) if fit_bias else np.asarray(readout.w)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    if not fit_bias:
        assert not bool(jnp.any(readout.b != 0))


def test_ridge_readout_per_series_with_vmap(key):
    _, states, targets = _states(key, batch=(4,))
    fit = jax.vmap(lambda s, t: ridge_regression(s, t, ridge=1e-3, washout=3), in_axes=1)
    batched = fit(states, targets)
    assert batched.w.shape == (4, 12, 2)
    for b in range(4):
        one = ridge_regression(states[:, b], targets[:, b], ridge=1e-3, washout=3)
        np.testing.assert_allclose(batched.w[b], one.w, rtol=1e-7, atol=1e-9)


def test_rls_readout_ends_at_the_ridge_solution(key):
    """RLS with P0 = I / alpha and no forgetting solves ridge(alpha) on [x, 1] exactly."""
    _, states, targets = _states(key, batch=(), steps=60)
    alpha = 0.5
    state, predictions = rls_regression(states, targets, alpha=alpha, washout=4)
    aug = jnp.concatenate([states, jnp.ones((60, 1), states.dtype)], axis=1)
    want = ridge_regression(aug, targets, ridge=alpha, washout=4, fit_bias=False).w
    got = jnp.concatenate([state.readout.w, state.readout.b[None]])
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert predictions.shape == (60, 2) and not bool(jnp.any(predictions[:4] != 0))


def test_readout_errors_are_named(key):
    _, states, targets = _states(key)
    with pytest.raises(ValueError, match="washout must lie in"):
        ridge_regression(states, targets, washout=40)
    with pytest.raises(ValueError, match="targets must have the time and batch shape"):
        ridge_regression(states, targets[:, :2])


# ----------------------------------------------------------------------------- forecasting


def _forecast_reference(cell, params, readout, warmup, num_steps, input_to_readout):
    """Closed loop, one Python step at a time with cell.apply, per batch element."""
    outputs = []
    for b in range(warmup.shape[1]):
        x = cell.init_carry((), warmup.dtype)
        for u in warmup[:, b]:
            x, _ = cell.apply(params, x, u)
        ys = []
        for _ in range(num_steps):
            f = np.concatenate([x, u]) if input_to_readout else np.asarray(x)
            y = f @ np.asarray(readout.w) + np.asarray(readout.b)
            ys.append(y)
            u = jnp.asarray(y, warmup.dtype)
            x, _ = cell.apply(params, x, u)
        outputs.append(np.stack(ys))
    return np.stack(outputs, axis=1)


@pytest.mark.parametrize("input_to_readout", [False, True], ids=["states", "states+input"])
def test_closed_loop_forecast_equals_step_by_step_reference(key, input_to_readout):
    cell = EchoStateCell(2, 16, spectral_radius=1.1, leak_rate=0.4, connectivity=0.5)
    params = cell.init(key)
    features = 16 + (2 if input_to_readout else 0)
    w = 0.2 * jax.random.normal(jax.random.key(2), (features, 2), jnp.float32)
    readout = DenseParams(w=w, b=jnp.array([0.1, -0.1], jnp.float32))
    warmup = jax.random.normal(jax.random.key(3), (7, 2, 2), jnp.float32)
    esn = EchoStateNetwork(cell, 2, input_to_readout=input_to_readout)
    ys = forecast(esn, EchoStateNetworkParams(params, readout), warmup, 9)
    want = _forecast_reference(cell, params, readout, warmup, 9, input_to_readout)
    assert ys.shape == (9, 2, 2)
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-5)
    wide = EchoStateNetwork(cell, 3, input_to_readout=input_to_readout)  # O != I: no loop
    with pytest.raises(ValueError, match="shaped like its input"):
        forecast(wide, wide.init(key), warmup, 9)


def test_esn_learns_mackey_glass_and_forecasts_closed_loop():
    series = jnp.asarray(mackey_glass(1100, discard=300), jnp.float32)[:, None]
    esn = EchoStateNetwork(
        EchoStateCell(
            1, 300, spectral_radius=1.25, leak_rate=0.3, input_scaling=1.0, connectivity=0.1
        ),
        1,
    )
    params = esn.fit(
        esn.init(jax.random.key(0)), series[:800], series[1:801], ridge=1e-6, washout=100
    )
    _, one_step = esn(params, series[:1000])
    assert float(jnp.sqrt(jnp.mean((one_step[800:] - series[801:1001]) ** 2))) < 0.01
    closed = forecast(esn, params, series[:800], horizon=84)
    # Mackey-Glass varies by ~0.23 (std); 84 closed-loop steps of a 200-unit ESN stay close.
    assert float(jnp.sqrt(jnp.mean((closed - series[800:884]) ** 2))) < 0.05


# ----------------------------------------------------------------------------- FORCE


def _np_feedback_step(params, w_fb, x, u, fed):
    """The leaky-integrator equation with a feedback term, in float64 NumPy."""
    w, w_in = np.asarray(params.w, np.float64), np.asarray(params.w_in, np.float64)
    b, a = np.asarray(params.b, np.float64), np.asarray(params.leak_rate, np.float64)
    rho, s_in = float(params.spectral_radius), np.asarray(params.input_scaling, np.float64)
    pre = rho * x @ w + (u * s_in) @ w_in + float(params.bias_scaling) * b + fed @ w_fb
    return (1 - a) * x + a * np.tanh(pre)


def _force_reference(cell, params, w_fb, targets, xs, alpha, forgetting, teacher_forcing):
    """FORCE in NumPy, one step at a time, with Sussillo & Abbott's RLS written out (not
    seqjax's rls_step)."""
    w_fb, targets = np.asarray(w_fb, np.float64), np.asarray(targets, np.float64)
    hidden, outputs = cell.hidden_size, targets.shape[1]
    x, fed = np.zeros(hidden), np.zeros(outputs)
    wb = np.zeros((hidden + 1, outputs))  # [w; b]: the bias as the weight of a constant 1
    p = np.eye(hidden + 1) / alpha
    ys = []
    for t, target in enumerate(targets):
        u = np.zeros(cell.input_size) if xs is None else np.asarray(xs[t], np.float64)
        x = _np_feedback_step(params, w_fb, x, u, fed)
        r = np.append(x, 1.0)
        error = r @ wb - target  # before the update
        pr = p @ r
        gain = pr / (forgetting + r @ pr)
        p = (p - np.outer(gain, pr)) / forgetting
        wb = wb - np.outer(gain, error)
        y = r @ wb
        ys.append(y)
        fed = target if teacher_forcing else y
    return wb, x, fed, np.stack(ys)


@pytest.mark.parametrize("teacher_forcing", [False, True], ids=["own_output", "teacher"])
@pytest.mark.parametrize("with_input", [False, True], ids=["no_input", "input"])
def test_force_train_equals_step_by_step_reference(key, teacher_forcing, with_input):
    cell = EchoStateCell(
        2,
        12,
        spectral_radius=1.3,
        leak_rate=0.6,
        bias_scaling=0.3,
        connectivity=0.5,
        input_connectivity=0.5,
    )
    params = cell.init(key, jnp.float64)
    w_fb = feedback_weights(jax.random.key(1), 2, 12, scaling=0.7, dtype=jnp.float64)
    steps = 40
    t = jnp.arange(steps, dtype=jnp.float64)
    targets = jnp.stack([jnp.sin(t / 3), jnp.cos(t / 5)], axis=-1)
    xs = jax.random.normal(jax.random.key(2), (steps, 2), jnp.float64) if with_input else None
    kwargs = dict(alpha=0.5, forgetting=0.98, teacher_forcing=teacher_forcing)
    state, carry, ys = force_train(cell, params, w_fb, targets, xs, **kwargs)
    wb, x, fed, want = _force_reference(cell, params, w_fb, targets, xs, **kwargs)
    # float64 arithmetic in both; observed differences ~1e-13
    np.testing.assert_allclose(ys, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(state.readout.w, wb[:-1], rtol=0, atol=1e-8)
    np.testing.assert_allclose(state.readout.b, wb[-1], rtol=0, atol=1e-8)
    np.testing.assert_allclose(carry.x, x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(carry.y, fed, rtol=0, atol=1e-9)
    # Two calls chained through (state, carry) are one call.
    first, rest = (None, None) if xs is None else (xs[:25], xs[25:])
    s1, c1, y1 = force_train(cell, params, w_fb, targets[:25], first, **kwargs)
    _, _, y2 = force_train(cell, params, w_fb, targets[25:], rest, c1, s1, **kwargs)
    np.testing.assert_allclose(jnp.concatenate([y1, y2]), ys, rtol=0, atol=1e-12)
    # force_run: the same step without learning, from the trained readout and the carry.
    run_xs = None if xs is None else xs[:10]
    _, run = force_run(cell, params, w_fb, state.readout, carry, 10, xs=run_xs)
    x, fed, expected = np.asarray(carry.x), np.asarray(carry.y), []
    for k in range(10):
        u = np.zeros(2) if xs is None else np.asarray(xs[k])
        x = _np_feedback_step(params, np.asarray(w_fb), x, u, fed)
        fed = x @ wb[:-1] + wb[-1]
        expected.append(fed)
    np.testing.assert_allclose(run, np.stack(expected), rtol=0, atol=1e-9)


def test_force_learns_a_periodic_pattern_that_runs_on_closed_loop():
    """Sussillo & Abbott's task: a chaotic reservoir (rho 1.8) learns by FORCE to produce a
    sum of sines from its own feedback, then keeps producing it with learning switched off.
    Over 48 seeds (reservoir, feedback; float32) the 300-step closed-loop NRMSE had median
    2.6e-3 and maximum 1.8e-2."""
    cell = EchoStateCell(1, 200, spectral_radius=1.8, leak_rate=0.5, bias_scaling=0.2)
    params = cell.init(jax.random.key(0))
    w_fb = feedback_weights(jax.random.key(1), 1, 200)
    t = jnp.arange(2300, dtype=jnp.float32)
    target = (jnp.sin(2 * jnp.pi * t / 50) + 0.5 * jnp.sin(2 * jnp.pi * t / 25))[:, None]
    state, carry, outputs = force_train(cell, params, w_fb, target[:2000])
    assert float(nrmse(outputs[-500:], target[1500:2000])) < 1e-2  # online, after the update
    _, generated = force_run(cell, params, w_fb, state.readout, carry, 300)
    assert float(nrmse(generated, target[2000:])) < 0.05
    # Without the trained readout the same reservoir produces nothing like the target.
    zero = rls_init(200, 1).readout
    _, untrained = force_run(cell, params, w_fb, zero, carry, 300)
    assert float(nrmse(untrained, target[2000:])) > 0.5
    # Many series at once: vmap over targets (one readout per series).
    batched = jax.vmap(lambda d: force_train(cell, params, w_fb, d)[2])(
        jnp.stack([target[:200], -target[:200]])
    )
    np.testing.assert_allclose(batched[0], outputs[:200], rtol=1e-4, atol=1e-5)


def test_force_errors_are_named(key):
    cell = EchoStateCell(1, 10)
    params = cell.init(key)
    targets = jnp.zeros((5, 2), jnp.float32)
    w_fb = feedback_weights(key, 2, 10)
    with pytest.raises(ValueError, match=r"w_fb must have shape \[O, H\] = \[2, 10\]"):
        force_train(cell, params, w_fb[:1], targets)
    with pytest.raises(ValueError, match="targets must be \\[T, O\\]"):
        force_train(cell, params, w_fb, targets[None])
    with pytest.raises(ValueError, match="xs must have shape"):
        force_train(cell, params, w_fb, targets, jnp.zeros((4, 1), jnp.float32))
    with pytest.raises(ValueError, match="readout.w must have shape"):
        force_run(cell, params, w_fb, rls_init(9, 2).readout, None, 3)
    with pytest.raises(ValueError, match="feedback carry must be"):
        bad = FeedbackCarry(jnp.zeros((2, 10), jnp.float32), jnp.zeros((2,), jnp.float32))
        force_train(cell, params, w_fb, targets, carry=bad)
    with pytest.raises(ValueError, match="connectivity must lie in"):
        feedback_weights(key, 1, 10, connectivity=0.0)


# ----------------------------------------------------------------------------- training


def test_readout_trains_by_gradient_with_seqjax_train():
    """bptt_step on an ESN loss: the readout learns, the fixed reservoir does not move."""
    series = jnp.asarray(mackey_glass(400, discard=300), jnp.float32)[:, None]
    xs, ys = series[:-1].reshape(3, 133, 1).swapaxes(0, 1), series[1:].reshape(3, 133, 1)
    ys = ys.swapaxes(0, 1)
    esn = EchoStateNetwork(
        EchoStateCell(1, 50, spectral_radius=0.9, leak_rate=0.5, trainable=("leak_rate",)), 1
    )
    params = esn.init(jax.random.key(0))

    def loss_fn(p, batch):
        xs, ys = batch
        return jnp.mean((esn(p, xs)[1][20:] - ys[20:]) ** 2)

    optimizer = optax.adam(1e-2)
    step = jax.jit(bptt_step(loss_fn, optimizer))
    new, losses = params, []
    # optax's Adam mixes its int32 step count with Python floats: standard promotion there.
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
        for _ in range(60):
            new, opt_state, metrics = step(new, opt_state, (xs, ys))
            losses.append(float(metrics.loss))
    assert losses[-1] < 0.2 * losses[0]
    for name in ("w", "w_in", "b", "spectral_radius", "input_scaling"):
        np.testing.assert_array_equal(getattr(new.reservoir, name), getattr(params.reservoir, name))
    assert not np.allclose(new.reservoir.leak_rate, params.reservoir.leak_rate)


# ----------------------------------------------------------------------------- example


def test_esn_forecast_example_quick(tmp_path):
    cmd = [sys.executable, "examples/esn_forecast.py", "--quick", "--force", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "one-step NRMSE" in proc.stdout and "closed-loop NRMSE" in proc.stdout
    assert "FORCE closed-loop NRMSE" in proc.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "esn_forecast.png").stat().st_size > 1000

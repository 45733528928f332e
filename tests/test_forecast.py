"""Forecasting: windows, the least-squares AR fit, closed loop against a Python loop, masks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import GRUCell, LSTMCell
from seqjax.forecast import (
    ARModel,
    LatentAR,
    ar_windows,
    closed_loop,
    fit_linear_ar,
    forecast,
    last_value_forecast,
    one_step_loss,
    origins,
)
from seqjax.losses import mase, nrmse, rmse

ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    "mlp-ar": ARModel(order=3, features=2, hidden_sizes=(5,)),
    "lstm": LatentAR(LSTMCell(2, 4)),
    "gru-residual": LatentAR(GRUCell(2, 4), residual=True),
}


def test_ar_windows_equal_a_hand_built_example():
    series = jnp.asarray([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0], [4.0, 14.0]])
    windows, targets = ar_windows(series, 2)
    want_windows = [
        [[0.0, 10.0], [1.0, 11.0]],
        [[1.0, 11.0], [2.0, 12.0]],
        [[2.0, 12.0], [3.0, 13.0]],
    ]
    assert windows.tolist() == want_windows
    assert targets.tolist() == [[2.0, 12.0], [3.0, 13.0], [4.0, 14.0]]
    # A batch axis: windows [N, B, order, F], each series cut on its own.
    batch = jnp.stack([series, -series], axis=1)  # [T, B=2, F]
    windows, targets = ar_windows(batch, 2)
    assert windows.shape == (3, 2, 2, 2) and targets.shape == (3, 2, 2)
    assert windows[:, 1].tolist() == (-jnp.asarray(want_windows)).tolist()


@pytest.mark.parametrize("order", [0, 5, 6, -1])
def test_ar_windows_reject_a_window_not_shorter_than_the_series(order):
    with pytest.raises(ValueError, match="order|window"):
        ar_windows(jnp.zeros((5, 1), jnp.float32), order)


def test_ar_windows_reject_bad_series():
    with pytest.raises(ValueError, match=r"\[T, \*B, F\]"):
        ar_windows(jnp.zeros((5,), jnp.float32), 2)
    with pytest.raises(TypeError, match="floating"):
        ar_windows(jnp.zeros((5, 1), jnp.int32), 2)


def test_linear_ar_recovers_the_coefficients_of_an_ar2_process():
    rng = np.random.default_rng(0)
    a1, a2, c = 0.75, -0.5, 0.3
    x = np.zeros(20000)
    noise = rng.standard_normal(len(x))
    for t in range(2, len(x)):
        x[t] = c + a1 * x[t - 1] + a2 * x[t - 2] + noise[t]
    model, params = fit_linear_ar(jnp.asarray(x[100:, None], jnp.float32), 2)
    w, b = np.asarray(params[0].w[:, 0]), float(params[0].b[0])
    # Least squares from 19,900 noisy samples: standard error about 0.006 per coefficient.
    np.testing.assert_allclose(w, [a2, a1], atol=0.03)
    np.testing.assert_allclose(b, c, atol=0.05)
    assert model == ARModel(2, 1)
    # Ridge shrinks the weights towards zero.
    _, shrunk = fit_linear_ar(jnp.asarray(x[100:, None], jnp.float32), 2, ridge=1e6)
    assert float(jnp.abs(shrunk[0].w).sum()) < 0.5 * float(np.abs(w).sum())
    with pytest.raises(ValueError, match="ridge"):
        fit_linear_ar(jnp.asarray(x[:, None], jnp.float32), 2, ridge=-1.0)


def _reference_forecast(model, params, context, horizon):
    """A Python loop: read the context one value at a time, then feed predictions back."""
    step = jax.jit(model.step)
    carry = model.init_carry(context.shape[1:-1], context.dtype)
    for t in range(context.shape[0]):
        carry, y = step(params, carry, context[t])
    outputs = []
    for _ in range(horizon):
        outputs.append(y)
        carry, y = step(params, carry, y)
    return jnp.stack(outputs)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_closed_loop_forecast_equals_a_step_by_step_loop(name, key):
    model = MODELS[name]
    params = model.init(key)
    context = jax.random.normal(jax.random.key(1), (7, 3, 2), jnp.float32)  # [C, B, F]
    got = jax.jit(forecast, static_argnums=(0, 3))(model, params, context, 5)
    want = _reference_forecast(model, params, context, 5)
    assert got.shape == (5, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Teacher forcing: the vectorised call equals the step loop too.
    carry, ys = model(params, context)
    c, step = model.init_carry((3,), jnp.float32), jax.jit(model.step)
    for t in range(7):
        c, y = step(params, c, context[t])
        np.testing.assert_allclose(ys[t], y, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), carry, c)


def test_forecast_continues_from_a_given_carry(key):
    model = MODELS["mlp-ar"]
    params = model.init(key)
    series = jax.random.normal(key, (9, 2), jnp.float32)
    carry, _ = model(params, series[:4])
    whole = forecast(model, params, series, 3)
    # The window model's carry holds the history, so a 1-step context suffices after it.
    split = forecast(model, params, series[4:], 3, carry=carry)
    np.testing.assert_allclose(split, whole, rtol=1e-6)


def test_closed_loop_feeds_predictions_back():
    def step(params, carry, x):
        return carry + 1, params * x + carry

    carry, ys = closed_loop(step, 2.0, 0.0, jnp.ones((1,), jnp.float32), 3)
    # x0 = 1; y1 = 2 * 1 + 0 = 2; y2 = 2 * 2 + 1 = 5; y3 = 2 * 5 + 2 = 12.
    assert ys[:, 0].tolist() == [2.0, 5.0, 12.0] and carry == 3.0


@pytest.mark.parametrize("horizon", [0, -2, 1.5])
def test_forecast_rejects_a_non_positive_horizon(horizon, key):
    model = MODELS["lstm"]
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        forecast(model, model.init(key), jnp.zeros((4, 2), jnp.float32), horizon)
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        last_value_forecast(jnp.zeros((4, 2), jnp.float32), horizon)


def test_forecast_rejects_a_context_shorter_than_the_window(key):
    model = MODELS["mlp-ar"]
    with pytest.raises(ValueError, match="at least 3 steps"):
        forecast(model, model.init(key), jnp.zeros((2, 2), jnp.float32), 4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 2\]"):
        model.predict(model.init(key), jnp.zeros((4, 2), jnp.float32))


@pytest.mark.parametrize("name", ["mlp-ar", "lstm"])
def test_a_context_in_another_dtype_forecasts_in_the_params_dtype(name, key):
    # The closed loop feeds back predictions in the params' dtype; a bfloat16 context (and
    # the window or state it leaves) used to clash with them inside lax.scan.
    model = MODELS[name]
    params = model.init(key)
    context = jnp.sin(jnp.arange(12.0, dtype=jnp.float32))[:, None] * jnp.ones((1, 2), jnp.float32)
    low = context.astype(jnp.bfloat16)
    with jax.numpy_dtype_promotion("standard"):  # the model reads bfloat16 with float32 params
        got = forecast(model, params, low, 4)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, forecast(model, params, low.astype(jnp.float32), 4))


def test_forecast_arguments_are_named(key):
    model = MODELS["mlp-ar"]
    params = model.init(key)
    with pytest.raises(ValueError, match=r"ARModel: xs must have F = 2 features.*\(10, 3\)"):
        model(params, jnp.ones((10, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"at least 1 steps \(the last value\)"):
        forecast(model, params, jnp.zeros((0, 2), jnp.float32), 2, carry=model.init_carry())
    with pytest.raises(ValueError, match="step_fn must predict a value shaped like its input"):
        closed_loop(lambda p, c, x: (c, x[:1]), None, (), jnp.ones((2,), jnp.float32), 3)
    xs = jax.random.normal(key, (8, 2), jnp.float32)
    assert one_step_loss(model, params, xs, skip=np.int64(2)).shape == ()  # NumPy ints are ints


def test_latent_ar_lengths_mask_outputs_and_carry(key):
    model = MODELS["lstm"]
    params = model.init(key)
    xs = jax.random.normal(key, (6, 2, 2), jnp.float32)
    lengths = jnp.asarray([6, 3], jnp.int32)
    carry, ys = model(params, xs, lengths=lengths)
    assert bool((ys[3:, 1] == 0).all())
    short_carry, short_ys = model(params, xs[:3, 1])
    np.testing.assert_allclose(ys[:3, 1], short_ys, rtol=1e-6)
    np.testing.assert_allclose(carry.h[1], short_carry.h, rtol=1e-6)


def test_one_step_loss_counts_only_valid_steps_after_the_skip(key):
    model = MODELS["gru-residual"]
    params = model.init(key)
    xs = jax.random.normal(key, (8, 3, 2), jnp.float32)
    lengths = jnp.asarray([8, 5, 2], jnp.int32)
    got = one_step_loss(model, params, xs, lengths=lengths, skip=1)
    # By hand: series b predicts xs[t + 1] for 1 <= t and t + 1 < lengths[b].
    _, ys = model(params, xs[:-1])
    errors, count = 0.0, 0
    for b, length in enumerate([8, 5, 2]):
        for t in range(1, length - 1):
            errors += float(jnp.sum((ys[t, b] - xs[t + 1, b]) ** 2))
            count += 1
    np.testing.assert_allclose(float(got), errors / count, rtol=1e-5)
    # Padding past a length does not change the loss.
    padded = xs.at[5:, 1].set(100.0).at[2:, 2].set(-100.0)
    np.testing.assert_allclose(
        float(one_step_loss(model, params, padded, lengths=lengths, skip=1)), float(got), rtol=1e-6
    )
    with pytest.raises(ValueError, match="skip"):
        one_step_loss(model, params, xs, skip=7)
    with pytest.raises(ValueError, match="lengths must lie in"):
        one_step_loss(model, params, xs, lengths=jnp.asarray([9, 1, 1], jnp.int32))


def test_metrics_by_hand_and_with_masks():
    predictions = jnp.asarray([[1.0], [2.0], [5.0], [0.0]], jnp.float32)
    targets = jnp.asarray([[0.0], [2.0], [3.0], [4.0]], jnp.float32)
    np.testing.assert_allclose(float(rmse(predictions, targets)), np.sqrt(21.0 / 4), rtol=1e-6)
    mask = jnp.asarray([True, True, True, False])  # the last (worst) step is padding
    np.testing.assert_allclose(float(rmse(predictions, targets, mask)), np.sqrt(5 / 3), rtol=1e-6)
    std = np.std([0.0, 2.0, 3.0])
    np.testing.assert_allclose(
        float(nrmse(predictions, targets, mask)), np.sqrt(5 / 3) / std, rtol=1e-5
    )
    np.testing.assert_allclose(
        float(nrmse(predictions, targets, scale=jnp.float32(2.0))), np.sqrt(21 / 4) / 2, rtol=1e-6
    )
    history = jnp.asarray([[0.0], [2.0], [1.0]], jnp.float32)  # naive one-step MAE 1.5
    # Masked mean absolute error (1 + 0 + 2) / 3 = 1, scaled by 1.5.
    np.testing.assert_allclose(float(mase(predictions, targets, history, mask)), 2 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="shape of predictions"):
        rmse(predictions, targets[:3])
    with pytest.raises(TypeError, match="booleans"):
        rmse(predictions, targets, jnp.ones(4, jnp.int32))


def test_origins_cut_contexts_and_futures():
    series = jnp.arange(12.0, dtype=jnp.float32)[:, None]
    contexts, futures = origins(series, [4, 9], 4, 3)
    assert contexts[:, :, 0].T.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]
    assert futures[:, :, 0].T.tolist() == [[4, 5, 6], [9, 10, 11]]
    with pytest.raises(ValueError, match=r"\[4, 9\]"):
        origins(series, [3], 4, 3)
    with pytest.raises(ValueError, match=r"\[4, 9\]"):
        origins(series, [10], 4, 3)


def test_sunspots_load_from_statsmodels():
    pytest.importorskip("statsmodels")
    from seqjax.apps.data import sunspots

    years, values = sunspots()
    assert years.shape == values.shape == (309,)
    assert years[0] == 1700 and years[-1] == 2008
    assert values.min() >= 0 and 150 < values.max() < 250


def test_forecast_example_quick(tmp_path):
    # Mackey-Glass only: the sunspots run is the same code on other data (its loader is
    # tested above), and each series costs about ten seconds of compilation.
    cmd = [sys.executable, "examples/forecast.py", "--quick", "--series", "mackey-glass"]
    cmd += ["--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("last value", "linear AR(18)", "MLP AR(18)", "LSTM latent-AR", "GRU latent-AR"):
        assert name in proc.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert {p.name for p in tmp_path.glob("*.png")} == {"forecast_mackey_glass.png"}

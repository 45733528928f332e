"""What a new user's first mistakes and first quick runs are told (issue 23, items 5, 6, 9).

Batch-major data passed as time-major (PyTorch's ``batch_first`` habit) gets a
``time_axis=1`` suggestion when the shapes make it likely, and only then; the quick examples
say when they cannot show what they are about; a diverged forecast does not flatten the
others' plot; the NNX example's throughput leaves out its compile.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lstm():
    cell = sj.LSTMCell(8, 16)
    return cell, cell.init(jax.random.key(0))


# --------------------------------------------------------------------------- 5. batch-major


def test_batch_major_lengths_suggest_time_axis_1(lstm):
    cell, params = lstm
    xs = jnp.zeros((32, 40, 8), jnp.float32)  # [B, T, I], passed as time-major
    hint = "did you mean time_axis=1? Read with time_axis=1, xs of shape (32, 40, 8) has T = 40"
    with pytest.raises(ValueError, match=re.escape("got values from 40 to 40; " + hint)):
        sj.unroll(cell, params, xs, lengths=jnp.full((32,), 40))
    # Lengths that fit T = 32 still do not fit the batch shape (40,): the shape check hints.
    with pytest.raises(ValueError, match=re.escape("got shape (32,); " + hint)):
        sj.unroll(cell, params, xs, lengths=jnp.full((32,), 20))
    with pytest.raises(ValueError, match=re.escape(hint)):  # traced lengths: shapes only
        jax.jit(lambda n: sj.unroll(cell, params, xs, lengths=n))(jnp.full((32,), 20))
    # With time_axis=1 the same call runs.
    sj.unroll(cell, params, xs, lengths=jnp.full((32,), 40), time_axis=1)


@pytest.mark.parametrize(
    "shape, lengths, time_axis",
    [
        ((32, 40, 8), np.full(32, 41), 0),  # too long for either axis: a real error
        ((32, 40, 8), np.full(7, 3), 0),  # fits no axis
        ((40, 32, 8), np.full(40, 33), 1),  # time_axis=1 given; axis 0 does not fit either
    ],
)
def test_no_time_axis_hint_when_the_lengths_fit_no_other_axis(lstm, shape, lengths, time_axis):
    cell, params = lstm
    with pytest.raises(ValueError) as info:
        sj.unroll(cell, params, jnp.zeros(shape), lengths=lengths, time_axis=time_axis)
    assert "did you mean" not in str(info.value)


def test_features_on_another_axis_are_named():
    cell = sj.LSTMCell(8, 16)
    params = cell.init(jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("jnp.moveaxis(xs, 1, -1)")):
        sj.unroll(cell, params, jnp.zeros((40, 8, 5)))
    one = sj.ElmanCell(1, 4)
    with pytest.raises(ValueError, match=re.escape("xs[..., None]")):
        sj.unroll(one, one.init(jax.random.key(0)), jnp.zeros((40, 3)))


# --------------------------------------------------------------------------- 9. examples


def _example(name: str):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradient_flow_says_when_the_run_is_too_short():
    gradient_flow = _example("gradient_flow")

    class Args:
        length, steps = 20, 60

    quick = {"Elman tanh": 0.16, "Elman sigmoid": 0.161, "Elman ReLU": 0.067, "LSTM": 0.151}
    note = gradient_flow.too_short_note({**quick, "GRU": 0.149}, Args)  # --quick's numbers
    assert note.startswith("note: this run is too short to show the effect")
    full = {"Elman tanh": 0.156, "Elman sigmoid": 0.157, "Elman ReLU": 0.018, "LSTM": 0.001}
    assert gradient_flow.too_short_note({**full, "GRU": 0.0005}, Args) is None


def test_a_diverged_forecast_is_cut_off_and_named_in_the_legend(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from seqjax.apps import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, **_: figures.append(fig) or str(path))
    truth = np.sin(np.arange(100) / 5)
    forecasts = {
        "LSTM": truth + 0.1,
        "GRU": -np.arange(100.0),  # diverges to -99
        "NaN model": np.full(100, np.nan),
    }
    errors = {k: np.abs(v - truth) for k, v in forecasts.items()}
    plots.plot_forecasts(truth, forecasts, tmp_path / "f.png", context=truth, errors=errors)
    forecast_axes, error_axes = figures[0].axes
    low, high = forecast_axes.get_ylim()
    assert -1.5 < low < -1.0 and 1.0 < high < 1.5  # the truth's range, not -99
    labels = [t.get_text() for t in forecast_axes.get_legend().get_texts()]
    assert "LSTM" in labels
    assert "GRU (diverged: off the scale, reaches -99)" in labels
    assert "NaN model (diverged: NaN/Inf, off the scale)" in labels
    assert error_axes.get_ylim()[1] < 0.5  # scaled to the LSTM's error of 0.1
    labels = [t.get_text() for t in error_axes.get_legend().get_texts()]
    assert "GRU (off the scale, reaches 99.8)" in labels


def test_nnx_example_throughput_leaves_out_the_compiling_step(monkeypatch, capsys):
    nnx_model = _example("nnx_model")
    calls = []

    def fake_step(model, optimizer, ids):  # the first call "compiles" for a second
        calls.append(ids.shape)
        if len(calls) == 1:
            time.sleep(1.0)
        return jnp.float32(1.0)

    monkeypatch.setattr(nnx_model, "train_step", fake_step)
    monkeypatch.setattr(nnx_model, "held_out_bpc", lambda *args: 1.0)
    assert nnx_model.main(["--quick", "--steps", "5"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(
        r"5 steps: the first ([\d.]+) s \(compiling included\), then 4 in ([\d.]+) s "
        r"\((\d+) chars/s\)",
        line,
    )
    assert found, line
    assert float(found[1]) >= 1.0 and float(found[2]) < 0.5, line

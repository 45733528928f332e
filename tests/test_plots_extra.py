"""Hidden-state and Jacobian pictures: the diagnostics behind them, the plots, the examples."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.diagnostics import (
    carry_trajectory,
    jacobian_summary,
    state_jacobians,
    unit_correlations,
)
from tests.registry import CELLS

ROOT = Path(__file__).resolve().parent.parent
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.parametrize("name", ["lstm", "stack_lstm_gru"])
def test_carry_trajectory_equals_the_carries_of_a_step_loop(name, key):
    cell = CELLS[name]
    params = cell.init(key)
    xs = jax.random.normal(jax.random.key(1), (5, 2, cell.input_size), jnp.float32)
    got = carry_trajectory(cell, params, xs)
    carry, apply = cell.init_carry((2,), jnp.float32), jax.jit(cell.apply)
    for t in range(5):
        carry, _ = apply(params, carry, xs[t])
        jax.tree.map(
            lambda a, b, t=t: np.testing.assert_allclose(a[t], b, rtol=1e-5, atol=1e-6),
            got,
            carry,
        )
    with pytest.raises(ValueError, match="features"):
        carry_trajectory(cell, params, jnp.zeros((5, cell.input_size + 1), jnp.float32))


def test_unit_correlations_equal_numpy_corrcoef():
    rng = np.random.default_rng(0)
    states = rng.standard_normal((50, 4)).astype(np.float32)
    features = np.stack([states[:, 2] + 0.1 * rng.standard_normal(50), np.ones(50)], axis=1)
    got = np.asarray(unit_correlations(jnp.asarray(states), jnp.asarray(features, jnp.float32)))
    for h in range(4):
        want = np.corrcoef(states[:, h], features[:, 0])[0, 1]
        np.testing.assert_allclose(got[h, 0], want, rtol=1e-4, atol=1e-5)
    assert got[2, 0] > 0.9
    np.testing.assert_array_equal(got[:, 1], 0.0)  # a constant feature correlates with nothing
    # Two constants whose means round: their residues correlated to 1.0000001.
    both = unit_correlations(
        jnp.full((7, 1), 0.1, jnp.float32), jnp.full((7, 1), 123.456, jnp.float32)
    )
    np.testing.assert_array_equal(both, 0.0)
    with pytest.raises(ValueError, match="same T"):
        unit_correlations(jnp.zeros((5, 2), jnp.float32), jnp.zeros((4, 1), jnp.float32))


def test_plot_hidden_states_selects_units_and_wraps(tmp_path):
    pytest.importorskip("matplotlib")
    from seqjax.apps.plots import plot_hidden_states

    states = 3.0 * np.random.default_rng(0).standard_normal((50, 20))  # unbounded, like c
    text = list("def f(x):\n    return 'a' + x  # note\n" + "y" * 13)
    path = plot_hidden_states(
        states,
        tmp_path / "states.png",
        labels=text,
        units=[7, 2, 19],
        unit_labels=["quote", "bracket", "column"],
        wrap=20,
    )
    assert Path(path).stat().st_size > 1000
    with pytest.raises(ValueError, match="one label per unit"):
        plot_hidden_states(states, tmp_path / "x.png", units=[1, 2], unit_labels=["a"])
    with pytest.raises(ValueError, match="one label per step"):
        plot_hidden_states(states, tmp_path / "x.png", labels=["a"])
    assert not (tmp_path / "x.png").exists()


def test_a_wrapped_panel_draws_each_step_in_its_column(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from seqjax.apps import plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, **_: saved.append(fig) or str(path))
    plots.plot_hidden_states(np.ones((10, 2)), tmp_path / "w.png", wrap=4)
    panels = [ax for ax in saved[0].axes if ax.images]
    # The last panel holds steps 8 and 9: its image spans their columns, not 4 of them.
    assert [list(ax.images[0].get_extent()[:2]) for ax in panels] == [
        [-0.5, 3.5],
        [3.5, 7.5],
        [7.5, 9.5],
    ]


def test_a_failed_plot_leaves_no_figure_open_and_no_file_changed(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from seqjax.apps import plots

    path = tmp_path / "flow.xyz"
    path.write_bytes(b"an older picture")
    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match="xyz"):  # matplotlib knows no format "xyz"
        plots.plot_gradient_flow({"a": [3.0, 2.0, 1.0]}, path)
    assert plt.get_fignums() == open_before
    assert path.read_bytes() == b"an older picture" and sorted(tmp_path.iterdir()) == [path]
    for bad, words in [
        (dict(units=0), "units must be a positive int"),
        (dict(units=[0, 9]), "units must index the H = 3 units"),
        (dict(wrap=-2), "wrap must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=words):
            plots.plot_hidden_states(np.ones((5, 3)), tmp_path / "s.png", **bad)
    with pytest.raises(ValueError, match="states must be .T, H. with T, H >= 1"):
        plots.plot_hidden_states(np.ones((0, 3)), tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"norms\['a'\] must be a non-empty \[T\]"):
        plots.plot_gradient_flow({"a": []}, tmp_path / "g.png")
    assert plots.plot_hidden_states(np.ones((5, 3)), tmp_path / "s.png", units=np.int64(2))
    assert plt.get_fignums() == open_before


def test_plot_forecasts_and_jacobian_spectrum_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from seqjax import ElmanCell
    from seqjax.apps.plots import plot_forecasts, plot_jacobian_spectrum

    truth = np.sin(np.arange(20) / 3)
    path = plot_forecasts(
        truth,
        {"model": truth + 0.1, "baseline": np.full(20, truth[0])},
        tmp_path / "forecast.png",
        context=np.sin(np.arange(-10, 0) / 3),
        start=100,
        errors={"model": np.linspace(0.1, 0.5, 20), "baseline": np.ones(20)},
    )
    assert Path(path).stat().st_size > 1000
    cell = ElmanCell(1, 3)
    xs = jax.random.normal(jax.random.key(0), (8, 1), jnp.float32)
    summary = jacobian_summary(state_jacobians(cell, cell.init(jax.random.key(1)), xs))
    path = plot_jacobian_spectrum({"Elman": summary}, tmp_path / "spectrum.png")
    assert Path(path).stat().st_size > 1000


def _run(script, *args):
    cmd = [sys.executable, f"examples/{script}", "--quick", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_jacobian_spectrum_example_quick(tmp_path):
    out = _run("jacobian_spectrum.py", "--out", tmp_path)
    for name in ("Elman tanh", "Elman sigmoid", "Elman ReLU", "LSTM", "GRU"):
        assert name in out
    if HAS_MATPLOTLIB:
        assert {p.name for p in tmp_path.glob("*.png")} == {"jacobian_spectrum_init.png"}


def test_char_lm_states_example_trains_saves_then_loads(tmp_path):
    ckpt = tmp_path / "ckpt"
    out = _run("char_lm_states.py", "--checkpoint-dir", ckpt, "--out", tmp_path)
    assert "training a LSTM char-LM" in out and "column" in out
    # The second run finds the checkpoint and loads it instead of training.
    out = _run("char_lm_states.py", "--checkpoint-dir", ckpt, "--out", tmp_path / "again")
    assert f"loaded {ckpt}" in out and "training" not in out
    if HAS_MATPLOTLIB:
        assert (tmp_path / "char_lm_states.png").stat().st_size > 1000
        assert (tmp_path / "again" / "char_lm_states.png").exists()


def test_source_features_scan_python_source():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from char_lm_states import source_features
    finally:
        sys.path.remove(str(ROOT / "examples"))
    text = 'x = f("a#b", 3)  # c(\ns = """(\n""" + \'q\\\'r\'\n'
    got = source_features(text)
    string = "".join("S" if s else "." for s in got[:, 0])
    comment = "".join("C" if c else "." for c in got[:, 1])
    bracket = "".join("B" if b else "." for b in got[:, 2])
    # text, newlines as ~: x = f("a#b", 3)  # c(~s = """(~""" + 'q\'r'~
    assert string == "......SSSSS...............SSSSSSSS...SSSSSS."
    assert comment == ".................CCCCC......................"
    assert bracket == ".....B.....BBB.............................."
    assert got[:, 3].tolist()[:6] == [0, 1, 2, 3, 4, 5] and got[22, 3] == 0  # after a newline


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
def test_drawing_a_file_leaves_the_callers_backend_and_figures_alone(tmp_path):
    """A notebook's inline backend must survive a seqjax plot: the plots draw on figures of
    their own, never through pyplot's state."""
    import matplotlib
    import matplotlib.pyplot as plt

    from seqjax.apps import plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend other than Agg, which the plots would switch to
    try:
        mine = plt.figure()
        truth = np.sin(np.linspace(0, 6, 40))
        path = plots.plot_forecasts(truth, {"model": truth + 0.1}, tmp_path / "f.png")
        assert Path(path).stat().st_size > 0
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [mine.number]
    finally:
        plt.close("all")
        matplotlib.use(before)

"""Every example runs in its --quick mode, as a user runs it (a subprocess)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.apps.data import adding_problem

ROOT = Path(__file__).resolve().parent.parent


def test_gradient_flow_example_quick(tmp_path):
    cmd = [sys.executable, "examples/gradient_flow.py", "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("Elman tanh", "Elman sigmoid", "Elman ReLU", "LSTM", "GRU"):
        assert name in proc.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert {p.name for p in tmp_path.glob("*.png")} == {
            "gradient_flow_init.png",
            "gradient_flow_trained.png",
        }


def test_adding_problem_targets_are_the_marked_sums():
    xs, targets = adding_problem(jax.random.key(3), 12, 50)
    values, marker = np.asarray(xs[..., 0]), np.asarray(xs[..., 1])
    assert (marker.sum(0) == 2).all()
    assert (marker[:6].sum(0) == 1).all() and (marker[6:].sum(0) == 1).all()
    np.testing.assert_allclose(targets, (values * marker).sum(0), rtol=1e-6)
    assert xs.dtype == jnp.float32
    with pytest.raises(ValueError, match="num_steps must be >= 2"):
        adding_problem(jax.random.key(0), 1, 3)


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from seqjax.apps.plots import plot_gradient_flow, plot_hidden_states

    path = plot_gradient_flow({"a": [1e-3, 1e-2, 1.0]}, tmp_path / "flow.png")
    assert Path(path).stat().st_size > 1000
    states = np.tanh(np.random.default_rng(0).standard_normal((12, 40)))
    path = plot_hidden_states(states, tmp_path / "states.png", labels=list("hello world\n"))
    assert Path(path).stat().st_size > 1000

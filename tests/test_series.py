"""The benchmark series of seqjax.apps.series: Mackey-Glass and Lorenz-63."""

from __future__ import annotations

import numpy as np
import pytest

from seqjax.apps.series import lorenz, mackey_glass


def _first_autocorrelation_minimum(x: np.ndarray, max_lag: int = 100) -> int:
    x = x - x.mean()
    ac = np.array([np.dot(x[: len(x) - k], x[k:]) for k in range(max_lag)])
    return int(np.argmin(ac))


def test_mackey_glass_is_deterministic_and_starts_at_x0():
    x = mackey_glass(300)
    assert x.shape == (300,) and x.dtype == np.float64
    np.testing.assert_array_equal(x, mackey_glass(300))
    assert x[0] == 1.2
    np.testing.assert_array_equal(mackey_glass(200, discard=100), x[100:])


def test_mackey_glass_equilibrium_is_a_fixed_point():
    # a x / (1 + x^n) = b x at x = 1 for a = 2b: a constant history there never moves.
    np.testing.assert_allclose(mackey_glass(100, x0=1.0), 1.0, rtol=0, atol=1e-15)


def test_mackey_glass_integration_has_converged():
    """RK4 at dt = 0.1 agrees with dt = 0.025 over the first 300 time units (before chaos
    amplifies rounding-level differences)."""
    coarse = mackey_glass(300)
    fine = mackey_glass(300, substeps=40)
    np.testing.assert_allclose(coarse, fine, atol=1e-3)
    assert not np.allclose(coarse, fine, atol=1e-12)  # the step size does matter


def test_mackey_glass_short_delay_is_not_chaotic():
    """Below tau ~ 4.5 the equilibrium is stable; at tau = 17 the series keeps oscillating."""
    assert np.ptp(mackey_glass(500, tau=2.0, discard=2000)) < 1e-3
    assert np.ptp(mackey_glass(500, discard=2000)) > 0.7


def test_mackey_glass_matches_reservoirpy_attractor():
    rpy = pytest.importorskip("reservoirpy.datasets")
    ours = mackey_glass(10_000)[500:]
    theirs = np.asarray(rpy.mackey_glass(10_000, tau=17)).ravel()[500:]
    assert theirs[0] != ours[0]  # different integrators: a related series, not the same one
    for stat in (np.mean, np.std, np.min, np.max):
        np.testing.assert_allclose(stat(ours), stat(theirs), rtol=0.02)
    assert abs(_first_autocorrelation_minimum(ours) - _first_autocorrelation_minimum(theirs)) <= 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_steps": 0}, "num_steps must be a positive int"),
        ({"num_steps": 5, "tau": 17.05}, "tau must be a whole number"),
        ({"num_steps": 5, "tau": 0.0}, "tau must be a finite number > 0"),
        ({"num_steps": 5, "tau": float("inf")}, "tau must be a finite number > 0"),
        ({"num_steps": 5, "discard": -1}, "discard must be an int >= 0"),
        ({"num_steps": 5, "substeps": 0}, "substeps must be a positive int"),
    ],
)
def test_mackey_glass_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mackey_glass(**kwargs)


def test_lorenz_names_a_bad_start():
    with pytest.raises(ValueError, match=r"x0 must hold 3 numbers \(x, y, z\); got 5.0"):
        lorenz(5, x0=5.0)


def test_lorenz_matches_a_tight_scipy_solution():
    integrate = pytest.importorskip("scipy.integrate")
    xyz = lorenz(200)
    assert xyz.shape == (200, 3)
    times = 0.03 * np.arange(200)

    def f(t, s):
        x, y, z = s
        return [10.0 * (y - x), x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z]

    sol = integrate.solve_ivp(
        f, (0.0, times[-1]), [1.0, 1.0, 1.0], t_eval=times, rtol=1e-11, atol=1e-11
    )
    # RK4 at dt = 0.01 over 6 time units; chaos grows its O(dt^4) error to ~1e-4 by then.
    np.testing.assert_allclose(xyz, sol.y.T, atol=1e-3)
    with pytest.raises(ValueError, match="x0 must hold 3 numbers"):
        lorenz(5, x0=(1.0, 2.0))

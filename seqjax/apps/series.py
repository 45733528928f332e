"""Chaotic benchmark series: Mackey-Glass (delay differential) and Lorenz-63.

Both generators are deterministic pure-NumPy float64 integrations (no key, no global seed):
the same arguments give the same series on every machine, whatever the JAX backend or its
float32/float64 setting. They return NumPy arrays; wrap them in ``jnp.asarray(...,
jnp.float32)`` to feed a model. A Python loop over integration steps is fine here: it runs
once per data set (about 0.3 s for 10,000 Mackey-Glass samples) and a delay equation is
sequential by nature.
"""

from __future__ import annotations

import math

import numpy as np

from seqjax import _checks

__all__ = [
    "lorenz",
    "mackey_glass",
]


def mackey_glass(
    num_steps: int,
    *,
    tau: float = 17.0,
    a: float = 0.2,
    b: float = 0.1,
    n: float = 10.0,
    x0: float = 1.2,
    sample_step: float = 1.0,
    substeps: int = 10,
    discard: int = 0,
) -> np.ndarray:
    """The Mackey-Glass series ``dx/dt = a x(t - tau) / (1 + x(t - tau)^n) - b x(t)``.

    Mackey & Glass, "Oscillation and chaos in physiological control systems", Science 197
    (1977). With ``tau = 17`` (the default) the attractor is chaotic (fractal dimension
    about 2.1), the classic reservoir-computing benchmark (Jaeger & Haas, Science 2004).

    Integration: classical fourth-order Runge-Kutta with fixed step ``dt = sample_step /
    substeps`` (default 0.1). The delay ``tau`` must be a whole number of steps ``dt``, so
    ``x(t - tau)`` at the step's start and end is a stored grid value; at the half step it
    is the mean of those two (linear interpolation, error O(dt^2) in the delayed term only).
    History: ``x(t) = x0`` for ``t`` in ``[-tau, 0]``.

    Sampling: ``x(k * sample_step)`` for ``k = discard, ..., discard + num_steps - 1``; the
    first sample (with ``discard = 0``) is ``x0`` at ``t = 0``.

    Conventions shared with ReservoirPy's ``reservoirpy.datasets.mackey_glass`` (0.3/0.4): the
    same parameter names and defaults (``tau=17, a=0.2, b=0.1, n=10, x0=1.2``), one sample per
    time unit by default (its ``h=1``), the series starting at ``x0``. The two do not agree
    value for value: ReservoirPy draws a random history around ``x0`` and steps ``h=1`` with
    its own four-stage update (not classical RK4: on the linear part one step multiplies by
    ``1 - bh + 5(bh)^2/6 - ...`` where the flow gives ``exp(-bh) = 1 - bh + (bh)^2/2 - ...``),
    so its series is a close relative on the same attractor (mean, spread, range and
    autocorrelation agree to about 1 % over 10,000 samples; tests/test_series.py checks
    it), not the same values. To
    give both libraries identical data, generate the series once here and pass the array
    to both (benchmarks/esn_vs_reservoirpy.py does).

    Args:
        num_steps: ``T``, number of samples returned.
        tau: delay, a multiple of ``dt``.
        a, b, n: the equation's constants.
        x0: the constant history and the value at ``t = 0``.
        sample_step: time between samples.
        substeps: RK4 steps per sample.
        discard: samples dropped from the start (to skip the transient from the constant
            history; a few hundred time units suffice for ``tau = 17``).

    Returns:
        ``[T]`` float64 NumPy array.

    Raises:
        ValueError: a size or step is not positive, or ``tau`` is not a multiple of ``dt``.

    Example:
        >>> x = mackey_glass(2000, discard=500)
        >>> x.shape, x.dtype
        ((2000,), dtype('float64'))
        >>> bool(0.2 < x.min() < x.max() < 1.5)
        True
    """
    where = "mackey_glass"
    _checks.positive_int("num_steps", num_steps, where)
    _checks.positive_int("substeps", substeps, where)
    _checks.positive_number("sample_step", sample_step, where)
    if not _checks.is_int(discard) or discard < 0:
        raise ValueError(f"{where}: discard must be an int >= 0; got {discard!r}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"{where}: tau must be a finite number > 0; got {tau!r}")
    dt = sample_step / substeps
    delay = round(tau / dt)
    if delay < 1 or not math.isclose(delay * dt, tau, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(
            f"{where}: tau must be a whole number of integration steps dt = sample_step / "
            f"substeps = {dt!r}; got tau={tau!r} ({tau / dt:.4g} steps)"
        )
    a, b, n = float(a), float(b), float(n)

    def drive(x_tau: float) -> float:
        return a * x_tau / (1.0 + x_tau**n)

    # grid[j] = x((j - delay) * dt): the constant history x(-tau) .. x(0), then the solution.
    total = (discard + num_steps - 1) * substeps
    grid = np.empty(delay + 1 + total, np.float64)
    grid[: delay + 1] = float(x0)
    x = float(x0)
    for i in range(total):  # step from t = i dt to (i + 1) dt; x(t - tau) is grid[i]
        lag0, lag1 = float(grid[i]), float(grid[i + 1])
        d0, d_half, d1 = drive(lag0), drive(0.5 * (lag0 + lag1)), drive(lag1)
        k1 = d0 - b * x
        k2 = d_half - b * (x + 0.5 * dt * k1)
        k3 = d_half - b * (x + 0.5 * dt * k2)
        k4 = d1 - b * (x + dt * k3)
        x = x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        grid[delay + 1 + i] = x
    return grid[delay + discard * substeps :: substeps][:num_steps].copy()


def lorenz(
    num_steps: int,
    *,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0),
    sample_step: float = 0.03,
    substeps: int = 3,
    discard: int = 0,
) -> np.ndarray:
    """The Lorenz-63 system ``x' = sigma (y - x), y' = x (rho - z) - y, z' = x y - beta z``.

    Lorenz, "Deterministic nonperiodic flow", J. Atmos. Sci. 20 (1963). Integrated with
    classical fourth-order Runge-Kutta, fixed step ``sample_step / substeps`` (default
    0.01), from ``x0`` at ``t = 0``. Defaults follow ReservoirPy's ``lorenz`` (the classic
    parameters, ``x0 = (1, 1, 1)``, a sample every 0.03 time units); ReservoirPy integrates
    with SciPy's adaptive ``solve_ivp``, so the two agree closely at first and then part
    ways, as any two integrations of a chaotic flow do.

    Args:
        num_steps: ``T``, samples returned: the state at ``t = k * sample_step`` for
            ``k = discard, ..., discard + T - 1``.
        sigma, rho, beta: the system's constants.
        x0: the state at ``t = 0``.
        sample_step: time between samples.
        substeps: RK4 steps per sample.
        discard: samples dropped from the start.

    Returns:
        ``[T, 3]`` float64 NumPy array, columns ``x, y, z``.

    Example:
        >>> xyz = lorenz(1000)
        >>> xyz.shape
        (1000, 3)
        >>> xyz[0].tolist()
        [1.0, 1.0, 1.0]
    """
    where = "lorenz"
    _checks.positive_int("num_steps", num_steps, where)
    _checks.positive_int("substeps", substeps, where)
    _checks.positive_number("sample_step", sample_step, where)
    if not _checks.is_int(discard) or discard < 0:
        raise ValueError(f"{where}: discard must be an int >= 0; got {discard!r}")
    if np.shape(x0) != (3,):
        raise ValueError(f"{where}: x0 must hold 3 numbers (x, y, z); got {x0!r}")
    dt = sample_step / substeps
    s, r, bt = float(sigma), float(rho), float(beta)

    def f(x, y, z):
        return s * (y - x), x * (r - z) - y, x * y - bt * z

    out = np.empty((discard + num_steps, 3), np.float64)
    x, y, z = (float(v) for v in x0)
    out[0] = x, y, z
    for k in range(1, discard + num_steps):
        for _ in range(substeps):
            a1 = f(x, y, z)
            a2 = f(x + 0.5 * dt * a1[0], y + 0.5 * dt * a1[1], z + 0.5 * dt * a1[2])
            a3 = f(x + 0.5 * dt * a2[0], y + 0.5 * dt * a2[1], z + 0.5 * dt * a2[2])
            a4 = f(x + dt * a3[0], y + dt * a3[1], z + dt * a3[2])
            x += dt / 6.0 * (a1[0] + 2.0 * a2[0] + 2.0 * a3[0] + a4[0])
            y += dt / 6.0 * (a1[1] + 2.0 * a2[1] + 2.0 * a3[1] + a4[1])
            z += dt / 6.0 * (a1[2] + 2.0 * a2[2] + 2.0 * a3[2] + a4[2])
        out[k] = x, y, z
    return out[discard:]

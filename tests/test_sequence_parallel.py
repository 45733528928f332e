"""Sequence parallelism (time split over devices) equals the sequential scan, in float64.

Each device count runs in a subprocess that asks for that many host CPU devices before JAX
initialises. There, for every linear-in-state cell of the registry (and minLSTM in log space)
through the chunked associative scan, and for LSTM and GRU through DEER and quasi-DEER (with
the fallback forced, and the sequential adjoint), ``unroll(..., method=SequenceParallel(...))``
and ``unroll(...)`` (``lax.scan``) give the same outputs, final carry and gradients with
respect to the parameters, the inputs and the initial carry, with per-sequence lengths,
resets, a random initial carry, and both directions; a 2 x 2 mesh splits batch and time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from seqjax import sharding
from tests.registry import CELLS

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import seqjax as sj
    from seqjax import sharding
    from tests.conftest import random_like
    from tests.registry import CELLS

    CASES = json.loads(sys.argv[2])
    CELLS = {**CELLS, "min_lstm_log": sj.MinLSTMCell(3, 4)}
    SOLVERS = {
        "default": None,  # Scan() for linear cells: each chunk by one lax.scan, then corrected
        "associative": sj.Associative(),
        "deer": sj.DEER(),
        "quasi_deer": sj.QuasiDEER(),
        "fallback": sj.DEER(max_iters=1),  # never converges: the sequential rounds run
        "sequential_adjoint": sj.QuasiDEER(derivative="sequential"),
    }
    T = 16

    def close(got, want):
        worst = 0.0
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            g, w = np.asarray(g), np.asarray(w)
            scale = np.max(np.abs(w)) if w.size else 0.0
            worst = max(worst, float(np.max(np.abs(g - w) / (np.abs(w) + scale + 1e-300))))
        return worst

    out = {}
    for case in CASES:
        name, solver, reverse, grid = case["cell"], case["solver"], case["reverse"], case["grid"]
        cell = CELLS[name]
        devices = len(jax.devices())
        if grid:
            mesh = sharding.grid_mesh(batch=2, time=devices // 2)
            method = sj.SequenceParallel(mesh, solver=SOLVERS[solver], batch_axis="batch")
            lengths = jnp.array([T, 11, 0, 5], jnp.int32)
        else:
            mesh = sharding.grid_mesh(time=devices)
            method = sj.SequenceParallel(mesh, solver=SOLVERS[solver])
            lengths = jnp.array([T, 11, 0], jnp.int32)
        batch = lengths.shape[0]
        params = cell.init(jax.random.key(0), jnp.float64)
        xs = jax.random.normal(jax.random.key(1), (T, batch, cell.input_size), jnp.float64)
        carry = random_like(cell.init_carry((batch,), jnp.float64), jax.random.key(2), 0.5)
        # Resets inside chunks, at a chunk's first step, and on a padded step (ignored).
        resets = jnp.zeros((T, batch), bool).at[3, 0].set(True).at[T // 2, 0].set(True)
        resets = resets.at[T // 4, 1].set(True).at[13, 1].set(True)
        weights = jax.random.normal(jax.random.key(3), (T, batch, cell.hidden_size), jnp.float64)

        def run(m):
            def loss(p, x, c):
                final, ys, info = sj.unroll_with_info(
                    cell, p, x, c, lengths=lengths, resets=resets, reverse=reverse, method=m
                )
                tail = sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(final))
                return jnp.sum(weights * jnp.tanh(ys)) + tail, (final, ys, info)

            grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
            (value, (final, ys, info)), grads = jax.jit(grad)(params, xs, carry)
            return (value, final, ys, grads), info, ys

        got, info, ys = run(method)
        want, _, _ = run(None)
        out[case["id"]] = {
            "error": close(got, want),
            "converged": bool(info.converged),
            "time_shards": ys.sharding.shard_shape(ys.shape)[0],
            "moved": float(jnp.max(jnp.abs(want[3][1]))),
        }
    # The checks that need a mesh axis of 2+ devices (the bad-input registry has one device).
    lstm = CELLS["lstm"]
    lstm_params = lstm.init(jax.random.key(0), jnp.float64)
    errors = {}
    for label, mesh, options, shape in (
        ("time", sharding.grid_mesh(time=devices), {}, (devices + 1, 2)),
        ("batch", sharding.grid_mesh(batch=2, time=devices // 2), {"batch_axis": "batch"},
         (devices, 3)),
    ):
        try:
            sj.unroll(lstm, lstm_params, jnp.ones((*shape, lstm.input_size)),
                      method=sj.SequenceParallel(mesh, **options))
            errors[label] = None
        except ValueError as err:
            errors[label] = str(err)
    out["errors"] = errors
    print(json.dumps(out))
    """
)


def case(cell, solver="default", reverse=False, grid=False):
    parts = [cell, solver, "reverse" if reverse else "forward"] + (["2x2"] if grid else [])
    return {"id": "-".join(parts), "cell": cell, "solver": solver, "reverse": reverse, "grid": grid}


LINEAR = ["min_gru", "min_lstm_linear", "lru"]  # every LinearRecurrence cell of the registry
CASES = {
    4: [
        case("min_gru"),
        case("min_lstm_linear", reverse=True),
        case("lru", reverse=True),
        case("min_lstm_log"),
        case("min_gru", "associative"),
        case("min_lstm_log", "associative", reverse=True),
        case("lstm", "deer", reverse=True),
        case("gru", "deer"),
        case("gru", "quasi_deer", reverse=True),
        case("gru", "fallback"),
        case("lstm", "sequential_adjoint", reverse=True),
        case("min_gru", grid=True),
        case("gru", "deer", reverse=True, grid=True),
    ],
    # Two devices: one chunk border, no middle chunk; the 4-device cases cover each solver.
    2: [
        case("min_gru", reverse=True),
        case("lru"),
        case("min_lstm_linear", "associative"),
        case("lstm", "deer", reverse=True),
        case("gru", "deer"),
    ],
}
ALL = [(n, c) for n, cases in CASES.items() for c in cases]


@pytest.fixture(scope="module")
def results():
    """Every case, in three subprocesses at once of about equal work (compiling, mostly)."""
    groups = [(4, CASES[4][0::2]), (4, CASES[4][1::2]), (2, CASES[2])]
    procs = [
        (n, subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(n), json.dumps(cases)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for n, cases in groups
    ]  # fmt: skip
    out = {n: {} for n in CASES}
    for n, proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]
        out[n].update(json.loads(stdout.strip().splitlines()[-1]))
    return out


# float64 throughout: the chunked scans reassociate sums and products (rounding ~1e-15);
# the Newton solves stop at the float64 default tol, 1e-12, on the states.
TOL = {"default": 1e-11, "associative": 1e-11, "deer": 1e-9, "quasi_deer": 1e-9, "fallback": 1e-11}


@pytest.mark.parametrize("devices, c", ALL, ids=[f"{n}dev-{c['id']}" for n, c in ALL])
def test_equals_sequential_scan(results, devices, c):
    got = results[devices][c["id"]]
    assert got["moved"] > 1e-3  # the gradients are not trivially zero
    assert got["error"] < TOL.get(c["solver"], 1e-9), got
    # Each device holds T / D steps of the outputs.
    assert got["time_shards"] == 16 // (devices // 2 if c["grid"] else devices)
    # The forced fallback really fell back; every other Newton solve converged.
    assert got["converged"] == (c["solver"] != "fallback")


def test_every_linear_cell_is_covered():
    covered = {c["cell"] for _, c in ALL}
    linear = {n for n, cell in CELLS.items() if sj.supports(cell, sj.LinearRecurrence)}
    assert linear == set(LINEAR) and linear <= covered
    assert {"lstm", "gru"} <= covered


# --- in this process (one device): the method object and its errors ---------------------------


def test_method_is_hashable_and_compares_by_value():
    mesh = sharding.grid_mesh(time=len(jax.devices()))
    a, b = sj.SequenceParallel(mesh), sj.SequenceParallel(mesh)
    assert a == b and hash(a) == hash(b)
    assert a != sj.SequenceParallel(mesh, solver=sj.DEER())
    assert "time" in repr(a) and "solver=None" in repr(a)


@pytest.mark.parametrize("name, solver", [("min_gru", None), ("gru", sj.QuasiDEER())])
def test_on_one_device_it_is_the_scan(key, name, solver):
    mesh = sharding.grid_mesh(time=1, devices=jax.devices()[:1])
    cell = CELLS[name]
    params = cell.init(key)
    xs = jax.random.normal(key, (8, 2, cell.input_size), jnp.float32)
    lengths = jnp.array([8, 5])
    method = sj.SequenceParallel(mesh, solver=solver)
    run = jax.jit(lambda p, x, n: sj.unroll(cell, p, x, lengths=n, method=method))
    carry, ys = run(params, xs, lengths)
    want_carry, want = sj.unroll(cell, params, xs, lengths=lengths)
    np.testing.assert_allclose(ys, want, atol=1e-5)
    flat = jax.flatten_util.ravel_pytree
    np.testing.assert_allclose(flat(carry)[0], flat(want_carry)[0], atol=1e-5)


@pytest.mark.parametrize("devices", sorted(CASES))
def test_split_axes_must_divide_the_data(results, devices):
    errors = results[devices]["errors"]
    assert errors["time"] == (
        f"SequenceParallel: xs must have a number of time steps divisible by the {devices} "
        "devices of mesh axis 'time' (pad the sequence and pass lengths); "
        f"got {devices + 1} steps"
    )
    assert errors["batch"] == (
        "SequenceParallel: batch_axis 'batch' needs a batch axis 1 of xs divisible by its 2 "
        f"devices; got xs of shape ({devices}, 3, 3)"
    )

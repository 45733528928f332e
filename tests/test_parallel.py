"""Parallel-in-time methods (Associative, DEER, QuasiDEER) equal the sequential scan."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import (
    DEER,
    ElmanCell,
    GRUCell,
    LSTMCell,
    QuasiDEER,
    jacobian_diagonal,
    methods,
    unroll,
    unroll_reference,
    unroll_with_info,
)
from tests.conftest import random_like
from tests.registry import CELLS, every_cell

T = 12
LENGTHS = [T, 7, 0]
LINEAR = ["min_gru", "min_lstm_linear", "lru"]
NONLINEAR = ["gru", "gru_reset_before", "lstm", "elman_tanh", "stack_lstm_gru"]


def _close(got, want, rtol=1e-5):
    """Leafwise ``|got - want| <= rtol * (|want| + max|want|)``: 1e-5 relative, where entries
    near zero are measured against their leaf's scale (a relative error of 0 is meaningless)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        scale = np.max(np.abs(w)) if w.size else 0.0
        np.testing.assert_array_less(np.abs(g - w), rtol * (np.abs(w) + scale) + 1e-30)


def _setup(cell, batch=3):
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, batch, cell.input_size), jnp.float32)
    carry = random_like(cell.init_carry((batch,)), jax.random.key(2), 0.5)
    # Resets inside each sequence's valid prefix (see test_resets_on_padded_steps_are_ignored).
    resets = jnp.zeros((T, batch), bool).at[3, 0].set(True).at[5, 1].set(True)
    return params, xs, carry, jnp.asarray(LENGTHS[:batch], jnp.int32), resets


def _method(method, **options):
    """The method object of a shorthand, with Newton options."""
    return {"deer": DEER, "quasi_deer": QuasiDEER}[method](**options) if options else method


def _compare(cell, method, reverse, **options):
    """Outputs, final carry and gradients (params, xs, carry) against ``unroll``: one jit each."""
    params, xs, carry, lengths, resets = _setup(cell)
    weights = jax.random.normal(jax.random.key(3), (T, 3, cell.hidden_size), jnp.float32)
    kw = dict(lengths=lengths, resets=resets, reverse=reverse)

    def sequential(p, x, c):
        return unroll(cell, p, x, c, **kw)

    def parallel(p, x, c):
        return unroll(cell, p, x, c, method=_method(method, **options), **kw)

    def value_and_grad(run):
        def loss(p, x, c):
            final, ys = run(p, x, c)
            tail = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(final))
            return jnp.sum(weights * jnp.tanh(ys)) + tail, (final, ys)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))

    got = value_and_grad(parallel)(params, xs, carry)
    want = value_and_grad(sequential)(params, xs, carry)
    _close(got, want)


@pytest.mark.parametrize(
    "name, reverse", [("min_gru", False), ("min_lstm_linear", True), ("lru", False), ("lru", True)]
)
def test_associative_scan_equals_sequential(name, reverse):
    _compare(CELLS[name], "associative", reverse)


@pytest.mark.parametrize(
    "name, method, reverse",
    [
        ("gru", "deer", False),
        ("gru", "quasi_deer", True),
        ("gru_reset_before", "quasi_deer", False),
        ("lstm", "deer", True),
        ("lstm", "quasi_deer", False),
        ("elman_tanh", "quasi_deer", False),
        ("lru", "quasi_deer", True),  # no analytic diagonal: autodiff's
    ],
)
def test_newton_methods_equal_sequential(name, method, reverse):
    _compare(CELLS[name], method, reverse)


# Each wrapper's noise with each Newton method once: the row-wise noise is the wrapper's,
# the Jacobian (dense or diagonal) the method's.
@pytest.mark.parametrize("name, method", [("lstm_zoneout", "deer"), ("lstm_dropout", "quasi_deer")])
def test_cells_drawing_noise_per_row_equal_sequential(name, method):
    # Training-mode noise is per row of the batch [*B]: zoneout draws it from the row index,
    # dropout holds [*B, H] masks. Stepping [T, *B] (or single rows) at once gave zoneout
    # another cell's masks (off by 0.4, yet "converged") and refused dropout's masks.
    cell, batch_shape = CELLS[name], (2, 3)
    params = seqjax.with_noise(cell, cell.init(jax.random.key(0)), jax.random.key(1), batch_shape)
    xs = jax.random.normal(jax.random.key(2), (T, *batch_shape, cell.input_size), jnp.float32)
    carry = random_like(cell.init_carry(batch_shape), jax.random.key(3), 0.5)
    lengths = jnp.array([[T, 7, 0], [5, T, 2]], jnp.int32)

    def loss(run, x, c):
        final, ys = run(x, c)
        scale = jnp.arange(ys.shape[-1], dtype=ys.dtype).reshape((1,) * (ys.ndim - 1) + (-1,))
        return jnp.sum(jnp.tanh(ys) * scale), (final, ys)

    def check(run):
        return jax.jit(jax.grad(lambda x, c: loss(run, x, c), argnums=(0, 1), has_aux=True))

    want = check(lambda x, c: unroll(cell, params, x, c, lengths=lengths))(xs, carry)
    got = check(lambda x, c: unroll(cell, params, x, c, method=method, lengths=lengths))(xs, carry)
    _close(got, want)
    info = jax.jit(
        lambda x, c: unroll_with_info(cell, params, x, c, method=method, lengths=lengths)[2]
    )
    assert bool(info(xs, carry).converged)


def test_sequential_derivative_and_damping_give_the_same_gradients():
    _compare(CELLS["gru"], "quasi_deer", False, derivative="sequential", damping=0.5)


@every_cell
@pytest.mark.parametrize("noise", [False, True], ids=["plain", "noise"])
def test_analytic_jacobian_diagonal_equals_autodiff(cell, noise):
    """Every cell (and wrapper) that supports JacobianDiagonal gives the dense Jacobian's."""
    if not seqjax.supports(cell, seqjax.JacobianDiagonal):
        pytest.skip("no analytic diagonal: quasi-DEER uses autodiff's")
    if noise and not seqjax.supports(cell, seqjax.Noisy):
        pytest.skip("no noise to draw")
    params = random_like(cell.init(jax.random.key(0)), jax.random.key(4))  # non-zero biases
    if noise:
        params = seqjax.with_noise(cell, params, jax.random.key(5), batch_shape=(2,))
    carry = random_like(cell.init_carry((2,)), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, cell.input_size), jnp.float32)
    px = cell.project(params, x)
    flat, unravel = jax.flatten_util.ravel_pytree(carry)
    dense = jax.jacfwd(
        lambda s: jax.flatten_util.ravel_pytree(cell.step(params, unravel(s), px)[0])[0]
    )
    want = jnp.diagonal(dense(flat))
    got = jax.flatten_util.ravel_pytree(jacobian_diagonal(cell, params, carry, px))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_wrappers_keep_the_analytic_diagonal():
    for name in ("lstm_dropout", "lstm_zoneout", "gru_learned_init", "lstm", "gru"):
        assert seqjax.supports(CELLS[name], seqjax.JacobianDiagonal), name


def test_resets_on_padded_steps_are_ignored():
    """Past a sequence's length the carry is unchanged, resets or not (unroll_reference)."""
    cell = CELLS["gru"]
    params, xs, carry, lengths, _ = _setup(cell)
    resets = jnp.zeros((T, 3), bool).at[9, 1].set(True).at[0, 0].set(True)  # 9 >= length 7
    for method, reverse in (("quasi_deer", True),):
        want = unroll_reference(
            cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse
        )
        got = unroll(
            cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse, method=method
        )
        _close(got, want)
    cell = CELLS["min_gru"]
    params = cell.init(jax.random.key(0))
    want = unroll_reference(cell, params, xs, lengths=lengths, resets=resets, reverse=True)
    got = unroll(
        cell, params, xs, lengths=lengths, resets=resets, reverse=True, method="associative"
    )
    _close(got, want)


def test_chaotic_cell_falls_back_to_sequential():
    cell = ElmanCell(3, 8)
    params = cell.init(jax.random.key(0))
    params = params._replace(w_h=3.0 * params.w_h)  # gain 3: chaotic, Newton does not converge
    num_steps = 24
    xs = jax.random.normal(jax.random.key(1), (num_steps, 3), jnp.float32)

    @jax.jit
    def run(p):
        def loss(p, fallback, max_iters):
            method = QuasiDEER(max_iters=max_iters, fallback=fallback)
            _, ys, info = unroll_with_info(cell, p, xs, method=method)
            return jnp.sum(ys), (ys, info)

        grad_fallback = jax.grad(lambda p: loss(p, True, 8), has_aux=True)(p)
        unconverged = loss(p, False, 8)[1]
        exhaustive = loss(p, True, num_steps)[1][1]
        return grad_fallback, unconverged, exhaustive

    (grad, (ys, info)), (ys_unconverged, _), exhaustive = run(params)
    assert not bool(info.converged) and int(info.iterations) == 8
    assert not bool(info.residual <= 1e-6)
    want_grad, want = jax.grad(lambda p: _sum_and_ys(unroll(cell, p, xs)), has_aux=True)(params)
    # Chaos amplifies rounding: two compiled sequential scans already differ by ~1e-6 here.
    _close((ys, grad), (want, want_grad), rtol=1e-4)
    assert not np.allclose(ys_unconverged, want, atol=1e-3), "the fallback must matter here"
    # Newton still converges, but only after T iterations: nothing is gained in parallel.
    assert bool(exhaustive.converged) and int(exhaustive.iterations) >= num_steps - 2
    _, _, info = unroll_with_info(cell, cell.init(jax.random.key(0)), xs, method="deer")
    assert bool(info.converged) and int(info.iterations) < 8  # a contracting cell: few


def _sum_and_ys(result):
    return jnp.sum(result[1]), result[1]


def test_log_space_scan_survives_long_products():
    """Forget gates near zero over many steps: log space keeps the states finite and exact."""
    cell = CELLS["min_gru"]
    params = cell.init(jax.random.key(0))
    params = params._replace(b=params.b.at[: cell.hidden_size].set(30.0))  # z ~ 1, a ~ 1e-13
    xs = jax.random.normal(jax.random.key(1), (40, 2, cell.input_size), jnp.float32)
    got = jax.jit(lambda p, x: unroll(cell, p, x, method="associative"))(params, xs)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(got))
    _close(got, unroll(cell, params, xs))


def test_batch_major_jit_and_vmap():
    cell = CELLS["lstm"]
    params, xs, carry, lengths, _ = _setup(cell)
    run = jax.jit(lambda x, n: unroll(cell, params, x, lengths=n, method="quasi_deer", time_axis=1))
    got = run(jnp.swapaxes(xs, 0, 1), lengths)
    want = unroll(cell, params, xs, lengths=lengths)
    _close((got[0], jnp.swapaxes(got[1], 0, 1)), want)


def test_bad_arguments_are_named():
    cell = GRUCell(3, 4)
    params = cell.init(jax.random.key(0))
    xs = jnp.zeros((5, 3), jnp.float32)
    with pytest.raises(ValueError, match="LinearRecurrence"):
        unroll(cell, params, xs, method="associative")
    with pytest.raises(ValueError, match="method must be"):
        unroll(cell, params, xs, method="newton")
    with pytest.raises(ValueError, match="derivative"):
        DEER(derivative="implicit")
    with pytest.raises(ValueError, match="tol"):
        QuasiDEER(tol=-1.0)
    with pytest.raises(ValueError, match="max_iters"):
        DEER(max_iters=2.5)
    with pytest.raises(TypeError, match="floating"):
        unroll(LSTMCell(3, 4), params, xs.astype(jnp.int32), method="deer")
    with pytest.raises(ValueError, match="lengths"):
        unroll(cell, params, xs[:, None], lengths=jnp.array([6]), method="deer")


def test_method_objects_are_hashable_values():
    """Equal options compare equal (one jit cache entry); shorthands name default objects."""
    assert hash(DEER(tol=1e-5)) == hash(DEER(tol=1e-5)) and DEER(tol=1e-5) == DEER(tol=1e-5)
    assert methods.resolve("quasi_deer") == QuasiDEER() != DEER()


@pytest.mark.parametrize("name, method", [("min_gru", "associative"), ("gru", "quasi_deer")])
def test_unroll_method_dispatches_to_the_parallel_evaluation(name, method, key):
    """``unroll(method=...)`` gives the sequential scan's results."""

    cell = CELLS[name]
    params = cell.init(key)
    xs = jax.random.normal(jax.random.key(3), (9, 2, cell.input_size), jnp.float32)
    lengths = jnp.array([9, 4], jnp.int32)
    got = unroll(cell, params, xs, lengths=lengths, method=method)
    want = unroll(cell, params, xs, lengths=lengths)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
    with pytest.raises(ValueError, match="truncate"):
        unroll(cell, params, xs, truncate=2, method=method)

"""The structured derivative of unroll (backward="custom") equals autodiff, in float64."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import Stack, unroll
from seqjax._backward import _recur_input, _transposed_copy, has_structure, names_weight, reads_sum
from tests.conftest import random_like, tree_allclose
from tests.registry import CELLS, every_cell

T, B = 6, 3
TOL = dict(rtol=1e-10, atol=1e-12)  # float64, same math in another order
STRUCTURED = [name for name, cell in CELLS.items() if has_structure(cell)]


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64), tree)


def _problem(cell, time_axis=0):
    params = _float64(cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (T, B, cell.input_size), jnp.float64)
    carry = random_like(cell.init_carry((B,), jnp.float64), jax.random.key(2))
    if time_axis == 1:
        xs = jnp.swapaxes(xs, 0, 1)
    return params, xs, carry


def _vjp_both(cell, params, xs, carry, **options):
    """Outputs and vjp (cotangents on ys and on the final carry) of both derivatives."""
    results = []
    for backward in ("custom", "autodiff"):

        def f(p, x, c, backward=backward):
            return unroll(cell, p, x, c, backward=backward, **options)

        cot = random_like(jax.eval_shape(f, params, xs, carry), jax.random.key(3))

        @jax.jit  # one compilation per check instead of one per eager op
        def out_and_vjp(p, x, c, cot, f=f):
            out, vjp = jax.vjp(f, p, x, c)
            return out, vjp(cot)

        results.append(out_and_vjp(params, xs, carry, cot))
    return results


def test_the_shipped_cells_offer_the_structure():
    assert {"elman_tanh", "elman_relu", "lstm", "gru", "gru_reset_before"} <= set(STRUCTURED)


@pytest.mark.parametrize("name", STRUCTURED)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_custom_equals_autodiff_with_every_option(name, reverse):
    cell = CELLS[name]
    params, xs, carry = _problem(cell, time_axis=1)
    resets = jnp.zeros((B, T), bool).at[0, 3].set(True).at[2, 1].set(True)
    options = dict(
        lengths=jnp.array([T, 4, 0], jnp.int32),
        resets=resets,
        truncate=2,
        reverse=reverse,
        time_axis=1,
    )
    custom, autodiff = _vjp_both(cell, params, xs, carry, **options)
    tree_allclose(custom, autodiff, **TOL)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])
@pytest.mark.parametrize("hoist", [False, True], ids=["in_scan", "hoisted"])
def test_custom_equals_autodiff_without_options(name, hoist):
    cell = CELLS[name]
    params, xs, carry = _problem(cell)
    custom, autodiff = _vjp_both(cell, params, xs, carry, hoist_projection=hoist)
    tree_allclose(custom, autodiff, **TOL)


def test_custom_forward_mode_equals_autodiff():
    cell = CELLS["lstm"]
    params, xs, carry = _problem(cell)
    tangents = random_like((params, xs, carry), jax.random.key(4))
    options = dict(lengths=jnp.array([T, 2, 5], jnp.int32), truncate=4)
    got = jax.jvp(
        lambda p, x, c: unroll(cell, p, x, c, backward="custom", **options),
        (params, xs, carry),
        tangents,
    )
    want = jax.jvp(
        lambda p, x, c: unroll(cell, p, x, c, backward="autodiff", **options),
        (params, xs, carry),
        tangents,
    )
    tree_allclose(got, want, **TOL)


def test_custom_under_jit_vmap_and_grad_of_sum():
    cell = CELLS["gru"]
    params, xs, carry = _problem(cell)
    lengths = jnp.array([T, 1, 4], jnp.int32)

    def loss(p, x, c, length, backward):
        # vmap over the batch: each call sees one sequence, no batch dims.
        final, ys = unroll(cell, p, x, c, lengths=length, backward=backward)
        return jnp.sum(ys**2) + jnp.sum(final)

    def total(p, x, c, backward):
        per_seq = jax.vmap(loss, in_axes=(None, 1, 0, 0, None))(p, x, c, lengths, backward)
        return jnp.sum(per_seq)

    grad = jax.jit(jax.grad(total, argnums=(0, 1, 2)), static_argnums=3)
    tree_allclose(grad(params, xs, carry, "custom"), grad(params, xs, carry, "autodiff"), **TOL)


@pytest.mark.parametrize("truncate", [None, 2], ids=["whole", "truncated"])
@pytest.mark.parametrize("name", ["elman_tanh", "lstm"])
def test_second_order_gradients_agree(name, truncate):
    """Forward-over-reverse: with truncation the carry crossing a border is a constant for
    every order of derivative (``stop_gradient``), in the structured derivative's residuals
    too (which differed by 9 on an LSTM before they were cut as well)."""
    cell = CELLS[name]
    params, xs, carry = _problem(cell)

    def loss(p, backward):
        ys = unroll(cell, p, xs, carry, backward=backward, truncate=truncate)[1]
        return jnp.sum(ys**3)

    @functools.partial(jax.jit, static_argnums=1)
    def hvp(params, backward):
        return jax.jvp(jax.grad(lambda p: loss(p, backward)), (params,), (params,))[1]

    hvp = functools.partial(hvp, params)

    tree_allclose(hvp("custom"), hvp("autodiff"), **TOL)


def test_auto_falls_back_for_a_cell_without_the_split():
    stack = CELLS["stack_lstm_gru"]
    assert isinstance(stack, Stack) and not has_structure(stack)
    params, xs, carry = _problem(stack)
    got = jax.grad(lambda p: jnp.sum(unroll(stack, p, xs, carry)[1]))(params)
    want = jax.grad(lambda p: jnp.sum(unroll(stack, p, xs, carry, backward="autodiff")[1]))(params)
    tree_allclose(got, want, **TOL)
    with pytest.raises(TypeError, match="recur"):
        unroll(stack, params, xs, carry, backward="custom")


def test_unknown_backward_is_refused():
    cell = CELLS["lstm"]
    params, xs, _ = _problem(cell)
    with pytest.raises(ValueError, match="backward"):
        unroll(cell, params, xs, backward="fast")


@every_cell
def test_step_is_update_of_recur(cell, key):
    if not has_structure(cell):
        pytest.skip("cell without the recur/update split")
    params = cell.init(key)
    carry = random_like(cell.init_carry((2,)), jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (2, cell.input_size), jnp.float32)
    px = cell.project(params, xs)
    got = cell.update(params, carry, px, cell.recur(params, carry))
    want = cell.step(params, carry, px)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@every_cell
def test_update_reads_sum_holds_where_declared(cell, key):
    """``update_reads_sum`` lets the derivative merge px and r: it must be true of update."""
    if not reads_sum(cell):
        pytest.skip("cell does not declare update_reads_sum")
    params = cell.init(key)
    carry = random_like(cell.init_carry((2,)), jax.random.key(1))
    r = cell.recur(params, carry)
    px = jax.random.normal(jax.random.key(2), r.shape, r.dtype)  # px and r: both [*B, G]
    got = cell.update(params, carry, px + r, jnp.zeros_like(r))
    want = cell.update(params, carry, px, r)
    tree_allclose(got, want, rtol=0, atol=0)  # z + 0 == z exactly: the same arithmetic


def test_lstm_and_elman_declare_update_reads_sum():
    assert {name for name in STRUCTURED if reads_sum(CELLS[name])} >= {"lstm", "elman_tanh"}
    assert not reads_sum(CELLS["gru"])  # its candidate reads r * (h W_hn + b_hn)


@every_cell
def test_named_weights_are_the_linear_maps(cell, key):
    """``project_weight``/``recur_weight`` let the derivative multiply by them directly:
    ``project`` and ``recur`` must be those matmuls plus terms constant in x and the carry."""
    if not (names_weight(cell, "project") or names_weight(cell, "recur")):
        pytest.skip("cell does not name its weight matrices")
    params = _float64(cell.init(key))
    if names_weight(cell, "project"):
        xs = jax.random.normal(jax.random.key(1), (3, 2, cell.input_size), jnp.float64)
        px = cell.project(params, xs) - cell.project(params, jnp.zeros_like(xs))
        tree_allclose(px, xs @ cell.project_weight(params), **TOL)
    if names_weight(cell, "recur"):
        carry = random_like(cell.init_carry((2,), jnp.float64), jax.random.key(2))
        zero = jax.tree.map(jnp.zeros_like, carry)
        r = cell.recur(params, carry) - cell.recur(params, zero)
        tree_allclose(r, _recur_input(cell, carry) @ cell.recur_weight(params), **TOL)


def test_lstm_gru_elman_name_their_weights():
    named = {n for n in STRUCTURED if all(names_weight(CELLS[n], w) for w in ("project", "recur"))}
    assert named >= {
        "lstm",
        "gru",
        "gru_reset_before",
        "elman_tanh",
    }


def test_transposed_copy_is_exact_even_with_nan_and_inf():
    w = jnp.array([[jnp.nan, 1.5, -0.0], [jnp.inf, -jnp.inf, 3.0]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(_transposed_copy(w)), np.asarray(w).T)
    w = w.at[0, 0].set(jnp.inf)
    np.testing.assert_array_equal(np.asarray(_transposed_copy(w)), np.asarray(w).T)

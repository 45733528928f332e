"""The structured derivative (Scan(derivative="structured")) equals autodiff, in float64."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import (
    ProjectWeight,
    RecurWeight,
    Scan,
    SplitStep,
    Stack,
    SummedUpdate,
    supports,
    unroll,
    with_noise,
)
from seqjax.methods._structured import _transposed_copy
from tests.conftest import random_like, tree_allclose
from tests.registry import CELLS, every_cell

T, B = 6, 3
TOL = dict(rtol=1e-10, atol=1e-12)  # float64, same math in another order
STRUCTURED = [name for name, cell in CELLS.items() if supports(cell, SplitStep)]
CUSTOM, AUTODIFF = Scan(derivative="structured"), Scan(derivative="autodiff")


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64), tree)


def _problem(cell, time_axis=0):
    params = _float64(cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (T, B, cell.input_size), jnp.float64)
    carry = random_like(cell.init_carry((B,), jnp.float64), jax.random.key(2))
    if time_axis == 1:
        xs = jnp.swapaxes(xs, 0, 1)
    return params, xs, carry


def _vjp_both(cell, params, xs, carry, layout=None, **options):
    """Outputs and vjp (cotangents on ys and on the final carry) of both derivatives."""
    results, layout = [], layout or {}
    for derivative in ("structured", "autodiff"):
        method = Scan(derivative=derivative, **layout)

        def f(p, x, c, method=method):
            return unroll(cell, p, x, c, method=method, **options)

        cot = random_like(jax.eval_shape(f, params, xs, carry), jax.random.key(3))

        @jax.jit  # one compilation per check instead of one per eager op
        def out_and_vjp(p, x, c, cot, f=f):
            out, vjp = jax.vjp(f, p, x, c)
            return out, vjp(cot)

        results.append(out_and_vjp(params, xs, carry, cot))
    return results


def test_the_shipped_cells_offer_the_structure():
    assert {"elman_tanh", "elman_relu", "lstm", "gru", "gru_reset_before"} <= set(STRUCTURED)
    # Wrappers keep it where their semantics allow (issue 20: they fell back to autodiff).
    assert {"lstm_dropout", "lstm_zoneout", "gru_learned_init"} <= set(STRUCTURED)


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
    custom, autodiff = _vjp_both(cell, params, xs, carry, layout={"hoist_projection": hoist})
    tree_allclose(custom, autodiff, **TOL)


def test_custom_forward_mode_equals_autodiff():
    cell = CELLS["lstm"]
    params, xs, carry = _problem(cell)
    tangents = random_like((params, xs, carry), jax.random.key(4))
    options = dict(lengths=jnp.array([T, 2, 5], jnp.int32), truncate=4)
    got = jax.jvp(
        lambda p, x, c: unroll(cell, p, x, c, method=CUSTOM, **options),
        (params, xs, carry),
        tangents,
    )
    want = jax.jvp(
        lambda p, x, c: unroll(cell, p, x, c, method=AUTODIFF, **options),
        (params, xs, carry),
        tangents,
    )
    tree_allclose(got, want, **TOL)


def test_custom_under_jit_vmap_and_grad_of_sum():
    cell = CELLS["gru"]
    params, xs, carry = _problem(cell)
    lengths = jnp.array([T, 1, 4], jnp.int32)

    def loss(p, x, c, length, method):
        # vmap over the batch: each call sees one sequence, no batch dims.
        final, ys = unroll(cell, p, x, c, lengths=length, method=method)
        return jnp.sum(ys**2) + jnp.sum(final)

    def total(p, x, c, method):
        per_seq = jax.vmap(loss, in_axes=(None, 1, 0, 0, None))(p, x, c, lengths, method)
        return jnp.sum(per_seq)

    grad = jax.jit(jax.grad(total, argnums=(0, 1, 2)), static_argnums=3)
    tree_allclose(grad(params, xs, carry, CUSTOM), grad(params, xs, carry, AUTODIFF), **TOL)


@pytest.mark.parametrize("truncate", [None, 2], ids=["whole", "truncated"])
@pytest.mark.parametrize("name", ["elman_tanh", "lstm"])
def test_second_order_gradients_agree(name, truncate):
    """Forward-over-reverse: with truncation the carry crossing a border is a constant for
    every order of derivative (``stop_gradient``), in the structured derivative's residuals
    too (which differed by 9 on an LSTM before they were cut as well)."""
    cell = CELLS[name]
    params, xs, carry = _problem(cell)

    def loss(p, method):
        ys = unroll(cell, p, xs, carry, method=method, truncate=truncate)[1]
        return jnp.sum(ys**3)

    @functools.partial(jax.jit, static_argnums=1)
    def hvp(params, method):
        return jax.jvp(jax.grad(lambda p: loss(p, method)), (params,), (params,))[1]

    hvp = functools.partial(hvp, params)

    tree_allclose(hvp(CUSTOM), hvp(AUTODIFF), **TOL)


def test_auto_falls_back_for_a_cell_without_the_split():
    stack = CELLS["stack_lstm_gru"]
    assert isinstance(stack, Stack) and not supports(stack, SplitStep)
    params, xs, carry = _problem(stack)
    got = jax.grad(lambda p: jnp.sum(unroll(stack, p, xs, carry)[1]))(params)
    want = jax.grad(lambda p: jnp.sum(unroll(stack, p, xs, carry, method=AUTODIFF)[1]))(params)
    tree_allclose(got, want, **TOL)
    with pytest.raises(TypeError, match="SplitStep"):
        unroll(stack, params, xs, carry, method=CUSTOM)


def test_unknown_derivative_is_refused():
    with pytest.raises(ValueError, match="derivative"):
        Scan(derivative="fast")


@every_cell
def test_step_is_update_of_recur(cell, key):
    if not supports(cell, SplitStep):
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
def test_summed_update_holds_where_declared(cell, key):
    """SummedUpdate lets the derivative merge px and r: update must read their sum only."""
    if not supports(cell, SummedUpdate):
        pytest.skip("cell does not support SummedUpdate")
    params = cell.init(key)
    carry = random_like(cell.init_carry((2,)), jax.random.key(1))
    r = cell.recur(params, carry)
    px = jax.random.normal(jax.random.key(2), r.shape, r.dtype)  # px and r: both [*B, G]
    got = cell.update_summed(params, carry, px + r)
    want = cell.update(params, carry, px, r)
    tree_allclose(got, want, rtol=0, atol=0)  # the same arithmetic
    other = jax.random.normal(jax.random.key(3), r.shape, r.dtype)
    shifted = cell.update(params, carry, px + other, r - other)  # same sum, other split
    tree_allclose(shifted, want, rtol=1e-6, atol=1e-6)  # float32 rounding of the two sums


def test_lstm_and_elman_support_summed_update():
    assert {name for name in STRUCTURED if supports(CELLS[name], SummedUpdate)} >= {
        "lstm",
        "elman_tanh",
        "lstm_dropout",
        "lstm_zoneout",
    }
    assert not supports(CELLS["gru"], SummedUpdate)  # its candidate reads r * (h W_hn + b_hn)


@every_cell
def test_named_weights_are_the_linear_maps(cell, key):
    """``project_weight``/``recur_weight`` let the derivative multiply by them directly:
    ``project`` and ``recur`` must be those matmuls plus terms constant in x and the carry."""
    if not (supports(cell, ProjectWeight) or supports(cell, RecurWeight)):
        pytest.skip("cell does not name its weight matrices")
    params = _float64(cell.init(key))
    if supports(cell, ProjectWeight):
        xs = jax.random.normal(jax.random.key(1), (3, 2, cell.input_size), jnp.float64)
        px = cell.project(params, xs) - cell.project(params, jnp.zeros_like(xs))
        tree_allclose(px, xs @ cell.project_weight(params), **TOL)
    if supports(cell, RecurWeight):
        carry = random_like(cell.init_carry((2,), jnp.float64), jax.random.key(2))
        zero = jax.tree.map(jnp.zeros_like, carry)
        r = cell.recur(params, carry) - cell.recur(params, zero)
        tree_allclose(r, cell.recur_input(params, carry) @ cell.recur_weight(params), **TOL)


def test_lstm_gru_elman_name_their_weights():
    named = {
        n for n in STRUCTURED if all(supports(CELLS[n], c) for c in (ProjectWeight, RecurWeight))
    }
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


@pytest.mark.parametrize("name", ["lstm_dropout", "lstm_zoneout"])
def test_custom_equals_autodiff_with_noise_drawn(name):
    """The wrappers' forwarded split holds with their masks and keys in the params."""
    cell = CELLS[name]
    params, xs, carry = _problem(cell)
    params = with_noise(cell, params, jax.random.key(5), batch_shape=(B,))
    lengths = jnp.array([T, 4, 1], jnp.int32)
    custom, autodiff = _vjp_both(cell, params, xs, carry, lengths=lengths, truncate=4)

    def floats(tree):  # a zoneout key's cotangent is float0: nothing to compare
        return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]

    tree_allclose(floats(custom), floats(autodiff), **TOL)

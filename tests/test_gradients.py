"""float64 gradient checks (finite differences) of unroll, for every cell and option."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

from seqjax import Bidirectional, unroll
from tests.registry import CARRY_KINDS, CELLS, every_cell

T = 5
# Forward mode (jvp) goes through the derivative path, not the cell's math: reverse mode for
# every cell, forward mode too for the carry kinds (structured and autodiff paths alike).
FORWARD_MODE = [CELLS[name] for name in CARRY_KINDS]


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64), tree)


@every_cell
@pytest.mark.parametrize(
    # Each direction and lengths option once per cell (the two are independent paths).
    "reverse, with_lengths",
    [(False, True), (True, False)],
    ids=["forward-lengths", "reverse-full"],
)
def test_unroll_gradients_match_finite_differences(cell, key, reverse, with_lengths):
    params = _float64(cell.init(key))
    xs = jax.random.normal(jax.random.key(1), (T, 3, cell.input_size), jnp.float64)
    carry = _float64(jax.tree.map(lambda a: a + 0.3, cell.init_carry((3,))))
    lengths = jnp.array([T, 2, 0]) if with_lengths else None

    def f(params, xs, carry):
        final, ys = unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse)
        return ys, final

    modes = ("rev", "fwd") if cell in FORWARD_MODE else ("rev",)
    # jit: check_grads evaluates f at many points; eagerly each call dispatches op by op
    check_grads(jax.jit(f), (params, xs, carry), order=1, modes=modes, atol=1e-6, rtol=1e-6)


def test_second_order_gradients_of_an_lstm(key):
    cell = CELLS["lstm"]
    params = _float64(cell.init(key))
    xs = jax.random.normal(jax.random.key(1), (T, 2, cell.input_size), jnp.float64)
    check_grads(
        jax.jit(lambda p: unroll(cell, p, xs)[1]),
        (params,),
        order=2,
        modes=("rev",),
        atol=1e-5,
        rtol=1e-5,
    )


def test_bidirectional_gradients(key):
    cell = CELLS["gru"]
    layer = Bidirectional(cell, cell)
    params = _float64(layer.init(key))
    xs = jax.random.normal(jax.random.key(1), (T, 2, cell.input_size), jnp.float64)
    lengths = jnp.array([T, 3])
    check_grads(
        jax.jit(lambda p, x: layer(p, x, lengths=lengths)[1]),
        (params, xs),
        order=1,
        modes=("rev",),
        atol=1e-6,
        rtol=1e-6,
    )

"""seqjax cells equal Flax linen's cells (and nn.RNN) given converted weights."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import ElmanCell, GRUCell, LSTMCell, unroll
from seqjax.interop.flax_linen import (
    carry_from_linen,
    carry_to_linen,
    params_from_linen,
    params_to_linen,
)
from tests.conftest import random_like, tree_allclose

I, H, T, B = 3, 5, 7, 4
TOL = dict(rtol=1e-5, atol=1e-6)  # float32; Flax sums per-gate matmuls, seqjax fused ones

PAIRS = {
    "lstm": (nn.LSTMCell(H), LSTMCell(I, H)),
    "optimized_lstm": (nn.OptimizedLSTMCell(H), LSTMCell(I, H)),
    "gru": (nn.GRUCell(H), GRUCell(I, H)),
    "simple_tanh": (nn.SimpleCell(H), ElmanCell(I, H)),
    "simple_relu": (nn.SimpleCell(H, activation_fn=nn.relu), ElmanCell(I, H, jax.nn.relu)),
}
every_pair = pytest.mark.parametrize("pair", list(PAIRS.values()), ids=list(PAIRS))


def _setup(pair, key):
    flax_cell, cell = pair
    carry0 = flax_cell.initialize_carry(jax.random.key(1), (B, I))
    carry0 = jax.tree.map(lambda a: a + 0.3, carry0)
    # Flax initialises biases to zero; random ones make the comparison meaningful.
    variables = random_like(flax_cell.init(key, carry0, jnp.ones((B, I), jnp.float32)), key, 0.5)
    xs = jax.random.normal(jax.random.key(2), (B, T, I), jnp.float32)
    return flax_cell, cell, variables, carry0, xs


@every_pair
def test_one_step_equals_flax(pair, key):
    flax_cell, cell, variables, carry0, xs = _setup(pair, key)
    params = params_from_linen(cell, variables)
    flax_carry, flax_y = flax_cell.apply(variables, carry0, xs[:, 0])
    carry, y = cell.apply(params, carry_from_linen(cell, carry0), xs[:, 0])
    tree_allclose((carry_to_linen(cell, carry), y), (flax_carry, flax_y), **TOL)


@every_pair
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_unroll_equals_flax_rnn_with_lengths(pair, key, reverse):
    flax_cell, cell, variables, carry0, xs = _setup(pair, key)
    lengths = jnp.array([T, 3, 1, 5])
    rnn = nn.RNN(flax_cell, return_carry=True, reverse=reverse, keep_order=True)
    flax_carry, flax_ys = rnn.apply(
        {"params": {"cell": variables["params"]}}, xs, initial_carry=carry0, seq_lengths=lengths
    )
    params = params_from_linen(cell, variables)
    carry, ys = unroll(
        cell,
        params,
        xs,
        carry_from_linen(cell, carry0),
        lengths=lengths,
        reverse=reverse,
        time_axis=1,
    )
    tree_allclose(carry_to_linen(cell, carry), flax_carry, **TOL)
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(ys)[valid], np.asarray(flax_ys)[valid], **TOL)


@every_pair
def test_round_trip_through_linen(pair, key):
    flax_cell, cell, variables, carry0, xs = _setup(pair, key)
    params = params_from_linen(cell, variables)
    back = params_to_linen(cell, params)
    if isinstance(cell, GRUCell):
        # Flax's GRU has no recurrent r/z biases, so importing sets them to zero and the
        # round trip is exact.
        assert not bool(jnp.any(params.b_h[: 2 * H]))
    tree_allclose(back, variables, rtol=0, atol=0)
    tree_allclose(params_from_linen(cell, back), params, rtol=0, atol=0)


def test_gru_recurrent_biases_fold_into_flax_input_biases(key):
    cell = GRUCell(I, H)
    params = cell.init(key)._replace(b_h=jax.random.normal(key, (3 * H,), jnp.float32))
    variables = params_to_linen(cell, params)
    x = jax.random.normal(key, (B, I), jnp.float32)
    h = jax.random.normal(jax.random.key(3), (B, H), jnp.float32)
    tree_allclose(nn.GRUCell(H).apply(variables, h, x), cell.apply(params, h, x), **TOL)


def test_converters_reject_what_flax_cannot_express(key):
    flax_cell, _, variables, _, _ = _setup(PAIRS["gru"], key)
    with pytest.raises(ValueError, match="reset_after"):
        params_from_linen(GRUCell(I, H, reset_after=False), variables)
    with pytest.raises(ValueError, match=r"ir/kernel must have shape \(4, 5\)"):
        params_from_linen(GRUCell(4, H), variables)
    with pytest.raises(TypeError, match="cell must be"):
        params_from_linen(object(), variables)

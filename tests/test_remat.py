"""Rematerialisation, ``unroll(method=Remat(k))``: same values and gradients, less memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from seqjax import Bidirectional, LSTMCell, Remat, Scan, Stack, unroll
from tests.conftest import tree_allclose
from tests.registry import CELLS

# remat only chunks the scan: the step function is the same for every cell, and what could
# differ between cells is the carry's pytree structure. So the property runs over cells with
# different carries (an array, a NamedTuple, a tuple of NamedTuples, a wrapper's carry)
# rather than the whole registry, whose nested-scan gradients cost ~7 s of compiling per cell.
CARRY_KINDS = ["gru", "stack_lstm_gru", "lstm_zoneout"]  # lstm: in the next test

T = 7  # not a multiple of the chunk sizes below, so the last, partial chunk is exercised
TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the chunked scan fuses and sums differently


def _loss_and_grads(cell, params, xs, weights, **options):
    def loss(params, xs):
        carry, ys = unroll(cell, params, xs, **options)
        return jnp.sum(weights * ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, xs)  # one compile, not many


@pytest.mark.parametrize("name", CARRY_KINDS)
def test_remat_keeps_values_and_gradients(name, key):
    """Nested chunks, with lengths, resets, truncation and a reverse run all at once."""
    cell = CELLS[name]
    params = cell.init(key)
    xs = jax.random.normal(jax.random.key(1), (T, 3, cell.input_size), jnp.float32)
    weights = jax.random.normal(jax.random.key(2), (T, 3, cell.hidden_size), jnp.float32)
    resets = jnp.zeros((T, 3), bool).at[4, 0].set(True).at[2, 2].set(True)
    options = dict(lengths=jnp.array([T, 5, 0]), resets=resets, truncate=4, reverse=True)
    plain = _loss_and_grads(
        cell, params, xs, weights, method=Scan(derivative="autodiff"), **options
    )
    got = _loss_and_grads(cell, params, xs, weights, method=Remat((3, 2)), **options)
    tree_allclose(got, plain, **TOL)


@pytest.mark.parametrize("remat", [1, 3, 100, (5, 2)])
def test_remat_chunk_sizes_forward(remat, key):
    """Chunks of one step, uneven chunks, a chunk longer than T, and nesting."""
    cell = CELLS["lstm"]
    params = cell.init(key)
    xs = jax.random.normal(jax.random.key(1), (T, 2, cell.input_size), jnp.float32)
    weights = jax.random.normal(jax.random.key(2), (T, 2, cell.hidden_size), jnp.float32)
    lengths = jnp.array([T, 3])
    plain = _loss_and_grads(cell, params, xs, weights, lengths=lengths)
    got = _loss_and_grads(cell, params, xs, weights, lengths=lengths, method=Remat(remat))
    tree_allclose(got, plain, **TOL)


def _checkpoints(fn, *args) -> int:
    """How many ``jax.checkpoint`` regions the traced ``fn`` holds (nested jaxprs included)."""
    return str(jax.make_jaxpr(fn)(*args)).count("remat")


def test_layers_pass_remat_to_every_unroll(key):
    """Values equal the plain run, and every direction of every layer is chunked."""
    layer = Stack([Bidirectional(CELLS["gru"], CELLS["elman_tanh"]), LSTMCell(8, 4)])
    params = layer.init(key)
    xs = jax.random.normal(jax.random.key(1), (2, T, 3), jnp.float32)  # batch-major

    def run(params, remat):
        return layer(params, xs, time_axis=1, method=None if remat is None else Remat(remat))

    tree_allclose(run(params, 3), run(params, None), **TOL)
    assert _checkpoints(lambda p: run(p, None), params) == 0
    assert _checkpoints(lambda p: run(p, 3), params) == 3  # forward, backward, top layer


def _temp_bytes(remat, steps=400):
    cell = LSTMCell(input_size=8, hidden_size=32)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((steps, 4, 8), jnp.float32)

    def loss(params, xs):
        method = None if remat is None else Remat(remat)
        return jnp.mean(unroll(cell, params, xs, method=method)[1] ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes


def test_remat_reduces_the_memory_of_the_backward_pass():
    """Plain BPTT keeps every step's activations; chunks of 20 keep 20 steps' and 20 carries.

    What every schedule keeps is ``ys`` and its cotangent (2 x [T, B, H]); the LSTM's plain
    residuals are several times that, so the ratio must be well below one half.
    """
    plain, chunked = _temp_bytes(None), _temp_bytes(20)
    assert chunked < 0.5 * plain, (chunked, plain)


@pytest.mark.parametrize(
    "remat, match",
    [
        (0, "chunks must be a positive int"),
        (-2, "chunks must be a positive int"),
        ((), "chunks must be a positive int"),
        ((4, 0), "chunks must be a positive int"),
        (2.5, "chunks must be a positive int"),
        (True, "chunks must be a positive int"),
    ],
)
def test_bad_remat_is_rejected(remat, match):
    with pytest.raises(ValueError, match=match):
        Remat(remat)


def test_remat_on_an_empty_sequence(key):
    """T = 0 returns the initial carry and no outputs (it raised an internal TypeError)."""
    cell = CELLS["gru"]
    params = cell.init(key)
    xs = jnp.ones((0, 2, cell.input_size), jnp.float32)
    carry, ys = unroll(cell, params, xs, method=Remat(2))
    assert ys.shape == (0, 2, cell.hidden_size) and float(jnp.abs(carry).sum()) == 0.0

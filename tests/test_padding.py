"""Padding is inert in both directions: NaN or Inf past a sequence's length reaches no value
and no gradient, on every cell, every derivative and every method (issue 22, item 4).

Before: the step still ran on padded inputs, and the masking ``where`` turned that into
0 x NaN in the backward pass, so every gradient was NaN while outputs and loss stayed finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from seqjax.forecast import LatentAR, one_step_loss
from tests.conftest import random_like
from tests.registry import CARRY_KINDS, CELLS, every_cell

T, B = 6, 3
LENGTHS = jnp.array([T, 4, 0], jnp.int32)
PAD = jnp.arange(T)[:, None] >= LENGTHS[None]  # [T, B]


def _poisoned(xs, value):
    return jnp.where(PAD[..., None], jnp.asarray(value, xs.dtype), xs)


def _check(grad_fn, *args, xs_index: int):
    """Gradients with NaN, +Inf and -Inf padding are finite and equal the zero-padded ones."""
    args = list(args)
    clean = args[xs_index]
    args[xs_index] = _poisoned(clean, 0.0)
    want = grad_fn(*args)
    for value in (jnp.nan, jnp.inf, -jnp.inf):
        args[xs_index] = _poisoned(clean, value)
        got = grad_fn(*args)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            if not jnp.issubdtype(g.dtype, jnp.inexact):
                continue
            assert np.isfinite(np.asarray(g)).all(), value
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)


def _unroll_grads(cell, method):
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, cell.input_size), jnp.float32)
    carry = random_like(cell.init_carry((B,)), jax.random.key(2), 0.5)
    weights = jax.random.normal(jax.random.key(3), (T, B, cell.hidden_size), jnp.float32)

    @jax.jit
    def grads(params, xs, carry):
        def loss(params, xs, carry):
            final, ys = sj.unroll(cell, params, xs, carry, lengths=LENGTHS, method=method)
            return jnp.sum(weights * ys) + sum(jnp.sum(a) for a in jax.tree.leaves(final))

        return jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry)

    return grads, params, xs, carry


@every_cell
def test_every_cell_default_derivative(cell):
    grads, *args = _unroll_grads(cell, None)  # structured where the cell supports it
    _check(grads, *args, xs_index=1)


@pytest.mark.parametrize("name", CARRY_KINDS)
def test_autodiff_derivative(name):
    grads, *args = _unroll_grads(CELLS[name], sj.Scan(derivative="autodiff"))
    _check(grads, *args, xs_index=1)


@pytest.mark.parametrize(
    "name, method",
    [
        ("lstm", sj.Remat(4)),
        ("min_gru", sj.Associative()),
        ("lru", sj.Associative()),
        ("gru", sj.DEER()),
        ("lstm", sj.QuasiDEER()),
        ("lstm", sj.Pallas()),
    ],
    ids=["remat", "associative-log", "associative-complex", "deer", "quasi_deer", "pallas"],
)
def test_other_methods(name, method):
    grads, *args = _unroll_grads(CELLS[name], method)
    _check(grads, *args, xs_index=1)


def test_layers_and_models_keep_padding_out():
    key = jax.random.key(0)
    layer = sj.Stack.build(sj.LSTMCell, 3, (4, 4), bidirectional=True)
    params = layer.init(key)
    xs = jax.random.normal(jax.random.key(1), (T, B, 3), jnp.float32)

    @jax.jit
    def layer_grads(params, xs):
        return jax.grad(lambda p, x: jnp.sum(layer(p, x, lengths=LENGTHS)[1] ** 2), (0, 1))(
            params, xs
        )

    _check(layer_grads, params, xs, xs_index=1)

    model = sj.SequenceClassifier(sj.GRUCell(3, 4), num_classes=2)
    mparams = model.init(key)
    labels = jnp.array([0, 1, 1], jnp.int32)
    model_grads = jax.jit(jax.grad(lambda p, x: model.loss(p, x, labels, LENGTHS)))
    _check(model_grads, mparams, xs, xs_index=1)

    forecaster = LatentAR(sj.GRUCell(3, 4))
    fparams = forecaster.init(key)
    latent_grads = jax.jit(
        jax.grad(lambda p, x: jnp.sum(forecaster(p, x, lengths=LENGTHS)[1] ** 2))
    )
    _check(latent_grads, fparams, xs, xs_index=1)
    loss_grads = jax.jit(jax.grad(lambda p, x: one_step_loss(forecaster, p, x, lengths=LENGTHS)))
    _check(loss_grads, fparams, xs, xs_index=1)


def test_metrics_keep_masked_targets_out():
    predictions = jax.random.normal(jax.random.key(0), (T, B, 2), jnp.float32)
    targets = jax.random.normal(jax.random.key(1), (T, B, 2), jnp.float32)
    mask = ~PAD
    for metric in (sj.losses.rmse, sj.losses.nrmse, sj.mean_squared_error):

        def grads(p, t, metric=metric):
            return jax.grad(lambda p: metric(p, t, mask))(p)

        _check(jax.jit(grads), predictions, targets, xs_index=1)

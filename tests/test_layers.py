"""Heads and pooling: Dense, Embedding, last_valid, mean_valid."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import Dense, Embedding, LSTMCell, Stack, last_valid, mean_valid, unroll


def test_dense_is_affine(key):
    head = Dense(4, 3)
    params = head.init(key)
    x = jax.random.normal(key, (2, 5, 4), jnp.float32)
    want = np.einsum("bti,io->bto", np.asarray(x), np.asarray(params.w)) + np.asarray(params.b)
    np.testing.assert_allclose(head(params, x), want, rtol=1e-5, atol=1e-6)


def test_embedding_looks_up_rows(key):
    embed = Embedding(7, 3)
    params = embed.init(key)
    ids = jnp.array([[0, 6], [3, 3]])
    np.testing.assert_array_equal(embed(params, ids), np.asarray(params.table)[np.asarray(ids)])


def test_last_valid_is_the_final_forward_state(key):
    cell = LSTMCell(3, 4)
    params = cell.init(key)
    xs = jax.random.normal(key, (6, 3, 3), jnp.float32)
    lengths = jnp.array([6, 2, 0])
    carry, ys = unroll(cell, params, xs, lengths=lengths)
    last = last_valid(ys, lengths)
    np.testing.assert_allclose(last[:2], carry.h[:2], rtol=1e-6)
    assert not bool(jnp.any(last[2]))
    np.testing.assert_array_equal(last_valid(ys), ys[-1])
    np.testing.assert_array_equal(last_valid(jnp.swapaxes(ys, 0, 1), lengths, time_axis=1), last)


def test_mean_valid_averages_only_valid_steps(key):
    ys = jax.random.normal(key, (5, 3, 2), jnp.float32)
    lengths = jnp.array([5, 2, 0])
    got = mean_valid(ys, lengths)
    np.testing.assert_allclose(got[0], ys[:, 0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1], ys[:2, 1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], np.zeros(2))
    np.testing.assert_allclose(mean_valid(ys), ys.mean(0), rtol=1e-6)
    # int32 lengths under x64 and strict promotion (the step index takes their dtype).
    np.testing.assert_array_equal(mean_valid(ys, lengths.astype(jnp.int32)), got)


def test_a_bidirectional_classifier_in_a_few_lines(key):
    """The README's many-to-one model: embedding, 2-layer BiLSTM, dense head; it trains."""
    embed, rnn, head = (
        Embedding(12, 8),
        Stack.build(LSTMCell, 8, (16, 16), bidirectional=True),
        Dense(32, 2),
    )
    keys = jax.random.split(key, 3)
    params = (embed.init(keys[0]), rnn.init(keys[1]), head.init(keys[2]))
    ids = jax.random.randint(key, (16, 9), 0, 12)
    lengths = jax.random.randint(jax.random.key(5), (16,), 1, 10)
    labels = (ids[:, 0] > 5).astype(jnp.int32)  # depends on the first token: needs memory

    def loss(params):
        p_embed, p_rnn, p_head = params
        _, ys = rnn(p_rnn, embed(p_embed, ids), lengths=lengths, time_axis=1)
        logits = head(p_head, mean_valid(ys, lengths, time_axis=1))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)))
    first = loss(params)
    for _ in range(30):
        params = step(params)
    assert loss(params) < 0.5 * first

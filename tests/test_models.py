"""Task-shape models: padding never matters, losses equal hand-written loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import (
    Bidirectional,
    ConditionedGenerator,
    Embedding,
    GRUCell,
    LSTMCell,
    Seq2Seq,
    SequenceClassifier,
    SequenceTagger,
    Stack,
    mean_valid,
)

T, B, I = 6, 3, 4
LENGTHS = jnp.array([6, 3, 1], jnp.int32)


def _pad(num_steps, lengths):
    """Booleans ``[T, B]``, True at padded steps."""
    return np.arange(num_steps)[:, None] >= np.asarray(lengths)[None, :]


def _padded_noise(xs, lengths, key):
    """``xs`` with every step at or past its sequence's length replaced by noise."""
    pad = jnp.asarray(_pad(xs.shape[0], lengths))
    noise = jax.random.normal(key, xs.shape, xs.dtype) * 10.0
    return jnp.where(jnp.broadcast_to(pad[..., None], xs.shape), noise, xs)


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def _run_forward(cell, params, xs, carry=None):
    """Plain loop of ``cell.apply`` over ``xs [t, I]``; returns (carry, [t, H] outputs)."""
    carry = cell.init_carry(()) if carry is None else carry
    ys = []
    for x in xs:
        carry, y = cell.apply(params, carry, x)
        ys.append(y)
    return carry, ys


@pytest.fixture
def xs(key):
    return jax.random.normal(key, (T, B, I), jnp.float32)


@pytest.mark.parametrize(
    "encoder",
    [GRUCell(I, 5), Stack.build(LSTMCell, I, (5, 5), bidirectional=True)],
    ids=["gru", "stack_bilstm"],
)
def test_classifier_ignores_padding_and_reads_the_last_valid_state(encoder, key, xs):
    model = SequenceClassifier(encoder, num_classes=3)
    params = model.init(key)
    labels = jnp.array([0, 2, 1], jnp.int32)

    @jax.jit
    def outputs(params, xs):
        loss = model.loss(params, xs, labels, LENGTHS)
        return model.features(params, xs, LENGTHS), model(params, xs, LENGTHS), loss

    features, logits, loss = outputs(params, xs)
    noisy = outputs(params, _padded_noise(xs, LENGTHS, jax.random.key(9)))
    for got, want in zip(noisy, (features, logits, loss), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for b, n in enumerate(LENGTHS.tolist()):
        valid = xs[:n, b]
        if isinstance(encoder, Stack):  # last layer: forward at step n-1, backward at step 0
            below = encoder.layers[0]
            _, yf = _run_forward(below.forward, params.encoder[0].forward, valid)
            _, yb = _run_forward(below.backward, params.encoder[0].backward, valid[::-1])
            mid = jnp.stack([jnp.concatenate([f, r]) for f, r in zip(yf, yb[::-1], strict=True)])
            top = encoder.layers[1]
            hf, _ = _run_forward(top.forward, params.encoder[1].forward, mid)
            hb, _ = _run_forward(top.backward, params.encoder[1].backward, mid[::-1])
            want = jnp.concatenate([hf.h, hb.h])
        else:
            want, _ = _run_forward(encoder, params.encoder, valid)
        np.testing.assert_allclose(features[b], want, rtol=1e-5, atol=1e-6)
    want_loss = -np.mean([_log_softmax(logits[b])[labels[b]] for b in range(B)])
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)


def test_classifier_mean_pool_token_input_and_batch_major(key):
    model = SequenceClassifier(GRUCell(I, 5), num_classes=3, embed=Embedding(7, I), pool=mean_valid)
    params = model.init(key)
    ids = jax.random.randint(key, (T, B), 0, 7, jnp.int32)
    noisy = jnp.where(_pad(T, LENGTHS), 6, ids)
    lengths = np.asarray(LENGTHS, np.int32)
    run = jax.jit(model, static_argnames="time_axis")
    logits = run(params, ids, lengths)
    np.testing.assert_allclose(run(params, noisy, lengths), logits, rtol=1e-6)
    np.testing.assert_allclose(run(params, noisy.T, lengths, time_axis=1), logits, rtol=1e-6)
    embedded = model.embed(params.embed, ids)
    for b, n in enumerate(LENGTHS.tolist()):
        _, outs = _run_forward(model.encoder, params.encoder, embedded[:n, b])
        want = model.head(params.head, jnp.mean(jnp.stack(outs), axis=0))
        np.testing.assert_allclose(logits[b], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="embed.features must equal"):
        SequenceClassifier(GRUCell(I, 5), 3, embed=Embedding(7, I + 1))
    with pytest.raises(TypeError, match="xs must hold integer ids"):
        model(params, ids.astype(jnp.float32), LENGTHS)


def test_tagger_masks_padding_and_its_loss_equals_the_loop(key, xs):
    encoder = Bidirectional(GRUCell(I, 5), LSTMCell(I, 4))
    model = SequenceTagger(encoder, num_tags=3)
    params = model.init(key)
    run = jax.jit(lambda p, x, tags: (model(p, x, LENGTHS), model.loss(p, x, tags, LENGTHS)))
    tags = jax.random.randint(key, (T, B), 0, 3, jnp.int32)
    logits, loss = run(params, xs, tags)
    assert logits.shape == (T, B, 3)
    pad = _pad(T, LENGTHS)
    assert not np.any(np.asarray(logits)[pad])
    noisy_tags = jnp.where(jnp.asarray(pad), 2 - tags, tags)
    noisy = run(params, _padded_noise(xs, LENGTHS, jax.random.key(9)), noisy_tags)
    np.testing.assert_allclose(noisy[0], logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(noisy[1], loss, rtol=1e-6)
    terms = []
    for b, n in enumerate(LENGTHS.tolist()):
        _, yf = _run_forward(encoder.forward, params.encoder.forward, xs[:n, b])
        _, yb = _run_forward(encoder.backward, params.encoder.backward, xs[:n, b][::-1])
        for t, (f, r) in enumerate(zip(yf, yb[::-1], strict=True)):
            logit = model.head(params.head, jnp.concatenate([f, r]))
            terms.append(-_log_softmax(logit)[int(tags[t, b])])
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)


@pytest.mark.parametrize(
    "decoder", [LSTMCell(3, 6), Stack((GRUCell(3, 5), GRUCell(5, 6)))], ids=["lstm", "stack"]
)
def test_conditioned_teacher_forcing_loss_equals_the_loop(decoder, key):
    model = ConditionedGenerator(4, decoder, vocab_size=7, embed_size=3, start_token=5, end_token=6)
    params = model.init(key)
    condition = jax.random.normal(key, (B, 4), jnp.float32)
    targets = jax.random.randint(jax.random.key(1), (T, B), 0, 7, jnp.int32)
    run = jax.jit(lambda p, targets: model.loss(p, condition, targets, LENGTHS))
    loss = run(params, targets)
    carry0 = model.initial_carry(params, condition)
    leaves, bridge = jax.tree.leaves(carry0), params.bridge
    assert len(leaves) == len(bridge) == 2
    for leaf, p in zip(leaves, bridge, strict=True):
        want = np.tanh(np.asarray(condition) @ np.asarray(p.w) + np.asarray(p.b))
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-6)
    terms = []
    for b, n in enumerate(LENGTHS.tolist()):
        carry, token = jax.tree.map(lambda a, b=b: a[b], carry0), 5
        for t in range(n):
            carry, logits = model.step(params, carry, jnp.asarray(token, jnp.int32))
            terms.append(-_log_softmax(logits)[int(targets[t, b])])
            token = targets[t, b]
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
    noisy = jnp.where(_pad(T, LENGTHS), 0, targets)
    np.testing.assert_allclose(run(params, noisy), loss, rtol=1e-6)
    with pytest.raises(ValueError, match=r"condition must have shape \[\*B, 4\]"):
        model.initial_carry(params, jnp.ones((B, 5), jnp.float32))
    with pytest.raises(ValueError, match="end_token must lie in"):
        ConditionedGenerator(4, decoder, vocab_size=7, embed_size=3, end_token=7)


def _seq2seq():
    encoder = Stack.build(GRUCell, 3, (5,), bidirectional=True)
    decoder = ConditionedGenerator(10, GRUCell(3, 6), vocab_size=6, embed_size=3, end_token=1)
    return Seq2Seq(Embedding(8, 3), encoder, decoder)


def test_seq2seq_loss_equals_the_loop_and_ignores_padding(key):
    model = _seq2seq()
    params = model.init(key)
    source = jax.random.randint(key, (T, B), 0, 8, jnp.int32)
    targets = jax.random.randint(jax.random.key(2), (5, B), 0, 6, jnp.int32)
    target_lengths = jnp.array([5, 2, 4], jnp.int32)

    @jax.jit
    def run(params, source, targets):
        loss = model.loss(params, source, LENGTHS, targets, target_lengths)
        return loss, model.decode(params, source, LENGTHS, key, 5).tokens

    loss, tokens = run(params, source, targets)
    terms = []
    layer, p = model.encoder.layers[0], params.encoder[0]
    for b, n in enumerate(LENGTHS.tolist()):
        xs = model.source_embed(params.source_embed, source[:n, b])
        hf, _ = _run_forward(layer.forward, p.forward, xs)
        hb, _ = _run_forward(layer.backward, p.backward, xs[::-1])
        condition = jnp.concatenate([hf, hb])
        bridge = params.target.bridge[0]
        carry = jnp.tanh(condition @ bridge.w + jnp.broadcast_to(bridge.b, (6,)))
        token = 0
        for t in range(int(target_lengths[b])):
            carry, logits = model.decoder.step(params.target, carry, jnp.asarray(token, jnp.int32))
            terms.append(-_log_softmax(logits)[int(targets[t, b])])
            token = targets[t, b]
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
    noisy_source = jnp.where(_pad(T, LENGTHS), 7, source)
    noisy_targets = jnp.where(_pad(5, target_lengths), 3, targets)
    noisy_loss, noisy_tokens = run(params, noisy_source, noisy_targets)
    np.testing.assert_allclose(noisy_loss, loss, rtol=1e-6)
    np.testing.assert_array_equal(noisy_tokens, tokens)
    with pytest.raises(ValueError, match="condition_size must equal the encoder's output size 10"):
        Seq2Seq(
            Embedding(8, 3),
            Stack.build(GRUCell, 3, (5,), bidirectional=True),
            ConditionedGenerator(9, GRUCell(3, 6), 6, 3),
        )

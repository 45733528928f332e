"""Decoding loops against step-by-step Python references: greedy, sampled, beam, brute force."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import ConditionedGenerator, GRUCell, beam_search, decode, pick_token, sample

V, START, END = 5, 0, 1


def _model(vocab_size=V, key=0):
    model = ConditionedGenerator(
        4, GRUCell(3, 6), vocab_size=vocab_size, embed_size=3, start_token=START, end_token=END
    )
    params = model.init(jax.random.key(key))
    # Sharper, end-prone distributions, so that sequences end at different steps.
    head = params.head._replace(w=3.0 * params.head.w, b=params.head.b.at[END].add(2.0))
    params = params._replace(head=head)
    conditions = jax.random.normal(jax.random.key(key + 1), (3, 4), jnp.float32)
    return model, params, conditions


def _one(tree, b):
    return jax.tree.map(lambda a: a[b], tree)


def reference_decode(step_fn, params, carry, token, key, max_length, *, temperature, top_k, end):
    """A Python loop over steps; each sequence's end handled with plain lists."""
    batch = token.shape[0]
    tokens = [[] for _ in range(batch)]
    scores = [0.0] * batch
    done = [False] * batch
    final = [None] * batch
    for t in range(max_length):
        new_carry, logits = step_fn(params, carry, token)
        picked = pick_token(
            jax.random.fold_in(key, t), logits, temperature=temperature, top_k=top_k
        )
        log_p = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        for b in range(batch):
            if done[b]:
                tokens[b].append(end)
                continue
            tok = int(picked[b])
            tokens[b].append(tok)
            scores[b] += float(log_p[b, tok])
            final[b] = _one(new_carry, b)
            done[b] = end is not None and tok == end
        carry, token = new_carry, jnp.asarray([row[-1] for row in tokens], jnp.int32)
    lengths = [row.index(end) + 1 if end in row else max_length for row in tokens]
    return np.array(tokens).T, np.array(lengths), np.array(scores), final


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (0.8, None), (1.3, 3)])
def test_decode_equals_the_python_loop(temperature, top_k):
    model, params, conditions = _model()
    carry = model.initial_carry(params, conditions)
    start = jnp.full((3,), START, jnp.int32)
    key = jax.random.key(7)
    run = jax.jit(
        lambda p, c, k: decode(
            model.step, p, c, start, k, 6, temperature=temperature, top_k=top_k, end_token=END
        )
    )
    out = run(params, carry, key)
    tokens, lengths, scores, final = reference_decode(
        model.step, params, carry, start, key, 6, temperature=temperature, top_k=top_k, end=END
    )
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.lengths, lengths)
    np.testing.assert_allclose(out.log_probs, scores, rtol=1e-5)
    for b in range(3):
        np.testing.assert_allclose(_one(out.carry, b), final[b], rtol=1e-5, atol=1e-6)
    assert lengths.min() < 6  # the test is only worth something if some sequences end early


def test_decode_without_end_token_is_sample():
    model, params, conditions = _model()
    carry = model.initial_carry(params, conditions)
    start, key = jnp.full((3,), START, jnp.int32), jax.random.key(3)
    out = decode(model.step, params, carry, start, key, 5, temperature=1.0)
    _, tokens = sample(model.step, params, carry, start, key, 5, temperature=1.0)
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.lengths, [5, 5, 5])


def reference_beam(step_fn, params, carry, token, beam_width, max_length, end):
    """Beam search over one sequence with Python lists (ties: lower beam, then lower token)."""
    beams = [((), 0.0, carry, False)]
    for _ in range(max_length):
        candidates = []
        for k, (seq, score, c, done) in enumerate(beams):
            last = jnp.asarray(seq[-1] if seq else token, jnp.int32)
            new_c, logits = step_fn(params, c, last)
            log_p = np.asarray(jax.nn.log_softmax(logits), np.float64)
            for v in range(log_p.shape[0]):
                if done and v != end:
                    continue
                extra = 0.0 if done else log_p[v]
                candidates.append((-(score + extra), k, v, seq + (v,), new_c, done or v == end))
        candidates.sort(key=lambda c: c[:3])
        beams = [(s, -neg, c, d) for neg, _, _, s, c, d in candidates[:beam_width]]
    return beams


def test_beam_search_equals_the_python_loop():
    model, params, conditions = _model()
    carry = model.initial_carry(params, conditions)
    start = jnp.full((3,), START, jnp.int32)
    beams = jax.jit(lambda p, c: beam_search(model.step, p, c, start, 3, 5, end_token=END))(
        params, carry
    )
    assert beams.tokens.shape == (5, 3, 3)
    for b in range(3):
        want = reference_beam(model.step, params, _one(carry, b), START, 3, 5, END)
        for k, (seq, score, _, _) in enumerate(want):
            np.testing.assert_array_equal(beams.tokens[:, b, k], seq)
            np.testing.assert_allclose(beams.scores[b, k], score, rtol=1e-5)
            assert int(beams.lengths[b, k]) == (seq.index(END) + 1 if END in seq else 5)


def _sequence_log_prob(step_fn, params, carry, seq):
    token, total = jnp.asarray(START, jnp.int32), 0.0
    for tok in seq:
        carry, logits = step_fn(params, carry, token)
        total += float(jax.nn.log_softmax(logits)[tok])
        token = jnp.asarray(tok, jnp.int32)
    return total


def test_wide_beam_search_is_exact_against_brute_force():
    # V = 3, L = 3: with K = V ** (L - 1) = 9 every prefix survives, so the beams must be the
    # 9 most likely of all 15 sequences (ending at END, or running to L) by summed log-prob.
    model, params, conditions = _model(vocab_size=3, key=5)
    carry = model.initial_carry(params, conditions[:2])
    beams = beam_search(
        model.step, params, carry, jnp.full((2,), START, jnp.int32), 9, 3, end_token=END
    )
    for b in range(2):
        hypotheses = []
        for length in (1, 2, 3):
            for seq in itertools.product(range(3), repeat=length):
                if END in seq[:-1] or (length < 3 and seq[-1] != END):
                    continue
                score = _sequence_log_prob(model.step, params, _one(carry, b), seq)
                hypotheses.append((score, seq + (END,) * (3 - length)))
        assert len(hypotheses) == 15
        hypotheses.sort(key=lambda h: -h[0])
        np.testing.assert_allclose(beams.scores[b], [h[0] for h in hypotheses[:9]], rtol=1e-5)
        got = {tuple(np.asarray(beams.tokens[:, b, k]).tolist()) for k in range(9)}
        assert got == {h[1] for h in hypotheses[:9]}


def test_beams_beyond_the_possible_hold_end_tokens_past_their_length():
    # V = 3, L = 3 allows 15 sequences; with K = 20 the last 5 beams are impossible (score
    # -inf). Their tokens past their lengths must still be end_token, as for any beam.
    model, params, conditions = _model(vocab_size=3, key=5)
    carry = model.initial_carry(params, conditions[:2])
    start = jnp.full((2,), START, jnp.int32)
    beams = beam_search(model.step, params, carry, start, 20, 3, end_token=END)
    assert np.isneginf(beams.scores[:, 15:]).all() and np.isfinite(beams.scores[:, :15]).all()
    past_end = np.arange(3)[:, None, None] >= np.asarray(beams.lengths)[None]
    np.testing.assert_array_equal(np.where(past_end, beams.tokens, END), END)


def test_top_k_draws_from_exactly_k_tokens_when_logits_tie():
    # Three tokens tie for the largest logit: top_k=1 must keep one of them (the lowest id),
    # not all three, and top_k=2 the two lowest.
    logits = jnp.tile(jnp.array([[0.0, 1.0, 1.0, 1.0]]), (2000, 1))
    for k, allowed in ((1, {1}), (2, {1, 2}), (4, {0, 1, 2, 3})):
        drawn = pick_token(jax.random.key(k), logits, temperature=1.0, top_k=k)
        assert set(np.unique(drawn).tolist()) == allowed
    # [*B, V] with two batch axes keeps the rows apart.
    logits = jnp.array([[[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]])
    drawn = pick_token(jax.random.key(0), logits, temperature=1.0, top_k=1)
    assert drawn.tolist() == [[0, 2]]


def test_beam_of_width_one_is_greedy():
    model, params, conditions = _model()
    greedy = model.generate(params, conditions, jax.random.key(0), 6)
    beams = model.beam_search(params, conditions, 1, 6)
    np.testing.assert_array_equal(beams.tokens[..., 0], greedy.tokens)
    np.testing.assert_array_equal(beams.lengths[..., 0], greedy.lengths)
    np.testing.assert_allclose(beams.scores[..., 0], greedy.log_probs, rtol=1e-5)


def test_decoding_rejects_bad_arguments():
    model, params, conditions = _model()
    carry = model.initial_carry(params, conditions)
    start, key = jnp.full((3,), START, jnp.int32), jax.random.key(0)
    with pytest.raises(TypeError, match="token must hold integer ids"):
        decode(model.step, params, carry, start.astype(jnp.float32), key, 3)
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        decode(model.step, params, carry, start, key, 0)
    with pytest.raises(ValueError, match=r"end_token must lie in \[0, V\) = \[0, 5\)"):
        beam_search(model.step, params, carry, start, 2, 3, end_token=5)
    with pytest.raises(ValueError, match="beam_width must be a positive int"):
        beam_search(model.step, params, carry, start, 0, 3)
    with pytest.raises(ValueError, match="top_k must lie in"):
        pick_token(key, jnp.zeros((2, 5)), top_k=6)
    # NumPy ints are ints, as in unroll's truncate and unroll.
    assert decode(model.step, params, carry, start, key, np.int64(3)).tokens.shape == (3, 3)
    assert beam_search(model.step, params, carry, start, 2, np.int32(3)).tokens.shape == (3, 3, 2)

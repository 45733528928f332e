"""Issue 22, items 5-7: numerics that train, and every bad input a clear error or a defined
meaning (which argument, what was expected, what came)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from seqjax import train


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sj.LSTMCell(3, -2), "LSTMCell: hidden_size must be a positive int; got -2"),
        (lambda: sj.GRUCell(3, 4.0), "GRUCell: hidden_size must be a positive int; got 4.0"),
        (lambda: sj.ElmanCell(0, 4), "ElmanCell: input_size must be a positive int; got 0"),
        (lambda: sj.MinGRUCell(3, True), "MinGRUCell: hidden_size must be a positive int"),
        (lambda: sj.Embedding(0, 3), "Embedding: vocab_size must be a positive int; got 0"),
        (lambda: sj.Dense(4, 0), "Dense: output_size must be a positive int; got 0"),
        (lambda: sj.SequenceClassifier(sj.GRUCell(3, 4), 0), "num_classes must be a positive"),
    ],
)
def test_constructors_refuse_bad_sizes(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_sizes_are_accepted_as_ints():
    cell = sj.LSTMCell(np.int64(3), np.int32(4))
    assert type(cell.input_size) is int and cell == sj.LSTMCell(3, 4)


def test_params_of_another_cell_or_size_name_the_cell_and_the_leaf(key):
    cell = sj.LSTMCell(3, 4)
    xs = jnp.ones((5, 2, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"do not fit LSTMCell.*GRUParams.*another cell"):
        sj.unroll(cell, sj.GRUCell(3, 4).init(key), xs)
    with pytest.raises(ValueError, match=r"leaf \.w_h must have shape \(4, 16\).*got \(5, 20\)"):
        sj.unroll(cell, sj.LSTMCell(3, 5).init(key)._replace(w_x=cell.init(key).w_x), xs)
    # Noise drawn into a wrapper's params is not "another structure".
    zoneout = sj.ZoneoutCell(cell, hidden_rate=0.1)
    noisy = zoneout.with_noise(zoneout.init(key), jax.random.key(1))
    assert sj.unroll(zoneout, noisy, xs)[1].shape == (5, 2, 4)


def test_float16_parameters_train_with_the_default_optimizer(key):
    """Adam's eps 1e-8 rounds to 0 in float16: params were NaN after one update."""
    cell = sj.GRUCell(2, 8)
    params = jax.tree.map(lambda a: a.astype(jnp.float16), cell.init(key))
    xs = jax.random.normal(jax.random.key(1), (10, 4, 2), jnp.float16)
    target = jnp.ones((4, 8), jnp.float16)

    def loss_fn(p, xs):
        carry, _ = sj.unroll(cell, p, xs)
        return jnp.mean((carry - target).astype(jnp.float32) ** 2)

    optimizer = sj.default_optimizer(1e-2)
    step = jax.jit(sj.bptt_step(loss_fn, optimizer))
    opt_state = optimizer.init(params)
    losses = []
    # optax's Adam mixes its int32 step count with Python floats: standard promotion there.
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(30):
            params, opt_state, metrics = step(params, opt_state, xs)
            losses.append(float(metrics.loss))
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert all(leaf.dtype == jnp.float16 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("rate", [float("nan"), -1e-3, 0.0, float("inf"), "0.1"])
def test_bad_learning_rates_are_refused(rate):
    with pytest.raises(ValueError, match="learning_rate must be"):
        sj.default_optimizer(rate)


def test_skip_nonfinite_keeps_the_state_and_counts(key):
    params = {"w": jnp.ones(3, jnp.float32)}

    def loss_fn(p, scale):
        return jnp.sum(p["w"] ** 2) * scale

    optimizer = sj.default_optimizer(0.1)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam, as above
        _check_skips(optimizer, params, loss_fn)


def _check_skips(optimizer, params, loss_fn):
    for skip in (False, True):
        step = jax.jit(sj.bptt_step(loss_fn, optimizer, skip_nonfinite=skip))
        state = optimizer.init(params)
        p1, s1, m1 = step(params, state, jnp.float32(1.0))
        p2, s2, m2 = step(p1, s1, jnp.float32(jnp.nan))
        assert int(m1.skipped) == 0
        if skip:
            assert int(m2.skipped) == 1
            np.testing.assert_array_equal(p2["w"], p1["w"])
            for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(s1), strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert int(m2.skipped) == 0 and not np.isfinite(np.asarray(p2["w"])).all()


def test_cross_entropy_checks_targets():
    logits = jnp.zeros((3, 4), jnp.float32)
    for targets in ([0, 1, -1], [0, 1, 4]):
        with pytest.raises(ValueError, match=r"targets must lie in \[0, V\) = \[0, 4\)"):
            sj.cross_entropy(logits, jnp.array(targets))
    # Masked positions may hold a padding id; traced bad targets give NaN, not another class.
    mask = jnp.array([True, True, False])
    assert np.isfinite(float(sj.cross_entropy(logits, jnp.array([0, 1, -100]), mask)))
    traced = jax.jit(sj.cross_entropy)
    assert np.isnan(float(traced(logits, jnp.array([0, 1, -1]))))


def test_traced_lengths_past_T_mean_T_everywhere():
    """Under jit lengths cannot be checked: last_valid returned NaN while mean_valid divided
    by the raw length and unroll read T. Now every consumer clips them to [0, T]."""
    ys = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 2, 2)
    lengths = jnp.array([7, -2], jnp.int32)
    clipped = jnp.array([3, 0], jnp.int32)
    for fn in (sj.last_valid, sj.mean_valid):
        np.testing.assert_array_equal(jax.jit(fn)(ys, lengths), fn(ys, clipped))
    cell = sj.GRUCell(2, 3)
    params = cell.init(jax.random.key(0))
    run = jax.jit(lambda n: sj.unroll(cell, params, ys, lengths=n)[1])
    np.testing.assert_array_equal(run(lengths), run(clipped))


def test_beam_width_accepts_numpy_ints(key):
    cell = sj.GRUCell(3, 4)
    model = sj.ConditionedGenerator(2, cell, vocab_size=5, embed_size=3)
    params = model.init(key)
    condition = jnp.ones((1, 2), jnp.float32)
    beams = model.beam_search(params, condition, max_length=3, beam_width=np.int64(2))
    assert beams.tokens.shape[-1] == 2 or beams.tokens.shape[1] == 1
    with pytest.raises(ValueError, match="beam_width must be a positive int"):
        model.beam_search(params, condition, max_length=3, beam_width=0)


def test_step_metrics_built_with_two_fields_still_work():
    assert train.StepMetrics(1.0, 2.0).skipped == 0  # callers building two fields still work

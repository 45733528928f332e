"""Training steps: BPTT, both truncated forms, k1/k2 windows, resets and clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import Dense, GRUCell, LSTMCell, Stack, unroll
from seqjax.losses import cross_entropy, mean_squared_error, sequence_mask
from seqjax.train import (
    bptt_step,
    default_optimizer,
    stream_windows,
    tbptt_scan,
    tbptt_step,
    window_loss,
)
from tests.conftest import tree_allclose
from tests.registry import every_carry_kind

T, B = 12, 3
TOL = dict(rtol=1e-5, atol=1e-7)  # float32; same math, different program structure


def _model(cell):
    """A regression model: a cell, then a dense readout of its outputs."""
    head = Dense(cell.hidden_size, 2)

    def init(key):
        k1, k2 = jax.random.split(key)
        return cell.init(k1), head.init(k2)

    def forward(params, carry, xs, resets=None, truncate=None):
        carry, ys = unroll(cell, params[0], xs, carry, resets=resets, truncate=truncate)
        return carry, head(params[1], ys)

    return init, forward


def _data(cell, key):
    kx, ky = jax.random.split(key)
    xs = jax.random.normal(kx, (T, B, cell.input_size), jnp.float32)
    targets = jax.random.normal(ky, (T, B, 2), jnp.float32)
    return xs, targets


def _sgd():
    return optax.sgd(0.1)


@every_carry_kind
def test_one_window_of_length_T_is_exactly_bptt(cell, key):
    init, forward = _model(cell)
    params = init(key)
    xs, targets = _data(cell, key)
    carry0 = cell.init_carry((B,))

    def bptt_loss(params, batch):
        return mean_squared_error(forward(params, carry0, batch[0])[1], batch[1])

    # Each side one jitted program (eagerly, each dispatches op by op); bit for bit all the same.
    bptt = jax.jit(bptt_step(bptt_loss, _sgd()))
    want, _, want_metrics = bptt(params, _sgd().init(params), (xs, targets))
    step = jax.jit(tbptt_step(window_loss(forward, mean_squared_error, k1=T), _sgd()))
    got, _, _, got_metrics = step(params, _sgd().init(params), carry0, (xs, targets, None))
    tree_allclose(got, want, rtol=0, atol=0)
    tree_allclose(got_metrics, want_metrics, rtol=0, atol=0)


@every_carry_kind
@pytest.mark.parametrize("k", [5])  # two windows and a dropped tail of 2
def test_streamed_windows_equal_separate_grads_with_constant_carries(cell, key, k):
    """The reference cuts the graph by hand: one jax.grad per window, the carry a constant."""
    init, forward = _model(cell)
    params = init(key)
    xs, targets = _data(cell, key)
    optimizer = _sgd()
    step = jax.jit(tbptt_step(window_loss(forward, mean_squared_error, k1=k), optimizer))
    windows = (stream_windows(xs, k1=k), stream_windows(targets, k1=k), None)
    got = tbptt_scan(step, params, optimizer.init(params), cell.init_carry((B,)), windows)

    @jax.jit  # one program for the windows, instead of op by op
    def by_hand(params, xs, targets):
        p, opt_state, carry, losses = params, optimizer.init(params), cell.init_carry((B,)), []
        for start in range(0, T - k + 1, k):
            x, y, constant = xs[start : start + k], targets[start : start + k], carry

            def loss(p, x=x, y=y, constant=constant):  # differentiated in p alone
                return mean_squared_error(forward(p, constant, x)[1], y)

            losses.append(loss(p))
            grads = jax.grad(loss)(p)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            carry = forward(p, constant, x)[0]
            p = optax.apply_updates(p, updates)
        return p, carry, jnp.stack(losses)

    p, carry, losses = by_hand(params, xs, targets)
    tree_allclose(got[0], p, **TOL)
    tree_allclose(got[2], carry, **TOL)
    np.testing.assert_allclose(got[3].loss, losses, **TOL)


def test_no_gradient_crosses_a_window_border(key):
    """The second window's loss does not depend (in gradient) on the first window's inputs."""
    cell = LSTMCell(3, 4)
    init, forward = _model(cell)
    params = init(key)
    xs, targets = _data(cell, key)
    loss_fn = window_loss(forward, mean_squared_error, k1=4)

    def second_window_loss(xs):
        _, carry = loss_fn(params, cell.init_carry((B,)), (xs[:4], targets[:4], None))
        carry = jax.lax.stop_gradient(carry)  # what tbptt_step does at the border
        return loss_fn(params, carry, (xs[4:8], targets[4:8], None))[0]

    grad = jax.grad(second_window_loss)(xs)
    assert not bool(jnp.any(grad[:4])) and bool(jnp.all(jnp.any(grad[4:8] != 0, axis=-1)))

    # ... while without the cut, the first window's inputs do matter.
    def uncut(xs):
        _, carry = loss_fn(params, cell.init_carry((B,)), (xs[:4], targets[:4], None))
        return loss_fn(params, carry, (xs[4:8], targets[4:8], None))[0]

    assert bool(jnp.any(jax.grad(uncut)(xs)[:4] != 0))


@pytest.mark.parametrize("k1, k2", [(2, 5), (1, 4)])
def test_k1_k2_windows_match_a_hand_written_reference(key, k1, k2):
    """Every k1 steps, backpropagate k2 steps: loss on the window's last k1 steps."""
    cell = GRUCell(3, 4)
    init, forward = _model(cell)
    params = init(key)
    xs, targets = _data(cell, key)
    optimizer = _sgd()
    step = tbptt_step(window_loss(forward, mean_squared_error, k1=k1, k2=k2), optimizer)
    windows = tuple(stream_windows(a, k1=k1, k2=k2) for a in (xs, targets)) + (None,)
    got = tbptt_scan(step, params, optimizer.init(params), cell.init_carry((B,)), windows)

    p, opt_state, carry = params, optimizer.init(params), cell.init_carry((B,))
    for start in range(0, T - k2 + 1, k1):
        constant = carry

        def loss(p, start=start, constant=constant):
            _, ys = forward(p, constant, xs[start : start + k2])
            return mean_squared_error(ys[k2 - k1 :], targets[start + k2 - k1 : start + k2])

        grads = jax.grad(loss)(p)
        carry = forward(p, constant, xs[start : start + k1])[0]
        updates, opt_state = optimizer.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
    tree_allclose(got[0], p, **TOL)
    tree_allclose(got[2], carry, **TOL)


def test_resets_in_a_stream_make_elements_independent(key):
    """A reset mid-window makes the rest of that element's stream a fresh sequence."""
    cell = GRUCell(3, 4)
    init, forward = _model(cell)
    params = init(key)
    xs, _ = _data(cell, key)
    resets = jnp.zeros((T, B), bool).at[5, 1].set(True)
    _, ys = forward(params, cell.init_carry((B,)), xs, resets)
    _, fresh = forward(params, cell.init_carry((1,)), xs[5:, 1:2])
    np.testing.assert_allclose(ys[5:, 1:2], fresh, **TOL)
    _, unreset = forward(params, cell.init_carry((B,)), xs)
    np.testing.assert_array_equal(ys[:, [0, 2]], unreset[:, [0, 2]])


def test_truncation_inside_one_loss_trains_with_bptt_step(key):
    cell = LSTMCell(3, 4)
    init, forward = _model(cell)
    params = init(key)
    xs, targets = _data(cell, key)
    carry0 = cell.init_carry((B,))

    def loss(params, batch, truncate):
        return mean_squared_error(forward(params, carry0, batch[0], truncate=truncate)[1], batch[1])

    optimizer = _sgd()
    state = optimizer.init(params)
    full = bptt_step(lambda p, b: loss(p, b, None), optimizer)(params, state, (xs, targets))
    at_T = bptt_step(lambda p, b: loss(p, b, T), optimizer)(params, state, (xs, targets))
    cut = bptt_step(lambda p, b: loss(p, b, 3), optimizer)(params, state, (xs, targets))
    tree_allclose(at_T, full, rtol=0, atol=0)
    assert float(cut[2].grad_norm) != pytest.approx(float(full[2].grad_norm), rel=1e-4)


def test_clipping_bounds_the_update_and_the_norm_before_clipping_is_reported(key):
    cell = LSTMCell(3, 4)
    init, forward = _model(cell)
    params = init(key)
    xs, targets = _data(cell, key)
    carry0 = cell.init_carry((B,))

    def loss(params, batch):
        return 1e4 * mean_squared_error(forward(params, carry0, batch[0])[1], batch[1])

    max_norm = 0.5
    optimizer = optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(1.0))
    new, _, metrics = bptt_step(loss, optimizer)(params, optimizer.init(params), (xs, targets))
    grads = jax.grad(loss)(params, (xs, targets))
    true_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
    assert float(metrics.grad_norm) == pytest.approx(true_norm, rel=1e-5) and true_norm > max_norm
    step = jax.tree.map(lambda a, b: a - b, new, params)
    step_norm = float(jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(step))))
    assert step_norm == pytest.approx(max_norm, rel=1e-4)


def test_default_optimizer_is_value_clip_then_norm_clip_then_adam():
    """Over several steps of varying gradients, the recipe equals the hand-built optax chain
    and differs from Adam without clipping (Adam's first step alone would hide clipping)."""
    grads = [{"w": jnp.array([100.0 * (-1) ** i, -0.5, 3.0 + i], jnp.float32)} for i in range(4)]
    params = {"w": jnp.zeros(3, jnp.float32)}

    def run(optimizer):
        state, out = optimizer.init(params), []
        for g in grads:
            updates, state = optimizer.update(g, state, params)
            out.append(updates["w"])
        return np.stack(out)

    # optax's Adam mixes its int32 step count with Python floats: standard promotion there.
    with jax.numpy_dtype_promotion("standard"):
        got = run(default_optimizer(1e-2, max_norm=1.0, max_value=2.0))
        want = run(optax.chain(optax.clip(2.0), optax.clip_by_global_norm(1.0), optax.adam(1e-2)))
        norm_only = run(default_optimizer(1e-2, max_norm=1.0))
        plain = run(optax.adam(1e-2))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, norm_only, rtol=1e-3)
    assert not np.allclose(norm_only, plain, rtol=1e-3)


def test_losses_respect_masks():
    logits = jax.random.normal(jax.random.key(0), (4, 2, 5), jnp.float32)
    targets = jnp.array([[1, 2], [3, 4], [0, 0], [1, 1]])
    mask = sequence_mask(jnp.array([4, 2]), 4)
    per_step = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    want = (per_step[:, 0].sum() + per_step[:2, 1].sum()) / 6
    np.testing.assert_allclose(cross_entropy(logits, targets, mask), want, rtol=1e-6)
    np.testing.assert_allclose(
        cross_entropy(logits, targets, mask, average=False), want * 6, rtol=1e-6
    )
    preds = jnp.ones((4, 2, 3), jnp.float32)
    assert float(mean_squared_error(preds, jnp.zeros_like(preds), mask)) == pytest.approx(3.0)
    assert sequence_mask(jnp.array([1, 3]), 4, time_axis=1).shape == (2, 4)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8])
def test_narrow_integer_lengths_mask_the_same_steps_as_int32(dtype):
    # T = 300 is past uint8's and int8's range: a step counter in the lengths' dtype wrapped
    # and marked padded steps valid (uint8 lengths [3, 1] gave 6 and 2 valid steps).
    lengths = jnp.array([3, 1, 0, 100], jnp.int32)
    want = sequence_mask(lengths, 300)
    assert want.sum(0).tolist() == [3, 1, 0, 100]
    np.testing.assert_array_equal(sequence_mask(lengths.astype(dtype), 300), want)


def test_masked_losses_accumulate_in_float32_as_unmasked_ones_do():
    # 50,000 float16 losses of log 4 sum past float16's largest value (65504).
    logits = jnp.zeros((50_000, 4), jnp.float16)
    targets = jnp.zeros((50_000,), jnp.int32)
    mask = jnp.ones((50_000,), bool)
    plain, masked = cross_entropy(logits, targets), cross_entropy(logits, targets, mask)
    assert masked.dtype == jnp.float16
    np.testing.assert_allclose(float(masked), np.log(4.0), rtol=1e-3)  # float16 result
    assert float(masked) == float(plain)


def test_masked_positions_give_no_nan_to_the_gradient():
    # Padded logits or predictions may be NaN (e.g. embedded_unroll's out-of-range ids).
    mask = jnp.array([True, True, False])
    logits = jnp.zeros((3, 4), jnp.float32).at[2].set(jnp.nan)
    targets = jnp.zeros((3,), jnp.int32)
    grad = jax.grad(lambda lg: cross_entropy(lg, targets, mask))(logits)
    assert np.isfinite(grad).all() and not np.any(grad[2])
    preds = jnp.ones((3, 2), jnp.float32).at[2].set(jnp.nan)
    grad = jax.grad(lambda p: mean_squared_error(p, jnp.zeros_like(p), mask))(preds)
    np.testing.assert_allclose(grad, [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])


def test_losses_and_optimizer_refuse_what_would_silently_mislead():
    ones, zeros = jnp.ones((4, 1), jnp.float32), jnp.zeros((4, 1), jnp.float32)
    # A 0/1/2 mask used as booleans in the sum and as numbers in the count gave 0.75.
    with pytest.raises(TypeError, match="mask must be booleans.*got dtype int"):
        mean_squared_error(ones, zeros, jnp.array([1, 1, 2, 0]))
    with pytest.raises(TypeError, match="cross_entropy: mask must be booleans"):
        cross_entropy(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), jnp.ones(4, jnp.float32))
    # A bound <= 0 reversed (max_norm=-1) or froze (0) training without a word.
    for bad in (dict(max_norm=-1.0), dict(max_norm=0.0), dict(max_value=-2.0), dict(max_norm="1")):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"default_optimizer: {name} must be a positive"):
            default_optimizer(0.1, **bad)


def test_stream_windows_and_window_loss_reject_bad_arguments():
    with pytest.raises(ValueError, match="k1 must be a positive int; got 0"):
        stream_windows(jnp.arange(5), k1=0)
    with pytest.raises(ValueError, match="k2 must be >= k1 = 3; got k2=2"):
        stream_windows(jnp.arange(5), k1=3, k2=2)
    with pytest.raises(ValueError, match="fewer than one window"):
        stream_windows(jnp.arange(5), k1=6)
    with pytest.raises(ValueError, match="window_loss: k2 must be >= k1"):
        window_loss(None, None, k1=4, k2=2)
    with pytest.raises(ValueError, match="k1 must be a positive int; got True"):
        stream_windows(jnp.arange(5), k1=True)
    # NumPy ints are ints, as everywhere else in seqjax.
    assert stream_windows(jnp.arange(7), k1=np.int64(2), k2=np.int32(3)).shape == (3, 3)
    with pytest.raises(TypeError, match="integer ids"):
        cross_entropy(jnp.zeros((2, 3), jnp.float32), jnp.zeros(2, jnp.float32))


def test_tbptt_through_a_stack(key):
    """A multi-layer model takes resets and streams windows just as a cell does."""
    model = Stack.build(LSTMCell, 3, (4, 4))
    params = model.init(key)
    xs = jax.random.normal(key, (T, B, 3), jnp.float32)
    resets = jnp.zeros((T, B), bool).at[6, 0].set(True)

    def forward(params, carry, xs, resets):
        return model(params, xs, carry, resets=resets)

    step = tbptt_step(window_loss(forward, lambda y, t: jnp.mean((y - t) ** 2), k1=4), _sgd())
    windows = tuple(stream_windows(a, k1=4) for a in (xs, jnp.tile(xs[..., :1], (1, 1, 4)), resets))
    _, _, carry, metrics = tbptt_scan(
        step, params, _sgd().init(params), model.init_carry((B,)), windows
    )
    assert metrics.loss.shape == (3,) and bool(jnp.all(jnp.isfinite(metrics.grad_norm)))

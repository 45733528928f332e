"""unroll equals the plain-loop reference, for every cell and every option."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import Bidirectional, Scan, SplitStep, Stack, supports, unroll, unroll_reference
from tests.conftest import random_like, tree_allclose
from tests.registry import CELLS, every_carry_kind, every_cell

T = 6
TOL = dict(rtol=1e-5, atol=1e-6)  # float32 scan vs per-step loop: same ops, different fusion


def _inputs(cell, batch_shape):
    return jax.random.normal(jax.random.key(1), (T, *batch_shape, cell.input_size), jnp.float32)


def _random_carry(cell, batch_shape):
    return random_like(cell.init_carry(batch_shape), jax.random.key(2))


LENGTHS = {(): 4, (3,): [0, T, 2], (2, 3): [[0, 1, T], [5, T, 3]]}


# Each batch shape, direction and lengths option appears at least once per cell (the full
# 3 x 2 x 2 product per cell cost minutes of compilation in CI for no further coverage: the
# options are independent code paths in unroll).
PLAIN_LOOP_CASES = [
    ((), True, True),
    ((3,), True, False),
    ((3,), False, True),
    ((2, 3), False, True),
]


@every_cell
@pytest.mark.parametrize(
    "batch_shape, reverse, with_lengths",
    PLAIN_LOOP_CASES,
    ids=[
        f"{b}-{'reverse' if r else 'forward'}-{'lengths' if n else 'full'}"
        for b, r, n in PLAIN_LOOP_CASES
    ],
)
def test_unroll_equals_plain_loop(cell, key, batch_shape, reverse, with_lengths):
    params = cell.init(key)
    xs = _inputs(cell, batch_shape)
    carry = _random_carry(cell, batch_shape)
    lengths = jnp.asarray(LENGTHS[batch_shape], jnp.int32) if with_lengths else None
    got = unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse)
    want = unroll_reference(cell, params, xs, carry, lengths=lengths, reverse=reverse)
    tree_allclose(got, want, **TOL)


@every_cell
@pytest.mark.parametrize(
    "hoist, scan_unroll",
    [(False, 4), (True, True)],
    ids=["in_scan-4", "hoisted-full"],
)
def test_projection_placement_and_scan_unroll_do_not_change_results(cell, key, hoist, scan_unroll):
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    lengths = jnp.array([T, 0, 3])
    method = Scan(hoist_projection=hoist, unroll=scan_unroll)
    got = unroll(cell, params, xs, lengths=lengths, method=method, reverse=True)
    tree_allclose(got, unroll_reference(cell, params, xs, lengths=lengths, reverse=True), **TOL)


@every_carry_kind
def test_lengths_zero_returns_initial_carry_and_zero_outputs(cell, key):
    params = cell.init(key)
    carry = _random_carry(cell, (2,))
    for reverse in (False, True):
        final, ys = unroll(
            cell, params, _inputs(cell, (2,)), carry, lengths=jnp.array([0, 0]), reverse=reverse
        )
        tree_allclose(final, carry, rtol=0, atol=0)
        assert not bool(jnp.any(ys))


@every_carry_kind
def test_full_lengths_equal_no_lengths(cell, key):
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    for reverse in (False, True):
        tree_allclose(
            unroll(cell, params, xs, lengths=jnp.full((3,), T), reverse=reverse),
            unroll(cell, params, xs, reverse=reverse),
            **TOL,  # two different compiled programs: equal up to float32 rounding
        )


@every_carry_kind
def test_padding_values_do_not_matter(cell, key):
    """Whatever lies past a sequence's length changes nothing, forwards or backwards."""
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    lengths = jnp.array([2, T, 4])
    pad = jnp.arange(T)[:, None, None] >= lengths[None, :, None]
    noisy = jnp.where(pad, 1e3 * jnp.ones_like(xs), xs)
    for reverse in (False, True):
        tree_allclose(
            unroll(cell, params, noisy, lengths=lengths, reverse=reverse),
            unroll(cell, params, xs, lengths=lengths, reverse=reverse),
            rtol=0,
            atol=0,
        )


@every_carry_kind
def test_batch_major_equals_time_major(cell, key):
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    lengths = jnp.array([1, T, 4])
    carry_t, ys_t = unroll(cell, params, xs, lengths=lengths)
    carry_b, ys_b = unroll(cell, params, jnp.swapaxes(xs, 0, 1), lengths=lengths, time_axis=1)
    tree_allclose((carry_b, jnp.swapaxes(ys_b, 0, 1)), (carry_t, ys_t), **TOL)
    _, ys_neg = unroll(cell, params, jnp.swapaxes(xs, 0, 1), lengths=lengths, time_axis=-2)
    np.testing.assert_array_equal(ys_neg, ys_b)


@every_carry_kind
def test_unroll_under_jit_vmap_and_grad(cell, key):
    params = cell.init(key)
    xs = _inputs(cell, (4,))
    lengths = jnp.array([1, T, 4, 0])

    def loss(params, xs, lengths):
        return jnp.sum(unroll(cell, params, xs, lengths=lengths)[1] ** 2)

    eager = loss(params, xs, lengths)
    np.testing.assert_allclose(jax.jit(loss)(params, xs, lengths), eager, rtol=1e-5)
    # vmap over the batch axis with per-example lengths: each example alone.
    per_example = jax.vmap(lambda x, n: loss(params, x[:, None], n[None]), in_axes=(1, 0))(
        xs, lengths
    )
    np.testing.assert_allclose(per_example.sum(), eager, rtol=1e-5)
    grads = jax.jit(jax.grad(loss))(params, xs, lengths)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@every_carry_kind
def test_compiled_program_size_does_not_grow_with_T(cell, key):
    """One scan body whatever T: the lowered text at T=1000 and T=9000 has the same length.

    Both T have four digits, so the texts differ only in the digits of the shapes; any
    per-step code would add whole lines (T=1000 vs 9000 would differ by thousands of them).
    """
    params = cell.init(key)

    def size(num_steps):
        xs = jnp.zeros((num_steps, 2, cell.input_size), jnp.float32)
        return len(jax.jit(lambda p, x: unroll(cell, p, x)[1]).lower(params, xs).as_text())

    assert size(1000) == size(9000)


@pytest.mark.parametrize("name", ["lstm", "gru", "elman_tanh"])
def test_bidirectional_is_a_forward_and_a_reverse_unroll(name, key):
    cell = CELLS[name]
    layer = Bidirectional(cell, cell)
    params = layer.init(key)
    xs = _inputs(cell, (3,))
    lengths = jnp.array([T, 2, 0])
    carry, ys = layer(params, xs, lengths=lengths)
    cf, yf = unroll_reference(cell, params.forward, xs, lengths=lengths)
    cb, yb = unroll_reference(cell, params.backward, xs, lengths=lengths, reverse=True)
    tree_allclose((carry.forward, carry.backward), (cf, cb), **TOL)
    tree_allclose(ys, jnp.concatenate([yf, yb], axis=-1), **TOL)
    # The backward direction starts at the last valid step: its output there has seen
    # only that step, from the initial state.
    _, first = cell.apply(params.backward, cell.init_carry(), xs[1, 1])
    np.testing.assert_allclose(ys[1, 1, cell.hidden_size :], first, rtol=1e-6, atol=1e-7)


def test_stack_runs_layers_in_order(key):
    cell = CELLS["stack_lstm_gru"]
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    lengths = jnp.array([T, 3, 1])
    carry, ys = cell(params, xs, lengths=lengths)
    c0, y0 = unroll_reference(cell.layers[0], params[0], xs, lengths=lengths)
    c1, y1 = unroll_reference(cell.layers[1], params[1], y0, lengths=lengths)
    tree_allclose((carry, ys), ((c0, c1), y1), **TOL)
    # Layer by layer and step by step (a Stack of cells is a cell) agree.
    tree_allclose(unroll(cell, params, xs, lengths=lengths), (carry, ys), **TOL)


def test_bidirectional_stack_batch_major(key):
    from seqjax import GRUCell

    model = Stack.build(GRUCell, 3, (4, 5), bidirectional=True)
    params = model.init(key)
    xs = jax.random.normal(key, (2, T, 3), jnp.float32)
    lengths = jnp.array([T, 2])
    carry, ys = model(params, xs, lengths=lengths, time_axis=1)
    assert ys.shape == (2, T, 10)
    carry_t, ys_t = model(params, jnp.swapaxes(xs, 0, 1), lengths=lengths)
    tree_allclose((carry, ys), (carry_t, jnp.swapaxes(ys_t, 0, 1)), **TOL)
    assert not bool(jnp.any(ys[1, 2:]))


@every_carry_kind
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_resets_equal_plain_loop(cell, key, reverse):
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    resets = jnp.zeros((T, 3), bool).at[2, 0].set(True).at[0, 1].set(True).at[4, 2].set(True)
    lengths = jnp.array([T, 3, 5])
    carry = _random_carry(cell, (3,))
    got = unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)
    want = unroll_reference(
        cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse
    )
    tree_allclose(got, want, **TOL)


@every_carry_kind
def test_resets_on_padded_steps_do_nothing(cell, key):
    """A reset past a sequence's length neither changes its final carry nor, reversed, its ys."""
    params = cell.init(key)
    xs = _inputs(cell, (3,))
    lengths = jnp.array([T, 3, 0])
    resets = jnp.zeros((T, 3), bool).at[4, 1].set(True).at[2, 2].set(True)
    carry = _random_carry(cell, (3,))
    for reverse in (False, True):
        got = unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)
        want = unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse)
        tree_allclose(got, want, **TOL)  # two compiled programs: equal up to fusion rounding


@every_carry_kind
def test_a_reset_starts_an_independent_sequence(cell, key):
    """After a reset at step 3, outputs equal a fresh unroll of the remaining steps."""
    params = cell.init(key)
    xs = _inputs(cell, (2,))
    resets = jnp.zeros((T, 2), bool).at[3].set(True)
    _, ys = unroll(cell, params, xs, _random_carry(cell, (2,)), resets=resets)
    _, fresh = unroll(cell, params, xs[3:])
    tree_allclose(ys[3:], fresh, **TOL)


def _windowed_by_hand(cell, params, xs, k):
    """Truncated BPTT by hand: one unroll per window, the carry passed on as a constant."""
    carry, outputs = None, []
    for start in range(0, xs.shape[0], k):
        carry, ys = unroll(cell, params, xs[start : start + k], carry)
        carry = jax.lax.stop_gradient(carry)
        outputs.append(ys)
    return jnp.concatenate(outputs)


@every_carry_kind
@pytest.mark.parametrize("k", [4])
def test_truncate_equals_windows_cut_by_hand(cell, key, k):
    params = cell.init(key)
    xs = _inputs(cell, (2,))
    weights = jax.random.normal(jax.random.key(7), (T, 2, cell.hidden_size), jnp.float32)

    def loss(params, run):
        return jnp.sum(weights * run(params))

    runs = (
        lambda p: unroll(cell, p, xs)[1],
        lambda p: unroll(cell, p, xs, truncate=k)[1],
        lambda p: _windowed_by_hand(cell, p, xs, k),
    )
    # One program for the three gradients: eagerly each dispatches op by op.
    full, truncated, by_hand = jax.jit(lambda p: [jax.grad(loss)(p, run) for run in runs])(params)
    tree_allclose(truncated, by_hand, **TOL)
    differs = any(
        not np.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(truncated), jax.tree.leaves(full), strict=True)
    )
    assert differs, "truncation must change the gradient when k < T"
    # The forward pass is unchanged.
    tree_allclose(unroll(cell, params, xs, truncate=k), unroll(cell, params, xs), rtol=0, atol=0)


@every_carry_kind
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("derivative", ["autodiff", None])
def test_truncate_with_lengths_equals_each_sequence_unpadded(cell, key, reverse, derivative):
    """Padding changes nothing truncation does: the gradients (params, initial carry) of a
    padded batch equal the sum over its sequences run alone, unpadded. A border among a
    sequence's padded steps (4 for length 3) must not cut the carry held through them.
    float64: the two sides sum the same terms in another order."""
    if derivative is None and not supports(cell, SplitStep):
        pytest.skip("without SplitStep the default derivative is autodiff: the case beside")

    def wide(tree):
        return jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
        )

    params = wide(cell.init(key))
    lengths = [3, T, 5]
    xs, carry = wide(_inputs(cell, (3,))), wide(_random_carry(cell, (3,)))
    y_weights = jax.random.normal(jax.random.key(7), (T, 3, cell.hidden_size), jnp.float64)
    carry_weights = random_like(carry, jax.random.key(8))
    options = dict(truncate=2, reverse=reverse, method=Scan(derivative=derivative))

    def weighted(final, ys, y_w, c_w):
        carry_term = sum(
            jnp.sum(a * w)
            for a, w in zip(jax.tree.leaves(final), jax.tree.leaves(c_w), strict=True)
        )
        return jnp.sum(y_w * ys) + carry_term

    def padded(params, carry):
        final, ys = unroll(cell, params, xs, carry, lengths=jnp.array(lengths), **options)
        return weighted(final, ys, y_weights, carry_weights)

    def one_by_one(params, carry):
        total = 0.0
        for b, n in enumerate(lengths):
            own = jax.tree.map(lambda a, b=b: a[b], carry)
            final, ys = unroll(cell, params, xs[:n, b], own, **options)
            c_w = jax.tree.map(lambda a, b=b: a[b], carry_weights)
            total = total + weighted(final, ys, y_weights[:n, b], c_w)
        return total

    # jit: one compilation per side instead of one per eager op (hundreds over the registry)
    got = jax.jit(jax.grad(padded, argnums=(0, 1)))(params, carry)
    want = jax.jit(jax.grad(one_by_one, argnums=(0, 1)))(params, carry)
    tree_allclose(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_truncate_every_step(name, key):
    """k = 1, the edge case: every carry is cut; the gradient sees one step only."""
    test_truncate_equals_windows_cut_by_hand(CELLS[name], key, 1)


@every_carry_kind
def test_truncate_at_T_or_more_is_full_bptt(cell, key):
    params = cell.init(key)
    xs = _inputs(cell, (2,))

    def loss(params, truncate):
        return jnp.sum(unroll(cell, params, xs, truncate=truncate)[1] ** 2)

    grads = jax.jit(lambda p: [jax.grad(loss)(p, k) for k in (None, T, 10 * T)])(params)
    for got in grads[1:]:
        tree_allclose(got, grads[0], rtol=0, atol=0)


def test_truncate_cuts_reverse_runs_at_the_same_borders(key):
    """Backwards, the gradient of ys[0] reaches xs[t] only for t inside 0's window."""
    cell = CELLS["gru"]
    params = cell.init(key)
    xs = _inputs(cell, (1,))
    jac = jax.jacrev(lambda x: unroll(cell, params, x, reverse=True, truncate=2)[1][0])(xs)
    reach = np.abs(np.asarray(jac)).reshape(cell.hidden_size, T, -1).sum(axis=(0, 2))
    assert (reach[:2] > 0).all() and not reach[2:].any()


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8])
@pytest.mark.parametrize("derivative", ["autodiff", "structured"])
def test_narrow_integer_lengths_equal_int32_lengths(dtype, derivative):
    # T = 300 is past uint8's and int8's range: the step counter, built in the lengths'
    # dtype, wrapped and read padded steps as valid. Values and gradients must not depend on
    # the dtype, nor may mean_valid's or a tagger's loss (their own step masks).
    from seqjax import LSTMCell, SequenceTagger, mean_valid

    cell, num_steps = LSTMCell(2, 3), 300
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (num_steps, 3, 2), jnp.float32)
    lengths = jnp.array([10, 127, 0], jnp.int32)

    @jax.jit
    def run(params, xs, lengths):
        def loss(params, xs):
            _, ys = unroll(cell, params, xs, lengths=lengths, method=Scan(derivative=derivative))
            return jnp.sum(ys**2), ys

        (_, ys), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
        late = jnp.where(jnp.arange(num_steps) >= 256, 100.0, 0.0)[:, None, None]  # wrapped steps
        return ys, grads, mean_valid(xs + late, lengths)

    want = run(params, xs, lengths)
    got = run(params, xs, lengths.astype(dtype))
    tree_allclose(got, want, rtol=0, atol=0)
    tagger = SequenceTagger(LSTMCell(2, 3), 4)
    tparams = tagger.init(jax.random.key(3))
    tags = jnp.zeros((num_steps, 3), jnp.int32)
    np.testing.assert_array_equal(
        tagger.loss(tparams, xs, tags, lengths.astype(dtype)),
        tagger.loss(tparams, xs, tags, lengths),
    )

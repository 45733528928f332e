"""Regularisers and variants: variational dropout, zoneout, layer norm, peepholes, learned state.

The registry (tests/registry.py) enrols every one of these cells in the property tests with
its noise off; here: the noise itself (masks fixed over a sequence and different between
sequences, zoneout's keep-or-update rule), exact reduction to the plain cells when off, and
hand-written reference steps in float64 NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import (
    Bidirectional,
    DropoutParams,
    ElmanCell,
    GRUCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LearnedInitCell,
    LSTMCarry,
    LSTMCell,
    LSTMProjCell,
    PeepholeLSTMCell,
    Stack,
    VariationalDropoutCell,
    ZoneoutCarry,
    ZoneoutCell,
    unroll,
    unroll_reference,
    with_noise,
)
from tests.conftest import random_like, tree_allclose

T, B, I, H = 5, 3, 3, 4
TOL = dict(rtol=1e-5, atol=1e-6)  # float32 scan against a per-step loop: fusion differs


def _xs(shape=(T, B, I), seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _exact(a, b):
    tree_allclose(a, b, rtol=0, atol=0)


# --- variational dropout --------------------------------------------------------------------


def test_dropout_masks_are_per_sequence_and_scaled():
    cell = VariationalDropoutCell(LSTMCell(I, H), input_rate=0.5, recurrent_rate=0.5)
    params = cell.init(jax.random.key(0))
    assert params.masks is None
    noisy = cell.with_noise(params, jax.random.key(1), batch_shape=(16,))
    m_x, m_h = np.asarray(noisy.masks.input), np.asarray(noisy.masks.recurrent)
    assert m_x.shape == (16, I) and m_h.shape == (16, H)
    assert set(np.unique(m_x)) == {0.0, 2.0} and set(np.unique(m_h)) == {0.0, 2.0}
    assert len({row.tobytes() for row in m_h}) > 1  # rows (sequences) differ
    again = cell.with_noise(params, jax.random.key(1), batch_shape=(16,))
    other = cell.with_noise(params, jax.random.key(2), batch_shape=(16,))
    _exact(again.masks, noisy.masks)  # a function of the key
    assert not np.array_equal(other.masks.recurrent, m_h)
    _exact(noisy.cell, params.cell)  # weights untouched


def test_dropped_inputs_are_the_same_features_at_every_step():
    """d(outputs)/d(x[t, b, i]) is zero exactly for the dropped features of sequence b, at
    every step t: the input mask does not change over time, and differs between sequences."""
    cell = VariationalDropoutCell(ElmanCell(I, H), input_rate=0.5)
    batch = 8
    noisy = cell.with_noise(cell.init(jax.random.key(0)), jax.random.key(3), (batch,))
    xs = _xs((T, batch, I))
    grads = jax.grad(lambda x: jnp.sum(unroll(cell, noisy, x)[1]))(xs)  # [T, B, I]
    zero = np.asarray(grads == 0)
    assert (zero == zero[:1]).all()  # the same pattern at every step
    np.testing.assert_array_equal(zero[0], np.asarray(noisy.masks.input == 0))
    assert zero.any() and not zero.all()
    assert len({row.tobytes() for row in zero[0]}) > 1


def _row(params: DropoutParams, b: int) -> DropoutParams:
    """The params of one sequence: its masks, no batch dims."""
    masks = jax.tree.map(lambda m: m[b], params.masks)
    return params._replace(masks=masks)


def test_dropout_unroll_equals_a_loop_with_one_fixed_mask_per_sequence():
    """With lengths, reverse and resets, each sequence runs with its own masks at every step."""
    cell = VariationalDropoutCell(LSTMCell(I, H), input_rate=0.3, recurrent_rate=0.4)
    noisy = cell.with_noise(cell.init(jax.random.key(0)), jax.random.key(1), (B,))
    xs = _xs()
    carry = random_like(cell.init_carry((B,)), jax.random.key(2))
    lengths = jnp.array([T, 2, 4])
    resets = jnp.zeros((T, B), bool).at[2, 0].set(True)
    for reverse in (False, True):
        got_carry, got_ys = unroll(
            cell, noisy, xs, carry, lengths=lengths, resets=resets, reverse=reverse
        )
        for b in range(B):
            want_carry, want_ys = unroll_reference(
                cell,
                _row(noisy, b),
                xs[:, b],
                jax.tree.map(lambda c, b=b: c[b], carry),
                lengths=lengths[b],
                resets=resets[:, b],
                reverse=reverse,
            )
            tree_allclose(jax.tree.map(lambda c, b=b: c[b], got_carry), want_carry, **TOL)
            tree_allclose(got_ys[:, b], want_ys, **TOL)


def test_recurrent_mask_multiplies_h_where_the_matmul_reads_it():
    """One step by hand: gates from (m_x * x) W_x + (m_h * h) W_h + b; an LSTM's c unmasked."""
    x = _xs((B, I))
    for inner in (LSTMCell(I, H), ElmanCell(I, H)):
        cell = VariationalDropoutCell(inner, input_rate=0.5, recurrent_rate=0.5)
        noisy = cell.with_noise(cell.init(jax.random.key(0)), jax.random.key(1), (B,))
        carry = random_like(inner.init_carry((B,)), jax.random.key(2))
        if isinstance(carry, LSTMCarry):
            masked = LSTMCarry(h=carry.h * noisy.masks.recurrent, c=carry.c)
        else:
            masked = carry * noisy.masks.recurrent
        want = inner.apply(noisy.cell, masked, x * noisy.masks.input)
        tree_allclose(cell.apply(noisy, carry, x), want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: VariationalDropoutCell(LSTMCell(I, H), 0.0, 0.0),
        lambda: VariationalDropoutCell(LSTMCell(I, H), 0.5, 0.5),  # deterministic
        lambda: ZoneoutCell(LSTMCell(I, H), 0.0, 0.0),
        lambda: ZoneoutCell(GRUCell(I, H), 0.0),
    ],
    ids=["dropout_rate_0", "dropout_deterministic", "zoneout_lstm_rate_0", "zoneout_gru_rate_0"],
)
def test_noise_off_is_exactly_the_plain_cell(make):
    cell = make()
    params = cell.init(jax.random.key(0))
    deterministic = cell.input_rate > 0 if isinstance(cell, VariationalDropoutCell) else False
    noisy = cell.with_noise(params, jax.random.key(1), (B,), deterministic=deterministic)
    xs, lengths = _xs(), jnp.array([T, 1, 3])
    run = jax.jit(lambda c, p: unroll(c, p, xs, lengths=lengths), static_argnums=0)
    carry, ys = run(cell, noisy)
    plain_carry, plain_ys = run(cell.cell, noisy.cell)
    _exact(ys, plain_ys)
    _exact(carry.cell if isinstance(carry, ZoneoutCarry) else carry, plain_carry)


def test_with_noise_walks_stacks_and_bidirectional_layers():
    def layer(i, h):
        return VariationalDropoutCell(LSTMCell(i, h), input_rate=0.25, recurrent_rate=0.25)

    model = Stack(
        (
            Bidirectional(layer(I, H), layer(I, H)),
            ZoneoutCell(layer(2 * H, H), hidden_rate=0.2),
            GRUCell(H, H),
        )
    )
    params = model.init(jax.random.key(0))
    noisy = with_noise(model, params, jax.random.key(1), (B,))
    assert noisy[0].forward.masks.input.shape == (B, I)
    assert not np.array_equal(noisy[0].forward.masks.input, noisy[0].backward.masks.input)
    assert noisy[1].key is not None and noisy[1].cell.masks.recurrent.shape == (B, H)
    _exact(noisy[2], params[2])
    off = with_noise(model, noisy, None, deterministic=True)
    assert jax.tree.structure(off) == jax.tree.structure(params)

    # Drawn inside the loss, the noise lets gradients reach only the plain params.
    def loss(p):
        _, ys = model(with_noise(model, p, jax.random.key(4), (B,)), _xs(), lengths=lengths)
        return jnp.sum(ys**2), ys

    lengths = jnp.array([T, 2, 0])
    grads, ys = jax.jit(jax.grad(loss, has_aux=True))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert ys.shape == (T, B, H) and not bool(jnp.any(ys[:, 2]))
    with pytest.raises(ValueError, match="key must be a PRNG key unless deterministic"):
        with_noise(model, params, None)


def test_dropout_errors():
    with pytest.raises(ValueError, match=r"input_rate must be a number in \[0, 1\); got 1.0"):
        VariationalDropoutCell(LSTMCell(I, H), input_rate=1.0)
    with pytest.raises(ValueError, match="recurrent dropout needs .* got GRUCell"):
        VariationalDropoutCell(GRUCell(I, H), recurrent_rate=0.1)
    VariationalDropoutCell(GRUCell(I, H), input_rate=0.1)  # input dropout suits any cell
    cell = VariationalDropoutCell(LSTMCell(I, H), input_rate=0.5, recurrent_rate=0.5)
    noisy = cell.with_noise(cell.init(jax.random.key(0)), jax.random.key(1), (B,))
    with pytest.raises(ValueError, match=r"xs must end with the input mask's shape"):
        cell.project(noisy, jnp.ones((T, 2, I), jnp.float32))
    with pytest.raises(ValueError, match=r"recurrent mask must have the shape of h"):
        cell.step(noisy, cell.init_carry((2,)), jnp.ones((2, 4 * H), jnp.float32))


# --- zoneout --------------------------------------------------------------------------------


def test_zoneout_keeps_or_updates_each_unit_with_fresh_masks_per_step():
    inner = LSTMCell(I, H)
    cell = ZoneoutCell(inner, hidden_rate=0.5, cell_rate=0.5)
    params = cell.init(jax.random.key(0))
    noisy = cell.with_noise(params, jax.random.key(1))
    batch = 16
    xs = _xs((T, batch, I))
    carry = random_like(cell.init_carry((batch,)), jax.random.key(2))._replace(
        step=jnp.zeros((batch, 1), jnp.float32)
    )
    keeps, c = [], carry
    plain_apply, apply = jax.jit(inner.apply), jax.jit(cell.apply)
    for t in range(T):
        plain, _ = plain_apply(noisy.cell, c.cell, xs[t])
        new, y = apply(noisy, c, xs[t])
        # Each unit: its old value exactly, or the plain cell's new one (two compiled
        # programs: equal up to float32 rounding).
        keep_h = np.asarray(new.cell.h == c.cell.h)
        update_h = np.isclose(new.cell.h, plain.h, rtol=1e-6, atol=1e-7)
        assert (keep_h | update_h).all()
        keep_c = np.asarray(new.cell.c == c.cell.c)
        assert (keep_c | np.isclose(new.cell.c, plain.c, rtol=1e-6, atol=1e-7)).all()
        np.testing.assert_array_equal(y, new.cell.h)
        keeps.append(keep_h & ~update_h)
        c = new
    keeps = np.stack(keeps)  # [T, B, H]
    assert 0.35 < keeps.mean() < 0.65  # rate 0.5 over 320 draws: 4.5 standard deviations
    assert not (keeps == keeps[:1]).all()  # masks change from step to step
    assert len({row.tobytes() for row in keeps[0]}) > 1  # and between sequences
    # unroll draws the same masks as the loop of apply (the step count is in the carry).
    final, _ = unroll(cell, noisy, xs, carry)
    tree_allclose(final, c, **TOL)
    np.testing.assert_array_equal(final.step, np.full((batch, 1), T, np.float32))


def test_zoneout_evaluation_is_the_expectation():
    inner = LSTMCell(I, H)
    cell = ZoneoutCell(inner, hidden_rate=0.2, cell_rate=0.6)
    params = cell.init(jax.random.key(0))
    xs = _xs()
    c = inner.init_carry((B,))
    hs = []
    for t in range(T):
        new, _ = inner.apply(params.cell, c, xs[t])
        c = LSTMCarry(h=0.2 * c.h + 0.8 * new.h, c=0.6 * c.c + 0.4 * new.c)
        hs.append(c.h)
    carry, ys = unroll(cell, params, xs)
    tree_allclose((carry.cell, ys), (c, jnp.stack(hs)), **TOL)


def test_zoneout_of_an_array_state_and_errors():
    cell = ZoneoutCell(GRUCell(I, H), hidden_rate=1.0)  # rate 1: the state never moves
    params = cell.init(jax.random.key(0))
    carry = random_like(cell.init_carry((B,)), jax.random.key(1))
    for p in (params, cell.with_noise(params, jax.random.key(2))):
        final, ys = unroll(cell, p, _xs(), carry)
        _exact(final.cell, carry.cell)
        _exact(ys, jnp.broadcast_to(carry.cell, (T, B, H)))
    with pytest.raises(ValueError, match="cell_rate applies to a cell state c"):
        ZoneoutCell(GRUCell(I, H), cell_rate=0.5)
    with pytest.raises(TypeError, match="carry must be an array h or a NamedTuple"):
        ZoneoutCell(Stack((GRUCell(I, H),)), hidden_rate=0.1)
    with pytest.raises(ValueError, match=r"hidden_rate must be a number in \[0, 1\]"):
        ZoneoutCell(GRUCell(I, H), hidden_rate=-0.1)


# --- layer norm, peepholes, projection: hand-written float64 reference steps -----------------


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _ln(a, gain, bias=0.0, eps=1e-5):
    mean = a.mean(-1, keepdims=True)
    var = ((a - mean) ** 2).mean(-1, keepdims=True)
    return gain * (a - mean) / np.sqrt(var + eps) + bias


def _random_params(cell, seed):
    """Every entry N(0, 0.5^2), so gains, biases and peepholes are all nontrivial."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(cell.init, jax.random.key(0))
    return jax.tree.map(lambda s: 0.5 * rng.standard_normal(s.shape), shapes)


def _check_step(cell, reference, seed):
    params = _random_params(cell, seed)
    carry = random_like(cell.init_carry((B,)), jax.random.key(seed))
    x = _xs((B, I), seed)
    as32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    got_carry, got_y = cell.apply(as32, carry, x)
    np_carry = jax.tree.map(lambda a: np.asarray(a, np.float64), carry)
    want_carry, want_y = reference(params, np_carry, np.asarray(x, np.float64))
    tree_allclose((got_carry, got_y), (want_carry, want_y), **TOL)


def test_layer_norm_lstm_equals_reference_step():
    def reference(p, carry, x):
        gates = _ln(x @ p.w_x, p.g_x) + _ln(carry.h @ p.w_h, p.g_h) + p.b
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = _sigmoid(f) * carry.c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(_ln(c, p.g_c, p.b_c))
        return LSTMCarry(h, c), h

    _check_step(LayerNormLSTMCell(I, H), reference, 0)


def test_layer_norm_gru_equals_reference_step():
    def reference(p, h, x):
        x_r, x_z, x_n = np.split(_ln(x @ p.w_x, p.g_x) + p.b_x, 3, axis=-1)
        h_r, h_z, h_n = np.split(_ln(h @ p.w_h, p.g_h) + p.b_h, 3, axis=-1)
        r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
        new = (1 - z) * np.tanh(x_n + r * h_n) + z * h
        return new, new

    _check_step(LayerNormGRUCell(I, H), reference, 1)


def test_peephole_lstm_equals_reference_step():
    def reference(p, carry, x):
        a_i, a_f, a_g, a_o = np.split(x @ p.w_x + carry.h @ p.w_h + p.b, 4, axis=-1)
        i = _sigmoid(a_i + p.p_i * carry.c)
        f = _sigmoid(a_f + p.p_f * carry.c)
        c = f * carry.c + i * np.tanh(a_g)
        h = _sigmoid(a_o + p.p_o * c) * np.tanh(c)  # the output gate sees the new c
        return LSTMCarry(h, c), h

    _check_step(PeepholeLSTMCell(I, H), reference, 2)


def test_projection_lstm_equals_reference_step():
    def reference(p, carry, x):
        i, f, g, o = np.split(x @ p.w_x + carry.h @ p.w_h + p.b, 4, axis=-1)
        c = _sigmoid(f) * carry.c + _sigmoid(i) * np.tanh(g)
        h = (_sigmoid(o) * np.tanh(c)) @ p.w_r
        return LSTMCarry(h, c), h

    _check_step(LSTMProjCell(I, 2, cell_size=5), reference, 3)


def test_initialised_peephole_cell_is_the_plain_lstm():
    """Zero peepholes at init: the same function as LSTMCell with the same weights."""
    peephole, plain = PeepholeLSTMCell(I, H), LSTMCell(I, H)
    params = peephole.init(jax.random.key(0))
    plain_params = plain.init(jax.random.key(0))
    tree_allclose(tuple(params[:3]), tuple(plain_params), rtol=0, atol=0)
    tree_allclose(
        unroll(peephole, params, _xs()), unroll(plain, plain_params, _xs()), rtol=0, atol=1e-7
    )


def test_projection_cell_rejects_bad_sizes():
    with pytest.raises(ValueError, match="cell_size must be a positive int; got 0"):
        LSTMProjCell(I, 2, cell_size=0)


# --- learned initial state ------------------------------------------------------------------


@pytest.mark.parametrize("inner", [GRUCell(I, H), LSTMCell(I, H)], ids=["gru", "lstm"])
def test_learned_initial_state_gets_the_summed_gradient_of_every_sequence(inner):
    """h0 is shared by the batch: dL/dh0 = sum over sequences of dL/d(initial carry)."""
    cell = LearnedInitCell(inner)
    params = cell.init(jax.random.key(0))
    params = params._replace(carry=random_like(params.carry, jax.random.key(5), 0.5))
    xs = _xs()
    weights = _xs((T, B, H), seed=6)

    # Jitted: an XLA:CPU compile segfaulted once among this test's eager per-op compilations.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(weights * unroll(cell, p, xs)[1])))(params)
    start = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), params.carry)
    plain_grad = jax.jit(
        jax.grad(lambda c: jnp.sum(weights * unroll(inner, params.cell, xs, c)[1]))
    )(start)
    tree_allclose(grads.carry, jax.tree.map(lambda g: g.sum(0), plain_grad), **TOL)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads.carry))
    # The forward pass is the plain cell's from the learned state.
    tree_allclose(unroll(cell, params, xs)[1], unroll(inner, params.cell, xs, start)[1], **TOL)


def test_learned_initial_state_restarts_at_resets_and_continues_a_passed_carry():
    inner = GRUCell(I, H)
    cell = LearnedInitCell(inner)
    params = cell.init(jax.random.key(0))
    params = params._replace(carry=0.5 + params.carry)
    xs = _xs()
    resets = jnp.zeros((T, B), bool).at[3].set(True)
    carry, ys = unroll(cell, params, xs, resets=resets)
    _, fresh = unroll(cell, params, xs[3:])
    tree_allclose(ys[3:], fresh, **TOL)
    # Two windows with the carry passed on equal one run over both.
    mid, first = unroll(cell, params, xs[:2])
    end, second = unroll(cell, params, xs[2:], mid)
    tree_allclose((end, jnp.concatenate([first, second])), unroll(cell, params, xs), **TOL)
    # Length 0 returns the not-started carry, which stands for the learned state.
    final, _ = unroll(cell, params, xs, lengths=jnp.array([0, 2, T]))
    np.testing.assert_array_equal(cell.state(params, final)[0], params.carry)
    # Initialised, it is exactly the plain cell from zeros.
    fresh_params = cell.init(jax.random.key(0))
    _exact(unroll(cell, fresh_params, xs)[1], unroll(inner, fresh_params.cell, xs)[1])


def test_regularisers_compose_with_a_learned_state():
    cell = LearnedInitCell(VariationalDropoutCell(LSTMCell(I, H), 0.2, 0.2))
    params = cell.init(jax.random.key(0))
    noisy = with_noise(cell, params, jax.random.key(1), (B,))
    assert noisy.cell.masks.input.shape == (B, I)
    _, ys = unroll(cell, noisy, _xs())
    assert ys.shape == (T, B, H)


@pytest.mark.parametrize("cell", [LayerNormLSTMCell(I, H), LayerNormGRUCell(I, H)], ids=str)
def test_layer_norm_gradients_at_the_default_eps(cell):
    """float64 directional derivatives against central differences, step 1e-6.

    The registry runs these cells with eps=1 (see tests/registry.py); at eps=1e-5 over H=4
    units the third derivative is large enough that the registry's step 1e-4 leaves a
    truncation error of ~3e-6, while at 1e-6 it is below 1e-8 (measured; it falls 100x per
    10x step, as a correct gradient's must).
    """
    from jax.flatten_util import ravel_pytree

    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (4, 2, I), jnp.float64)
    carry = jax.tree.map(lambda a: a + 0.3, cell.init_carry((2,), jnp.float64))
    flat, unravel = ravel_pytree((params, xs, carry))
    weights = jax.random.normal(jax.random.key(2), (4, 2, H), jnp.float64)

    def f(z):
        return jnp.sum(weights * unroll(cell, *unravel(z))[1])

    f = jax.jit(f)
    grad = jax.jit(jax.grad(f))(flat)
    for seed in range(3):
        v = jax.random.normal(jax.random.key(10 + seed), flat.shape, jnp.float64)
        fd = (f(flat + 1e-6 * v) - f(flat - 1e-6 * v)) / 2e-6
        np.testing.assert_allclose(grad @ v, fd, rtol=1e-7, atol=1e-7)

"""The Pallas recurrence kernel (seqjax._kernels.pallas_rnn) equals lax.scan and seqjax's cells.

Run in Pallas interpret mode (the default on CPU). Small shapes: B=5 sequences in tiles of 2
(a padded last tile) and H=5 hidden units (padded to 16), unless a test says otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import ElmanCell, GRUCell, LSTMCarry, LSTMCell, unroll
from seqjax._kernels.pallas_rnn import ELMAN_RELU, ELMAN_TANH, GRU, LSTM, recurrence
from tests.conftest import random_like, tree_allclose

T, B, I, H = 6, 5, 3, 5
BLOCK = 2  # three batch tiles, the last one half padding
LENGTHS = (T, 3, 0, 5, 1)
RESETS = ((1, 0), (2, 3), (4, 1), (3, 2))  # (t, b); (4, 1) and (3, 2) lie past the length

KINDS = {
    "lstm": (LSTM, LSTMCell(I, H)),
    "gru": (GRU, GRUCell(I, H)),
    "elman_tanh": (ELMAN_TANH, ElmanCell(I, H)),
    "elman_relu": (ELMAN_RELU, ElmanCell(I, H, activation=jax.nn.relu)),
}
every_kind = pytest.mark.parametrize("name", list(KINDS))
OPTIONS = {
    "plain": dict(masks=False, reverse=False),
    "masked": dict(masks=True, reverse=False),
    "masked_reverse": dict(masks=True, reverse=True),
}

F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-10, atol=1e-12)  # float64: the same math in another order


# The reference: lax.scan over the cell's step, written here from the cells' equations.


def _step(kind, h, c, z_x, z_r):
    """One update from the input-side and recurrent-side pre-activations, each [B, G]."""
    if kind is LSTM:
        i, f, g, o = jnp.split(z_x + z_r, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c
    if kind is GRU:
        (x_r, x_z, x_n), (h_r, h_z, h_n) = jnp.split(z_x, 3, -1), jnp.split(z_r, 3, -1)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        return (1.0 - z) * n + z * h, c
    activation = jnp.tanh if kind is ELMAN_TANH else jax.nn.relu
    return activation(z_x + z_r), c


def reference(kind, w_h, b_h, px, h0, c0, *, valid=None, resets=None, reverse=False):
    """``recurrence``'s semantics as a plain ``lax.scan``, with its float32 state and casts."""
    state = jnp.float64 if jnp.float64 in (px.dtype, w_h.dtype, h0.dtype) else jnp.float32
    num_steps, batch = px.shape[:2]
    valid = jnp.ones((num_steps, batch), bool) if valid is None else valid
    resets = jnp.zeros((num_steps, batch), bool) if resets is None else resets
    c0 = jnp.zeros_like(h0) if c0 is None else c0

    def body(carry, slices):
        x, ok, fresh = slices
        h, c = (jnp.where(fresh[:, None], 0.0, a) for a in carry)
        z_r = jnp.dot(h.astype(w_h.dtype), w_h, preferred_element_type=state)
        if b_h is not None:
            z_r = z_r + b_h.astype(state)[None]
        h_new, c_new = _step(kind, h, c, x.astype(state), z_r)
        ok = ok[:, None]  # a step that does not exist leaves the carry as it came, unreset
        y = jnp.where(ok, h_new, 0.0)
        return (jnp.where(ok, h_new, carry[0]), jnp.where(ok, c_new, carry[1])), y

    init = (h0.astype(state), c0.astype(state))
    (h, c), ys = jax.lax.scan(body, init, (px, valid, resets), reverse=reverse)
    return ys.astype(px.dtype), h.astype(h0.dtype), c.astype(h0.dtype) if kind is LSTM else None


def _masks(masks: bool, batch=B):
    if not masks:
        return {}
    lengths = jnp.array(LENGTHS[:batch])
    resets = np.zeros((T, batch), bool)
    for t, b in RESETS:
        if b < batch:
            resets[t, b] = True
    return dict(valid=jnp.arange(T)[:, None] < lengths[None], resets=jnp.asarray(resets))


def _problem(kind, dtype, *, hidden=H, batch=B, key=0):
    """Random ``(w_h, b_h, px, h0, c0)``; ``b_h`` for every kind (the kernel adds it to any)."""
    gates = kind.num_gates * hidden
    k = jax.random.split(jax.random.key(key), 5)
    w_h = (jax.random.normal(k[0], (hidden, gates)) / np.sqrt(hidden)).astype(dtype)
    b_h = (0.5 * jax.random.normal(k[1], (gates,))).astype(dtype)
    px = jax.random.normal(k[2], (T, batch, gates)).astype(dtype)
    h0 = (0.5 * jax.random.normal(k[3], (batch, hidden))).astype(dtype)
    c0 = (0.5 * jax.random.normal(k[4], (batch, hidden))).astype(dtype) if kind is LSTM else None
    return w_h, b_h, px, h0, c0


def _kernel(kind, **options):
    return jax.jit(lambda *args: recurrence(kind, *args, block_batch=BLOCK, **options))


@every_kind
@pytest.mark.parametrize("option", list(OPTIONS))
def test_values_equal_the_scan_reference_and_the_cell(name, option):
    kind, cell = KINDS[name]
    masks = _masks(OPTIONS[option]["masks"])
    reverse = OPTIONS[option]["reverse"]
    w_h, b_h, px, h0, c0 = _problem(kind, jnp.float32)
    b_h = b_h if kind is GRU else None  # the cells' own layout: bias on the input side
    run = _kernel(kind, reverse=reverse, **masks)
    got = run(w_h, b_h, px, h0, c0)
    expected = reference(kind, w_h, b_h, px, h0, c0, reverse=reverse, **masks)
    tree_allclose(got, expected, **F32)

    params = random_like(cell.init(jax.random.key(1)), jax.random.key(2), 0.5)
    params = params._replace(w_h=w_h, **({"b_h": b_h} if kind is GRU else {}))
    xs = jax.random.normal(jax.random.key(3), (T, B, I), jnp.float32)
    carry = LSTMCarry(h0, c0) if kind is LSTM else h0
    lengths = dict(lengths=jnp.array(LENGTHS), resets=masks["resets"]) if masks else {}
    final, ys = unroll(cell, params, xs, carry, reverse=reverse, **lengths)
    ys_k, h_k, c_k = run(w_h, b_h, cell.project(params, xs), h0, c0)
    tree_allclose((ys_k, h_k, c_k), (ys, *(final if kind is LSTM else (final, None))), **F32)


def _gradients(run, args, weights, argnums):
    """Gradients of a linear functional of ``run``'s outputs ``(ys, h, c)``: weights . outputs."""

    def loss(*args):
        pairs = zip(run(*args), weights, strict=True)
        return sum(jnp.sum(o * w) for o, w in pairs if o is not None)

    return jax.jit(jax.grad(loss, argnums))(*args)


def _check_gradients(kind, run, args, options, tolerance):
    def ref(*a):
        return reference(kind, *a, **options)

    weights = random_like(jax.eval_shape(ref, *args), jax.random.key(7))
    argnums = (0, 1, 2, 3, 4) if kind is LSTM else (0, 1, 2, 3)  # w_h, b_h, px, h0 (, c0)
    got = _gradients(run, args, weights, argnums)
    tree_allclose(got, _gradients(ref, args, weights, argnums), **tolerance)


@every_kind
@pytest.mark.parametrize(
    "dtype, option",
    [(jnp.float64, "masked"), (jnp.float64, "masked_reverse"), (jnp.float32, "plain")],
)
def test_gradients_equal_autodiff_of_the_scan(name, dtype, option):
    kind = KINDS[name][0]
    options = dict(reverse=OPTIONS[option]["reverse"], **_masks(OPTIONS[option]["masks"]))
    tolerance = F64 if dtype == jnp.float64 else dict(rtol=1e-5, atol=1e-5)
    _check_gradients(kind, _kernel(kind, **options), _problem(kind, dtype), options, tolerance)


@every_kind
def test_bfloat16_inputs_match_the_reference_with_its_roundings(name):
    kind = KINDS[name][0]
    masks = _masks(True)
    args = _problem(kind, jnp.bfloat16)
    ys, h, c = _kernel(kind, **masks)(*args)
    assert ys.dtype == h.dtype == jnp.bfloat16
    expected = reference(kind, *args, **masks)
    # Both round h to bfloat16 before each matmul and the outputs at the end. In interpret
    # mode on CPU they agree bit for bit (the same XLA dots); compiled elsewhere, another
    # summation order can flip one of those roundings (2^-8 relative), carried on by later steps.
    tree_allclose((ys, h, c), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_bfloat16_inputs_with_a_float32_carry_keep_it_in_float32(name):
    """A carry the gates pass on unchanged keeps bits that bfloat16 has not."""
    kind = KINDS[name][0]
    w_h = jnp.zeros((H, kind.num_gates * H), jnp.bfloat16)
    # LSTM: i = 0, f = 1 (sigmoid(-30), sigmoid(30) in float32), so c' = c; GRU: z = 1, h' = h.
    gates = {LSTM: (-30.0, 30.0, 0.0, 0.0), GRU: (0.0, 30.0, 0.0)}[kind]
    px = jnp.broadcast_to(jnp.repeat(jnp.array(gates, jnp.bfloat16), H), (T, B, w_h.shape[1]))
    carry = jnp.full((B, H), 1 + 2.0**-12, jnp.float32)  # bfloat16 rounds it to 1
    _, h, c = _kernel(kind)(w_h, None, px, carry, carry if kind is LSTM else None)
    assert (c if kind is LSTM else h).dtype == jnp.float32
    np.testing.assert_array_equal(c if kind is LSTM else h, carry)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_without_padding_and_with_one_tile(name):
    """H a power of two and B one whole tile: the kernel sees the arrays unpadded."""
    kind = KINDS[name][0]
    options = dict(reverse=True, **_masks(True, batch=4))
    args = _problem(kind, jnp.float64, hidden=16, batch=4)
    run = jax.jit(lambda *a: recurrence(kind, *a, block_batch=4, **options))
    tree_allclose(run(*args), reference(kind, *args, **options), **F64)
    _check_gradients(kind, run, args, options, F64)


def test_vmap_over_a_second_batch_axis_equals_the_reference_per_slice():
    w_h, b_h, px, h0, _ = _problem(GRU, jnp.float32)
    pxs, h0s = jnp.stack([px, -px]), jnp.stack([h0, 2 * h0])
    masks = _masks(True)
    got = jax.jit(jax.vmap(_kernel(GRU, **masks), (None, None, 0, 0, None)))(
        w_h, b_h, pxs, h0s, None
    )
    for k in range(2):
        expected = reference(GRU, w_h, b_h, pxs[k], h0s[k], None, **masks)
        tree_allclose(jax.tree.map(lambda a, k=k: a[k], got), expected, **F32)


def test_no_steps_returns_the_initial_state():
    w_h, b_h, px, h0, c0 = _problem(LSTM, jnp.float32)
    ys, h, c = recurrence(LSTM, w_h, None, px[:0], h0, c0)
    assert ys.shape == (0, B, H)
    tree_allclose((h, c), (h0, c0), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(px=jnp.zeros((T, B, 3 * H))), "px"),
        (dict(w_h=jnp.zeros((H, 3 * H))), "w_h"),
        (dict(c0=None), "c0"),
        (dict(valid=jnp.ones((T, B), jnp.int32)), "valid"),
        (dict(resets=jnp.ones((T + 1, B), bool)), "resets"),
        (dict(block_batch=3), "block_batch"),
    ],
)
def test_bad_arguments_raise(change, message):
    w_h, _, px, h0, c0 = _problem(LSTM, jnp.float32)
    args = dict(w_h=w_h, b_h=None, px=px, h0=h0, c0=c0) | change
    with pytest.raises(ValueError, match=message):
        recurrence(LSTM, **args)

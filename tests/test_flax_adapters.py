"""seqjax inside Flax: NNX and linen adapters, and exact conversion from Flax's own cells."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqjax import (
    Bidirectional,
    ElmanCell,
    GRUCell,
    LSTMCell,
    Stack,
    VariationalDropoutCell,
    unroll,
    with_noise,
)
from seqjax.interop import flax_linen, flax_nnx
from tests.conftest import random_like, tree_allclose
from tests.registry import every_cell

ROOT = Path(__file__).resolve().parent.parent
I, H, T, B = 3, 4, 6, 2
TOL = dict(rtol=1e-5, atol=1e-6)  # float32; Flax sums per-gate matmuls, seqjax fused ones


def _xs(key=1, shape=(T, B, I)):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


# --------------------------------------------------------------------------- adapters = raw cell


def _trace(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


@every_cell
def test_adapters_trace_to_the_raw_computation(cell):
    """Forward and gradient programs of both adapters are the raw cell's, equation for
    equation: the same numbers, and no copy or conversion added under jit."""
    # Abstract values: tracing only, nothing is computed.
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0)))
    xs = jax.ShapeDtypeStruct((T, B, cell.input_size), jnp.float32)

    def deterministic(p):
        return with_noise(cell, p, None, (B,), deterministic=True)

    def raw(p, xs):
        # A Stack is called layer by layer (a sequence layer), as the adapters call it.
        run = cell if callable(cell) else functools.partial(unroll, cell)
        return run(deterministic(p), xs)[1]

    def nnx_fn(p, xs):
        return flax_nnx.Recurrent(cell, params=p, deterministic=True)(xs)[1]

    def linen_fn(p, xs):
        variables = {"params": flax_linen.wrap_params(cell, p)}
        return flax_linen.Recurrent(cell, deterministic=True).apply(variables, xs)[1]

    def grad(f):
        return jax.grad(lambda p, xs: jnp.sum(f(p, xs) ** 2), argnums=(0, 1))

    want, want_grad = _trace(raw, params, xs), _trace(grad(raw), params, xs)
    for fn in (nnx_fn, linen_fn):
        assert _trace(fn, params, xs) == want
        assert _trace(grad(fn), params, xs) == want_grad


# Every option of unroll at once (lengths, reverse, resets, truncation, batch-major).
OPTIONS = dict(
    lengths=jnp.array([T, 3], jnp.int32),
    reverse=True,
    resets=jnp.zeros((B, T), bool).at[0, 1].set(True),
    truncate=2,
    time_axis=1,
)


def test_nnx_adapter_values_and_gradients_equal_raw(key):
    options = OPTIONS
    cell = LSTMCell(I, H)
    params = cell.init(key)
    xs, carry0 = _xs(shape=(B, T, I)), random_like(cell.init_carry((B,)), jax.random.key(4))
    rnn = flax_nnx.Recurrent(cell, params=params)

    def loss_raw(p, xs, c):
        carry, ys = unroll(cell, p, xs, c, **options)
        return jnp.sum(ys**2) + jnp.sum(carry.c)

    def loss_nnx(model, xs, c):
        carry, ys = model(xs, c, **options)
        return jnp.sum(ys**2) + jnp.sum(carry.c)

    @nnx.jit  # one compilation for both sides (eager scans compile op by op)
    def both(rnn, params, xs, carry0):
        want = jax.value_and_grad(loss_raw, argnums=(0, 1, 2))(params, xs, carry0)
        got = nnx.value_and_grad(loss_nnx, argnums=(0, 1, 2))(rnn, xs, carry0)
        return want, got

    (want, (want_params, *want_rest)), (got, (got_state, *got_rest)) = both(rnn, params, xs, carry0)
    # The module's gradient is an nnx.State named by the params' fields.
    got_params = {name: got_state["params"][name][...] for name in want_params._fields}
    tree_allclose(
        (got, got_params, got_rest), (want, want_params._asdict(), want_rest), rtol=0, atol=0
    )


def test_nnx_adapter_runs_sequence_layers_and_steps(key):
    layer = Stack((Bidirectional(GRUCell(I, H), GRUCell(I, H)), LSTMCell(2 * H, H)))
    params = layer.init(key)
    xs, lengths = _xs(shape=(B, T, I)), jnp.array([T, 2], jnp.int32)
    rnn = flax_nnx.Recurrent(layer, params=params)

    def adapter(p, xs):
        return flax_nnx.Recurrent(layer, params=p)(xs, lengths=lengths, time_axis=1)

    def raw(p, xs):
        return layer(p, xs, lengths=lengths, time_axis=1)

    assert _trace(adapter, params, xs) == _trace(raw, params, xs)  # the same program
    state = nnx.state(rnn, nnx.Param)
    assert state["params"][0]["forward"]["w_h"].shape == (H, 3 * H)
    # reverse runs the whole layer on the time-reversed valid prefix, as the layer does.
    tree_allclose(
        rnn(xs, lengths=lengths, time_axis=1, reverse=True),
        layer(params, xs, lengths=lengths, time_axis=1, reverse=True),
        rtol=0,
        atol=0,
    )
    with pytest.raises(TypeError, match=r"step needs a cell \(or a Stack of cells\)"):
        rnn.step(rnn.init_carry((B,)), xs[:, 0])
    cell_rnn = flax_nnx.Recurrent(LSTMCell(I, H), params=LSTMCell(I, H).init(key))
    carry = cell_rnn.init_carry((B,))
    tree_allclose(
        cell_rnn.step(carry, xs[:, 0]),
        LSTMCell(I, H).apply(cell_rnn.seqjax_params(), carry, xs[:, 0]),
        rtol=0,
        atol=0,
    )


def test_nnx_adapter_split_merge_load_and_errors(key):
    cell = GRUCell(I, H)
    rnn = flax_nnx.Recurrent(cell, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(rnn)
    again = nnx.merge(graphdef, state)
    xs = _xs()
    tree_allclose(again(xs), rnn(xs), rtol=0, atol=0)
    new = cell.init(key)
    rnn.load_params(new)
    tree_allclose(rnn.seqjax_params(), new, rtol=0, atol=0)
    with pytest.raises(ValueError, match="w_h must have shape"):
        rnn.load_params(new._replace(w_h=jnp.zeros((H, H), jnp.float32)))
    with pytest.raises(ValueError, match="pass rngs"):
        flax_nnx.Recurrent(cell)
    with pytest.raises(TypeError, match="RecurrentCell: cell must be a seqjax cell or a Stack"):
        flax_nnx.RecurrentCell(Bidirectional(cell, cell), rngs=nnx.Rngs(0))


def test_nnx_adapter_carries_sharding_metadata(key):
    cell = LSTMCell(I, H)
    specs = cell.init(key)._replace(w_x=(None, "model"), w_h=(None, "model"), b=("model",))
    mesh = jax.make_mesh((1,), ("model",))
    rnn = flax_nnx.Recurrent(cell, params=cell.init(key), sharding=specs, mesh=mesh)
    pspecs = nnx.get_partition_spec(nnx.state(rnn, nnx.Param))
    assert pspecs["params"]["w_h"].get_value() == jax.sharding.PartitionSpec(None, "model")
    assert pspecs["params"]["b"].get_value() == jax.sharding.PartitionSpec("model")
    assert rnn.params.w_x[...].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    tree_allclose(rnn(_xs()), unroll(cell, cell.init(key), _xs()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one axis"):
        flax_nnx.Recurrent(cell, params=cell.init(key), sharding=specs._replace(b=("a", "b")))


def test_nnx_adapter_draws_variational_dropout_per_sequence(key):
    cell = VariationalDropoutCell(LSTMCell(I, H), input_rate=0.5, recurrent_rate=0.5)
    rnn = flax_nnx.Recurrent(cell, rngs=nnx.Rngs(params=0, dropout=1))
    params, xs = rnn.seqjax_params(), _xs()
    noise_key = jax.random.key(7)
    _, ys = rnn(xs, rngs=noise_key)
    want = unroll(cell, with_noise(cell, params, noise_key, (B,)), xs)[1]
    tree_allclose(ys, want, rtol=0, atol=0)
    first, second = rnn(xs)[1], rnn(xs)[1]  # the module's own stream: new masks per call
    assert not bool(jnp.all(first == second))
    rnn.eval()
    plain = unroll(LSTMCell(I, H), params.cell, xs)[1]
    tree_allclose(rnn(xs)[1], plain, rtol=0, atol=0)
    rnn.train()
    no_rngs = flax_nnx.Recurrent(cell, params=params)
    with pytest.raises(ValueError, match="needs randomness"):
        no_rngs(xs)


class _NNXRegressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        layer = Stack.build(
            lambda i, h: VariationalDropoutCell(LSTMCell(i, h), input_rate=0.1), I, (8, 8)
        )
        self.rnn = flax_nnx.Recurrent(layer, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, xs):  # xs [B, T, I]
        _, ys = self.rnn(xs, time_axis=1)
        return self.head(ys[:, -1])[:, 0]


def test_nnx_model_with_seqjax_layers_trains_under_nnx_jit():
    model = _NNXRegressor(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    xs = _xs(shape=(16, 8, I))
    targets = xs[:, :, 0].sum(1) / 3

    @nnx.jit
    def train_step(model, optimizer, xs, targets):
        def loss_fn(model):
            return jnp.mean((model(xs) - targets) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    # optax's Adam mixes its int32 step count with Python floats: standard promotion there.
    with jax.numpy_dtype_promotion("standard"):
        losses = [float(train_step(model, optimizer, xs, targets)) for _ in range(40)]
    assert losses[-1] < 0.3 * losses[0], losses
    model.eval()
    assert np.isfinite(float(jnp.mean((model(xs) - targets) ** 2)))


def test_nnx_recurrent_cell_inside_nnx_rnn(key):
    cell = LSTMCell(I, H)
    params = cell.init(key)
    rnn = nnx.RNN(flax_nnx.RecurrentCell(cell, params=params), return_carry=True)
    xs, lengths = _xs(shape=(B, T, I)), jnp.array([T, 3], jnp.int32)
    got = rnn(xs, seq_lengths=lengths)
    carry, ys = unroll(cell, params, xs, lengths=lengths, time_axis=1)
    tree_allclose(got[0], carry, **TOL)
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(got[1])[valid], np.asarray(ys)[valid], **TOL)


# --------------------------------------------------------------------------- linen adapters


def test_linen_adapter_with_remat_gives_the_raw_gradients(key):
    cell = LSTMCell(I, H)
    xs, lengths = _xs(shape=(B, T, I)), jnp.array([T, 2], jnp.int32)
    model = nn.remat(flax_linen.Recurrent)(cell, time_axis=1)
    variables = model.init(key, xs, None, lengths)
    params = flax_linen.unwrap_params(cell, variables["params"])

    def loss_linen(v):
        return jnp.sum(model.apply(v, xs, None, lengths)[1] ** 2)

    def loss_raw(p):
        return jnp.sum(unroll(cell, p, xs, lengths=lengths, time_axis=1)[1] ** 2)

    got, want = jax.jit(lambda v, p: (jax.grad(loss_linen)(v), jax.grad(loss_raw)(p)))(
        variables, params
    )
    got = flax_linen.unwrap_params(cell, got["params"])
    tree_allclose(got, want, **TOL)  # remat recomputes: XLA may fuse the two differently
    assert "remat" in str(jax.make_jaxpr(jax.grad(loss_linen))(variables))


def test_linen_adapter_scans_over_depth_and_shards(key):
    class Block(nn.Module):
        @nn.compact
        def __call__(self, xs, _):
            return flax_linen.Recurrent(GRUCell(H, H))(xs)[1], None

    deep = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)()
    xs = _xs(shape=(T, B, H))
    variables = deep.init(key, xs, None)
    stacked = variables["params"]["Recurrent_0"]["cell"]
    assert stacked["w_h"].shape == (3, H, 3 * H)
    ys = xs
    for k in range(3):
        layer_params = flax_linen.unwrap_params(
            GRUCell(H, H), {"cell": jax.tree.map(lambda a, k=k: a[k], stacked)}
        )
        ys = unroll(GRUCell(H, H), layer_params, ys)[1]
    tree_allclose(deep.apply(variables, xs, None)[0], ys, **TOL)

    cell = LSTMCell(I, H)
    specs = cell.init(key)._replace(w_x=(None, "model"), w_h=(None, "model"), b=None)
    sharded = flax_linen.Recurrent(cell, sharding=specs)
    boxed = sharded.init(key, _xs())
    pspecs = nn.get_partition_spec(boxed)["params"]["cell"]
    assert pspecs["w_x"] == jax.sharding.PartitionSpec(None, "model")
    assert not isinstance(boxed["params"]["cell"]["b"], nn.Partitioned)


def test_linen_model_with_adapter_trains(key):
    class Regressor(nn.Module):
        @nn.compact
        def __call__(self, xs):
            _, ys = flax_linen.Recurrent(Stack.build(GRUCell, I, (8, 8)), time_axis=1)(xs)
            return nn.Dense(1)(ys[:, -1])[:, 0]

    model = Regressor()
    xs = _xs(shape=(16, 8, I))
    targets = xs[:, :, 0].sum(1) / 3
    params = model.init(key, xs)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, xs) - targets) ** 2))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    # optax's Adam mixes its int32 step count with Python floats: standard promotion there.
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(40):
            params, opt_state, loss = train_step(params, opt_state)
            losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


def test_linen_adapter_dropout_uses_the_dropout_stream(key):
    cell = VariationalDropoutCell(ElmanCell(I, H), input_rate=0.5, recurrent_rate=0.5)
    model = flax_linen.Recurrent(cell)
    xs = _xs()
    variables = model.init(key, xs, deterministic=True)
    params = flax_linen.unwrap_params(cell, variables["params"])
    noise = jax.random.key(5)
    _, ys = model.apply(variables, xs, deterministic=False, rngs={"dropout": noise})
    # linen hands the module a key folded from the stream: rebuild it the same way.
    module_key = model.bind(variables, rngs={"dropout": noise}).make_rng("dropout")
    tree_allclose(ys, unroll(cell, with_noise(cell, params, module_key, (B,)), xs)[1], **TOL)
    tree_allclose(
        model.apply(variables, xs, deterministic=True)[1],
        unroll(ElmanCell(I, H), params.cell, xs)[1],
        rtol=0,
        atol=0,
    )


def test_linen_recurrent_cell_inside_nn_rnn(key):
    cell = GRUCell(I, H)
    rnn = nn.RNN(flax_linen.RecurrentCell(cell), return_carry=True)
    xs, lengths = _xs(shape=(B, T, I)), jnp.array([2, T], jnp.int32)
    variables = rnn.init(key, xs)
    params = flax_linen.unwrap_params(cell, variables["params"]["cell"])
    carry, ys = rnn.apply(variables, xs, seq_lengths=lengths)
    want_carry, want_ys = unroll(cell, params, xs, lengths=lengths, time_axis=1)
    tree_allclose(carry, want_carry, **TOL)
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(ys)[valid], np.asarray(want_ys)[valid], **TOL)


def test_recurrent_cells_step_a_stack_of_cells(key):
    """A Stack of cells steps like a cell: linen's and NNX's RecurrentCell take it, and
    running it under nn.RNN / nnx.RNN equals the Stack over the sequence."""
    stack = Stack.build(LSTMCell, input_size=I, hidden_sizes=(H, 3))
    params = stack.init(key)
    xs = _xs(shape=(B, T, I))
    _, want = stack(params, xs, time_axis=1)
    nnx_rnn = nnx.RNN(flax_nnx.RecurrentCell(stack, params=params))
    tree_allclose(nnx_rnn(xs), want, **TOL)
    rnn = nn.RNN(flax_linen.RecurrentCell(stack))
    variables = rnn.init(key, xs)
    linen_params = flax_linen.unwrap_params(stack, variables["params"]["cell"])
    _, want_linen = stack(linen_params, xs, time_axis=1)
    tree_allclose(rnn.apply(variables, xs), want_linen, **TOL)
    two_way = Stack.build(LSTMCell, input_size=I, hidden_sizes=(H,), bidirectional=True)
    with pytest.raises(TypeError, match="a seqjax cell or a Stack of cells; got a Stack"):
        flax_nnx.RecurrentCell(two_way, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="a seqjax cell or a Stack of cells; got a Stack"):
        nn.RNN(flax_linen.RecurrentCell(two_way)).init(key, xs)


# --------------------------------------------------------------------------- Flax's own cells

NNX_CELLS = {
    "lstm": lambda rngs: nnx.LSTMCell(I, H, rngs=rngs),
    "optimized_lstm": lambda rngs: nnx.OptimizedLSTMCell(I, H, rngs=rngs),
    "gru": lambda rngs: nnx.GRUCell(I, H, rngs=rngs),
    "simple_tanh": lambda rngs: nnx.SimpleCell(I, H, rngs=rngs),
    "simple_relu": lambda rngs: nnx.SimpleCell(I, H, activation_fn=nnx.relu, rngs=rngs),
}


def _randomised(make, key):
    flax_cell = make(nnx.Rngs(0))
    state = nnx.state(flax_cell, nnx.Param)
    # Flax initialises biases to zero; random ones make the comparison meaningful.
    nnx.update(flax_cell, random_like(state, key, 0.5))
    return flax_cell


NNX_CASES = [(name, False) for name in NNX_CELLS] + [("lstm", True), ("gru", True)]


@pytest.mark.parametrize(
    ("name", "reverse"),
    NNX_CASES,
    ids=[f"{n}-{'reverse' if r else 'forward'}" for n, r in NNX_CASES],
)
def test_nnx_cells_convert_exactly_and_match_nnx_rnn(name, reverse, key):
    make = NNX_CELLS[name]
    flax_cell = _randomised(make, key)
    cell = flax_nnx.cell_from_nnx(flax_cell)
    params = flax_nnx.params_from_nnx(cell, flax_cell)
    before = nnx.state(flax_cell, nnx.Param)
    # Flax -> seqjax -> Flax: the same arrays, bit for bit.
    fresh = flax_nnx.params_to_nnx(cell, params, make(nnx.Rngs(1)))
    tree_allclose(nnx.state(fresh, nnx.Param), before, rtol=0, atol=0)
    tree_allclose(flax_nnx.params_from_nnx(cell, fresh), params, rtol=0, atol=0)
    # ... and the same function as Flax's own scan over the Flax cell.
    # Flax reverses with an int64 arange under x64: lengths of the same dtype.
    xs, lengths = _xs(shape=(B, T, I)), jnp.array([T, 3])
    carry0 = jax.tree.map(lambda a: a + 0.3, flax_cell.initialize_carry((B, I), nnx.Rngs(2)))
    rnn = nnx.RNN(flax_cell, return_carry=True, reverse=reverse, keep_order=True)
    flax_carry, flax_ys = rnn(xs, initial_carry=carry0, seq_lengths=lengths)
    carry, ys = unroll(
        cell,
        params,
        xs,
        flax_nnx.carry_from_nnx(cell, carry0),
        lengths=lengths,
        reverse=reverse,
        time_axis=1,
    )
    tree_allclose(flax_nnx.carry_to_nnx(cell, carry), flax_carry, **TOL)
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(ys)[valid], np.asarray(flax_ys)[valid], **TOL)


def test_nnx_gru_has_no_recurrent_candidate_bias(key):
    cell = GRUCell(I, H)
    params = cell.init(key)
    flax_cell = nnx.GRUCell(I, H, rngs=nnx.Rngs(0))
    before = nnx.state(flax_cell, nnx.Param)
    with pytest.raises(ValueError, match="no recurrent candidate bias"):
        flax_nnx.params_to_nnx(cell, params._replace(b_h=params.b_h.at[-1].set(0.5)), flax_cell)
    tree_allclose(nnx.state(flax_cell, nnx.Param), before, rtol=0, atol=0)  # nothing written
    # Recurrent r/z biases fold into Flax's input biases: the same function.
    b_h = jnp.concatenate([jnp.full((2 * H,), 0.5, jnp.float32), jnp.zeros((H,), jnp.float32)])
    folded = params._replace(b_h=b_h)
    flax_nnx.params_to_nnx(cell, folded, flax_cell)
    h, x = _xs(3, (B, H)), _xs(4, (B, I))
    tree_allclose(flax_cell(h, x), cell.apply(folded, h, x), **TOL)


def test_converters_infer_cells_and_reject_what_seqjax_cannot_express(key):
    assert flax_nnx.cell_from_nnx(nnx.OptimizedLSTMCell(I, H, rngs=nnx.Rngs(0))) == LSTMCell(I, H)
    simple = nnx.SimpleCell(I, H, activation_fn=nnx.relu, rngs=nnx.Rngs(0))
    assert flax_nnx.cell_from_nnx(simple) == ElmanCell(I, H, jax.nn.relu)
    with pytest.raises(ValueError, match="residual"):
        flax_nnx.cell_from_nnx(nnx.SimpleCell(I, H, residual=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="gate_fn=sigmoid"):
        flax_nnx.cell_from_nnx(nnx.GRUCell(I, H, gate_fn=nnx.hard_sigmoid, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="flax_cell must be"):
        flax_nnx.cell_from_nnx(nnx.Linear(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="converts to a LSTMCell"):
        flax_nnx.params_from_nnx(LSTMCell(I, 5), nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)))

    for flax_cell, want in [
        (nn.OptimizedLSTMCell(H), LSTMCell(I, H)),
        (nn.GRUCell(H), GRUCell(I, H)),
        (nn.SimpleCell(H, activation_fn=nn.relu), ElmanCell(I, H, jax.nn.relu)),
    ]:
        carry = flax_cell.initialize_carry(key, (B, I))
        variables = flax_cell.init(key, carry, jnp.ones((B, I), jnp.float32))
        cell = flax_linen.cell_from_linen(flax_cell, variables)
        assert cell == want
        params = flax_linen.params_from_linen(cell, variables)
        tree_allclose(flax_linen.params_to_linen(cell, params), variables, rtol=0, atol=0)
    with pytest.raises(ValueError, match="residual"):
        flax_linen.cell_from_linen(nn.SimpleCell(H, residual=True), variables)


# --------------------------------------------------------------------------- the example


def test_nnx_example_quick(tmp_path):
    from seqjax import checkpoint

    directory = tmp_path / "ckpt"
    cmd = [sys.executable, "examples/nnx_model.py", "--quick", "--checkpoint-dir", str(directory)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out bits per character" in proc.stdout
    assert checkpoint.latest_step(directory) == 20

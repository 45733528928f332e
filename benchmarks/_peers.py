"""The peer implementations the benchmark suite times against seqjax, on seqjax's weights.

Each peer is a function ``peer(cell, params, xs, mode) -> seqjax.apps.bench.Contender`` that
builds the peer library's own layer for ``cell`` (an ``LSTMCell``, ``GRUCell`` or
``ElmanCell``), loads it with weights converted from seqjax's ``params`` by a differentiable
``convert`` (so the peer's parameter gradients map back to seqjax's through ``jax.vjp``), and
runs it on ``xs [T, B, I]`` (``mode`` ``fwd``: ``ys``; ``fwd+bwd``: ``mean(ys**2)`` with the
gradients for every parameter and the input). It raises ``seqjax.apps.bench.PeerUnavailable``
when the library is missing or cannot run the cell on this backend. Before timing, the suite
checks every peer's outputs and gradients against seqjax's (``bench.run_group``).

Peers and what they compute:

| name | layer | notes |
|---|---|---|
| ``seqjax`` | ``seqjax.unroll(cell, params, xs)`` | defaults, as a user calls it |
| ``flax.linen`` | ``nn.RNN(OptimizedLSTMCell / GRUCell / SimpleCell)`` | converter in interop |
| ``flax.linen(LSTMCell)`` | ``nn.RNN(nn.LSTMCell)`` | LSTM only: one ``Dense`` per gate |
| ``flax.nnx`` | ``nnx.RNN(OptimizedLSTMCell / GRUCell / SimpleCell)`` | GRU: no recurrent bias |
| ``equinox`` | ``eqx.nn.LSTMCell / GRUCell``, ``vmap`` over B, ``lax.scan`` | no Elman cell |
| ``haiku`` | ``hk.dynamic_unroll(hk.LSTM / hk.GRU / hk.VanillaRNN)`` | see below |
| ``torch`` | ``nn.LSTM / nn.GRU / nn.RNN`` | cuDNN on GPU, oneDNN on CPU |
| ``jax.cudnn`` | ``jax.experimental.rnn.lstm`` | GPU only, LSTM only, batch-major input |

Haiku's GRU is the reset-before form (Cho et al.: ``(r * h) W_hn``, a second dependent
matmul per step) and its ``VanillaRNN`` uses ReLU; they are checked against seqjax's
``GRUCell(reset_after=False)`` and ``ElmanCell(activation=relu)`` and timed against seqjax's
default cell (``reference`` in the rows says which function a peer was checked against).
``jax.experimental.rnn.lstm`` takes batch-major input, made once before timing (its timed
function has no transposes; the loss is the same in either layout).
"""

from __future__ import annotations

import importlib.util
import inspect

import jax
import jax.numpy as jnp

import seqjax
from seqjax import ElmanCell, GRUCell, LSTMCell
from seqjax.apps.bench import (
    PEERS as PACKAGE_PEERS,
)
from seqjax.apps.bench import (
    Peer,
    PeerUnavailable,
    jax_contender,
)


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"{module} is not installed")


def _gates(a, n):
    return jnp.split(a, n, axis=-1)


# --------------------------------------------------------------------------- Flax NNX


def nnx_peer(cell, params, xs, mode: str) -> Peer:
    """Flax NNX ``nnx.RNN(OptimizedLSTMCell | GRUCell | SimpleCell, time_major=True)``."""
    from flax import nnx

    size_i, size_h = cell.input_size, cell.hidden_size
    rngs = nnx.Rngs(0)
    if isinstance(cell, LSTMCell):
        flax_cell = nnx.OptimizedLSTMCell(size_i, size_h, rngs=rngs)
    elif isinstance(cell, GRUCell):
        flax_cell = nnx.GRUCell(size_i, size_h, rngs=rngs)
    else:
        flax_cell = nnx.SimpleCell(size_i, size_h, activation_fn=cell.activation, rngs=rngs)
    model = nnx.RNN(flax_cell, time_major=True)
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    treedef = jax.tree.structure(state)

    def pure(p) -> dict:
        if isinstance(cell, LSTMCell):
            return {
                "dense_h": {"bias": p.b, "kernel": p.w_h},
                "dense_i": {"kernel": p.w_x},
            }
        if isinstance(cell, GRUCell):
            # NNX's GRU has no recurrent bias; r and z fold into the input bias, and n's
            # (zero at seqjax's initialisation) cannot be represented: left out of the check.
            b_h = jnp.concatenate([p.b_h[: 2 * size_h], jnp.zeros_like(p.b_h[2 * size_h :])])
            return {"dense_h": {"kernel": p.w_h}, "dense_i": {"bias": p.b_x + b_h, "kernel": p.w_x}}
        return {"dense_h": {"kernel": p.w_h}, "dense_i": {"bias": p.b, "kernel": p.w_x}}

    expected = jax.tree.map(jnp.shape, nnx.to_pure_dict(state))
    if jax.tree.map(jnp.shape, {"cell": pure(params)}) != expected:
        raise PeerUnavailable(f"unexpected NNX parameter layout {expected}")

    def convert(p):
        # State flattens its nested dict in sorted key order, as jax.tree does the dict.
        return treedef.unflatten(jax.tree.leaves({"cell": pure(p)}))

    # The non-parameter state (the RNN's RNG counters) is copied into each trace: merging
    # the captured objects themselves fails once NNX mutates them at another trace level.
    copy = {"copy": True} if "copy" in inspect.signature(nnx.merge).parameters else {}

    def forward(st, x):
        return nnx.merge(graphdef, st, rest, **copy)(x)

    skip = ("b_h",) if isinstance(cell, GRUCell) else ()
    return jax_contender(
        "flax.nnx", convert, forward, params, xs, mode, skip_grads=skip,
        meta={"peer_cell": type(flax_cell).__name__},
    )  # fmt: skip


# --------------------------------------------------------------------------- Equinox


def equinox_peer(cell, params, xs, mode: str) -> Peer:
    """Equinox ``eqx.nn.LSTMCell / GRUCell`` (unbatched cells) under ``vmap`` and ``lax.scan``."""
    _need("equinox")
    import equinox as eqx

    size_i, size_h = cell.input_size, cell.hidden_size
    key = jax.random.key(0)
    if isinstance(cell, LSTMCell):
        module = eqx.nn.LSTMCell(size_i, size_h, key=key)

        def convert(p):
            return eqx.tree_at(
                lambda m: (m.weight_ih, m.weight_hh, m.bias), module, (p.w_x.T, p.w_h.T, p.b)
            )

        def init(batch):
            zeros = jnp.zeros((batch, size_h), xs.dtype)
            return zeros, zeros

        def output(state):
            return state[0]

    elif isinstance(cell, GRUCell):
        module = eqx.nn.GRUCell(size_i, size_h, key=key)

        def convert(p):
            b_rz = jnp.concatenate([p.b_h[: 2 * size_h], jnp.zeros_like(p.b_h[2 * size_h :])])
            new = (p.w_x.T, p.w_h.T, p.b_x + b_rz, p.b_h[2 * size_h :])
            return eqx.tree_at(lambda m: (m.weight_ih, m.weight_hh, m.bias, m.bias_n), module, new)

        def init(batch):
            return jnp.zeros((batch, size_h), xs.dtype)

        def output(state):
            return state

    else:
        raise PeerUnavailable("Equinox has no Elman (vanilla RNN) cell")

    def forward(m, x):
        def body(state, x_t):
            state = jax.vmap(m)(x_t, state)
            return state, output(state)

        return jax.lax.scan(body, init(x.shape[1]), x)[1]

    return jax_contender(
        "equinox", convert, forward, params, xs, mode, meta={"peer_cell": type(module).__name__}
    )


# --------------------------------------------------------------------------- Haiku


def haiku_peer(cell, params, xs, mode: str) -> Peer:
    """Haiku ``hk.dynamic_unroll(hk.LSTM | hk.GRU | hk.VanillaRNN, time_major=True)``."""
    _need("haiku")
    import haiku as hk

    size_h = cell.hidden_size
    batch = xs.shape[1]
    core_type = {LSTMCell: hk.LSTM, GRUCell: hk.GRU, ElmanCell: hk.VanillaRNN}[type(cell)]

    def model(x):
        core = core_type(size_h)
        return hk.dynamic_unroll(core, x, core.initial_state(batch), time_major=True)[0]

    transformed = hk.without_apply_rng(hk.transform(model))
    shapes = jax.eval_shape(transformed.init, jax.random.key(0), xs)
    reference_cell = None
    if isinstance(cell, LSTMCell):
        # hk.LSTM: one Linear over [x, h]; gates i, g, f, o; adds 1 to the forget gate.
        forget_one = jnp.zeros((4 * size_h,), xs.dtype).at[2 * size_h : 3 * size_h].set(1.0)

        def convert(p):
            def reorder(a):
                i, f, g, o = _gates(a, 4)
                return jnp.concatenate([i, g, f, o], axis=-1)

            w = reorder(jnp.concatenate([p.w_x, p.w_h], axis=0))
            return {"lstm/linear": {"w": w, "b": reorder(p.b) - forget_one}}

    elif isinstance(cell, GRUCell):
        # hk.GRU: reset-before, gates z, r, a with h' = (1 - z) h + z a: seqjax's z negated.
        reference_cell = GRUCell(cell.input_size, size_h, reset_after=False)

        def convert(p):
            def zra(a):
                r, z, n = _gates(a, 3)
                return jnp.concatenate([-z, r, n], axis=-1)

            return {"gru": {"w_i": zra(p.w_x), "w_h": zra(p.w_h), "b": zra(p.b_x + p.b_h)}}

    else:
        # hk.VanillaRNN: ReLU, two Linear layers each with a bias.
        reference_cell = ElmanCell(cell.input_size, size_h, activation=jax.nn.relu)

        def convert(p):
            return {
                "vanilla_rnn/linear": {"w": p.w_x, "b": p.b},
                "vanilla_rnn/linear_1": {"w": p.w_h, "b": jnp.zeros_like(p.b)},
            }

    if jax.tree.map(jnp.shape, convert(params)) != jax.tree.map(lambda s: s.shape, shapes):
        raise PeerUnavailable(f"unexpected Haiku parameter layout {shapes}")
    return jax_contender(
        "haiku", convert, transformed.apply, params, xs, mode, reference_cell=reference_cell,
        meta={"peer_cell": core_type.__name__},
    )  # fmt: skip


# --------------------------------------------------------------------------- cuDNN via JAX


def jax_cudnn_peer(cell, params, xs, mode: str) -> Peer:
    """``jax.experimental.rnn.lstm``: cuDNN's LSTM called from JAX (GPU, LSTM only)."""
    if not isinstance(cell, LSTMCell):
        raise PeerUnavailable("jax.experimental.rnn has an LSTM only")
    if jax.default_backend() != "gpu":
        raise PeerUnavailable(f"cuDNN needs a GPU; the backend is {jax.default_backend()}")
    try:
        from jax.experimental import rnn
    except ImportError as err:
        raise PeerUnavailable(f"jax.experimental.rnn: {err}") from err
    size_i, size_h = cell.input_size, cell.hidden_size

    def convert(p):
        # cuDNN's flat layout: W_ih [4H, I], W_hh [4H, H], then b_ih, b_hh; gates i, f, g, o.
        return jnp.concatenate([p.w_x.T.ravel(), p.w_h.T.ravel(), p.b, jnp.zeros_like(p.b)])

    def forward(weights, x):  # x [B, T, I] -> ys [B, T, H]
        batch, steps = x.shape[:2]
        zeros = jnp.zeros((1, batch, size_h), x.dtype)
        lengths = jnp.full((batch,), steps, jnp.int32)
        return rnn.lstm(
            x, zeros, zeros, weights, lengths, input_size=size_i, hidden_size=size_h,
            num_layers=1, dropout=0.0, bidirectional=False,
        )[0]  # fmt: skip

    # Batch-major input made outside the timed function: with jax 0.11.2 on an H100, a
    # transpose inside the same jit in front of rnn.lstm gave wrong outputs (max error 0.45
    # against 2e-4 eagerly), so the peer gets its natural layout instead.
    return jax_contender(
        "jax.cudnn", convert, forward, params, xs, mode, batch_major=True,
        meta={"peer_cell": "rnn.lstm", "layout": "batch_major"},
    )  # fmt: skip


def pallas_peer(cell, params, xs, mode: str) -> Peer:
    """``seqjax.unroll(method=Pallas())``: seqjax's persistent kernel (compiled on GPU only)."""
    if jax.default_backend() != "gpu":
        raise PeerUnavailable(
            f"the Pallas kernel is compiled for GPUs; on {jax.default_backend()} it runs in "
            "interpret mode, for tests only"
        )
    method = seqjax.Pallas()
    try:
        method.check(cell)
    except TypeError as err:
        raise PeerUnavailable(str(err)) from err
    return jax_contender(
        "seqjax.pallas", lambda p: p, lambda p, x: seqjax.unroll(cell, p, x, method=method)[1],
        params, xs, mode, meta={"method": "Pallas()"},
    )  # fmt: skip


PEERS = {
    **PACKAGE_PEERS,
    "seqjax.pallas": pallas_peer,
    "flax.nnx": nnx_peer,
    "equinox": equinox_peer,
    "haiku": haiku_peer,
    "jax.cudnn": jax_cudnn_peer,
}

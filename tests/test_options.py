"""Every layer, model and adapter accepts every option of ``unroll`` and forwards it.

Issue 20: ``Stack`` and ``Bidirectional`` re-listed 6 of ``unroll``'s 13 options and dropped
the rest; the Flax adapters refused ``remat``. Here the options are read off ``unroll``'s
signature, so a new option fails these tests until every consumer takes it; and a recording
method checks what actually reaches the evaluation.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import pytest

import seqjax as sj
from seqjax.layers import run_layer
from seqjax.methods import Scan

T, B, I, H = 5, 2, 3, 4
SEEN: list = []


@dataclasses.dataclass(frozen=True)
class Recording(Scan):
    """A scan that records the checked inputs every cell run receives."""

    def run(self, cell, params, inputs):
        SEEN.append(inputs)
        return super().run(cell, params, inputs)


def _keyword_options(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


UNROLL = _keyword_options(sj.unroll)


def test_unroll_options_are_the_static_options_plus_the_data():
    fields = {f.name: f.default for f in dataclasses.fields(sj.UnrollOptions)}
    per_call = {"lengths": None, "resets": None, "time_axis": 0}
    assert {**fields, **per_call} == UNROLL


@pytest.mark.parametrize(
    "fn",
    [
        sj.unroll_with_info,
        sj.Stack.__call__,
        sj.Bidirectional.__call__,
        sj.embedded_unroll,
        run_layer,
    ],
    ids=["unroll_with_info", "Stack", "Bidirectional", "embedded_unroll", "run_layer"],
)
def test_every_layer_takes_every_unroll_option(fn):
    if fn is run_layer:  # the static options travel as one UnrollOptions
        got = _keyword_options(fn)
        assert set(got) == {"lengths", "resets", "time_axis", "options"}
        return
    got = _keyword_options(fn)
    missing = {k: v for k, v in UNROLL.items() if k not in got or got[k] != v}
    assert not missing, f"{fn.__qualname__} lacks (or changes the default of) {missing}"


@pytest.mark.parametrize(
    "model", [sj.SequenceClassifier, sj.SequenceTagger, sj.Seq2Seq, sj.ConditionedGenerator]
)
def test_every_model_holds_the_options_of_its_recurrent_part(model):
    fields = {f.name: f for f in dataclasses.fields(model)}
    assert fields["options"].default == sj.UnrollOptions()


def test_flax_adapters_take_every_unroll_option():
    pytest.importorskip("flax")
    from seqjax.interop import flax_linen, flax_nnx

    nnx_options = _keyword_options(flax_nnx.Recurrent.__call__)
    assert {k: nnx_options.get(k, "missing") for k in UNROLL} == UNROLL
    linen_fields = {f.name: f.default for f in dataclasses.fields(flax_linen.Recurrent)}
    call = inspect.signature(flax_linen.Recurrent.__call__).parameters
    linen = {**linen_fields, **{k: p.default for k, p in call.items()}}
    assert {k: linen.get(k, "missing") for k in UNROLL} == UNROLL


def _data():
    xs = jax.random.normal(jax.random.key(1), (B, T, I), jnp.float32)  # batch-major
    lengths = jnp.array([T, 3], jnp.int32)
    resets = jnp.zeros((B, T), bool).at[0, 2].set(True)
    return xs, lengths, resets


OPTIONS = dict(reverse=True, truncate=2, method=Recording())


def _check_seen(count: int, reverse=(True,)):
    assert len(SEEN) == count, len(SEEN)
    for inputs in SEEN:
        assert inputs.truncate == 2
        assert inputs.lengths is not None and inputs.resets is not None
        assert inputs.xs.shape[:2] == (T, B)  # time_axis=1 was applied
    assert {inputs.reverse for inputs in SEEN} == set(reverse)
    SEEN.clear()


def test_stack_and_bidirectional_forward_every_option(key):
    xs, lengths, resets = _data()
    layer = sj.Stack([sj.Bidirectional(sj.GRUCell(I, H), sj.LSTMCell(I, H)), sj.GRUCell(2 * H, H)])
    params = layer.init(key)
    SEEN.clear()
    layer(params, xs, lengths=lengths, resets=resets, time_axis=1, **OPTIONS)
    _check_seen(3, reverse=(True, False))  # the bidirectional layer's backward cell: forwards


def test_embedded_unroll_forwards_every_option(key):
    _, lengths, resets = _data()
    cell = sj.LSTMCell(I, H)
    table = jax.random.normal(key, (7, I), jnp.float32)
    ids = jnp.zeros((B, T), jnp.int32)
    for fold in (True, False):
        SEEN.clear()
        sj.embedded_unroll(
            cell, cell.init(key), table, ids, lengths=lengths, resets=resets, time_axis=1,
            fold=fold, **OPTIONS,
        )  # fmt: skip
        _check_seen(1)


def test_models_forward_their_options(key):
    xs, lengths, _ = _data()
    options = sj.UnrollOptions(truncate=2, method=Recording())
    model = sj.SequenceClassifier(sj.GRUCell(I, H), 3, options=options)
    SEEN.clear()
    model(model.init(key), xs, lengths, time_axis=1)
    assert len(SEEN) == 1 and SEEN[0].truncate == 2
    with pytest.raises(ValueError, match="reverse"):
        sj.ConditionedGenerator(3, sj.GRUCell(I, H), 5, I, options=sj.UnrollOptions(reverse=True))
    SEEN.clear()


def test_flax_adapters_forward_every_option(key):
    pytest.importorskip("flax")
    from flax import nnx

    from seqjax.interop import flax_linen, flax_nnx

    xs, lengths, resets = _data()
    layer = sj.Stack([sj.LSTMCell(I, H)])
    SEEN.clear()
    rnn = flax_nnx.Recurrent(layer, rngs=nnx.Rngs(0))
    rnn(xs, lengths=lengths, resets=resets, time_axis=1, **OPTIONS)
    _check_seen(1)
    module = flax_linen.Recurrent(layer, time_axis=1, **OPTIONS)
    variables = module.init(key, xs, lengths=lengths, resets=resets)
    SEEN.clear()
    module.apply(variables, xs, lengths=lengths, resets=resets)
    _check_seen(1)


def test_reverse_flips_a_layer_in_time(key):
    """``reverse=True`` on any layer is the layer run on the time-reversed valid prefix."""
    xs, lengths, _ = _data()
    layer = sj.Stack([sj.Bidirectional(sj.GRUCell(I, H), sj.GRUCell(I, H)), sj.GRUCell(2 * H, H)])
    params = layer.init(key)

    def flip(a):  # reverse each sequence's valid prefix, keep the padding where it is
        idx = jnp.arange(T, dtype=jnp.int32)[:, None]
        src = jnp.where(idx < lengths[None], lengths[None] - 1 - idx, idx)  # [T, B]
        return jnp.take_along_axis(a, src.T[..., None], axis=1)

    _, got = layer(params, xs, lengths=lengths, time_axis=1, reverse=True)
    _, want = layer(params, flip(xs), lengths=lengths, time_axis=1)
    assert jnp.allclose(got, flip(want), atol=1e-5)


def test_equal_method_objects_share_one_compilation(key):
    """Options are values, not closures: equal objects hit jit's cache (chex counts traces)."""
    import chex

    cell = sj.GRUCell(I, H)
    params = cell.init(key)
    xs = jnp.ones((T, B, I), jnp.float32)

    @chex.assert_max_traces(n=2)  # one per distinct method below, never one per object
    def run(params, xs, method):
        return sj.unroll(cell, params, xs, method=method)[1]

    run = jax.jit(run, static_argnums=2)  # method: a static, hashable value
    for method in (sj.Scan(unroll=2), sj.Scan(unroll=2), sj.Remat(3), sj.Remat((3,))):
        run(params, xs, method)

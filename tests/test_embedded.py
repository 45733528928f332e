"""embedded_unroll equals unroll over embedded ids, folded or not, values and gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import (
    Embedding,
    EmbeddingParams,
    LSTMCell,
    VariationalDropoutCell,
    embedded_unroll,
    unroll,
)
from seqjax.cells import (
    JacobianDiagonal,
    LinearRecurrence,
    ProjectWeight,
    RecurWeight,
    SplitStep,
    SummedUpdate,
    supports,
)
from seqjax.embedded import _Lookup, can_fold
from tests.conftest import random_like, tree_allclose
from tests.registry import CELLS, H

T, B, V = 6, 2, 5  # V <= T * B: the default folds
TOL = dict(rtol=1e-10, atol=1e-12)  # float64, the same sums in another order
FOLDABLE = [name for name, cell in CELLS.items() if can_fold(cell, V)]


def _problem(cell):
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
    table = jax.random.normal(jax.random.key(1), (V, cell.input_size), jnp.float64)
    ids = jax.random.randint(jax.random.key(2), (T, B), 0, V)
    carry = random_like(cell.init_carry((B,), jnp.float64), jax.random.key(3))
    return params, table, ids, carry


def _out_and_grads(f, params, table, carry):
    """``f(params, table, carry) -> (carry, ys)``, and the gradient of a loss on both."""

    def loss(p, t, c):
        final, ys = f(p, t, c)
        weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(weights * ys) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(final))

    return jax.jit(lambda p, t, c: (f(p, t, c), jax.grad(loss, argnums=(0, 1, 2))(p, t, c)))(
        params, table, carry
    )


def test_the_shipped_gated_cells_fold():
    assert {"lstm", "gru", "elman_tanh"} <= set(FOLDABLE)
    assert "lstm_dropout" not in FOLDABLE  # its input mask is per sequence, not per row


# The fold is each cell's own (its projection, its Jacobian diagonal): plain and quasi-DEER
# for every foldable cell. Resets, lengths, truncation and reverse are unroll's bookkeeping
# around the folded cell, the same for every cell: two cells with different carries.
FOLD_CASES = [(n, o) for n in FOLDABLE for o in ("plain", "quasi_deer")] + [
    (n, o) for n in ("lstm", "gru") for o in ("resets_lengths_truncate", "reverse")
]


@pytest.mark.parametrize("name, options", FOLD_CASES, ids=[f"{o}-{n}" for n, o in FOLD_CASES])
def test_folded_equals_unroll_of_the_embedded_ids(name, options):
    cell = CELLS[name]
    params, table, ids, carry = _problem(cell)
    kwargs = {
        "plain": {},
        "resets_lengths_truncate": dict(
            resets=jnp.zeros((T, B), bool).at[2, 0].set(True).at[4, 1].set(True),
            lengths=jnp.array([T, 4]),
            truncate=2,
        ),
        "reverse": dict(reverse=True),
        "quasi_deer": dict(method="quasi_deer"),  # reads the cell's jacobian_diagonal
    }[options]

    def folded(p, t, c):
        return embedded_unroll(cell, p, t, ids, c, fold=True, **kwargs)

    def reference(p, t, c):
        return unroll(cell, p, jnp.take(t, ids, axis=0), c, **kwargs)

    tree_allclose(
        _out_and_grads(folded, params, table, carry),
        _out_and_grads(reference, params, table, carry),
        **TOL,
    )


@dataclasses.dataclass(frozen=True)
class _Recording(LSTMCell):
    """An LSTM cell that notes the leading shape of every input it projects (at trace time)."""

    seen: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def project(self, params, xs):
        self.seen.append(xs.shape[:-1])
        return super().project(params, xs)


@pytest.mark.parametrize(("vocab", "folded"), [(T * B, True), (T * B + 1, False)])
def test_the_default_folds_when_the_vocabulary_is_at_most_the_tokens(vocab, folded):
    cell = _Recording(3, 4)
    table = jnp.ones((vocab, 3), jnp.float32)
    embedded_unroll(cell, cell.init(jax.random.key(0)), table, jnp.zeros((T, B), jnp.int32))
    assert ((vocab,) in cell.seen) == folded
    assert all(shape == (vocab,) for shape in cell.seen) == folded


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("time_axis", [1, -1])  # an axis of ids: -1 is T in [B, T]
def test_time_axis_and_ids_out_of_range_behave_as_embedding_then_unroll(fold, time_axis):
    cell, embed = LSTMCell(3, 4), Embedding(V, 3)
    params, table = cell.init(jax.random.key(0)), embed.init(jax.random.key(1)).table
    ids = jnp.array([[0, -1, 4], [V, -V - 1, 2]])  # [B, T]: -1 is the last row; V, -V-1 NaN
    _, ys = embedded_unroll(cell, params, table, ids, time_axis=time_axis, fold=fold)
    _, expected = unroll(cell, params, embed(EmbeddingParams(table), ids), time_axis=1)
    np.testing.assert_allclose(ys, expected, rtol=1e-5, atol=1e-6)  # float32 sums reordered
    assert np.isnan(ys[1, 0]).all() and not np.isnan(ys[0]).any()


def test_a_cell_that_cannot_fold_runs_unfolded_and_refuses_fold_true():
    cell = VariationalDropoutCell(LSTMCell(3, 4), input_rate=0.5)
    params = cell.init(jax.random.key(0))
    table = jax.random.normal(jax.random.key(1), (V, 3), jnp.float32)
    ids = jnp.zeros((T, B), jnp.int32)
    _, ys = embedded_unroll(cell, params, table, ids)
    _, expected = unroll(cell, params, table[ids])
    np.testing.assert_array_equal(ys, expected)
    with pytest.raises(ValueError, match="fold=True needs a cell whose project is affine"):
        embedded_unroll(cell, params, table, ids, fold=True)


@pytest.mark.parametrize(
    "dtype, vocab, low, high", [(jnp.uint8, 256, 0, 256), (jnp.int8, 200, -50, 128)]
)
def test_narrow_integer_ids_fold_as_int32_ids_do(dtype, vocab, low, high):
    # V = 256 with uint8 ids is the byte-level char-LM: "ids < V" cast V to uint8 (0) and
    # sent every id to row 0; int8 ids with V = 200 wrapped "ids < V" and "ids + V" alike.
    cell = LSTMCell(3, 4)
    params = cell.init(jax.random.key(0))
    table = jax.random.normal(jax.random.key(1), (vocab, 3), jnp.float32)
    ids = jax.random.randint(jax.random.key(2), (40, 2), low, high).astype(dtype)
    _, want = embedded_unroll(cell, params, table, ids.astype(jnp.int32), fold=True)
    _, got = embedded_unroll(cell, params, table, ids, fold=True)
    np.testing.assert_array_equal(got, want)
    _, unfolded = unroll(cell, params, table[ids.astype(jnp.int32)])
    np.testing.assert_allclose(got, unfolded, rtol=1e-5, atol=1e-6)  # float32 sums reordered


def test_bad_ids_and_table_are_refused():
    cell = LSTMCell(3, 4)
    params = cell.init(jax.random.key(0))
    with pytest.raises(TypeError, match="ids must be integers; got dtype float32"):
        embedded_unroll(cell, params, jnp.ones((V, 3), jnp.float32), jnp.zeros((T, B), jnp.float32))
    with pytest.raises(ValueError, match=r"time_axis must name an axis of ids.*time_axis=-3"):
        embedded_unroll(
            cell, params, jnp.ones((V, 3), jnp.float32), jnp.zeros((T, B), jnp.int32), time_axis=-3
        )
    with pytest.raises(ValueError, match=r"table must be \[V, I\] with I = 3.*\(5, 2\)"):
        embedded_unroll(cell, params, jnp.ones((V, 2), jnp.float32), jnp.zeros((T, B), jnp.int32))


@pytest.mark.parametrize("name", ["lstm", "gru", "min_gru", "lstm_zoneout"])
def test_the_lookup_cell_offers_what_the_wrapped_cell_offers(name):
    """The structured derivative and quasi-DEER ask the cell for these capabilities."""
    cell = CELLS[name]
    wrapped = _Lookup(cell)
    kept = (SplitStep, SummedUpdate, RecurWeight, JacobianDiagonal, LinearRecurrence)
    for capability in kept:
        assert supports(wrapped, capability) == supports(cell, capability), capability
    assert not supports(wrapped, ProjectWeight)  # its projection is a lookup
    if supports(cell, JacobianDiagonal) and name == "lstm":
        params, _, _, carry = _problem(cell)
        px = jnp.ones((B, 4 * H), jnp.float64)
        tree_allclose(
            wrapped.jacobian_diagonal(((), params), carry, px),
            cell.jacobian_diagonal(params, carry, px),
            rtol=0,
            atol=0,
        )

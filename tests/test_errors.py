"""Bad input raises a clear error at trace time: the argument, what was expected, what came."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import (
    DEER,
    Bidirectional,
    Dense,
    Embedding,
    GRUCell,
    LSTMCell,
    Scan,
    Stack,
    cross_entropy,
    last_valid,
    sequence_mask,
    unroll,
)

CELL = LSTMCell(3, 4)
PARAMS = CELL.init(jax.random.key(0))
XS = jnp.zeros((5, 2, 3), jnp.float32)


@pytest.mark.parametrize(
    "xs, kwargs, error, words",
    [
        (jnp.zeros((5, 2, 3), jnp.int32), {}, TypeError, ["xs", "floating", "int32"]),
        (jnp.zeros((5,), jnp.float32), {}, ValueError, ["xs", "at least 2 dims", "(5,)"]),
        (jnp.zeros((5, 2, 7), jnp.float32), {}, ValueError, ["xs", "3 features", "(5, 2, 7)"]),
        (XS, {"time_axis": 2}, ValueError, ["time_axis", "feature", "(5, 2, 3)"]),
        (XS, {"time_axis": 3}, ValueError, ["time_axis", "got time_axis=3"]),
        (XS, {"lengths": jnp.array([1, 2, 3])}, ValueError, ["lengths", "(2,)", "(3,)"]),
        (XS, {"lengths": jnp.array([1.0, 2.0])}, TypeError, ["lengths", "integer"]),
        (XS, {"lengths": jnp.array([6, 2])}, ValueError, ["lengths", "[0, 5]", "6"]),
        (XS, {"lengths": jnp.array([-1, 2])}, ValueError, ["lengths", "[0, 5]", "-1"]),
        (XS, {"resets": jnp.zeros((5, 3), bool)}, ValueError, ["resets", "(5, 2)", "(5, 3)"]),
        (XS, {"resets": jnp.zeros((5, 2), jnp.int32)}, TypeError, ["resets", "booleans"]),
        (XS, {"truncate": 0}, ValueError, ["truncate", "positive", "0"]),
        (XS, {"truncate": True}, ValueError, ["truncate", "positive int", "True"]),
        (XS, {"method": "bogus"}, ValueError, ["unroll: method", "sequential", "'bogus'"]),
    ],
)
def test_unroll_rejects_bad_input(xs, kwargs, error, words):
    with pytest.raises(error) as info:
        unroll(CELL, PARAMS, xs, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_unroll_rejects_a_carry_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"carry leaves must have shape \(2, 4\).*got \(3, 4\)"):
        unroll(CELL, PARAMS, XS, CELL.init_carry((3,)))
    with pytest.raises(ValueError, match="carry must have structure"):
        unroll(CELL, PARAMS, XS, jnp.zeros((2, 4), jnp.float32))


def test_unroll_rejects_a_carry_a_step_would_change_the_dtype_of():
    """float16 state with float32 weights: named here, not as lax.scan's type mismatch."""
    with pytest.raises(TypeError, match=r"carry leaves must have a dtype .*\(float32.*got float16"):
        unroll(CELL, PARAMS, XS, CELL.init_carry((2,), jnp.float16))
    # A NumPy integer is an int: accepted like a Python one.
    tree_equal = jax.tree.map(
        lambda a, b: bool((a == b).all()),
        unroll(CELL, PARAMS, XS, truncate=np.int64(2)),
        unroll(CELL, PARAMS, XS, truncate=2),
    )
    assert all(jax.tree.leaves(tree_equal))


def test_training_helpers_and_stacks_name_their_bad_arguments():
    with pytest.raises(ValueError, match="cross_entropy: mask must have the shape"):
        cross_entropy(jnp.zeros((5, 2, 3)), jnp.zeros((5, 2), jnp.int32), jnp.ones((5, 3), bool))
    with pytest.raises(TypeError, match="sequence_mask: lengths must be integers; got dtype float"):
        sequence_mask(jnp.array([1.5, 2.0]), 3)
    stack = Stack((LSTMCell(3, 4), GRUCell(4, 5)))
    params = stack.init(jax.random.key(0))
    with pytest.raises(ValueError, match="Stack: params must hold one entry per layer, 2; got 1"):
        stack(params[:1], XS)
    with pytest.raises(ValueError, match="Scan: unroll must be a positive int; got 0"):
        Scan(unroll=0)
    with pytest.raises(ValueError, match="DEER: tol must be > 0"):
        unroll(CELL, PARAMS, XS, method=DEER(tol=-1.0))


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="3 features"):
        jax.jit(lambda x: unroll(CELL, PARAMS, x))(jnp.zeros((5, 2, 7), jnp.float32))


def test_traced_lengths_skip_the_value_check_but_keep_the_shape_check():
    run = jax.jit(lambda n: unroll(CELL, PARAMS, XS, lengths=n)[1])
    assert run(jnp.array([5, 0])).shape == (5, 2, 4)
    with pytest.raises(ValueError, match="lengths must have the batch shape"):
        run(jnp.array([5]))


def test_layers_reject_mismatched_sizes():
    with pytest.raises(ValueError, match="layer 1 must have input_size 4"):
        Stack((LSTMCell(3, 4), GRUCell(5, 4)))
    with pytest.raises(ValueError, match="share input_size"):
        Bidirectional(LSTMCell(3, 4), LSTMCell(2, 4))
    with pytest.raises(ValueError, match="at least one layer"):
        Stack(())
    with pytest.raises(TypeError, match="every layer to be a cell"):
        model = Stack((Bidirectional(CELL, CELL),))
        model.apply(model.init(jax.random.key(0)), model.init_carry(), jnp.zeros(3))


def test_heads_reject_bad_input():
    dense = Dense(4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\]; got shape \(3, 5\)"):
        dense(dense.init(jax.random.key(0)), jnp.zeros((3, 5), jnp.float32))
    embed = Embedding(10, 4)
    with pytest.raises(TypeError, match="ids must be integers"):
        embed(embed.init(jax.random.key(0)), jnp.zeros(3, jnp.float32))
    with pytest.raises(ValueError, match="lengths must lie in"):
        last_valid(jnp.zeros((3, 2, 4), jnp.float32), jnp.array([4, 1]))

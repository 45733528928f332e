"""seqjax.checkpoint restores every kind of leaf a training state holds, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import checkpoint

LEAVES = {
    "float32": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7,
    "bfloat16": jnp.arange(4, dtype=jnp.bfloat16) / 3,
    "complex64": jnp.array([1 + 2j, -3j], jnp.complex64),
    "int32 scalar": jnp.asarray(12, jnp.int32),
    "uint32 key data": jax.random.key_data(jax.random.key(3)),
    "typed key": jax.random.key(4),
    "numpy float32": np.linspace(0, 1, 5, dtype=np.float32),
    "python float": 0.25,
}


@pytest.mark.parametrize("kind", LEAVES)
def test_every_leaf_kind_round_trips(tmp_path, kind):
    state = {"leaf": LEAVES[kind], "other": jnp.ones(2, jnp.float32)}
    checkpoint.save(tmp_path, 1, state, {})
    step, restored = checkpoint.restore(tmp_path, state, {})
    assert step == 1
    got, want = restored["leaf"], LEAVES[kind]
    if kind == "typed key":
        got, want = jax.random.key_data(got), jax.random.key_data(want)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_restored_arrays_take_the_dtype_and_sharding_of_like(tmp_path):
    checkpoint.save(tmp_path, 1, {"w": jnp.arange(3, dtype=jnp.float32)}, {})
    like = {"w": jnp.zeros(3, jnp.float64)}  # conftest turns x64 on
    _, restored = checkpoint.restore(tmp_path, like, {})
    assert restored["w"].dtype == jnp.float64 and restored["w"].sharding == like["w"].sharding
    assert restored["w"].tolist() == [0.0, 1.0, 2.0]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="step must be an int >= 0; got -1"):
        checkpoint.save(tmp_path, -1, {"w": jnp.ones(2)}, {})
    with pytest.raises(ValueError, match=r"step must be an int >= 0; got 1\.5"):
        checkpoint.save(tmp_path, 1.5, {"w": jnp.ones(2)}, {})
    with pytest.raises(ValueError, match="max_to_keep must be an int >= 1 or None; got 0"):
        checkpoint.save(tmp_path, 1, {"w": jnp.ones(2)}, {}, max_to_keep=0)
    with pytest.raises(ValueError, match=r"max_to_keep must be an int >= 1 or None; got 2\.5"):
        checkpoint.save(tmp_path, 1, {"w": jnp.ones(2)}, {}, max_to_keep=2.5)
    with pytest.raises(TypeError, match="meta must be a dict"):
        checkpoint.save(tmp_path, 1, {"w": jnp.ones(2)}, [])
    assert checkpoint.latest_step(tmp_path) is None

"""The cell protocol, for every cell in the registry: shapes, dtypes, jit, vmap, grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_like, tree_allclose
from tests.registry import CELLS, every_cell

BATCH_SHAPES = [(), (3,), (2, 3)]


def _x(key, batch_shape, size, dtype=jnp.float32):
    return jax.random.normal(key, (*batch_shape, size), dtype)


def _carry(cell, key, batch_shape):
    """A random (non-zero) carry of the cell's structure."""
    return random_like(cell.init_carry(batch_shape), key)


@every_cell
def test_params_are_float32_arrays_by_default(cell, key):
    params = cell.init(key)
    for leaf in jax.tree.leaves(params):
        assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32


@every_cell
def test_init_is_a_pure_function_of_the_key(cell, key):
    tree_allclose(cell.init(key), cell.init(key), rtol=0, atol=0)
    other = cell.init(jax.random.key(1))
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(cell.init(key)), jax.tree.leaves(other), strict=True)
    )


@every_cell
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_step_shapes_for_any_batch_shape(cell, key, batch_shape):
    params = cell.init(key)
    carry = cell.init_carry(batch_shape)
    for leaf in jax.tree.leaves(carry):
        assert leaf.shape[: len(batch_shape)] == batch_shape and leaf.dtype == jnp.float32
    new_carry, y = cell.apply(params, carry, _x(key, batch_shape, cell.input_size))
    assert jax.tree.structure(new_carry) == jax.tree.structure(carry)
    for new, old in zip(jax.tree.leaves(new_carry), jax.tree.leaves(carry), strict=True):
        assert new.shape == old.shape and new.dtype == old.dtype
    assert y.shape == (*batch_shape, cell.hidden_size) and y.dtype == jnp.float32


@every_cell
def test_project_handles_any_number_of_steps(cell, key):
    """project over [T, B, I] at once equals project per step: it is time-parallel."""
    params = cell.init(key)
    xs = _x(key, (5, 2), cell.input_size)
    whole = cell.project(params, xs)
    per_step = jnp.stack([cell.project(params, x) for x in xs])
    np.testing.assert_allclose(whole, per_step, rtol=1e-6, atol=1e-6)


@every_cell
def test_apply_is_step_of_project(cell, key):
    params = cell.init(key)
    carry = _carry(cell, key, (2,))
    x = _x(jax.random.key(3), (2,), cell.input_size)
    tree_allclose(
        cell.apply(params, carry, x),
        cell.step(params, carry, cell.project(params, x)),
        rtol=0,
        atol=0,
    )


@every_cell
def test_jit_matches_eager(cell, key):
    params = cell.init(key)
    carry = _carry(cell, key, (3,))
    x = _x(jax.random.key(2), (3,), cell.input_size)
    tree_allclose(
        jax.jit(cell.apply)(params, carry, x), cell.apply(params, carry, x), rtol=1e-6, atol=1e-6
    )


@every_cell
def test_vmap_over_batch_matches_batched_call(cell, key):
    params = cell.init(key)
    carry = _carry(cell, key, (4,))
    x = _x(jax.random.key(2), (4,), cell.input_size)
    mapped = jax.vmap(cell.apply, in_axes=(None, 0, 0))(params, carry, x)
    tree_allclose(mapped, cell.apply(params, carry, x), rtol=1e-6, atol=1e-6)


@every_cell
def test_grad_reaches_every_parameter(cell, key):
    params = cell.init(key)
    carry = _carry(cell, key, (3,))
    x = _x(jax.random.key(2), (3,), cell.input_size)

    def loss(params):
        carry2, y = cell.apply(params, carry, x)
        _, y2 = cell.apply(params, carry2, x)
        return jnp.sum(y2**2)

    grads = jax.jit(jax.grad(loss))(params)  # one program: eagerly, op by op
    for g in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0))


@every_cell
def test_float64_params_give_float64_results(cell, key):
    params = cell.init(key, dtype=jnp.float64)
    carry = cell.init_carry((2,), jnp.float64)
    _, y = cell.apply(params, carry, _x(key, (2,), cell.input_size, jnp.float64))
    assert y.dtype == jnp.float64


@every_cell
def test_cells_are_hashable_static_arguments(cell, key):
    """Frozen dataclasses: a cell can be a static jit argument, equal cells share a cache."""
    params = cell.init(key)
    run = jax.jit(lambda c, p, x: c.apply(p, c.init_carry((2,)), x)[1], static_argnums=0)
    x = _x(key, (2,), cell.input_size)
    np.testing.assert_allclose(
        run(cell, params, x), cell.apply(params, cell.init_carry((2,)), x)[1], rtol=1e-6
    )
    assert hash(cell) == hash(
        type(cell)(**{f: getattr(cell, f) for f in cell.__dataclass_fields__})
    )


# bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 0.004), float16 11 (0.0005); over a
# few steps of O(1) activations the error stays within ~10 such steps. Every cell runs in
# bfloat16; float16 (same code path, narrower range) on the three base cells only, to keep
# the registry's compile time in CI down.
HALF_CASES = [(name, jnp.bfloat16, 0.04) for name in CELLS] + [
    (name, jnp.float16, 0.005) for name in ("elman_tanh", "lstm", "gru")
]


@pytest.mark.parametrize(
    "name, dtype, atol",
    HALF_CASES,
    ids=[f"{jnp.dtype(d).name}-{n}" for n, d, _ in HALF_CASES],
)
def test_half_precision_runs_and_stays_close_to_float32(name, key, dtype, atol):
    cell = CELLS[name]
    from seqjax import unroll

    params = cell.init(key, dtype=dtype)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    xs = jax.random.normal(key, (5, 2, cell.input_size), jnp.float32).astype(dtype)

    @jax.jit  # one program: eagerly, each unroll and the gradient dispatch op by op
    def run(params, xs):
        carry, ys = unroll(cell, params, xs, lengths=jnp.array([5, 2]))
        params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        _, ys32 = unroll(cell, params32, xs.astype(jnp.float32), lengths=jnp.array([5, 2]))
        grads = jax.grad(lambda p: jnp.sum(unroll(cell, p, xs)[1].astype(jnp.float32)))(params)
        return carry, ys, ys32, grads

    carry, ys, ys32, grads = run(params, xs)
    assert ys.dtype == dtype and all(leaf.dtype == dtype for leaf in jax.tree.leaves(carry))
    np.testing.assert_allclose(np.asarray(ys, np.float32), ys32, atol=atol)
    assert all(g.dtype == dtype and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))

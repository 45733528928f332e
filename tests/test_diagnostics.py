"""Diagnostics equal the quantities computed by hand with jax.grad / jax.jacrev."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from seqjax import ElmanCell, unroll
from seqjax.diagnostics import carry_gradients, gradient_norms, jacobian_summary, state_jacobians
from tests.conftest import random_like, tree_allclose
from tests.registry import every_carry_kind

T = 6


@every_carry_kind
def test_carry_gradients_equal_grads_by_hand(cell, key):
    params = cell.init(key)
    xs = jax.random.normal(jax.random.key(1), (T, 2, cell.input_size), jnp.float32)
    carry0 = random_like(cell.init_carry((2,)), jax.random.key(2), 0.5)
    weights = jax.random.normal(jax.random.key(3), (T, 2, cell.hidden_size), jnp.float32)

    def loss_fn(ys):
        return jnp.sum(weights * ys)

    got = carry_gradients(cell, params, xs, loss_fn, carry0)

    @jax.jit  # one program for all T gradients, instead of T eager ones
    def by_hand(params, xs, carry0):
        # The carry entering step t, then a fresh unroll from it over xs[t:].
        entering, c = [], carry0
        for t in range(T):
            entering.append(c)
            c, _ = cell.apply(params, c, xs[t])
        _, ys = unroll(cell, params, xs, carry0)

        def loss_from(c, t):
            _, tail = unroll(cell, params, xs[t:], c)
            return loss_fn(jnp.concatenate([ys[:t], tail]))

        return [jax.grad(loss_from)(entering[t], t) for t in range(T)]

    for t, want in enumerate(by_hand(params, xs, carry0)):
        tree_allclose(jax.tree.map(lambda g, t=t: g[t], got), want, rtol=1e-5, atol=1e-6)


@every_carry_kind
def test_state_jacobians_equal_jacrev_per_step(cell, key):
    params = cell.init(key)
    xs = jax.random.normal(jax.random.key(1), (T, cell.input_size), jnp.float32)
    got = state_jacobians(cell, params, xs)

    @jax.jit  # one program for all T Jacobians, instead of T eager ones
    def by_hand(params, xs):
        c, jacobians = cell.init_carry(), []
        for t in range(T):
            flat, unravel = ravel_pytree(c)

            def step(flat, t=t, unravel=unravel):
                return ravel_pytree(cell.apply(params, unravel(flat), xs[t])[0])[0]

            jacobians.append(jax.jacrev(step)(flat))
            c, _ = cell.apply(params, c, xs[t])
        return jacobians

    for t, want in enumerate(by_hand(params, xs)):
        np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-6)


def test_jacobian_summary_against_explicit_products(key):
    jacobians = jax.random.normal(key, (5, 3, 3), jnp.float32)
    summary = jacobian_summary(jacobians)
    for t in range(5):
        product = jnp.eye(3, dtype=jnp.float32)
        for s in range(4, t, -1):
            product = product @ jacobians[s]
        np.testing.assert_allclose(
            summary["product_norm"][t], np.linalg.norm(product, 2), rtol=1e-4
        )
        np.testing.assert_allclose(
            summary["spectral_radius"][t],
            np.max(np.abs(np.linalg.eigvals(jacobians[t]))),
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            summary["singular_values"][t],
            np.linalg.svd(jacobians[t], compute_uv=False),
            rtol=1e-4,
        )


def test_a_contracting_elman_cell_loses_its_gradient_with_distance(key):
    """Recurrent weights of spectral norm 0.5 shrink dL/dh by at least 2x per step back."""
    cell = ElmanCell(1, 8)
    params = cell.init(key)
    params = params._replace(w_h=0.5 * params.w_h)  # orthogonal init: spectral norm exactly 0.5
    xs = jax.random.normal(key, (20, 1), jnp.float32)
    norms = gradient_norms(carry_gradients(cell, params, xs, lambda ys: ys[-1].sum()))
    assert norms.shape == (20,)
    assert bool(jnp.all(norms[:-1] <= 0.5 * norms[1:] * (1 + 1e-5)))
    assert float(norms[0]) < 1e-5 * float(norms[-1])


def test_diagnostics_name_bad_inputs():
    import pytest

    cell = ElmanCell(2, 3)
    params = cell.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"carry_gradients: xs must be \[T, \*B, I\]"):
        carry_gradients(cell, params, jnp.ones((5,), jnp.float32), jnp.sum)
    with pytest.raises(ValueError, match="carry_gradients: carry leaves must have shape"):
        carry_gradients(cell, params, jnp.ones((5, 4, 2), jnp.float32), jnp.sum, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"jacobian_summary: jacobians must be \[T, S, S\]"):
        jacobian_summary(jnp.ones((4, 3, 2), jnp.float32))

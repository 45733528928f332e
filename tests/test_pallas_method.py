"""``unroll(method=Pallas())``: the persistent kernel behind the front door, in interpret mode.

The kernel itself is tested in test_pallas_rnn.py; here, that the method maps cells, batch
shapes, carries and options onto it and gives ``Scan``'s values and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import seqjax as sj
from tests.conftest import random_like, tree_allclose

T = 5
CELLS = {
    "lstm": sj.LSTMCell(3, 4),
    "gru": sj.GRUCell(3, 4),
    "elman_relu": sj.ElmanCell(3, 4, activation=jax.nn.relu),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_pallas_equals_scan_with_every_option(name):
    cell = CELLS[name]
    batch = (2, 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (T, *batch, 3), jnp.float64)
    carry = random_like(cell.init_carry(batch, jnp.float64), jax.random.key(2))
    options = dict(
        lengths=jnp.array([[T, 3, 0], [1, T, 4]], jnp.int32),
        resets=jnp.zeros((T, *batch), bool).at[2, 0, 0].set(True),
        reverse=True,
    )
    weights = jax.random.normal(jax.random.key(3), (T, *batch, 4), jnp.float64)

    def run(method):
        def loss(p, x, c):
            final, ys = sj.unroll(cell, p, x, c, method=method, **options)
            return jnp.sum(weights * ys) + sum(jnp.sum(a**2) for a in jax.tree.leaves(final))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, carry)

    tree_allclose(run(sj.Pallas()), run(sj.Scan(derivative="autodiff")), rtol=1e-9, atol=1e-11)


def test_pallas_refuses_what_it_does_not_run(key):
    xs = jnp.ones((T, 2, 3), jnp.float32)
    for cell in (sj.GRUCell(3, 4, reset_after=False), sj.ZoneoutCell(sj.LSTMCell(3, 4), 0.1)):
        with pytest.raises(TypeError, match="Pallas runs"):
            sj.unroll(cell, cell.init(key), xs, method=sj.Pallas())
    cell = CELLS["lstm"]
    with pytest.raises(ValueError, match="truncate"):
        sj.unroll(cell, cell.init(key), xs, truncate=2, method=sj.Pallas())
    with pytest.raises(ValueError, match="power of two"):
        sj.Pallas(block_batch=24)

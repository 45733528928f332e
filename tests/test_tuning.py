"""The tuning table: every row computes the same values and gradients, on the CPU.

The GPU row never runs in CPU CI otherwise; here each row is forced (``Scan(tuning=...)``)
and compared with the plain loop and with JAX's own derivative in float64. And parameters
must not depend on the backend or on x64: the echo-state cell's storage is recorded in the
cell, its random signs drawn the same way whatever the default float width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from seqjax import tuning
from tests.conftest import random_like, tree_allclose
from tests.registry import CELLS

ROWS = {**tuning.TABLE, "default": tuning.DEFAULT}
NAMES = ["lstm", "gru_reset_before", "elman_relu", "lstm_dropout", "stack_lstm_gru"]
T, B = 7, 3


def _problem(cell):
    def wide(tree):
        return jax.tree.map(lambda a: a.astype(jnp.float64), tree)

    params = wide(cell.init(jax.random.key(0)))
    if sj.supports(cell, sj.Noisy):
        params = sj.with_noise(cell, params, jax.random.key(5), batch_shape=(B,))
    xs = jax.random.normal(jax.random.key(1), (T, B, cell.input_size), jnp.float64)
    carry = random_like(cell.init_carry((B,), jnp.float64), jax.random.key(2))
    return params, xs, carry


LENGTHS = jnp.array([T, 4, 0], jnp.int32)
OPTIONS = dict(lengths=LENGTHS, reverse=True)


def _value_and_grads(name, method):
    cell = CELLS[name]
    params, xs, carry = _problem(cell)
    y_weights = jax.random.normal(jax.random.key(3), (T, B, cell.hidden_size), jnp.float64)

    def f(p, x, c):
        final, ys = sj.unroll(cell, p, x, c, method=method, **OPTIONS)
        return jnp.sum(y_weights * ys) + sum(jnp.sum(a**2) for a in jax.tree.leaves(final))

    got = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(params, xs, carry)
    return [a for a in jax.tree.leaves(got) if jnp.issubdtype(a.dtype, jnp.floating)]


@functools.cache  # the same for every row: computed once per cell and worker
def _references(name):
    """JAX's own derivative of the default row, and the plain loop (None for noisy cells)."""
    cell = CELLS[name]
    autodiff = _value_and_grads(name, sj.Scan(tuning=tuning.DEFAULT, derivative="autodiff"))
    if sj.supports(cell, sj.Noisy):  # the plain loop steps one row: no per-row masks
        return autodiff, None
    return autodiff, sj.unroll_reference(cell, *_problem(cell), **OPTIONS)


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("name", NAMES)
def test_every_row_gives_the_reference_values_and_gradients(name, row):
    cell, layout = CELLS[name], ROWS[row]
    autodiff, loop = _references(name)
    got = _value_and_grads(name, sj.Scan(tuning=layout))
    tree_allclose(got, autodiff, rtol=1e-10, atol=1e-12)
    if loop is not None:
        values = sj.unroll(cell, *_problem(cell), method=sj.Scan(tuning=layout), **OPTIONS)
        tree_allclose(values, loop, rtol=1e-10, atol=1e-12)


def test_rows_resolve_from_the_platform_of_the_data(monkeypatch):
    cell = sj.LSTMCell(3, 4)
    xs = jnp.ones((5, 2, 3), jnp.float32)
    assert tuning.platform_of(xs) == jax.devices()[0].platform
    assert sj.Scan().layout(cell, xs) == tuning.for_platform(jax.devices()[0].platform)
    monkeypatch.setattr("seqjax.methods._scan.platform_of", lambda *a: "gpu")
    assert sj.Scan().layout(cell, xs) == tuning.TABLE["gpu"]
    # Fields given explicitly win over the row; a cell without the split gets autodiff.
    assert sj.Scan(unroll=2).layout(cell, xs).scan_unroll == 2
    assert sj.Scan().layout(CELLS["min_gru"], xs).derivative == "autodiff"
    assert tuning.for_platform("cuda") == tuning.TABLE["gpu"]
    assert tuning.for_platform("tpu") == tuning.DEFAULT


def test_platform_of_reads_the_default_device_under_jit():
    seen = []

    @jax.jit
    def f(x):
        seen.append(tuning.platform_of(x))
        return x

    with jax.default_device(jax.devices("cpu")[0]):
        f(jnp.ones(2))
    assert seen == ["cpu"]


def test_echo_state_storage_does_not_depend_on_the_backend(monkeypatch, tmp_path):
    """Issue 20: the same key gave a BCOO reservoir (8 leaves) on CPU and a dense one (7
    leaves) when the backend read as GPU, so checkpoints did not restore across backends."""
    from seqjax import checkpoint

    def draw():
        cell = sj.EchoStateCell(1, 200, connectivity=0.01)
        return cell, cell.init(jax.random.key(0))

    cell_cpu, params_cpu = draw()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cell_gpu, params_gpu = draw()
    assert cell_gpu == cell_cpu and cell_gpu.sparse is True  # resolved and recorded
    assert jax.tree.structure(params_gpu) == jax.tree.structure(params_cpu)
    checkpoint.save(tmp_path, 1, params_gpu, {"cell": repr(cell_gpu)})
    monkeypatch.undo()
    _, restored = checkpoint.restore(tmp_path, params_cpu, {"cell": repr(cell_cpu)})
    tree_allclose(restored, params_cpu, rtol=0, atol=0)


def test_echo_state_draw_does_not_depend_on_x64():
    """The same key gave other input-weight and bias signs with jax_enable_x64 on and off."""
    cell = sj.EchoStateCell(2, 30, connectivity=0.3, input_connectivity=0.5, bias_scaling=1.0)
    with_x64 = cell.init(jax.random.key(3))  # the suite runs with x64 on
    with jax.enable_x64(False):
        without = cell.init(jax.random.key(3))
    for name in ("w_in", "b"):
        np.testing.assert_array_equal(getattr(with_x64, name), getattr(without, name))


def test_dropout_masks_do_not_depend_on_x64():
    cell = sj.VariationalDropoutCell(sj.LSTMCell(3, 4), input_rate=0.5, recurrent_rate=0.5)
    params = cell.init(jax.random.key(0))
    with_x64 = cell.with_noise(params, jax.random.key(1), (6,)).masks
    with jax.enable_x64(False):
        without = cell.with_noise(params, jax.random.key(1), (6,)).masks
    tree_allclose(with_x64, without, rtol=0, atol=0)

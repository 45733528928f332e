"""Data parallelism over host devices gives the single-device results.

The comparison runs in a subprocess that asks for 4 host CPU devices before JAX initialises
(the device count cannot change afterwards): training steps of :mod:`seqjax.train`, run a few
times with the batch split over the mesh (``jax.jit`` with shardings, and ``shard_map``), must
reach the parameters, losses and gradient norms of the same steps on one device, with
per-sequence lengths that give the shards different numbers of valid steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from seqjax import sharding

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import jax.numpy as jnp
    import numpy as np
    import seqjax as sj
    from seqjax import sharding

    T, B, I, H = 6, 8, 3, 8
    cell = sj.LSTMCell(I, H)
    params = cell.init(jax.random.key(0), jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (T, B, I), jnp.float32)
    targets = jax.random.normal(jax.random.key(2), (T, B, H), jnp.float32)
    # Shards of 2: valid steps per shard 12, 3, 7, 8: a per-shard mean would be wrong.
    lengths = jnp.array([6, 6, 0, 3, 1, 6, 2, 6], jnp.int32)
    optimizer = sj.default_optimizer(1e-2)
    opt_state = optimizer.init(params)
    mesh = sharding.batch_mesh()

    def per_step(p, batch):
        xs, lengths, targets = batch
        _, ys = sj.unroll(cell, p, xs, lengths=lengths)
        return jnp.sum((ys - targets) ** 2, -1), sj.sequence_mask(lengths, T)

    def mean_loss(p, batch):
        losses, mask = per_step(p, batch)
        return jnp.where(mask, losses, 0.0).sum() / mask.sum()

    def sum_loss(p, batch):
        losses, mask = per_step(p, batch)
        return jnp.where(mask, losses, 0.0).sum(), mask.sum()

    def run(step, batch, n=3):
        p, s, out = params, opt_state, []
        for _ in range(n):
            p, s, m = step(p, s, batch)
            out.append([float(m.loss), float(m.grad_norm)])
        return p, out

    def diff(a, b):
        return max(float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    batch = (xs, lengths, targets)
    ref_p, ref_m = run(jax.jit(sj.bptt_step(mean_loss, optimizer)), batch)
    sharded = (sharding.shard_batch(xs, mesh, axis=1), sharding.shard_batch(lengths, mesh, axis=0),
               sharding.shard_batch(targets, mesh, axis=1))
    jit_step = sharding.data_parallel(sj.bptt_step(mean_loss, optimizer), mesh,
                                      in_axes=(None, None, (1, 0, 1)), out_axes=(None, None, None))
    jit_p, jit_m = run(jit_step, sharded)
    # shard_map_bptt_step takes one batch axis: lengths go in as [1, B].
    def sum_loss_2d(p, batch):
        xs, lengths2d, targets = batch
        return sum_loss(p, (xs, lengths2d[0], targets))
    sm_step = sharding.shard_map_bptt_step(sum_loss_2d, optimizer, mesh, batch_axis=1)
    sm_p, sm_m = run(sm_step, (xs, lengths[None], targets))

    # Streamed truncated BPTT: the carry [B, H] sharded on axis 0, windows on axis 1.
    def window_loss(p, carry, window):
        xs, targets = window
        carry, ys = sj.unroll(cell, p, xs, carry)
        return jnp.mean((ys - targets) ** 2), carry

    tb = sj.tbptt_step(window_loss, optimizer)
    carry0 = cell.init_carry((B,), jnp.float32)
    windows = [(xs[:3], targets[:3]), (xs[3:], targets[3:])]

    def run_tbptt(step, carry, windows):
        p, s, losses = params, opt_state, []
        for w in windows:
            p, s, carry, m = step(p, s, carry, w)
            losses.append(float(m.loss))
        return p, carry, losses

    tb_ref = run_tbptt(jax.jit(tb), carry0, windows)
    tb_dp = sharding.data_parallel(tb, mesh, in_axes=(None, None, 0, 1),
                                   out_axes=(None, None, 0, None))
    tb_sh = run_tbptt(tb_dp, sharding.shard_batch(carry0, mesh, axis=0),
                      [sharding.shard_batch(w, mesh, axis=1) for w in windows])

    # The same windows stacked [W, k, B, ...] for shard_map_tbptt_scan: summed loss per device.
    def sum_window_loss(p, carry, window):
        xs, targets = window
        carry, ys = sj.unroll(cell, p, xs, carry)
        return jnp.sum((ys - targets) ** 2), (jnp.float32(targets.size), carry)

    stacked = (xs.reshape(2, 3, B, I), targets.reshape(2, 3, B, H))
    scan_ref = jax.jit(lambda p, s, c, w: sj.tbptt_scan(tb, p, s, c, w))(
        params, opt_state, carry0, stacked)
    scan_sm = sharding.shard_map_tbptt_scan(sum_window_loss, optimizer, mesh)(
        params, opt_state, sharding.shard_batch(carry0, mesh, axis=0),
        sharding.shard_batch(stacked, mesh, axis=2))
    pick = lambda out: (out[0], out[2], out[3])  # params, carry, metrics

    fwd = lambda p, x: sj.unroll(cell, p, x, lengths=None)[1]
    ys_ref = jax.jit(fwd)(params, xs)
    ys_sm = sharding.data_parallel(fwd, mesh, (None, 1), 1, use_shard_map=True)(
        params, sharded[0])
    print(json.dumps({
        "devices": len(jax.devices()),
        "ys_sharding": str(ys_sm.sharding.spec),
        "ys_shards": len(ys_sm.addressable_shards),
        "jit_params": diff(jit_p, ref_p), "jit_metrics": diff(jit_m, ref_m),
        "sm_params": diff(sm_p, ref_p), "sm_metrics": diff(sm_m, ref_m),
        "tbptt": diff(tb_sh, tb_ref),
        "tbptt_scan": diff(pick(scan_sm), pick(scan_ref)),
        "tbptt_scan_carry_shards": len(scan_sm[2].h.addressable_shards),
        "tbptt_scan_same_as_steps": diff(pick(scan_ref)[:2], tb_ref[:2]),
        "forward": diff(ys_sm, ys_ref),
        "moved": diff(ref_p, params),
    }))
    """
)


@pytest.fixture(scope="module")
def result():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runs_on_four_host_devices(result):
    assert result["devices"] == 4
    assert result["ys_shards"] == 4 and "batch" in result["ys_sharding"]
    assert result["tbptt_scan_carry_shards"] == 4  # each device keeps its streams' carries


# float32 sums over the batch run in another order once split: agreement to rounding.
TOL = 1e-5


@pytest.mark.parametrize(
    "what",
    [
        "jit_params",
        "jit_metrics",
        "sm_params",
        "sm_metrics",
        "tbptt",
        "tbptt_scan",
        "tbptt_scan_same_as_steps",
        "forward",
    ],
)
def test_equals_single_device(result, what):
    assert result["moved"] > 1e-3  # the steps changed the parameters: the check can fail
    assert result[what] < TOL, result


def test_batch_spec_and_errors():
    assert sharding.batch_spec(None) == jax.sharding.PartitionSpec()
    assert sharding.batch_spec(2) == jax.sharding.PartitionSpec(None, None, "batch")
    with pytest.raises(ValueError, match="axis"):
        sharding.batch_spec(-1)
    mesh = sharding.batch_mesh()
    with pytest.raises(ValueError, match="batch axis 1"):
        sharding.shard_batch(jnp.ones((3,), jnp.float32), mesh, axis=1)
    with pytest.raises(ValueError, match="out_axes"):
        sharding.data_parallel(lambda x: x, mesh, (0,), use_shard_map=True)


def test_use_cpu_devices_after_initialisation():
    have = len(jax.devices("cpu"))  # JAX is initialised by now: the count is fixed
    assert sharding.use_cpu_devices(have) == have
    with pytest.raises(RuntimeError, match="already initialised"):
        sharding.use_cpu_devices(have + 1)
    with pytest.raises(ValueError, match="positive int"):
        sharding.use_cpu_devices(0)

"""``keep_freed_memory``: a call's temporaries are reused instead of page-faulted in afresh.

Each check runs in a process of its own: the setting changes the whole process's ``malloc``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

import seqjax.apps.host

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# An LSTM forward+backward whose XLA temporaries (~48 MiB) exceed glibc's largest mmap
# threshold (32 MiB): by default every call maps them afresh.
CHILD = textwrap.dedent(
    """
    import json, resource, sys, warnings
    warnings.simplefilter("error")
    import seqjax.apps.host
    if sys.argv[1] == "before":
        applied = seqjax.apps.host.keep_freed_memory()
    import jax, jax.numpy as jnp
    if sys.argv[1] == "after":
        jnp.ones(1).block_until_ready()
        try:
            seqjax.apps.host.keep_freed_memory()
            applied = "no warning"
        except RuntimeWarning as warning:
            applied = str(warning)
    if sys.argv[1] == "off":
        applied = None
    cell = seqjax.LSTMCell(64, 256)
    params = cell.init(jax.random.key(0), jnp.float32)
    xs = jnp.ones((128, 32, 64), jnp.float32)
    loss = lambda p, x: jnp.mean(seqjax.unroll(cell, p, x)[1] ** 2)
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for _ in range(2):
        jax.block_until_ready(grad(params, xs))
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(grad(params, xs))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The median call: with memory kept, an occasional call still grows the heap.
    print(json.dumps({"applied": applied, "faults": sorted(faults)[len(faults) // 2]}))
    """
)


def run_child(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory sets glibc's malloc")
def test_kept_memory_is_not_page_faulted_again():
    default, kept = run_child("off"), run_child("before")
    assert kept["applied"] is True
    # 48 MiB of temporaries are ~12,000 pages of 4 KiB: all faulted in again by default.
    assert default["faults"] > 5000, default
    assert kept["faults"] < 0.1 * default["faults"], (kept, default)


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory sets glibc's malloc")
def test_called_after_jax_started_warns():
    assert "before any JAX computation" in run_child("after")["applied"]


@pytest.mark.skipif(GLIBC, reason="the no-op path is for C libraries other than glibc")
def test_elsewhere_changes_nothing():
    assert seqjax.apps.host.keep_freed_memory() is False

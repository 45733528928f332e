"""Host memory on CPU: keep freed blocks, so that a call does not page-fault its temporaries.

XLA:CPU allocates an executable's temporary buffers (a scan's saved residuals, its stacked
outputs) on every call, and frees them at the end. glibc's ``malloc`` gives a block above its
mmap threshold (at most 32 MiB) back to the kernel when it is freed, and a thread's arena
cannot hold a block above 64 MiB at all, so the next call touches fresh pages: one minor page
fault and one page zeroed by the kernel per 4 KiB. An LSTM forward+backward at B32/T128/H256
has 48 MiB of temporaries, ~12,400 faults and ~23 ms of kernel time per call of ~58 ms.

:func:`keep_freed_memory` sets glibc's ``malloc`` so that freed blocks stay in the process
and the next call reuses them. Measured with ``python benchmarks/allocator.py`` on a 2-core
CPU (fresh processes, interleaved), LSTM forward+backward on one device: B32/T128/H256
58 -> 45 ms, B8/T1024/H128 51 -> 39 ms, B128/T64/H512 250 -> 211 ms. PyTorch's CPU
``nn.LSTM`` page-faults its workspace the same way and gains more from the same setting
(0.62-0.70x its time; environment variable below), so compare libraries with both set or
neither.

The cost: memory the process has freed is not returned to the system until it exits (peak
resident memory stays resident), and every thread allocates from one arena. The same effect
for a whole process, set before it starts, without seqjax (mallopt's trim threshold is a C
``int``, so the function sets 2 GiB - 1 where the variable can say 16 GiB; either way no
freed block is trimmed at the sizes here)::

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:\
glibc.malloc.arena_max=1 python train.py
"""

from __future__ import annotations

import ctypes
import platform
import sys
import warnings

__all__ = [
    "keep_freed_memory",
]

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Call it first thing, before JAX runs any computation: ``malloc``'s arenas are per thread
    and made on first use, so threads XLA has already started keep arenas that still return
    large blocks to the kernel (a RuntimeWarning says so). It changes the whole process's
    ``malloc``, for every library in it; see the module docstring for what it gains and costs.

    Returns:
        True if the settings were applied; False where the C library is not glibc on Linux
        (nothing is changed there).

    Example:
        >>> from seqjax.apps.host import keep_freed_memory
        >>> applied = keep_freed_memory()   # doctest: +SKIP
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if _jax_started():
        warnings.warn(
            "keep_freed_memory: JAX has already started its backends, so threads that have "
            "allocated keep returning large blocks to the kernel; call it before any JAX "
            "computation",
            RuntimeWarning,
            stacklevel=2,
        )
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


def _jax_started() -> bool:
    """Whether JAX's backends exist already (False if that cannot be told)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a JAX without that module
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False

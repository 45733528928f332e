"""Every per-backend choice seqjax makes, in one table, resolved by one function.

The choices change how fast :func:`seqjax.unroll` runs, never what it computes (the tests
run every row on the CPU and compare values and gradients). They are made for the
platform of the data: :func:`platform_of` reads it from the arrays when they are concrete
and committed to a device, and from JAX's default device otherwise (under ``jit``, where
the arrays are abstract: set ``jax.default_device`` or pass ``Scan(tuning=...)`` to choose
another). A caller overrides any of them per call with the fields of
:class:`seqjax.methods.Scan` (or its ``tuning``).

Why each row holds what it holds is measured, not guessed: the measurements are in
``benchmarks/results/`` (the file named beside each field) and ``docs/performance.md``.
Parameters never depend on this table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import jax

__all__ = ["TABLE", "Tuning", "for_platform", "platform_of"]

Derivative = Literal["autodiff", "structured"]


@dataclass(frozen=True)
class Tuning:
    """How the sequential scan is laid out on one platform (values and gradients are equal).

    Attributes:
        scan_unroll: ``lax.scan``'s unroll factor (steps per loop iteration).
            ``unroll_projection.md``: 8 on the H100 (forward+backward 1.6-2.3x faster), mixed
            on XLA:CPU, so 1 there.
        hoist_projection: compute ``cell.project`` for every step before the scan (True) or
            per step inside it. ``unroll_projection.md``: XLA:CPU runs it faster inside,
            accelerators as one large matmul before.
        derivative: ``"structured"`` (seqjax's reverse loop over gate cotangents, weight
            gradients as one matmul after; cells that :func:`~seqjax.cells.supports`
            :class:`~seqjax.cells.SplitStep`) or ``"autodiff"`` (JAX's transpose of the scan).
            ``unroll_backward.md``: structured 0.68-0.95x autodiff's time on CPU, 0.69-0.83x
            on the H100.
        split_gate_blocks: with the autodiff derivative, give the scan body its weights as
            per-gate column blocks of width ``H``, so that the scan's transpose accumulates
            one small weight gradient per gate. ``rnn_vs_flax.md``: LSTM forward+backward
            1.15-1.28x -> 0.80-1.01x of Flax on XLA:CPU.
        transposed_weights: with the structured derivative, multiply cotangents by
            row-major transposed copies of ``W_x``/``W_h``. ``unroll_backward.md``: LSTM
            B8/T1024 55.5 -> 49.3 ms on XLA:CPU; not measured elsewhere.
    """

    scan_unroll: int = 1
    hoist_projection: bool = True
    derivative: Derivative = "autodiff"
    split_gate_blocks: bool = False
    transposed_weights: bool = False

    def replace(self, **changes) -> Tuning:
        """A copy with ``changes`` (None values are ignored: they mean "as tuned")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# JAX's standard layout: what a platform nobody has measured gets.
DEFAULT = Tuning()

#: One :class:`Tuning` per platform that was measured; any other platform gets ``Tuning()``.
TABLE: dict[str, Tuning] = {
    "cpu": Tuning(
        scan_unroll=1,
        hoist_projection=False,
        derivative="structured",
        split_gate_blocks=True,
        transposed_weights=True,
    ),
    "gpu": Tuning(scan_unroll=8, hoist_projection=True, derivative="structured"),
}


def for_platform(platform: str) -> Tuning:
    """The tuned layout for ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``, ...).

    Example:
        >>> for_platform("gpu").scan_unroll, for_platform("tpu") == Tuning()
        (8, True)
    """
    return TABLE.get(_family(platform), DEFAULT)


def _family(platform: str) -> str:
    return "gpu" if platform in ("cuda", "rocm", "gpu") else platform


def platform_of(*arrays) -> str:
    """The platform the computation on ``arrays`` runs on.

    The platform of the first concrete array committed to one device; otherwise (tracers,
    uncommitted arrays) JAX's default device's, as ``jax.default_device`` sets it.

    Example:
        >>> import jax.numpy as jnp
        >>> platform_of(jnp.ones(3)) == jax.devices()[0].platform
        True
    """
    for a in jax.tree.leaves(arrays):
        if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
            if getattr(a, "committed", False):
                devices = a.devices()
                if len(devices) >= 1:
                    return _family(next(iter(devices)).platform)
    # jax's Config sets its options as attributes at run time, which mypy cannot see.
    default = jax.config.jax_default_device  # type: ignore[attr-defined]
    if default is not None:
        platform = default if isinstance(default, str) else default.platform
        return _family(platform)
    return _family(jax.default_backend())

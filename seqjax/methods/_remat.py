"""The rematerialised scan: checkpointed chunks of steps, for BPTT memory below ``T``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell
from seqjax.methods._base import Inputs, Method
from seqjax.methods._scan import check_layout, scan_body
from seqjax.tuning import Tuning, for_platform, platform_of


def _schedule(chunks) -> tuple[int, ...]:
    sizes = chunks if isinstance(chunks, tuple | list) else (chunks,)
    if not sizes or any(
        isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in sizes
    ):
        raise ValueError(f"Remat: chunks must be a positive int or a tuple of them; got {chunks!r}")
    return tuple(int(k) for k in sizes)


@dataclass(frozen=True)
class Remat(Method):
    """Rematerialisation over time: trade compute for BPTT memory.

    An int ``k`` runs the scan as ``T // k`` chunks of ``k`` steps (and a last chunk of
    ``T % k``), each under ``jax.checkpoint``: the forward pass keeps only the carry at
    chunk borders, and the backward pass recomputes one chunk at a time, so the memory for
    saved activations grows like ``T / k + k`` steps instead of ``T`` (``k ~ sqrt(T)``
    gives sqrt(T)) for about one extra forward pass. A tuple ``(k1, k2, ...)`` nests the
    chunking (chunks of ``k1`` steps made of checkpointed chunks of ``k2``, ...), for memory
    growing like ``T**(1/(d+1))`` with ``d`` levels. Values and gradients are those of
    :class:`~seqjax.Scan` with JAX's autodiff derivative.

    Attributes:
        chunks: ``k``, or the nested chunk sizes, outermost first.
        unroll: as for :class:`~seqjax.Scan`.
        hoist_projection: as for :class:`~seqjax.Scan`.
        tuning: as for :class:`~seqjax.Scan`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, Remat, unroll
        >>> cell = LSTMCell(3, 4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jnp.ones((10, 2, 3))
        >>> loss = lambda p, method: jnp.sum(unroll(cell, p, xs, method=method)[1] ** 2)
        >>> g1, g2 = jax.grad(loss)(params, Remat(3)), jax.grad(loss)(params, None)
        >>> bool(jnp.allclose(g1.w_h, g2.w_h, atol=1e-5))
        True
    """

    chunks: int | tuple[int, ...]
    unroll: int | bool | None = None
    hoist_projection: bool | None = None
    tuning: Tuning | None = None

    truncates = True

    def __post_init__(self):
        object.__setattr__(self, "chunks", _schedule(self.chunks))
        check_layout("Remat", self.unroll, self.hoist_projection, self.tuning)

    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        base = self.tuning if self.tuning is not None else for_platform(platform_of(inputs.xs))
        plan = base.replace(scan_unroll=self.unroll, hoist_projection=self.hoist_projection)
        body, xs = scan_body(cell, params, inputs, plan)
        chunks = cast(tuple[int, ...], self.chunks)  # __post_init__ made it a tuple
        return chunked_scan(body, inputs.carry, xs, inputs.reverse, plan.scan_unroll, chunks)


def chunked_scan(body, carry, xs, reverse: bool, unroll, chunks: tuple[int, ...]):
    """``lax.scan(body, carry, xs)``, run as checkpointed chunks of ``chunks[0]`` steps.

    The steps that do not fill a whole chunk (the last ``T % k``) run in a plain scan after
    the chunks (before them when ``reverse``), so any ``T`` works. Each chunk is itself
    scanned with the rest of the schedule.
    """
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    if not chunks or num_steps == 0:
        return jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    size, inner = chunks[0], chunks[1:]
    whole = num_steps - num_steps % size
    head = jax.tree.map(lambda a: a[:whole].reshape(whole // size, size, *a.shape[1:]), xs)
    tail = jax.tree.map(lambda a: a[whole:], xs)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a scan, CSE cannot leak
    def chunk(carry, xs):
        return chunked_scan(body, carry, xs, reverse, unroll, inner)

    def run_head(carry):
        if whole == 0:
            return carry, None
        carry, ys = jax.lax.scan(chunk, carry, head, reverse=reverse)
        return carry, jax.tree.map(lambda a: a.reshape(whole, *a.shape[2:]), ys)

    def run_tail(carry):
        if whole == num_steps:
            return carry, None
        return jax.lax.scan(body, carry, tail, reverse=reverse, unroll=unroll)

    if reverse:
        carry, ys_tail = run_tail(carry)
        carry, ys_head = run_head(carry)
    else:
        carry, ys_head = run_head(carry)
        carry, ys_tail = run_tail(carry)
    parts = [ys for ys in (ys_head, ys_tail) if ys is not None]
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *parts)

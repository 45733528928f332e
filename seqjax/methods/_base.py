"""What every evaluation method shares: the checked inputs it receives, and its interface."""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import jax.numpy as jnp

from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell


class Inputs(NamedTuple):
    """A sequence as :func:`seqjax.unroll` hands it to a method, checked and time-major.

    Attributes:
        xs: ``[T, *B, I]`` floating inputs.
        carry: the initial carry, leaves ``[*B, H]``.
        lengths: ``[*B]`` int32 (or wider) valid lengths in ``[0, T]``, or None.
        resets: ``[T, *B]`` booleans (False at padded steps), or None.
        reverse: run from the last valid step back to the first.
        truncate: cut the carry's gradient every ``truncate`` steps, or None.
    """

    xs: Array
    carry: PyTree
    lengths: Array | None
    resets: Array | None
    reverse: bool
    truncate: int | None


class ParallelInfo(NamedTuple):
    """How an evaluation went (scalars; under ``vmap`` one per mapped element).

    Attributes:
        iterations: Newton iterations taken (linear solves), int32; 0 for exact methods
            (the scans and the associative scan).
        residual: ``max_t |s_t - step(s_{t-1})|`` over the state of the last Newton iterate
            (before any fallback); 0 for exact methods.
        converged: whether ``residual <= tol`` within ``max_iters``. False means the returned
            result is the sequential fallback's (or, with ``fallback=False``, unconverged).
    """

    iterations: Array
    residual: Array
    converged: Array

    @classmethod
    def exact(cls, dtype) -> ParallelInfo:
        """The report of a method that computes the recurrence exactly."""
        return cls(jnp.zeros((), jnp.int32), jnp.zeros((), dtype), jnp.array(True))


class Method(abc.ABC):
    """How :func:`seqjax.unroll` evaluates a cell over time: a small frozen, hashable object.

    Subclasses are frozen dataclasses whose fields are the method's options; two equal
    objects compile to the same program. A method receives the checked, time-major
    :class:`Inputs` and returns ``(carry, ys)`` time-major; the values are those of the
    sequential recurrence (up to rounding, and to ``tol`` for the Newton methods).
    """

    # Whether the method honours ``truncate`` (gradient cuts at window borders).
    truncates: ClassVar[bool] = False

    def check(self, cell: Cell) -> None:  # noqa: B027 (most methods need nothing)
        """Raise a clear error if ``cell`` lacks a capability this method needs."""

    @abc.abstractmethod
    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        """``(carry, ys)``: the final carry and the outputs ``[T, *B, H]``, time-major."""

    def run_with_info(
        self, cell: Cell, params: PyTree, inputs: Inputs
    ) -> tuple[PyTree, Array, ParallelInfo]:
        """:meth:`run`, and a :class:`ParallelInfo` report (exact for this base)."""
        carry, ys = self.run(cell, params, inputs)
        return carry, ys, ParallelInfo.exact(jnp.result_type(ys))

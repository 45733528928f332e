"""The sequential scan: ``lax.scan`` over ``cell.step``, the method every cell supports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from seqjax import _checks, _tree
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, SplitStep, supports
from seqjax.methods import _structured
from seqjax.methods._base import Inputs, Method
from seqjax.methods._truncate import stop_at_border, window_border
from seqjax.tuning import Tuning, for_platform, platform_of

DERIVATIVES = ("autodiff", "structured")


def check_layout(where: str, unroll, hoist_projection, tuning=None) -> None:
    """Check the layout fields shared by :class:`Scan` and :class:`~seqjax.Remat`."""
    if tuning is not None and not isinstance(tuning, Tuning):
        raise TypeError(
            f"{where}: tuning must be a seqjax.tuning.Tuning (e.g. tuning.TABLE['gpu']) or "
            f"None; got {tuning!r}"
        )
    if unroll is not None and not isinstance(unroll, bool):  # True: unroll every step
        _checks.positive_int("unroll", unroll, where)
    if hoist_projection is not None and not isinstance(hoist_projection, bool):
        raise ValueError(
            f"{where}: hoist_projection must be a bool or None; got {hoist_projection!r}"
        )


@dataclass(frozen=True)
class Scan(Method):
    """Evaluate step by step with ``lax.scan`` (the default method).

    Every field left None takes the value tuned for the platform of the data
    (:mod:`seqjax.tuning`); set one to override it. Values and gradients do not depend on
    any of them (up to float rounding).

    Attributes:
        unroll: ``lax.scan``'s unroll factor (steps per loop iteration), or True for all.
        hoist_projection: compute ``cell.project`` for all steps before the scan (True) or
            per step inside it (False).
        derivative: how derivatives through the scan are formed. ``"autodiff"``: JAX's own
            transpose of the scan, which computes each step's weight gradients inside the
            reverse loop. ``"structured"``: for cells that :func:`~seqjax.cells.supports`
            :class:`~seqjax.cells.SplitStep`, a reverse loop that carries only the state and
            gate cotangents, then every weight and input gradient as one large matmul over
            all steps (as oneDNN and cuDNN do); both support ``grad``, ``jvp``, ``jit``,
            ``vmap`` and higher orders. None: the tuned one, and autodiff for cells
            without the split.
        tuning: the platform layout to start from (:class:`seqjax.tuning.Tuning`); None:
            the table's row for the platform of the data.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, Scan, unroll
        >>> cell = LSTMCell(3, 4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jnp.ones((6, 2, 3))
        >>> _, ys = unroll(cell, params, xs, method=Scan(unroll=2, derivative="autodiff"))
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-6))
        True
    """

    unroll: int | bool | None = None
    hoist_projection: bool | None = None
    derivative: Literal["autodiff", "structured"] | None = None
    tuning: Tuning | None = None

    truncates = True

    def __post_init__(self):
        check_layout("Scan", self.unroll, self.hoist_projection, self.tuning)
        if self.derivative is not None and self.derivative not in DERIVATIVES:
            raise ValueError(
                f"Scan: derivative must be one of {DERIVATIVES} or None; got {self.derivative!r}"
            )

    def check(self, cell: Cell) -> None:
        if self.derivative == "structured" and not supports(cell, SplitStep):
            raise TypeError(
                "Scan(derivative='structured') needs a cell that supports SplitStep "
                f"(recur and update); got {type(cell).__name__}, which does not: use derivative="
                "'autodiff' or None"
            )

    def layout(self, cell: Cell, xs: Array) -> Tuning:
        """The tuned layout for ``xs``'s platform with this object's overrides applied."""
        base = self.tuning if self.tuning is not None else for_platform(platform_of(xs))
        plan = base.replace(
            scan_unroll=self.unroll,
            hoist_projection=self.hoist_projection,
            derivative=self.derivative,
        )
        if plan.derivative == "structured" and not supports(cell, SplitStep):
            plan = plan.replace(derivative="autodiff")
        return plan

    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        plan = self.layout(cell, inputs.xs)
        if plan.derivative == "structured":
            return _structured.structured_scan(cell, params, inputs, plan)
        body, xs = scan_body(cell, params, inputs, plan)
        return jax.lax.scan(body, inputs.carry, xs, reverse=inputs.reverse, unroll=plan.scan_unroll)


def _gate_blocks(params: PyTree, width: int):
    """Split each ``[n, k * width]`` leaf (k > 1) into k column blocks; return them, and a join."""

    def split(a):
        if jnp.ndim(a) == 2 and a.shape[-1] > width and a.shape[-1] % width == 0:
            return tuple(jnp.split(a, a.shape[-1] // width, axis=-1))
        return a

    leaves, treedef = jax.tree.flatten(params)
    blocks = [split(a) for a in leaves]

    def rebuild(blocks):
        joined = [jnp.concatenate(b, axis=-1) if isinstance(b, tuple) else b for b in blocks]
        return treedef.unflatten(joined)

    return blocks, rebuild


def scan_body(cell: Cell, params: PyTree, inputs: Inputs, plan: Tuning):
    """``(body, xs)`` for ``lax.scan(body, carry, xs)``: the autodiff scan of the inputs.

    The body steps the cell with lengths, resets and truncation; ``xs`` is ``(steps,
    inputs, resets)`` per step (the inputs projected before the scan when
    ``plan.hoist_projection``). Shared with :class:`~seqjax.Remat`, which checkpoints it.
    """
    xs, lengths, resets, truncate = inputs.xs, inputs.lengths, inputs.resets, inputs.truncate
    reverse, num_steps = inputs.reverse, xs.shape[0]
    hoist = plan.hoist_projection
    projected = cell.project(params, xs) if hoist else xs
    if plan.split_gate_blocks:
        blocks, rebuild = _gate_blocks(params, cell.hidden_size)
    else:
        blocks, rebuild = params, lambda p: p

    needs_time = lengths is not None or truncate is not None
    step_dtype = jnp.int32 if lengths is None else lengths.dtype
    steps = jnp.arange(num_steps, dtype=step_dtype) if needs_time else None
    if resets is not None:
        fresh = cell.init_carry(xs.shape[1:-1], jax.tree.leaves(inputs.carry)[0].dtype)

    def body(carry, slices):
        t, x, reset = slices
        params = rebuild(blocks)
        if truncate is not None:
            border = window_border(t, truncate, reverse, num_steps, lengths)
            carry = stop_at_border(border, carry)
        if reset is not None:
            carry = _tree.select(reset, fresh, carry)
        px = x if hoist else cell.project(params, x)
        new_carry, y = cell.step(params, carry, px)
        if lengths is None:
            return new_carry, y
        valid = t < lengths  # [*B]
        return _tree.select(valid, new_carry, carry), jnp.where(
            valid[..., None], y, jnp.zeros_like(y)
        )

    return body, (steps, projected, resets)

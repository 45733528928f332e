"""Sequence parallelism: the time axis split over the devices of a mesh axis.

One sequence of ``T`` steps is cut into ``D`` chunks of ``T / D`` steps, one per device of a
mesh axis, and evaluated by ``shard_map``; memory per device grows like ``T / D``.

* **Linear-in-state cells** (:class:`~seqjax.cells.LinearRecurrence`: minGRU, minLSTM, LRU):
  the steps of a chunk compose to one affine map, ``h_out = A h_in + B``. With
  ``solver=Scan()`` (their default) each device runs one ``lax.scan`` over its chunk from
  the zero state, keeping the running product ``A_t`` and the states ``B_t`` (so that
  ``h_t = A_t h_in + B_t``); with ``solver=Associative()`` it forms ``(A, B)`` by a pairwise
  reduction and later solves the chunk by associative scans (``O(log T)`` depth, several
  times the memory). One ``all_gather`` of the summaries (``D`` small arrays ``[*B, H]``)
  and one associative scan over them give every device the state ``h_in`` entering its
  chunk, from which it corrects (or solves) its chunk. Exact up to rounding.
* **Any cell** through :class:`~seqjax.DEER` / :class:`~seqjax.QuasiDEER`: each Newton
  iteration linearises every step of the chunk at once (the state entering the chunk comes
  from the previous device by ``ppermute``), and solves the linear recurrence
  ``s_t = J_t s_{t-1} + c_t`` across devices exactly as above, with dense or diagonal
  Jacobians; the residual is a ``pmax``. The implicit-function gradient solves its adjoint
  recurrence the same way, backwards. When the iteration does not converge, the fallback
  evaluates sequentially *without gathering*: ``D`` rounds in which every device scans its
  chunk from the state its predecessor passed on (``ppermute``), after which every chunk has
  its exact entering state: the time of one sequential scan of ``T`` steps, memory still
  ``T / D`` per device.

Lengths, resets and reverse behave as in :func:`seqjax.unroll`: a device knows its chunk's
first global step, so padded steps and resets are the same per-step data as on one device.

The derivative: ``shard_map`` is differentiated by JAX. Every collective here transposes to
the right thing: ``all_gather`` to a reduce-scatter (so each summary receives the cotangents
of every device that read it), ``ppermute`` to the inverse ``ppermute``; the parameters and
the initial carry enter replicated, so their cotangents are summed over the devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, LinearRecurrence, supports
from seqjax.methods._associative import Associative
from seqjax.methods._base import Inputs, Method, ParallelInfo
from seqjax.methods._newton import DEER, _NewtonMethod
from seqjax.methods._parallel import (
    Local,
    affine_combine,
    apply_affine,
    log_combine,
    shift,
    solve_affine,
    solve_log_affine,
)
from seqjax.methods._scan import Scan


def shard_map(fn: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
    """``jax.shard_map`` without replication checks (the callers sum across devices
    themselves), on the JAX versions that have it, else ``jax.experimental.shard_map``."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map as legacy  # older JAX

    return legacy(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


@dataclass(frozen=True)
class Split(Local):
    """The time axis cut into ``size`` chunks along the mesh axis ``axis`` (inside ``shard_map``).

    Each operation receives this device's chunk ``[T / size, ...]`` and returns what
    :class:`~seqjax.methods._parallel.Local` returns on the whole sequence, restricted to the
    chunk (or, for :meth:`final` and :meth:`max`, the whole-sequence value on every device).
    """

    axis: str
    size: int
    # Every axis of the mesh: a maximum that decides a loop is taken over all of them, so
    # that every device runs the same iterations (their collectives must line up).
    mesh_axes: tuple[str, ...] = ()
    # Diagonal recurrences: solve each chunk by one lax.scan from zero, then correct it by
    # the entering state (_scan_chunk), instead of associative scans.
    chunk_scan: bool = False

    def _index(self) -> Array:
        return jax.lax.axis_index(self.axis)

    def _is(self, device: int) -> Array:
        return self._index() == device

    def _first(self, reverse: bool) -> int:
        """The device holding the recurrence's first step."""
        return self.size - 1 if reverse else 0

    def _from_previous(self, tree: PyTree, reverse: bool) -> PyTree:
        """``tree`` from the device before this one in the recurrence's order (zeros on the
        first device)."""
        pairs = [(i, i + 1) for i in range(self.size - 1)]
        if reverse:
            pairs = [(j, i) for i, j in pairs]
        return jax.tree.map(lambda a: jax.lax.ppermute(a, self.axis, pairs), tree)

    def valid_steps(self, lengths: Array, num_steps: int) -> Array:
        lengths = _checks.wide_int(jnp.asarray(lengths))
        first = self._index().astype(lengths.dtype) * num_steps
        steps = first + jnp.arange(num_steps, dtype=lengths.dtype)
        return steps.reshape(-1, *([1] * lengths.ndim)) < lengths[None]

    def shift(self, states: PyTree, first: PyTree, reverse: bool) -> PyTree:
        edge = 0 if reverse else -1
        passed = self._from_previous(jax.tree.map(lambda s: s[edge], states), reverse)
        at_start = self._is(self._first(reverse))
        entering = jax.tree.map(
            lambda f, p: jnp.where(at_start, f.astype(p.dtype), p), first, passed
        )
        return shift(states, entering, reverse)

    def final(self, states: PyTree, reverse: bool) -> PyTree:
        # all_gather (not a masked psum): its transpose, a reduce-scatter, is the same
        # whether or not JAX tracks replication, so the final carry's cotangent arrives once.
        edge, last = (0, 0) if reverse else (-1, self.size - 1)
        return jax.tree.map(lambda s: jax.lax.all_gather(s[edge], self.axis)[last], states)

    def _entering(self, summary, s0: Array, combine: Callable, apply: Callable, reverse: bool):
        """The state entering this chunk: the chunks before it (one ``summary`` each), applied
        to ``s0``."""
        gathered = jax.tree.map(lambda x: jax.lax.all_gather(x, self.axis), summary)  # [D, ...]
        through = jax.lax.associative_scan(combine, gathered, reverse=reverse)
        before = self._index() + (1 if reverse else -1)
        k = jnp.clip(before, 0, self.size - 1)
        prefix = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, k, keepdims=False), through)
        entering = apply(prefix, s0)
        return jnp.where(self._is(self._first(reverse)), s0.astype(entering.dtype), entering)

    def solve_affine(self, jac: Array, c: Array, s0: Array, reverse: bool, dense: bool) -> Array:
        if self.chunk_scan and not dense:
            return self._scanned(jac, c, s0, reverse)
        # Two passes rather than one scan that keeps every cumulative Jacobian: the chunk's
        # summary by a pairwise reduction, then the one-device solve from the entering
        # state, whose memory is the one-device method's on T / D steps.
        combine = affine_combine(dense)
        entering = self._entering(
            _compose(combine, (jac, c), reverse),
            s0,
            combine,
            lambda jc, s: apply_affine(jc[0], jc[1], s, dense),
            reverse,
        )
        return solve_affine(jac, c, entering, reverse, dense)

    def solve_log_affine(self, log_a: Array, log_b: Array, h0: Array, reverse: bool) -> Array:
        if self.chunk_scan:  # a sequential product cannot underflow early: linear space
            return self._scanned(jnp.exp(log_a), jnp.exp(log_b), h0.astype(log_a.dtype), reverse)

        def apply(ab, s):
            return jnp.exp(ab[0]) * s + jnp.exp(ab[1])

        summary = _compose(log_combine, (log_a, log_b), reverse)
        entering = self._entering(summary, h0.astype(log_a.dtype), log_combine, apply, reverse)
        return solve_log_affine(log_a, log_b, entering, reverse)

    def _scanned(self, a: Array, b: Array, s0: Array, reverse: bool) -> Array:
        """``h_t = a_t h_{t-1} + b_t`` (elementwise) over the chunk: one scan from zero gives
        ``h_t = A_t h_in + B_t``'s ``A`` and ``B``, whose last step is the chunk's summary."""
        big_a, big_b = _scan_chunk(a, b, reverse)
        last = 0 if reverse else -1
        combine = affine_combine(False)
        entering = self._entering(
            (big_a[last], big_b[last]),
            s0.astype(b.dtype),
            combine,
            lambda ab, s: apply_affine(ab[0], ab[1], s, False),
            reverse,
        )
        return big_a * entering[None] + big_b

    def max(self, x: Array) -> Array:
        return jax.lax.pmax(x, self.mesh_axes or self.axis)

    def at_start(self, x: PyTree, reverse: bool) -> PyTree:
        here = self._is(self._first(reverse))
        return jax.tree.map(lambda a: jnp.where(here, a, jnp.zeros_like(a)), x)

    def scan(self, body: Callable, init: PyTree, xs: PyTree, reverse: bool):
        """The scan in ``size`` rounds: each round every device runs its chunk from the state
        its predecessor passed on in the round before, so after ``size - 1`` rounds every
        chunk starts from its exact state. ``(carry at this chunk's end, ys)``."""

        def chunk_end(carry):
            return jax.lax.scan(lambda c, x: (body(c, x)[0], None), carry, xs, reverse=reverse)[0]

        at_start = self._is(self._first(reverse))

        def one_round(_, entering):
            passed = self._from_previous(chunk_end(entering), reverse)
            return jax.tree.map(lambda a, b: jnp.where(at_start, a, b), init, passed)

        entering = jax.lax.fori_loop(0, self.size - 1, one_round, init)
        return jax.lax.scan(body, entering, xs, reverse=reverse)


def _scan_chunk(a: Array, b: Array, reverse: bool) -> tuple[Array, Array]:
    """``(A_t, B_t)`` ``[T, ...]`` with ``h_t = A_t h_in + B_t`` for ``h_t = a_t h_{t-1} + b_t``:
    the running product of ``a`` and the states from zero, by one ``lax.scan``. Its
    derivative keeps a few ``[T, ...]`` arrays where the associative scan keeps one per
    level and element (about a third of the memory, ``benchmarks/sequence_parallel.py``)."""

    def step(carry, ab):
        big_a, big_b = carry
        a_t, b_t = ab
        carry = (a_t * big_a, a_t * big_b + b_t)
        return carry, carry

    start = (jnp.ones_like(a[0]), jnp.zeros_like(b[0]))
    return jax.lax.scan(step, start, (a, b), reverse=reverse)[1]


def _compose(combine: Callable, elems: PyTree, reverse: bool) -> PyTree:
    """All of ``elems`` (stacked on axis 0) composed in the recurrence's order by
    ``combine`` (first its left, then its right argument): a pairwise tree of ``log2 T``
    levels, each half as long as the one before."""
    if reverse:
        elems = jax.tree.map(lambda x: jnp.flip(x, 0), elems)
    while (n := jax.tree.leaves(elems)[0].shape[0]) > 1:
        firsts, seconds = slice(0, n - n % 2, 2), slice(1, n - n % 2, 2)
        paired = combine(
            jax.tree.map(lambda x, i=firsts: x[i], elems),
            jax.tree.map(lambda x, i=seconds: x[i], elems),
        )
        if n % 2:
            paired = jax.tree.map(lambda p, x: jnp.concatenate([p, x[-1:]]), paired, elems)
        elems = paired
    return jax.tree.map(lambda x: x[0], elems)


Solver = Scan | Associative | _NewtonMethod


@dataclass(frozen=True)
class SequenceParallel(Method):
    """Split the time axis over the devices of a mesh axis (sequence parallelism).

    Each device holds ``T / D`` steps of the inputs, the states and the outputs (``D`` the
    size of the mesh axis ``axis``); the chunks are joined by collectives (module
    docstring): for linear-in-state cells, one summary per chunk combined exactly across
    devices, then each chunk corrected by the state entering it; the same inside every
    Newton iteration of :class:`~seqjax.DEER` or
    :class:`~seqjax.QuasiDEER` for any other cell. Values and gradients equal the sequential
    scan's up to rounding (and the solver's ``tol``). ``T`` must be divisible by ``D``.

    Call it inside ``jax.jit`` with ``xs`` sharded along time
    (``NamedSharding(mesh, PartitionSpec(None, ...)``, time on the mesh axis ``axis``), or
    let ``jit`` move unsharded inputs; the outputs come back sharded the same way.

    Attributes:
        mesh: the device mesh (e.g. :func:`seqjax.sharding.grid_mesh`).
        axis: the mesh axis that time is split over.
        solver: how each chunk is evaluated. For cells that support
            :class:`~seqjax.cells.LinearRecurrence`: ``Scan()`` (the default for them: one
            ``lax.scan`` over the chunk from zero, then the entering state's correction; about
            a third of the associative scan's memory, and faster on CPU) or
            :class:`~seqjax.Associative` (``O(log T)`` depth within the chunk, for
            accelerators). For any cell: :class:`~seqjax.DEER` (the default for the others)
            or :class:`~seqjax.QuasiDEER` (their ``tol``, ``max_iters``, ``damping``,
            ``fallback`` and ``derivative`` apply)
            (``QuasiDEER`` needs ``O(T D)`` memory instead of DEER's ``O(T D^2)``, ``D`` the
            carry size: the choice for wide cells).
        batch_axis: a second mesh axis that the batch (axis 1 of time-major ``xs``, axis 0
            of the carries and lengths) is split over, for data and sequence parallelism at
            once; None replicates the batch over the other mesh axes.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import MinGRUCell, SequenceParallel, unroll
        >>> from seqjax.sharding import grid_mesh
        >>> mesh = grid_mesh(time=len(jax.devices()))
        >>> cell = MinGRUCell(input_size=3, hidden_size=4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (8 * mesh.size, 2, 3))   # [T, B, I]
        >>> _, ys = jax.jit(lambda p, x: unroll(cell, p, x, method=SequenceParallel(mesh)))(
        ...     params, xs)
        >>> bool(jnp.allclose(ys, unroll(cell, params, xs)[1], atol=1e-5))
        True
    """

    mesh: Mesh
    axis: str = "time"
    solver: Solver | None = None
    batch_axis: str | None = None

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise TypeError(
                "SequenceParallel: mesh must be a jax.sharding.Mesh; got "
                f"{type(self.mesh).__name__}"
            )
        names = tuple(self.mesh.axis_names)
        if self.axis not in names:
            raise ValueError(
                f"SequenceParallel: axis must be an axis of the mesh {names}; got {self.axis!r}"
            )
        if self.batch_axis is not None and (
            self.batch_axis not in names or self.batch_axis == self.axis
        ):
            raise ValueError(
                f"SequenceParallel: batch_axis must be another axis of the mesh {names} or "
                f"None; got {self.batch_axis!r}"
            )
        if self.solver is not None and not isinstance(self.solver, Solver):
            raise ValueError(
                "SequenceParallel: solver must be Scan(), Associative(), DEER(...), "
                f"QuasiDEER(...) or None; got {self.solver!r}"
            )
        if isinstance(self.solver, Scan) and self.solver != Scan():
            raise ValueError(
                "SequenceParallel: solver=Scan() scans each chunk of a linear recurrence in "
                "its own way, so Scan's options do not apply: pass Scan() itself; got "
                f"{self.solver!r}"
            )

    def solver_for(self, cell: Cell) -> Method:
        """The method each chunk is evaluated with (``solver``, or the default for ``cell``)."""
        if self.solver is not None:
            return self.solver
        return Scan() if supports(cell, LinearRecurrence) else DEER()

    def check(self, cell: Cell) -> None:
        solver = self.solver_for(cell)
        if isinstance(solver, Scan) and not supports(cell, LinearRecurrence):
            raise ValueError(
                "SequenceParallel: solver=Scan() needs a cell whose recurrence is linear in "
                "the state (one that supports LinearRecurrence); got "
                f"{type(cell).__name__}: use DEER() or QuasiDEER()"
            )
        solver.check(cell)
        if self.batch_axis is not None and not cell.shared_rows:
            raise ValueError(
                "SequenceParallel: batch_axis needs a cell whose params hold no per-sequence "
                f"data (they would have to be split over it); got {type(cell).__name__}, "
                "which holds some: use batch_axis=None"
            )

    def run(self, cell: Cell, params: PyTree, inputs: Inputs) -> tuple[PyTree, Array]:
        carry, ys, _ = self.run_with_info(cell, params, inputs)
        return carry, ys

    def run_with_info(
        self, cell: Cell, params: PyTree, inputs: Inputs
    ) -> tuple[PyTree, Array, ParallelInfo]:
        xs = inputs.xs
        size = int(self.mesh.shape[self.axis])
        if xs.shape[0] % size:
            raise ValueError(
                f"SequenceParallel: xs must have a number of time steps divisible by the "
                f"{size} devices of mesh axis {self.axis!r} (pad the sequence and pass "
                f"lengths); got {xs.shape[0]} steps"
            )
        b = self.batch_axis
        if b is not None:
            rows = int(self.mesh.shape[b])
            if xs.ndim < 3 or xs.shape[1] % rows:
                raise ValueError(
                    f"SequenceParallel: batch_axis {b!r} needs a batch axis 1 of xs divisible "
                    f"by its {rows} devices; got xs of shape {xs.shape}"
                )
        solver = self.solver_for(cell)
        scanned = isinstance(solver, Scan)  # chunks by lax.scan: Associative's math, scanned
        time = Split(self.axis, size, tuple(self.mesh.axis_names), chunk_scan=scanned)
        solver = Associative() if scanned else solver
        time_spec = PartitionSpec(self.axis) if b is None else PartitionSpec(self.axis, b)
        row_spec = PartitionSpec() if b is None else PartitionSpec(b)
        optional = {"lengths": row_spec, "resets": time_spec}
        given = [name for name in optional if getattr(inputs, name) is not None]

        def local(params, xs, carry, *rest):
            chunk = Inputs(xs, carry, None, None, inputs.reverse, None)
            chunk = chunk._replace(**dict(zip(given, rest, strict=True)))
            return solver.evaluate_on(cell, params, chunk, time)

        in_specs = (PartitionSpec(), time_spec, row_spec, *(optional[n] for n in given))
        out_specs = (row_spec, time_spec, PartitionSpec())
        run = shard_map(local, self.mesh, in_specs, out_specs)
        return run(params, xs, inputs.carry, *(getattr(inputs, n) for n in given))

    def __repr__(self) -> str:
        shape = dict(zip(self.mesh.axis_names, np.shape(self.mesh.devices), strict=True))
        return (
            f"SequenceParallel(mesh={shape}, axis={self.axis!r}, solver={self.solver!r}, "
            f"batch_axis={self.batch_axis!r})"
        )

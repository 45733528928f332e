"""Data parallelism over a device mesh: the batch split across devices, results unchanged.

A recurrence is sequential in time but independent across the batch, so the batch is what
spreads over devices: each device runs the whole scan on its slice of the sequences, with
the parameters replicated, and the gradients are summed across devices once per step.

* **On CPU**, one XLA device runs a scan's steps one after another: it threads each step's
  matmul over the cores, but the step's elementwise work and the dispatch of its operations
  run on one thread, so a small step leaves the other cores idle. Exposing the cores as
  several host devices runs one scan per core, each on its part of the batch. Set the number
  before JAX initialises its backends (before the first JAX operation)::

      import jax
      jax.config.update("jax_num_cpu_devices", 2)

  or set ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` in the environment.

* **On GPUs and TPUs**, the mesh spans the chips of a machine.
* **Across processes and machines**, call :func:`initialize_distributed` (JAX's
  ``jax.distributed.initialize`` with CPU collectives and failure timeouts set) first in
  every process; :func:`batch_mesh` then spans every process's devices, each process loads
  only the rows :func:`process_rows` names, :func:`shard_batch` joins the per-process slices
  into the global batch, and the training steps below run unchanged. Print from one process
  with :func:`main_process_print`; :mod:`seqjax.checkpoint` saves and restores from all of
  them. The launch recipes are in ``docs/parallelism.md``.
* **Along time**, :class:`seqjax.SequenceParallel` splits one long sequence over a mesh axis
  (sequence parallelism); :func:`grid_mesh` builds a mesh with a batch and a time axis for
  both at once.

Two ways to run a function data-parallel, both giving the single-device results (up to the
order of floating-point sums):

* :func:`data_parallel` with ``use_shard_map=False`` (default): ``jax.jit`` with the batch
  arguments sharded along their batch axis and everything else replicated. XLA's SPMD
  partitioner splits the computation and inserts the gradient all-reduce itself, so any
  function works unchanged, training steps from :mod:`seqjax.train` included, with masks
  and per-sequence lengths (a masked mean is computed over the global batch).
* ``use_shard_map=True``: ``jax.shard_map``, each device running ``fn`` on its local shard,
  with no communication: right for functions that treat batch elements independently
  (``unroll``, per-sequence outputs), wrong for reductions over the batch. For training,
  :func:`shard_map_bptt_step` sums the loss, its weight (the number of valid positions) and
  the gradients across devices explicitly, so that shards holding different numbers of valid
  steps are weighted exactly as in the single-device masked mean.

Which to use for training: measured on XLA:CPU (``benchmarks/data_parallel.py``, 2 host
devices on 2 cores), ``jit`` with shardings made LSTM forward+backward 1.6-2.7x *slower*
than one device, while ``shard_map`` made it 0.70-0.90x. The compiled ``jit`` version
all-reduces the weight-gradient contributions inside the reverse scan, once per time step
(the partitioner keeps the accumulated gradient replicated); ``shard_map`` sums once, after
the loop. Forward passes gain with both (0.65-0.83x). So train with
:func:`shard_map_bptt_step` (or a step of your own under ``data_parallel(...,
use_shard_map=True)`` that ``psum`` s its gradients), and use ``jit`` where no scan is
differentiated.

Streamed truncated BPTT (:func:`seqjax.train.tbptt_step` over windows) splits the same way:
:func:`shard_map_tbptt_scan` gives each device its share of the streams and their carries for
a whole run of windows, summing loss and gradients across devices once per window.

Layouts: time-major sequences ``[T, B, ...]`` have the batch on axis 1; per-sequence arrays
(``lengths [B]``, carries ``[B, H]``) on axis 0. ``B`` must be divisible by the number of
devices.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from seqjax import LSTMCell, unroll
    >>> from seqjax.sharding import batch_mesh, data_parallel, shard_batch
    >>> mesh = batch_mesh()                              # every device this process sees
    >>> cell = LSTMCell(input_size=3, hidden_size=4)
    >>> params = cell.init(jax.random.key(0))
    >>> xs = shard_batch(jnp.ones((5, 2 * mesh.size, 3)), mesh, axis=1)   # [T, B, I]
    >>> forward = data_parallel(lambda p, x: unroll(cell, p, x)[1], mesh, in_axes=(None, 1),
    ...                         out_axes=1)
    >>> forward(params, xs).shape == (5, 2 * mesh.size, 4)
    True
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax._types import Array, PyTree
from seqjax.methods._sequence_parallel import shard_map
from seqjax.train import StepMetrics, apply_gradients, global_norm, tbptt_scan

__all__ = [
    "AXIS",
    "batch_mesh",
    "batch_spec",
    "data_parallel",
    "grid_mesh",
    "initialize_distributed",
    "is_main_process",
    "main_process_print",
    "process_rows",
    "replicate",
    "shard_batch",
    "shard_map_bptt_step",
    "shard_map_tbptt_scan",
    "use_cpu_devices",
]

#: The name of the mesh axis the batch is split over.
AXIS = "batch"


def batch_mesh(devices: Sequence[Any] | None = None, *, axis_name: str = AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process).

    Example:
        >>> batch_mesh().axis_names
        ('batch',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("batch_mesh: devices must not be empty")
    return Mesh(np.asarray(devices), (axis_name,))


def batch_spec(axis: int | None, *, axis_name: str = AXIS) -> PartitionSpec:
    """The partition spec of an array whose batch is on ``axis`` (None: replicated).

    Example:
        >>> tuple(batch_spec(1))                     # repr differs across JAX versions
        (None, 'batch')
    """
    if axis is None:
        return PartitionSpec()
    if not isinstance(axis, int) or axis < 0:
        raise ValueError(f"batch_spec: axis must be a non-negative int or None; got {axis!r}")
    return PartitionSpec(*([None] * axis), axis_name)


def _axis_name(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"seqjax.sharding: expected a one-axis mesh (batch_mesh); got axes {mesh.axis_names}"
        )
    return mesh.axis_names[0]


def shard_batch(tree: PyTree, mesh: Mesh, *, axis: int = 1) -> PyTree:
    """Place every array of ``tree`` on ``mesh``, split along ``axis`` (its batch axis).

    With several processes (``jax.distributed``), each passes its own slice of the global
    batch and the result is the global array (``jax.make_array_from_process_local_data``).

    Args:
        tree: arrays with the batch on ``axis`` (1 for time-major ``[T, B, ...]``, 0 for
            ``lengths [B]`` or carries ``[B, H]``).
        mesh: from :func:`batch_mesh`.
        axis: the batch axis of every leaf.

    Raises:
        ValueError: a leaf's batch size is not divisible by the number of devices.
    """
    name = _axis_name(mesh)
    sharding = NamedSharding(mesh, batch_spec(axis, axis_name=name))
    local = mesh.size // jax.process_count()

    def put(x):
        x = jnp.asarray(x) if jax.process_count() == 1 else np.asarray(x)
        if x.ndim <= axis or x.shape[axis] % local:
            raise ValueError(
                f"shard_batch: every leaf needs a batch axis {axis} divisible by the "
                f"{local} local devices; got shape {x.shape}"
            )
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every array of ``tree`` on every device of ``mesh`` (parameters, optimizer state)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


# Replication is not tracked: the functions here sum across devices themselves.
_shard_map = shard_map


def data_parallel(
    fn: Callable,
    mesh: Mesh,
    in_axes: Sequence[int | None],
    out_axes: Any = None,
    *,
    use_shard_map: bool = False,
) -> Callable:
    """``fn`` compiled to run with its batch split over ``mesh``.

    Args:
        fn: a JAX function of positional arguments.
        mesh: from :func:`batch_mesh`.
        in_axes: per argument, the batch axis of all its leaves, or None when replicated
            (parameters, optimizer state); as ``jax.vmap``'s.
        out_axes: the same for the results: one entry per output (a tuple for a tuple of
            outputs), or one for all. None with ``use_shard_map=False``: left to XLA.
        use_shard_map: run ``fn`` per device on its shard with ``jax.shard_map`` (only for
            functions independent across the batch), rather than ``jax.jit`` with shardings.

    Returns:
        The compiled function; call it with arrays from :func:`shard_batch` and
        :func:`replicate` (other arrays are moved as needed).
    """
    name = _axis_name(mesh)

    def specs(axes):
        if isinstance(axes, tuple | list):
            return tuple(specs(a) for a in axes)
        return batch_spec(axes, axis_name=name)

    in_specs = tuple(specs(a) for a in in_axes)
    if use_shard_map:
        if out_axes is None:
            raise ValueError("data_parallel: use_shard_map=True needs out_axes")
        return jax.jit(_shard_map(fn, mesh, in_specs, specs(out_axes)))

    def shardings(s):
        return jax.tree.map(
            lambda p: NamedSharding(mesh, p), s, is_leaf=lambda x: isinstance(x, PartitionSpec)
        )

    kwargs = {} if out_axes is None else {"out_shardings": shardings(specs(out_axes))}
    return jax.jit(fn, in_shardings=shardings(in_specs), **kwargs)


def shard_map_bptt_step(
    loss_fn: Callable[[PyTree, Any], tuple[Array, Array]],
    optimizer,
    mesh: Mesh,
    *,
    batch_axis: int = 1,
) -> Callable[[PyTree, Any, Any], tuple[PyTree, Any, StepMetrics]]:
    """A BPTT step (as :func:`seqjax.train.bptt_step`) with the batch split by ``shard_map``.

    Each device differentiates the *sum* of its shard's losses; the sums, their weights and
    the gradients are added across devices (``psum``) and divided once, so the update is the
    one of the weighted mean over the global batch, however the valid steps fall among the
    shards. The optimizer update then runs, identically, on every device.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (total, weight)``: the summed loss over the
            local shard and what it is a sum over (e.g. ``cross_entropy(..., mask,
            average=False)`` and ``mask.sum()``).
        optimizer: any optax ``GradientTransformation``.
        mesh: from :func:`batch_mesh`.
        batch_axis: the batch axis of every leaf of ``batch`` (1 for ``[T, B, ...]``).

    Returns:
        ``step(params, opt_state, batch) -> (params, opt_state, StepMetrics)``, jitted;
        ``metrics.loss`` is the global weighted mean.
    """
    name = _axis_name(mesh)

    def local_step(params, opt_state, batch):
        (total, weight), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        total, weight, grads = jax.lax.psum((total, weight, grads), name)
        weight = jnp.maximum(weight, 1).astype(total.dtype)
        grads = jax.tree.map(lambda g: g / weight.astype(g.dtype), grads)
        grad_norm = global_norm(grads)
        params, opt_state = apply_gradients(optimizer, params, opt_state, grads)
        return params, opt_state, StepMetrics(total / weight, grad_norm)

    replicated = PartitionSpec()
    in_specs = (replicated, replicated, batch_spec(batch_axis, axis_name=name))
    out_specs = (replicated, replicated, replicated)
    return jax.jit(_shard_map(local_step, mesh, in_specs, out_specs))


def use_cpu_devices(count: int) -> int:
    """Expose ``count`` host CPU devices (``jax_num_cpu_devices``); call before JAX initialises.

    Harmless on machines with accelerators (only the CPU backend is affected). Once JAX has
    initialised its backends the count is fixed: then this checks that at least ``count``
    CPU devices exist and raises otherwise.

    Returns:
        The number of CPU devices JAX will use.

    Raises:
        ValueError: ``count`` is not a positive int.
        RuntimeError: JAX already initialised with fewer than ``count`` CPU devices.

    Example:
        >>> use_cpu_devices(1) >= 1     # here JAX has already initialised
        True
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"use_cpu_devices: count must be a positive int; got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as err:  # backends already initialised: the count is fixed
        have = len(jax.devices("cpu"))
        if have < count:
            raise RuntimeError(
                f"use_cpu_devices: JAX already initialised with {have} CPU device(s), fewer "
                f"than the {count} asked; call this (or set XLA_FLAGS="
                f"--xla_force_host_platform_device_count={count}) before the first JAX "
                "operation"
            ) from err
        return have
    return count


def shard_map_tbptt_scan(
    loss_fn: Callable[[PyTree, PyTree, Any], tuple[Array, tuple[Array, PyTree]]],
    optimizer,
    mesh: Mesh,
    *,
    carry_axis: int = 0,
    window_axis: int = 2,
) -> Callable[[PyTree, Any, PyTree, Any], tuple[PyTree, Any, PyTree, StepMetrics]]:
    """Streamed truncated BPTT over stacked windows with the streams split by ``shard_map``.

    :func:`seqjax.train.tbptt_scan` of a :func:`seqjax.train.tbptt_step`, data-parallel: each
    device holds its share of the streams (the carries and the windows' batch columns) for
    the whole scan; per window it differentiates the *sum* of its losses, the sums, their
    weights and the gradients are added across devices (``psum``) and divided once, and the
    optimizer update runs identically on every device. The result equals the single-device
    scan of the weighted-mean loss up to the order of floating-point sums; carries never
    leave their device.

    Args:
        loss_fn: ``loss_fn(params, carry, window) -> (total, (weight, next_carry))``: the
            summed loss over the local streams, what it is a sum over (e.g. the number of
            positions), and the carry for the next window (as :func:`seqjax.train.window_loss`
            with ``cross_entropy(..., average=False)``).
        optimizer: any optax ``GradientTransformation``.
        mesh: from :func:`batch_mesh`.
        carry_axis: the batch axis of every carry leaf (0 for ``[B, H]``).
        window_axis: the batch axis of every leaf of the stacked windows (2 for
            ``[W, k, B, ...]``).

    Returns:
        ``run(params, opt_state, carry, windows) -> (params, opt_state, carry, metrics)``,
        jitted; ``metrics`` leaves are ``[W]`` (the global weighted-mean loss and the global
        gradient norm before clipping, per window), replicated.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import seqjax as sj
        >>> mesh = batch_mesh()
        >>> cell, B = sj.LSTMCell(2, 4), 2 * mesh.size
        >>> def loss_fn(p, carry, window):
        ...     xs, targets = window
        ...     carry, ys = sj.unroll(cell, p, xs, carry)
        ...     return jnp.sum((ys - targets) ** 2), (jnp.float32(targets.size), carry)
        >>> optimizer = sj.default_optimizer(1e-2)
        >>> run = shard_map_tbptt_scan(loss_fn, optimizer, mesh)
        >>> params = cell.init(jax.random.key(0))
        >>> f32 = jnp.float32
        >>> windows = (jnp.ones((3, 5, B, 2), f32), jnp.zeros((3, 5, B, 4), f32))  # [W, k, B, ...]
        >>> carry = shard_batch(cell.init_carry((B,)), mesh, axis=0)
        >>> params, _, carry, metrics = run(params, optimizer.init(params), carry,
        ...                                 shard_batch(windows, mesh, axis=2))
        >>> metrics.loss.shape
        (3,)
    """
    name = _axis_name(mesh)

    def step(params, opt_state, carry, window):
        carry = jax.lax.stop_gradient(carry)
        (total, (weight, next_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, carry, window
        )
        total, weight, grads = jax.lax.psum((total, weight, grads), name)
        weight = jnp.maximum(weight, 1).astype(total.dtype)
        grads = jax.tree.map(lambda g: g / weight.astype(g.dtype), grads)
        grad_norm = global_norm(grads)
        params, opt_state = apply_gradients(optimizer, params, opt_state, grads)
        metrics = StepMetrics(total / weight, grad_norm)
        return params, opt_state, jax.lax.stop_gradient(next_carry), metrics

    def local_scan(params, opt_state, carry, windows):
        return tbptt_scan(step, params, opt_state, carry, windows)

    replicated = PartitionSpec()
    carry_spec = batch_spec(carry_axis, axis_name=name)
    in_specs = (replicated, replicated, carry_spec, batch_spec(window_axis, axis_name=name))
    out_specs = (replicated, replicated, carry_spec, replicated)
    return jax.jit(_shard_map(local_scan, mesh, in_specs, out_specs))


def grid_mesh(devices: Sequence[Any] | None = None, **sizes: int) -> Mesh:
    """A mesh with one named axis per keyword, of that size, over ``devices`` (default: all).

    The last axis varies fastest along ``devices``, whose order puts each process's devices
    together (``jax.devices()``): ``grid_mesh(batch=P, time=D)`` over ``P`` processes of
    ``D`` devices each keeps every sequence's time axis inside one process, where
    communication is cheapest, and splits the batch across processes.

    Raises:
        ValueError: no axis, a size that is not a positive int, or sizes whose product is
            not the number of devices.

    Example:
        >>> import jax
        >>> mesh = grid_mesh(batch=1, time=len(jax.devices()))
        >>> mesh.axis_names
        ('batch', 'time')
    """
    devices = jax.devices() if devices is None else list(devices)
    if not sizes or any(
        not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes.values()
    ):
        raise ValueError(f"grid_mesh: give each axis a positive int size; got {sizes}")
    need = math.prod(sizes.values())
    if need != len(devices):
        raise ValueError(
            f"grid_mesh: axes {sizes} need {need} devices, {len(devices)} were given; pass "
            f"devices=jax.devices()[:{need}] to use fewer"
        )
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), tuple(sizes))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_devices: int | None = None,
    heartbeat_timeout_s: int | None = None,
    shutdown_timeout_s: int | None = None,
    initialization_timeout_s: int | None = None,
) -> None:
    """Join this process to a multi-process run (``jax.distributed.initialize``); call first.

    Call it in every process before any other JAX operation. Without the first three
    arguments JAX reads them from the cluster (Slurm, Open MPI, Kubernetes with
    ``jax[k8s]``, Cloud TPU; see ``docs/parallelism.md``), and the coordinator address
    alone from ``JAX_COORDINATOR_ADDRESS``. It also selects the gloo collectives, so that
    CPU devices of different processes can exchange data, whatever the JAX version's
    default.

    A process that dies is noticed by the others within ``heartbeat_timeout_s`` (JAX's
    default is 100 s) or at once by a collective that loses its peer: they then exit with
    JAX's "the JAX distributed service detected fatal errors" (or a ``JaxRuntimeError``
    naming the lost connection) instead of waiting. ``shutdown_timeout_s`` bounds how long
    an exiting process waits for the others (JAX's default is 300 s).

    Args:
        coordinator_address: ``host:port`` of process 0's coordinator (every process passes
            the same).
        num_processes: how many processes take part.
        process_id: this process's index in ``[0, num_processes)``.
        cpu_devices: host CPU devices for this process (:func:`use_cpu_devices`), or None.
        heartbeat_timeout_s: seconds without heartbeats after which a process is dead.
        shutdown_timeout_s: seconds an exiting process waits for the others.
        initialization_timeout_s: seconds to wait for every process to join.
    """
    if cpu_devices is not None:
        use_cpu_devices(cpu_devices)
    for name, value in (
        ("jax_cpu_collectives_implementation", "gloo"),
        ("jax_cpu_enable_gloo_collectives", True),  # JAX before the option above
    ):
        try:
            jax.config.update(name, value)
            break
        except AttributeError:  # not an option of this JAX (a later one may use gloo anyway)
            continue
    wanted = {
        "heartbeat_timeout_seconds": heartbeat_timeout_s,
        "shutdown_timeout_seconds": shutdown_timeout_s,
        "initialization_timeout": initialization_timeout_s,
    }
    accepted = inspect.signature(jax.distributed.initialize).parameters
    options: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None and k in accepted}
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **options,
    )


def is_main_process() -> bool:
    """Whether this is process 0, the one that logs (True in a single-process run)."""
    return jax.process_index() == 0


def main_process_print(*values: Any, file: TextIO | None = None, flush: bool = True) -> None:
    """``print(*values)`` in process 0 only, so that a run of ``P`` processes logs once.

    Example:
        >>> main_process_print("step 10: loss 1.25")
        step 10: loss 1.25
    """
    if is_main_process():
        print(*values, file=sys.stdout if file is None else file, flush=flush)


def process_rows(size: int, mesh: Mesh, *, axis_name: str | None = None) -> slice:
    """The rows of a global batch of ``size`` that this process holds: what it loads.

    With several processes each loads only its rows and :func:`shard_batch` joins the
    slices into the global batch (no row is loaded twice); with one process, all rows.

    Args:
        size: the global batch size, divisible by the mesh axis's size.
        mesh: the mesh the batch is split over.
        axis_name: the mesh axis of the batch (default: the axis of a one-axis mesh).

    Raises:
        ValueError: ``size`` is not divisible, or this process's devices do not hold one
            contiguous block of rows (a mesh whose device order interleaves processes).

    Example:
        >>> process_rows(8, batch_mesh())           # one process: every row
        slice(0, 8, None)
    """
    name = _axis_name(mesh) if axis_name is None else axis_name
    count = mesh.shape[name]
    if size % count:
        raise ValueError(
            f"process_rows: the batch of {size} must be divisible by the {count} devices of "
            f"mesh axis {name!r}"
        )
    where = NamedSharding(mesh, PartitionSpec(name))
    rows = [index[0] for index in where.addressable_devices_indices_map((size,)).values() if index]
    spans = sorted({(r.start or 0, size if r.stop is None else r.stop) for r in rows})
    start, stop = spans[0][0], spans[0][1]
    for lo, hi in spans[1:]:
        if lo != stop:
            raise ValueError(
                f"process_rows: process {jax.process_index()} holds rows {spans} along mesh "
                f"axis {name!r}, not one block; order the mesh's devices by process "
                "(jax.devices() does)"
            )
        stop = hi
    return slice(start, stop)

"""Run a cell over a sequence: ``unroll`` (``lax.scan``) and its plain-loop reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _backward, _checks
from seqjax._truncate import stop_at_border, window_border
from seqjax._types import Array, Cell, PyTree
from seqjax.parallel import METHODS as PARALLEL_METHODS
from seqjax.parallel import unroll_parallel

# Where the input projection runs, per backend, from benchmarks/unroll_projection.py.
# XLA:CPU runs the per-step projection inside the scan faster than slicing one large
# precomputed array per step; accelerators prefer one large matmul before the scan.
_HOIST_PROJECTION = {"cpu": False}


# Whether the scan body sees its weights as per-gate column blocks of width H, put back
# together inside the body. The math is unchanged; what changes is the scan's transpose,
# which then accumulates one [H, H] (or [I, H]) weight gradient per gate per step instead of
# one [H, 4H] array. Measured on XLA:CPU (benchmarks/rnn_vs_flax.py): LSTM forward+backward
# 1.15-1.28x -> 0.80-1.01x of Flax linen, forward unchanged. Not yet measured elsewhere.
_SPLIT_GATE_BLOCKS = {"cpu": True}


# Which derivative ``unroll(..., backward="auto")`` uses, per backend, for cells that offer
# the recur/update split (seqjax/_backward.py); others always use autodiff. Measured
# LSTM/GRU forward+backward at B32 T128 I64 H256, B8 T1024 I64 H128, B128 T64 I128 H512
# (jax 0.11.2, benchmarks/unroll_backward.py and its prototype):
# - gpu (H100) at unroll=1: structured / autodiff = 0.69-0.78 in all 6 rows (e.g. LSTM B32/T128
#   3.5 vs 4.5 ms, B8/T1024 21.5 vs 28.9 ms). Structured, with the projection hoisted.
# - cpu, before the derivative saved z = px + r for LSTM/Elman and flattened [T, B] for its
#   weight matmuls: structured 1.0-1.4x *slower* than autodiff (XLA:CPU copied each
#   [T*B, G] cotangent into transposed layout; two cotangents per step).
# - cpu after (2-core EPYC, jax 0.10.2, 2026-11-23, two runs of unroll_backward.py):
#   structured / autodiff 0.68-0.95 in 6 of 8 single-device rows (LSTM B8/T1024 0.82-0.89,
#   B128/T64 0.84-0.90, B1/T1024 0.68-0.75; GRU B8/T1024 0.95, B1 0.74-0.76), 1.05-1.08 at
#   LSTM B32/T128 and 1.06-1.31 at GRU B32/T128; with the batch split over 2 host devices
#   0.74-0.95 in all 6 rows. Structured.
# - gpu at unroll=8 (_SCAN_UNROLL), H100, jax 0.11.2, 2026-11-23: structured / autodiff =
#   0.75-0.83 in 7 of 8 rows (LSTM B32/T128 1.73 vs 2.18 ms, B8/T1024 10.3 vs 13.7 ms,
#   B128/T64 2.35 vs 2.93 ms; GRU 0.75-0.87), 1.02 at LSTM B1/T1024 (9.3 vs 9.1 ms).
#   results/gpu-nvidia-h100-80gb-hbm3-unroll_backward.md. So structured on the GPU.
# - other backends: not measured; autodiff, JAX's standard path, until someone measures.
_BACKWARD = {"cpu": "custom", "gpu": "custom"}

# lax.scan's unroll factor when the caller gives none (benchmarks/unroll_projection.py):
# on the H100, unroll=8 made forward 1.3-1.9x and forward+backward 1.6-2.3x faster than
# unroll=1 for LSTM, GRU and Elman at B32/T128 and B8/T1024 (hoisted projection), with
# compile time no larger. On XLA:CPU the effect was mixed (unroll=4: GRU/Elman fwd+bwd
# 1.04-1.2x faster; unroll=8: LSTM fwd+bwd 1.3-1.7x slower; forward +-5%), so 1 there.
_SCAN_UNROLL = {"gpu": 8}

# With the structured derivative and the projection inside the scan, save each step's
# projected input (True) or recompute all of them after the loop in one matmul (False).
# XLA:CPU: saving was 1.0-1.1x faster (LSTM B32/T128 159 vs 178 ms); on the GPU the
# projection is hoisted, so the choice does not arise.
_SAVE_PX = {"cpu": True}

# With the structured derivative, for cells that name their weight matrices
# (project_weight/recur_weight), whether the reverse loop and the input gradient multiply
# by row-major transposed copies of them (seqjax/_backward.py, _transposed_copy).
# XLA:CPU (2-core EPYC, jax 0.10.2): LSTM forward+backward B8/T1024 55.5 -> 49.3 ms,
# B32/T128 62.8 -> 58.0 ms; in the char-LM's update (B32/T64/H256, one device) the reverse
# loop's matmul went from 121 to 89 us per step, the update from 27.8 to 26.0 ms (on 2 host
# devices 21.0 -> 19.8-20.7 ms). GPU: not measured, so JAX's own transpose there.
_TRANSPOSED_WEIGHTS = {"cpu": True}

BACKWARDS = ("auto", "custom", "autodiff")


def _hoist_default() -> bool:
    return _HOIST_PROJECTION.get(jax.default_backend(), True)


def _resolve_backward(cell: Cell, backward: str) -> str:
    """``"custom"`` or ``"autodiff"``: the derivative ``unroll`` uses for ``cell``."""
    if backward not in BACKWARDS:
        raise ValueError(f"unroll: backward must be one of {BACKWARDS}; got {backward!r}")
    structured = _backward.has_structure(cell)
    if backward == "custom" and not structured:
        raise TypeError(
            "unroll: backward='custom' needs a cell with recur(params, carry) and "
            f"update(params, carry, px, r) methods; {type(cell).__name__} has not both"
        )
    if backward == "auto":
        chosen = _BACKWARD.get(jax.default_backend(), "autodiff")
        return chosen if structured else "autodiff"
    return backward


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


def _prepare(cell: Cell, params, xs, carry, lengths, time_axis: int, where: str):
    """Check arguments; return time-major xs, the carry, lengths, and the original axis."""
    xs = _checks.floating_array("xs", xs, where)
    axis = _checks.time_axis_of("xs", xs.shape, time_axis, where)
    _checks.feature_size("xs", xs.shape, cell.input_size, where)
    xs = jnp.moveaxis(xs, axis, 0)
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    px_dtype = jax.eval_shape(cell.project, params, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    expected = jax.eval_shape(lambda: cell.init_carry(batch_shape, px_dtype.dtype))
    if carry is None:
        carry = cell.init_carry(batch_shape, px_dtype.dtype)
    else:
        _checks.carry_matches(carry, expected, where)
        # A carry the step would change the dtype of cannot loop (lax.scan's error does not
        # say which argument); a wider one is kept, and the outputs follow it.
        got = [jnp.result_type(leaf) for leaf in jax.tree.leaves(carry)]
        message = (
            f"{where}: carry leaves must have a dtype one step keeps with these params and "
            f"xs ({px_dtype.dtype}, as init_carry gives); got {', '.join(map(str, got))}"
        )
        try:
            stepped = jax.eval_shape(cell.step, params, carry, px_dtype)[0]
        except jax.dtypes.TypePromotionError as err:  # under strict dtype promotion
            raise TypeError(message) from err
        if got != [out.dtype for out in jax.tree.leaves(stepped)]:
            raise TypeError(message)
    if lengths is not None:
        lengths = _checks.lengths_array(lengths, batch_shape, num_steps, where)
    return xs, carry, lengths, axis


def unroll(
    cell: Cell,
    params: PyTree,
    xs: Array,
    carry: PyTree | None = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    truncate: int | None = None,
    time_axis: int = 0,
    unroll: int | bool | None = None,
    hoist_projection: bool | None = None,
    backward: str = "auto",
    method: str = "sequential",
    remat: int | tuple[int, ...] | None = None,
) -> tuple[PyTree, Array]:
    """Run ``cell`` over a sequence with ``lax.scan`` (or in parallel over time, ``method``).

    Args:
        cell: any object satisfying the cell protocol.
        params: the cell's parameters.
        xs: inputs ``[T, *B, I]`` (or with the time axis at ``time_axis``); floating.
        carry: initial state with leaves ``[*B, H]``; the cell's zero state when omitted.
        lengths: valid length of each sequence, integers ``[*B]`` in ``[0, T]``. Steps at or
            past a sequence's length leave its carry unchanged and output zeros, so the
            returned carry is the one at the true length (length 0 returns ``carry``).
        reverse: run from the last valid step back to the first. ``ys[t]`` stays the
            output for ``xs[t]`` (as with ``lax.scan(reverse=True)``), so forward and
            backward outputs line up in a bidirectional layer.
        resets: booleans ``[T, *B]`` (time on ``time_axis``): where ``resets[t, b]`` is
            True, sequence ``b`` starts afresh at step ``t`` from the cell's zero state, as at
            an episode boundary in a stream of concatenated episodes.
        truncate: truncated-BPTT window ``k``: the forward pass is unchanged, but no
            gradient flows through the carry across the window borders ``t = k, 2k, ...``
            (``lax.stop_gradient``), so each window's gradient reaches back at most to its
            own start. With ``lengths``, only borders inside each sequence cut (a padded
            sequence's gradients equal its own, unpadded). ``None`` (default) or
            ``k >= T``: full backpropagation through time.
        time_axis: axis of ``xs`` (and of ``ys``) that is time; ``1`` for batch-major data.
        unroll: ``lax.scan``'s unroll factor (steps per loop iteration); ``None`` (default)
            takes the one measured fastest on the current backend (8 on GPU, else 1).
        hoist_projection: compute ``cell.project`` for all steps before the scan (True) or
            per step inside it (False). The default is the faster one measured on the
            current backend; results are the same either way.
        backward: how derivatives through the scan are formed (the values are the same):
            ``"autodiff"``, JAX's own transpose of the scan, which computes each step's
            weight gradients inside the reverse loop; ``"custom"``, a structured derivative
            for cells with ``recur``/``update`` methods (see the cell protocol), whose
            reverse loop computes only the carry and gate cotangents and then every weight
            and input gradient as one large matmul over all steps; ``"auto"`` (default),
            the one measured faster on the current backend (so far ``custom`` on CPU and
            GPU, ``autodiff`` elsewhere; see ``_BACKWARD``;
            always ``autodiff`` for cells without ``recur``/``update``). Both support
            ``jax.grad``, ``jax.jvp``, ``jit``, ``vmap`` and higher-order derivatives.
        method: ``"sequential"`` (default, ``lax.scan``), or evaluation in parallel over
            time by :func:`seqjax.parallel.unroll_parallel`: ``"associative"`` (cells with
            ``coefficients``: minGRU, minLSTM, LRU), ``"deer"`` or ``"quasi_deer"`` (any
            cell; Newton iterations that fall back to the sequential scan when they do not
            converge). Same results; ``truncate``, ``unroll``, ``hoist_projection``,
            ``backward`` and ``remat`` apply to the sequential method only.
        remat: rematerialisation over time, trading compute for BPTT memory. An int ``k``
            runs the scan as ``T // k`` chunks of ``k`` steps (and a last chunk of
            ``T % k``), each under ``jax.checkpoint``: the forward pass keeps only the carry
            at chunk borders, and the backward pass recomputes one chunk at a time, so the
            memory for saved activations grows like ``T / k + k`` steps instead of ``T``
            (``k ~ sqrt(T)`` gives sqrt(T)) for about one extra forward pass. A tuple
            ``(k1, k2, ...)`` nests the chunking (chunks of ``k1`` steps made of checkpointed
            chunks of ``k2``, ...), for memory growing like ``T**(1/(d+1))`` with ``d``
            levels. Values and gradients are unchanged. Uses the autodiff derivative
            (``backward="custom"`` with ``remat`` raises).

    Returns:
        ``(carry, ys)``: the final carry (leaves ``[*B, H]``) and outputs ``[T, *B, H]`` in
        the layout of ``xs``.

    Raises:
        TypeError: ``xs`` is not floating, ``lengths`` not integer or ``resets`` not bool.
        ValueError: a shape does not match the cell, ``lengths`` lies outside ``[0, T]``,
            ``truncate`` is not a positive int, ``remat`` is not a positive int or a tuple of
            them, or ``backward`` is not a known value (or is ``"custom"`` with ``remat``).
        TypeError: ``backward="custom"`` for a cell without ``recur`` and ``update``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, unroll
        >>> cell = LSTMCell(input_size=3, hidden_size=5)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jnp.ones((7, 2, 3))                      # [T, B, I]
        >>> carry, ys = unroll(cell, params, xs, lengths=jnp.array([7, 4]))
        >>> ys.shape, carry.h.shape
        ((7, 2, 5), (2, 5))
        >>> bool((ys[4:, 1] == 0).all())
        True
    """
    remat = _remat_schedule(remat)
    methods = ("sequential", *PARALLEL_METHODS)
    if method not in methods:
        raise ValueError(f"unroll: method must be one of {methods}; got {method!r}")
    if method != "sequential":
        if truncate is not None:
            raise ValueError(f"unroll: truncate applies to method='sequential'; got {method!r}")
        if remat:
            raise ValueError(f"unroll: remat applies to method='sequential'; got {method!r}")
        return unroll_parallel(
            cell, params, xs, carry, method=method, lengths=lengths, reverse=reverse,
            resets=resets, time_axis=time_axis,
        )  # fmt: skip
    xs, carry, lengths, axis = _prepare(cell, params, xs, carry, lengths, time_axis, "unroll")
    if resets is not None:
        resets = _checks.resets_array(resets, xs.shape[:-1], axis, "unroll")
        if lengths is not None:
            # Padded steps do not exist, so a reset there does nothing (as in unroll_reference).
            steps = jnp.arange(xs.shape[0], dtype=lengths.dtype)
            resets = resets & (steps.reshape(-1, *([1] * lengths.ndim)) < lengths[None])
    if truncate is not None:
        truncate = _checks.positive_int("truncate", truncate, "unroll")
    if unroll is not None and not isinstance(unroll, bool):  # True: unroll every step
        unroll = _checks.positive_int("unroll", unroll, "unroll")
    if hoist_projection is None:
        hoist_projection = _hoist_default()
    if unroll is None:
        unroll = _SCAN_UNROLL.get(jax.default_backend(), 1)
    if remat and backward == "custom":
        raise ValueError(
            "unroll: remat uses the autodiff derivative; got backward='custom' "
            "(use backward='auto' or 'autodiff')"
        )
    if not remat and _resolve_backward(cell, backward) == "custom":
        platform = jax.default_backend()
        carry, ys = _backward.structured_unroll(
            cell,
            params,
            xs,
            carry,
            lengths,
            resets,
            reverse=reverse,
            truncate=truncate,
            unroll=unroll,
            hoist=hoist_projection,
            save_px=_SAVE_PX.get(platform, True),
            transposed_weights=_TRANSPOSED_WEIGHTS.get(platform, False),
        )
        return carry, jnp.moveaxis(ys, 0, axis)
    num_steps = xs.shape[0]
    inputs = cell.project(params, xs) if hoist_projection else xs
    if _SPLIT_GATE_BLOCKS.get(jax.default_backend(), False):
        blocks, rebuild = _gate_blocks(params, cell.hidden_size)
    else:
        blocks, rebuild = params, lambda p: p

    needs_time = lengths is not None or truncate is not None
    step_dtype = jnp.int32 if lengths is None else lengths.dtype
    steps = jnp.arange(num_steps, dtype=step_dtype) if needs_time else None
    if resets is not None:
        fresh = cell.init_carry(xs.shape[1:-1], jax.tree.leaves(carry)[0].dtype)

    def select(mask, new, old):  # mask [*B]: per sequence, new where True
        return jax.tree.map(lambda n, o: jnp.where(mask[..., None], n, o), new, old)

    def body(carry, slices):
        t, x, reset = slices
        params = rebuild(blocks)
        if truncate is not None:
            border = window_border(t, truncate, reverse, num_steps, lengths)
            carry = stop_at_border(border, carry)
        if reset is not None:
            carry = select(reset, fresh, carry)
        px = x if hoist_projection else cell.project(params, x)
        new_carry, y = cell.step(params, carry, px)
        if lengths is None:
            return new_carry, y
        valid = t < lengths  # [*B]
        return select(valid, new_carry, carry), jnp.where(valid[..., None], y, jnp.zeros_like(y))

    carry, ys = _scan(body, carry, (steps, inputs, resets), reverse, unroll, remat)
    return carry, jnp.moveaxis(ys, 0, axis)


def _remat_schedule(remat) -> tuple[int, ...]:
    """``unroll``'s ``remat`` as a tuple of chunk sizes, outermost first (``()``: none)."""
    if remat is None:
        return ()
    sizes = remat if isinstance(remat, tuple | list) else (remat,)
    if not sizes or any(isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1
                        for k in sizes):  # fmt: skip
        raise ValueError(
            f"unroll: remat must be None, a positive int or a tuple of them; got {remat!r}"
        )
    return tuple(int(k) for k in sizes)


def _scan(body, carry, xs, reverse: bool, unroll, remat: tuple[int, ...]):
    """``lax.scan(body, carry, xs)``, run as checkpointed chunks of ``remat[0]`` steps.

    The steps that do not fill a whole chunk (the last ``T % k``) run in a plain scan after
    the chunks (before them when ``reverse``), so any ``T`` works. Each chunk is itself
    scanned with the rest of the schedule.
    """
    if not remat:
        return jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    size, inner = remat[0], remat[1:]
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    whole = num_steps - num_steps % size
    head = jax.tree.map(lambda a: a[:whole].reshape(whole // size, size, *a.shape[1:]), xs)
    tail = jax.tree.map(lambda a: a[whole:], xs)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a scan, CSE cannot leak
    def chunk(carry, xs):
        return _scan(body, carry, xs, reverse, unroll, inner)

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


def unroll_reference(
    cell: Cell,
    params: PyTree,
    xs: Array,
    carry: PyTree | None = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    time_axis: int = 0,
) -> tuple[PyTree, Array]:
    """The semantics of :func:`unroll` as a plain Python loop, for tests.

    Loops over every batch element and, within it, over only its valid steps, calling
    ``cell.apply`` once per step; it shares nothing with :func:`unroll` but the argument
    checks. Same arguments and results as :func:`unroll` (``truncate`` changes only gradients
    and is not offered); ``lengths`` and ``resets`` must be concrete.
    Slow by design.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import ElmanCell, unroll, unroll_reference
        >>> cell = ElmanCell(input_size=2, hidden_size=3)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (5, 2))      # T=5, no batch dims
        >>> _, ys = unroll(cell, params, xs)
        >>> _, ys_ref = unroll_reference(cell, params, xs)
        >>> bool(jnp.allclose(ys, ys_ref, atol=1e-6))
        True
    """
    xs, carry, lengths, axis = _prepare(
        cell, params, xs, carry, lengths, time_axis, "unroll_reference"
    )
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    batch_size = int(np.prod(batch_shape, dtype=int))
    flat_xs = xs.reshape(num_steps, batch_size, xs.shape[-1])
    flat_carry = jax.tree.map(lambda a: a.reshape(batch_size, *a.shape[len(batch_shape) :]), carry)
    flat_lengths = (
        [num_steps] * batch_size if lengths is None else [int(n) for n in np.ravel(lengths)]
    )
    if resets is not None:
        resets = _checks.resets_array(resets, xs.shape[:-1], axis, "unroll_reference")
        flat_resets = np.asarray(resets).reshape(num_steps, batch_size)
    else:
        flat_resets = np.zeros((num_steps, batch_size), bool)
    fresh = cell.init_carry((), jax.tree.leaves(carry)[0].dtype)
    final_carries, outputs = [], []
    for b in range(batch_size):
        c = jax.tree.map(lambda a, b=b: a[b], flat_carry)
        ys_b = [None] * num_steps
        order = range(flat_lengths[b])
        for t in reversed(order) if reverse else order:
            if flat_resets[t, b]:
                c = fresh
            c, ys_b[t] = cell.apply(params, c, flat_xs[t, b])
        x_spec = jax.ShapeDtypeStruct(flat_xs.shape[2:], flat_xs.dtype)
        y_spec = jax.eval_shape(cell.apply, params, c, x_spec)[1]
        zero = jnp.zeros(y_spec.shape, y_spec.dtype)
        outputs.append(jnp.stack([zero if y is None else y for y in ys_b]))
        final_carries.append(c)
    ys = jnp.stack(outputs, axis=1).reshape(num_steps, *batch_shape, -1)
    carry = jax.tree.map(lambda *cs: jnp.stack(cs).reshape(*batch_shape, -1), *final_carries)
    return carry, jnp.moveaxis(ys, 0, axis)

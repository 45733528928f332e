"""``unroll`` with a hand-structured derivative: the recurrence alone in the loop.

JAX's automatic transpose of ``lax.scan`` performs, in every reverse step, the weight-gradient
matmul of that step (``h_{t-1}^T dG_t``, a small ``[H, B] @ [B, G]``). Vendor kernels (oneDNN,
cuDNN) instead run a reverse loop that computes only what must be sequential, the gate
pre-activation cotangents ``dG_t``, and then every weight and input gradient as one large
matmul over all steps. This module does the same for any cell that splits its step as

    r = cell.recur(params, carry)             # the recurrent matmul, h W_h
    carry, y = cell.update(params, carry, px, r)   # elementwise

It is written as a :func:`jax.custom_jvp` rather than a ``custom_vjp`` so that forward mode
(``jax.jvp``, ``jacfwd``) keeps working: the rule states the tangent program in a shape whose
transpose is the fast backward pass, and JAX derives that transpose:

* input projection and the weight half of ``recur`` are linearised *outside* the loop, over
  all ``T`` steps at once (``project`` over ``xs``; ``recur`` with respect to ``params`` over
  the stacked carries), so their transposes are one matmul each (``dW_x = xs^T dPx``,
  ``dxs = dPx W_x^T``, ``dW_h = C^T dR``);
* inside the loop only the carry half of ``recur`` (``dc W_h``, transposed to
  ``dG W_h^T``) and the linearised ``update``, which is rematerialised (``jax.checkpoint``)
  from the saved ``(carry, px, r)`` of the step instead of saving its activations.

Residuals saved by the forward pass: the carry entering each step, ``r`` per step, and ``px``
(hoisted, or recomputed outside the loop as one matmul; see ``unroll.py``). For a cell whose
``update`` reads only ``z = px + r`` (``update_reads_sum``: LSTM, Elman) the loop saves ``z``
alone, and the two time-parallel tangents are summed before the loop, so the reverse loop
reads one ``[B, G]`` slice and writes one ``[B, G]`` gate cotangent per step, shared by the
``W_x``, ``W_h``, ``b`` and ``xs`` gradients after it (LSTM B32/T128 forward+backward on
2 CPU cores: from 1.10x to 0.96x the time of JAX's own transpose of the scan, level with a
hand-derived LSTM ``custom_vjp``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax._truncate import stop_at_border, where_border, window_border
from seqjax._types import Cell


def reads_sum(cell) -> bool:
    """Whether ``cell.update`` reads ``px`` and ``r`` only through ``px + r``."""
    return bool(getattr(cell, "update_reads_sum", False))


def has_structure(cell) -> bool:
    """Whether ``cell`` offers the ``recur``/``update`` split this derivative needs."""
    return callable(getattr(cell, "recur", None)) and callable(getattr(cell, "update", None))


def names_weight(cell, which: str) -> bool:
    """Whether ``cell`` names the matrix of its ``which`` map, "project" or "recur" (see Cell)."""
    return callable(getattr(cell, f"{which}_weight", None))


def _recur_input(cell, carry):
    read = getattr(cell, "recur_input", None)
    return carry if read is None else read(carry)


def _transposed_copy(w):
    """``w.T`` ``[G, K]`` as an array of its own, bit for bit.

    The reverse loop multiplies each gate cotangent by the transposed weights, ``dG W^T``.
    Read from ``W`` itself (both minor dimensions contracted), XLA:CPU ran that small matmul
    at about half the rate of ``dG @ Wt`` with ``Wt`` row-major (``[8, 512] x [512, 128]``:
    12.2 vs 6.0 ms over 1024 steps). XLA folds a plain transpose back into the dot, and
    sinks it through an elementwise op when the chain ends in another transpose, so the
    copy is made by a multiplication with a one that XLA cannot fold.
    """
    flag = (w[0, 0] != w[0, 0]).astype(w.dtype)  # 0, or 1 for a NaN: unknown to XLA
    return w.T * (1 + 0 * flag)


def _times_transposed(a, wt):
    """``a @ wt.T`` over ``a``'s last axis; its transpose in ``a`` is ``ct @ wt``."""
    return jax.lax.dot_general(a, wt, (((a.ndim - 1,), (1,)), ((), ())))


def _select(mask, new, old):  # mask [*B]: per sequence, new where True
    return jax.tree.map(lambda n, o: jnp.where(mask[..., None], n, o), new, old)


def _zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _flat_steps(fn, lead: int, *trees):
    """``fn(*trees)`` computed with each leaf's ``lead`` leading axes ``[T, *B]`` as one.

    For the weight tangents of ``project`` and ``recur`` over all steps. JAX transposes
    ``x @ dW`` into ``(ct^T x)^T``. XLA:CPU rewrites that into one ``x^T ct`` matmul when
    ``x`` and ``ct`` are matrices; for ``[T, B, .]`` arrays it instead copied the whole
    ``[T*B, G]`` cotangent into transposed layout (16 MB per weight for an LSTM at
    B32/T128/H256) and ran a slower matmul on it: forward+backward went from 1.39x to 1.10x
    the time of JAX's own transpose of the scan there (2 CPU cores).
    """
    shape = jax.tree.leaves(trees)[0].shape[:lead]

    def flat(a):
        return a.reshape((-1, *a.shape[lead:]))

    def unflat(a):
        return a.reshape((*shape, *a.shape[1:]))

    return jax.tree.map(unflat, fn(*jax.tree.map(flat, trees)))


def structured_unroll(
    cell: Cell,
    params,
    xs,
    carry,
    lengths,
    resets,
    *,
    reverse: bool,
    truncate: int | None,
    unroll: int | bool,
    hoist: bool,
    save_px: bool,
    transposed_weights: bool = False,
):
    """``(carry, ys)`` of the time-major unroll, with the structured derivative.

    Same semantics as the scan in :func:`seqjax.unroll` (arguments already checked there);
    ``xs`` is time-major ``[T, *B, I]``; ``lengths`` ``[*B]`` and ``resets`` ``[T, *B]`` or None.
    ``save_px``: with ``hoist=False``, save each step's ``px`` (True) or recompute all of them
    after the loop with one ``project`` (False). ``transposed_weights``: for a cell with
    ``project_weight``/``recur_weight``, multiply cotangents by row-major transposed copies
    of those matrices (see ``_transposed_copy``).
    """
    num_steps = xs.shape[0]
    additive = reads_sum(cell)
    by_project = transposed_weights and names_weight(cell, "project")
    by_recur = transposed_weights and names_weight(cell, "recur")
    needs_time = lengths is not None or truncate is not None

    def border(t, lengths):  # the carry entering step t is cut there (seqjax/_truncate.py)
        return window_border(t, truncate, reverse, num_steps, lengths)

    def steps_for(lengths):
        step_dtype = jnp.int32 if lengths is None else lengths.dtype
        return jnp.arange(num_steps, dtype=step_dtype) if needs_time else None

    def forward(params, xs, carry, lengths, resets, save: bool):
        inputs = cell.project(params, xs) if hoist else xs
        fresh = cell.init_carry(xs.shape[1:-1], jax.tree.leaves(carry)[0].dtype)

        def body(c, slices):
            t, x, reset = slices
            if truncate is not None:
                # Identity here; the cut of this derivative is in run_jvp, but a derivative
                # of run_jvp's own (forward-over-reverse) differentiates these residuals.
                c = stop_at_border(border(t, lengths), c)
            if reset is not None:
                c = _select(reset, fresh, c)
            px = x if hoist else cell.project(params, x)
            r = cell.recur(params, c)
            new_c, y = cell.update(params, c, px, r)
            if lengths is not None:
                valid = t < lengths
                new_c = _select(valid, new_c, c)
                y = jnp.where(valid[..., None], y, jnp.zeros_like(y))
            if not save:
                res = None
            elif additive:
                res = (c, px + r, None)  # z: the one array the update reads
            else:
                res = (c, px if (save_px and not hoist) else None, r)
            return new_c, (y, res)

        slices = (steps_for(lengths), inputs, resets)
        final, (ys, res) = jax.lax.scan(body, carry, slices, reverse=reverse, unroll=unroll)
        return final, ys, res, inputs if hoist else None

    @jax.custom_jvp
    def run(params, xs, carry, lengths, resets):
        final, ys, _, _ = forward(params, xs, carry, lengths, resets, save=False)
        return final, ys

    @run.defjvp
    def run_jvp(primals, tangents):
        params, xs, carry, lengths, resets = primals
        d_params, d_xs, d_carry = tangents[:3]
        final, ys, (cs, pxs, rs), hoisted = forward(params, xs, carry, lengths, resets, True)
        if additive:
            pass  # pxs holds z = px + r, saved by the forward loop
        elif hoist:
            pxs = hoisted
        elif pxs is None:
            pxs = cell.project(params, xs)  # one matmul over all steps, after the loop
        # Time-parallel tangents: their transposes are one large matmul each.
        lead = xs.ndim - 1  # the T and batch axes, flattened into one (see _flat_steps)
        if by_recur:
            wht = _transposed_copy(cell.recur_weight(params))
        if by_project:  # the input half as dx @ W_x, transposed into one ct @ Wt_x
            wxt = _transposed_copy(cell.project_weight(params))

            def project_tangent(x, dx):
                d_w = jax.jvp(lambda p: cell.project(p, x), (params,), (d_params,))[1]
                return d_w + _times_transposed(dx, wxt)

        else:

            def project_tangent(x, dx):
                return jax.jvp(cell.project, (params, x), (d_params, dx))[1]

        d_pxs = _flat_steps(project_tangent, lead, xs, d_xs)
        d_rs_w = _flat_steps(
            lambda c: jax.jvp(lambda p: cell.recur(p, c), (params,), (d_params,))[1], lead, cs
        )
        if additive:  # one tangent slice per step, so one cotangent written per step
            d_pxs, d_rs_w = jax.tree.map(jnp.add, d_pxs, d_rs_w), None

        def recur_c(c, dc):
            if by_recur:  # transposed into dG @ Wt_h
                return _times_transposed(_recur_input(cell, dc), wht)
            return jax.jvp(lambda c: cell.recur(params, c), (c,), (dc,))[1]

        # Recomputed from (c, px, r) in the reverse loop instead of saving its activations.
        def update_fn(p, c, px, r):
            if additive:  # px is z = px + r here; r is zero
                r = jnp.zeros_like(px)
            return cell.update(p, c, px, r)

        update = jax.checkpoint(update_fn, prevent_cse=False)

        def body(dc, slices):
            t, c, px, r, d_px, d_r_w, reset = slices
            if truncate is not None:
                dc = where_border(border(t, lengths), _zeros(dc), dc)
            if reset is not None:
                dc = _select(reset, _zeros(dc), dc)
            d_r = recur_c(c, dc)
            if additive:
                d_px, d_r = jax.tree.map(jnp.add, d_px, d_r), None
            else:
                d_r = jax.tree.map(jnp.add, d_r, d_r_w)
            _, (d_new, d_y) = jax.jvp(update, (params, c, px, r), (d_params, dc, d_px, d_r))
            if lengths is not None:
                valid = t < lengths
                d_new = _select(valid, d_new, dc)
                d_y = jnp.where(valid[..., None], d_y, jnp.zeros_like(d_y))
            return d_new, d_y

        slices = (steps_for(lengths), cs, pxs, rs, d_pxs, d_rs_w, resets)
        d_final, d_ys = jax.lax.scan(body, d_carry, slices, reverse=reverse, unroll=unroll)
        return (final, ys), (d_final, d_ys)

    return run(params, xs, carry, lengths, resets)

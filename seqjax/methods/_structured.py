"""The structured derivative of the scan: the recurrence alone in the reverse loop.

JAX's automatic transpose of ``lax.scan`` performs, in every reverse step, the weight-gradient
matmul of that step (``h_{t-1}^T dG_t``, a small ``[H, B] @ [B, G]``). Vendor kernels (oneDNN,
cuDNN) instead run a reverse loop that computes only what must be sequential, the gate
pre-activation cotangents ``dG_t``, and then every weight and input gradient as one large
matmul over all steps. This module does the same for any cell that splits its step as

    r = cell.recur(params, carry)             # the recurrent matmul, h W_h
    carry, y = cell.update(params, carry, px, r)   # elementwise

Used by :class:`~seqjax.Scan` when its derivative resolves to ``"structured"``, for cells that
:func:`~seqjax.cells.supports` :class:`~seqjax.cells.SplitStep`.

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
(hoisted, or saved per step when projected inside the loop). For a cell whose ``update``
reads only ``z = px + r`` (:class:`~seqjax.cells.SummedUpdate`: LSTM, Elman) the loop saves ``z``
alone, and the two time-parallel tangents are summed before the loop, so the reverse loop
reads one ``[B, G]`` slice and writes one ``[B, G]`` gate cotangent per step, shared by the
``W_x``, ``W_h``, ``b`` and ``xs`` gradients after it (LSTM B32/T128 forward+backward on
2 CPU cores: from 1.10x to 0.96x the time of JAX's own transpose of the scan, level with a
hand-derived LSTM ``custom_vjp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from seqjax._tree import select as _select
from seqjax._tree import zeros_like as _zeros
from seqjax.cells._base import Cell, ProjectWeight, RecurWeight, SummedUpdate, supports
from seqjax.methods._truncate import stop_at_border, where_border, window_border
from seqjax.tuning import Tuning


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


def _each_step(fn, lead: int, *trees):
    """``fn(*trees)`` over the leading time axis, one step ``[*B, ...]`` at a time (``vmap``):
    for cells whose params hold per-sequence data (``Cell.shared_rows`` False), which
    flattening ``[T, *B]`` into rows would misalign."""
    return jax.vmap(fn)(*trees)


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


def structured_scan(cell: Cell, params, inputs, plan: Tuning):
    """``(carry, ys)`` of the time-major scan of ``inputs`` (:class:`~seqjax.methods.Inputs`),
    with the structured derivative; the layout (``hoist_projection``, ``scan_unroll``,
    ``transposed_weights``) from ``plan``.

    With the projection inside the loop each step's ``px`` is saved for the reverse pass
    (XLA:CPU ran that 1.0-1.1x faster than one ``project`` over all steps after the loop);
    hoisted, the projection before the loop is reused.
    """
    transposed = plan.transposed_weights
    scan = _Structured(
        cell=cell,
        num_steps=inputs.xs.shape[0],
        reverse=inputs.reverse,
        truncate=inputs.truncate,
        unroll=plan.scan_unroll,
        hoist=plan.hoist_projection,
        additive=supports(cell, SummedUpdate),
        by_project=transposed and supports(cell, ProjectWeight),
        by_recur=transposed and supports(cell, RecurWeight),
        timed=inputs.lengths is not None or inputs.truncate is not None,
    )

    @jax.custom_jvp
    def run(params, xs, carry, lengths, resets):
        final, ys, _, _ = scan.forward(params, xs, carry, lengths, resets, save=False)
        return final, ys

    run.defjvp(scan.jvp)
    return run(params, inputs.xs, inputs.carry, inputs.lengths, inputs.resets)


@dataclass(frozen=True)
class _Structured:
    """The static configuration of one structured scan, and its forward and tangent passes."""

    cell: Cell
    num_steps: int
    reverse: bool
    truncate: int | None
    unroll: int | bool
    hoist: bool
    additive: bool  # the update reads px + r only: save and differentiate z = px + r
    by_project: bool  # multiply by a transposed copy of W_x
    by_recur: bool  # multiply by a transposed copy of W_h
    timed: bool  # the loop needs the step index (lengths or truncation)

    def border(self, t, lengths):
        """Whether the carry entering step ``t`` is cut (``_truncate.py``)."""
        return window_border(t, self.truncate, self.reverse, self.num_steps, lengths)

    def steps(self, lengths):
        step_dtype = jnp.int32 if lengths is None else lengths.dtype
        return jnp.arange(self.num_steps, dtype=step_dtype) if self.timed else None

    def forward(self, params, xs, carry, lengths, resets, save: bool):
        """The scan; with ``save``, each step's residuals ``(c, px or z, r)`` too."""
        cell, hoist = self.cell, self.hoist
        inputs = cell.project(params, xs) if hoist else xs
        fresh = cell.init_carry(xs.shape[1:-1], jax.tree.leaves(carry)[0].dtype)

        def body(c, slices):
            t, x, reset = slices
            if self.truncate is not None:
                # Identity here; the cut of this derivative is in jvp, but a derivative of
                # jvp's own (forward-over-reverse) differentiates these residuals.
                c = stop_at_border(self.border(t, lengths), c)
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
            elif self.additive:
                res = (c, px + r, None)  # z: the one array the update reads
            else:
                res = (c, None if hoist else px, r)
            return new_c, (y, res)

        slices = (self.steps(lengths), inputs, resets)
        final, (ys, res) = jax.lax.scan(
            body, carry, slices, reverse=self.reverse, unroll=self.unroll
        )
        return final, ys, res, inputs if hoist else None

    def jvp(self, primals, tangents):
        """The tangent program whose transpose is the fast backward pass."""
        params, xs, carry, lengths, resets = primals
        d_params, d_xs, d_carry = tangents[:3]
        final, ys, (cs, pxs, rs), hoisted = self.forward(params, xs, carry, lengths, resets, True)
        if self.hoist and not self.additive:  # with additive, pxs holds z = px + r
            pxs = hoisted
        wht = _transposed_copy(self.cell.recur_weight(params)) if self.by_recur else None
        d_pxs, d_rs_w = self.parallel_tangents(params, d_params, xs, d_xs, cs)
        slices = (self.steps(lengths), cs, pxs, rs, d_pxs, d_rs_w, resets)
        body = self.reverse_body(params, d_params, lengths, wht)
        d_final, d_ys = jax.lax.scan(
            body, d_carry, slices, reverse=self.reverse, unroll=self.unroll
        )
        return (final, ys), (d_final, d_ys)

    def parallel_tangents(self, params, d_params, xs, d_xs, cs):
        """Time-parallel tangents: their transposes are one large matmul each."""
        cell = self.cell
        lead = xs.ndim - 1  # the T and batch axes, flattened into one (see _flat_steps)
        over_steps = _flat_steps if cell.shared_rows else _each_step
        if self.by_project:  # the input half as dx @ W_x, transposed into one ct @ Wt_x
            wxt = _transposed_copy(cell.project_weight(params))

            def project_tangent(x, dx):
                d_w = jax.jvp(lambda p: cell.project(p, x), (params,), (d_params,))[1]
                return d_w + _times_transposed(dx, wxt)

        else:

            def project_tangent(x, dx):
                return jax.jvp(cell.project, (params, x), (d_params, dx))[1]

        d_pxs = over_steps(project_tangent, lead, xs, d_xs)
        d_rs_w = over_steps(
            lambda c: jax.jvp(lambda p: cell.recur(p, c), (params,), (d_params,))[1], lead, cs
        )
        if self.additive:  # one tangent slice per step, so one cotangent written per step
            d_pxs, d_rs_w = jax.tree.map(jnp.add, d_pxs, d_rs_w), None
        return d_pxs, d_rs_w

    def reverse_body(self, params, d_params, lengths, wht):
        """The loop body of the tangent scan: only the carry and gate tangents."""
        cell, additive = self.cell, self.additive

        def recur_c(c, dc):
            if self.by_recur:  # transposed into dG @ Wt_h
                return _times_transposed(cell.recur_input(params, dc), wht)
            return jax.jvp(lambda c: cell.recur(params, c), (c,), (dc,))[1]

        # Recomputed from (c, px, r) in the reverse loop instead of saving its activations.
        def update_fn(p, c, px, r):
            if additive:  # px is z = px + r here
                return cell.update_summed(p, c, px)
            return cell.update(p, c, px, r)

        update = jax.checkpoint(update_fn, prevent_cse=False)

        def body(dc, slices):
            t, c, px, r, d_px, d_r_w, reset = slices
            if self.truncate is not None:
                dc = where_border(self.border(t, lengths), _zeros(dc), dc)
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

        return body

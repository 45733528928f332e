"""A persistent Pallas recurrence kernel for LSTM, GRU (reset-after) and Elman cells.

:func:`recurrence` runs the sequential part of a recurrent layer, everything after the input
projection ``px = x W_x + b`` (one large matmul the caller makes over all steps), as one
``pallas_call`` over all ``T`` steps. Each kernel instance owns one tile of ``block_batch``
sequences: it loads the recurrent weights ``W_h`` once, keeps the state ``h`` (and ``c``) in the
loop carry (registers, on a GPU), in float32 (float64 when an input is float64), and loops over
time with ``lax.fori_loop``, one ``[b, H] @ [H, H]`` matmul per gate and step, accumulated in
the state's dtype (``preferred_element_type``). bfloat16 ``px`` and ``W_h`` are supported: the
state is rounded to ``W_h``'s dtype only as the matmul's left operand (and the gate cotangents
likewise in the reverse loop).

The derivative is a ``jax.custom_vjp`` shaped like the vendor kernels' (cuDNN, oneDNN) and
like :mod:`seqjax._backward`: the forward kernel saves the state entering each step and the
gate activations; a second kernel runs the reverse loop with ``W_h`` resident and computes
only what is sequential, the gate pre-activation cotangents ``d_px`` ``[T, B, G]`` and the
cotangents of the initial state; then, outside the kernels, ``dW_h = sum_t h_{t-1}^T dr_t``
is one ``[H, T*B] @ [T*B, G]`` matmul and ``d b_h`` one sum. ``d_px`` is returned as it is:
the caller's projection matmul transposes it into ``dW_x``, ``db`` and ``dxs``. Saving the
activations (``5H`` per step for an LSTM, ``4H`` for a GRU, ``H`` for Elman, plus ``h_{t-1}``)
rather than recomputing them keeps the reverse loop at one matmul per gate and step.

Reverse mode only: ``jax.grad`` and ``jax.vjp`` work, ``jax.jvp`` raises (a ``custom_vjp``),
and second derivatives are not offered. ``jax.vmap`` works through ``pallas_call``'s batching
rule (one more grid axis); one batch axis ``B``, so fold any others into it or vmap.

The wrapper pads ``B`` up to a multiple of ``block_batch`` and ``H`` up to ``max(16, 2^k)``,
gate by gate (zero weights, zero inputs: padded units stay zero and reach no real unit), and
slices the results back.

What was and was not checked:

* Only Pallas interpret mode was run (``interpret=True``, on CPU): values and gradients
  against a plain ``lax.scan`` and against seqjax's cells (tests/test_pallas_rnn.py).
* The kernels were *written* for the Triton GPU lowering but never lowered or run on a GPU:
  no scratch buffers (Triton has none; the state lives in the loop carry), every load and
  store a power-of-two ``[b, H]``, ``[b]`` or ``[H, H]`` block (``T`` is only ever indexed),
  gates read and written as column blocks of the refs (the Triton lowering has no slicing of
  values), matmuls of at least 16 x 16 (``tl.dot``; so ``block_batch >= 16`` when compiled,
  which the default gives). Expect to check there: that it lowers at all; register pressure,
  since every instance holds all of ``W_h`` (``G * H`` values: an H=128 float32 LSTM is 64K
  values, a whole SM's register file, so it will spill; bfloat16 halves that); a
  ``num_warps`` choice (none is passed); speed against ``lax.scan``.
* Hidden tiles are not offered: every step needs all of ``h`` to form the next ``h W_h``, so
  splitting ``H`` over kernel instances needs a grid-wide barrier per step, which Pallas
  does not express on Triton. Large ``H`` would instead loop over column blocks of ``W_h``
  inside one instance (``W_h`` then streamed from L2 every step, no longer resident).
* Mosaic TPU differs: blocks are copied to VMEM, so the ``[T, b, G]`` blocks of ``px``, the
  outputs and the residuals would need a grid axis over chunks of time (state kept in a
  ``VMEM`` scratch across it, "arbitrary" dimension semantics) to fit long sequences; the
  last two dims of every block must be multiples of (8, 128) or whole, so ``H`` padded to
  128, ``block_batch`` a multiple of 8, and the ``[T, B]`` masks laid out ``[T, B, 1]`` or
  widened. Not attempted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from seqjax._types import Array

__all__ = ["ELMAN_RELU", "ELMAN_TANH", "GRU", "LSTM", "Kind", "recurrence"]


@dataclass(frozen=True)
class Kind:
    """The elementwise update of one cell family, in the form the kernels run it.

    Gates are tuples of per-gate blocks, each ``[b, H]`` (one batch tile), in the cell's gate
    order; ``x`` gates are the input side (``px``), ``r`` gates the recurrent side
    (``h W_h + b_h``).

    Attributes:
        name: the family, for reprs and errors.
        num_gates: ``G / H``.
        has_cell: whether the carry holds an LSTM cell state ``c`` beside ``h``.
        num_saved: how many ``[b, H]`` arrays ``forward`` saves per step for ``backward``.
        forward: ``(x_gates, r_gates, h, c) -> (h', c', saved)`` (``c`` None without a cell).
        backward: ``(saved, h, dh', dc') -> (dx_gates, dr_distinct, dh, dc)``: the gate
            cotangents of the input side, those of the recurrent side that differ from them
            (the gates in ``distinct_recurrent``, in that order), and the direct cotangents of
            the entering ``h`` (None: zero, it enters only through the matmul) and ``c``.
        distinct_recurrent: gates whose recurrent pre-activation enters other than through
            its sum with the input side (the GRU candidate's ``r * (h W_hn + b_hn)``).
    """

    name: str
    num_gates: int
    has_cell: bool
    num_saved: int
    forward: Callable = field(repr=False)
    backward: Callable = field(repr=False)
    distinct_recurrent: tuple[int, ...] = ()


def _lstm_forward(xs, rs, h, c):
    i, f, g, o = (x + r for x, r in zip(xs, rs, strict=True))
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    return o * jnp.tanh(c_new), c_new, (c, i, f, g, o)


def _lstm_backward(saved, h, dh, dc):
    c, i, f, g, o = saved
    tc = jnp.tanh(f * c + i * g)
    dc = dc + dh * o * (1 - tc * tc)
    d_gates = (
        dc * g * i * (1 - i),
        dc * c * f * (1 - f),
        dc * i * (1 - g * g),
        dh * tc * o * (1 - o),
    )
    return d_gates, (), None, dc * f


def _gru_forward(xs, rs, h, c):
    (x_r, x_z, x_n), (h_r, h_z, h_n) = xs, rs
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, None, (r, z, n, h_n)


def _gru_backward(saved, h, dh, dc):
    r, z, n, h_n = saved
    d_n = dh * (1 - z) * (1 - n * n)
    d_r = d_n * h_n * r * (1 - r)
    d_z = dh * (h - n) * z * (1 - z)
    return (d_r, d_z, d_n), (d_n * r,), dh * z, None


def _elman_tanh_forward(xs, rs, h, c):
    y = jnp.tanh(xs[0] + rs[0])
    return y, None, (y,)


def _elman_tanh_backward(saved, h, dh, dc):
    (y,) = saved
    return (dh * (1 - y * y),), (), None, None


def _elman_relu_forward(xs, rs, h, c):
    y = jnp.maximum(xs[0] + rs[0], 0)
    return y, None, (y,)


def _elman_relu_backward(saved, h, dh, dc):
    (y,) = saved  # y > 0 exactly where the pre-activation is, as jax.nn.relu's derivative
    return (jnp.where(y > 0, dh, jnp.zeros_like(dh)),), (), None, None


LSTM = Kind("lstm", 4, True, 5, _lstm_forward, _lstm_backward)
"""seqjax's :class:`~seqjax.cells.LSTMCell`: gates i, f, g, o; ``c' = sig(f) c + sig(i) tanh(g)``,
``h' = sig(o) tanh(c')``."""

GRU = Kind("gru", 3, False, 4, _gru_forward, _gru_backward, distinct_recurrent=(2,))
"""seqjax's :class:`~seqjax.cells.GRUCell` with ``reset_after=True``: gates r, z, n;
``n = tanh(x_n + r (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``."""

ELMAN_TANH = Kind("elman_tanh", 1, False, 1, _elman_tanh_forward, _elman_tanh_backward)
"""seqjax's :class:`~seqjax.cells.ElmanCell` with ``jnp.tanh``: ``h' = tanh(px + h W_h)``."""

ELMAN_RELU = Kind("elman_relu", 1, False, 1, _elman_relu_forward, _elman_relu_backward)
"""seqjax's :class:`~seqjax.cells.ElmanCell` with ``jax.nn.relu``: ``h' = relu(px + h W_h)``."""


@dataclass(frozen=True)
class _Config:
    """What the kernels are specialised on (hashable: ``custom_vjp``'s static argument)."""

    kind: Kind
    reverse: bool
    block_batch: int
    width: int  # H padded
    interpret: bool


def _gate(j: int, width: int):
    return pl.ds(j * width, width)


def _step_index(s, num_steps: int, reverse: bool):
    """The time step the ``s``-th iteration of the forward loop visits."""
    return num_steps - 1 - s if reverse else s


def _mask(ref, t):
    """Row ``t`` of an int32 ``[T, b]`` mask as booleans ``[b, 1]``."""
    return (ref[t] != 0)[:, None]


def _load_weights(refs, config: _Config):
    width = config.width
    return [refs["w_h"][:, _gate(j, width)] for j in range(config.kind.num_gates)]


def _forward_kernel(refs, *, config: _Config, state_dtype):
    kind, width = config.kind, config.width
    num_steps = refs["px"].shape[0]
    w = _load_weights(refs, config)  # once: resident for all T steps
    if "b_h" in refs:
        b = [refs["b_h"][:, _gate(j, width)].astype(state_dtype) for j in range(kind.num_gates)]

    def body(s, carry):
        h, c = carry
        t = _step_index(s, num_steps, config.reverse)
        if "resets" in refs:
            fresh = _mask(refs["resets"], t)
            h = jnp.where(fresh, jnp.zeros_like(h), h)
            c = None if c is None else jnp.where(fresh, jnp.zeros_like(c), c)
        hw = h.astype(w[0].dtype)
        rs = [jnp.dot(hw, wj, preferred_element_type=state_dtype) for wj in w]
        if "b_h" in refs:
            rs = [rj + bj for rj, bj in zip(rs, b, strict=True)]
        xs = [refs["px"][t, :, _gate(j, width)].astype(state_dtype) for j in range(len(w))]
        h_new, c_new, saved = kind.forward(xs, rs, h, c)
        if "hs" in refs:
            refs["hs"][t] = h
            for j, a in enumerate(saved):
                refs["saved"][t, :, _gate(j, width)] = a
        y = h_new
        if "valid" in refs:
            valid = _mask(refs["valid"], t)
            h_new = jnp.where(valid, h_new, h)
            c_new = None if c is None else jnp.where(valid, c_new, c)
            y = jnp.where(valid, y, jnp.zeros_like(y))
        refs["ys"][t] = y.astype(refs["ys"].dtype)
        return h_new, c_new

    h = refs["h0"][...].astype(state_dtype)
    c = refs["c0"][...].astype(state_dtype) if kind.has_cell else None
    h, c = jax.lax.fori_loop(0, num_steps, body, (h, c))
    refs["h_final"][...] = h.astype(refs["h_final"].dtype)
    if kind.has_cell:
        refs["c_final"][...] = c.astype(refs["c_final"].dtype)


def _backward_kernel(refs, *, config: _Config, state_dtype):
    kind, width = config.kind, config.width
    num_steps = refs["d_ys"].shape[0]
    w = _load_weights(refs, config)
    contract_columns = (((1,), (1,)), ((), ()))  # d @ W_j^T

    def body(s, carry):
        dh, dc = carry
        t = _step_index(num_steps - 1 - s, num_steps, config.reverse)  # last visited first
        dh_new, dc_new = dh + refs["d_ys"][t].astype(state_dtype), dc
        if "valid" in refs:
            valid = _mask(refs["valid"], t)
            dh_new = jnp.where(valid, dh_new, jnp.zeros_like(dh_new))
            dc_new = None if dc is None else jnp.where(valid, dc, jnp.zeros_like(dc))
        saved = tuple(refs["saved"][t, :, _gate(j, width)] for j in range(kind.num_saved))
        d_x, d_distinct, dh_in, dc_in = kind.backward(saved, refs["hs"][t], dh_new, dc_new)
        d_r = list(d_x)
        for j, d in zip(kind.distinct_recurrent, d_distinct, strict=True):
            d_r[j] = d
        for wj, d in zip(w, d_r, strict=True):
            back = jax.lax.dot_general(
                d.astype(wj.dtype), wj, contract_columns, preferred_element_type=state_dtype
            )
            dh_in = back if dh_in is None else dh_in + back
        if "valid" in refs:
            dh_in = jnp.where(valid, dh_in, dh)
            dc_in = None if dc is None else jnp.where(valid, dc_in, dc)
        if "resets" in refs:
            fresh = _mask(refs["resets"], t)
            dh_in = jnp.where(fresh, jnp.zeros_like(dh_in), dh_in)
            dc_in = None if dc is None else jnp.where(fresh, jnp.zeros_like(dc_in), dc_in)
        for j, d in enumerate(d_x):
            refs["d_px"][t, :, _gate(j, width)] = d
        for j, d in enumerate(d_distinct):
            refs["d_distinct"][t, :, _gate(j, width)] = d
        return dh_in, dc_in

    dh = refs["d_h_final"][...].astype(state_dtype)
    dc = refs["d_c_final"][...].astype(state_dtype) if kind.has_cell else None
    dh, dc = jax.lax.fori_loop(0, num_steps, body, (dh, dc))
    refs["d_h0"][...] = dh.astype(refs["d_h0"].dtype)
    if kind.has_cell:
        refs["d_c0"][...] = dc.astype(refs["d_c0"].dtype)


def _block_spec(shape: tuple[int, ...], batch_axis: int | None, block_batch: int):
    """The block of one kernel instance: the whole array, or a tile of ``batch_axis``."""
    block = list(shape)
    if batch_axis is not None:
        block[batch_axis] = block_batch

    def index(b):
        return tuple(b if d == batch_axis else 0 for d in range(len(shape)))

    return pl.BlockSpec(tuple(block), index)


def _call(kernel, config: _Config, inputs: dict, outputs: dict) -> dict:
    """Run ``kernel(refs)`` over the batch tiles; ``refs`` maps each name to its ref.

    ``inputs`` maps names to ``(array, batch_axis)``, ``outputs`` to
    ``(jax.ShapeDtypeStruct, batch_axis)`` (``batch_axis`` None: every instance sees it all).
    """
    names = [*inputs, *outputs]
    (batch,) = {a.shape[axis] for a, axis in inputs.values() if axis is not None}

    def bound(*refs):
        kernel(dict(zip(names, refs, strict=True)))

    def spec(a, axis):
        return _block_spec(a.shape, axis, config.block_batch)

    results = pl.pallas_call(
        bound,
        out_shape=[s for s, _ in outputs.values()],
        grid=(batch // config.block_batch,),
        in_specs=[spec(a, axis) for a, axis in inputs.values()],
        out_specs=[spec(s, axis) for s, axis in outputs.values()],
        interpret=config.interpret,
    )(*[a for a, _ in inputs.values()])
    return dict(zip(outputs, results, strict=True))


def _state_dtype(*dtypes):
    """float32, or float64 where an input is: the dtype of the state and of accumulation."""
    wide = any(jnp.dtype(d) == jnp.float64 for d in dtypes)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def _present(**arrays) -> dict:
    return {name: a for name, a in arrays.items() if a[0] is not None}


def _forward(config: _Config, w_h, b_h, px, h0, c0, valid, resets, *, save: bool) -> dict:
    num_steps, batch, _ = px.shape
    width, kind = config.width, config.kind
    state_dtype = _state_dtype(px.dtype, w_h.dtype, h0.dtype)
    inputs = _present(
        w_h=(w_h, None), b_h=(b_h, None), px=(px, 1), h0=(h0, 0), c0=(c0, 0),
        valid=(valid, 1), resets=(resets, 1),
    )  # fmt: skip
    outputs = {
        "ys": (jax.ShapeDtypeStruct((num_steps, batch, width), px.dtype), 1),
        "h_final": (jax.ShapeDtypeStruct((batch, width), h0.dtype), 0),
    }
    if kind.has_cell:
        outputs["c_final"] = (jax.ShapeDtypeStruct((batch, width), c0.dtype), 0)
    if save:
        outputs["hs"] = (jax.ShapeDtypeStruct((num_steps, batch, width), state_dtype), 1)
        saved = (num_steps, batch, kind.num_saved * width)
        outputs["saved"] = (jax.ShapeDtypeStruct(saved, state_dtype), 1)
    kernel = functools.partial(_forward_kernel, config=config, state_dtype=state_dtype)
    return _call(kernel, config, inputs, outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(config: _Config, w_h, b_h, px, h0, c0, valid, resets):
    out = _forward(config, w_h, b_h, px, h0, c0, valid, resets, save=False)
    return out["ys"], out["h_final"], out.get("c_final")


def _recurrence_fwd(config: _Config, w_h, b_h, px, h0, c0, valid, resets):
    out = _forward(config, w_h, b_h, px, h0, c0, valid, resets, save=True)
    residuals = (w_h, b_h, valid, resets, out["hs"], out["saved"])
    return (out["ys"], out["h_final"], out.get("c_final")), residuals


def _recurrence_bwd(config: _Config, residuals, cotangents):
    w_h, b_h, valid, resets, hs, saved = residuals
    d_ys, d_h, d_c = cotangents  # d_ys has px's dtype, d_h h0's, d_c c0's
    kind, width = config.kind, config.width
    num_steps, batch, gates = d_ys.shape[0], d_ys.shape[1], kind.num_gates * width
    state_dtype = hs.dtype
    inputs = _present(
        w_h=(w_h, None), hs=(hs, 1), saved=(saved, 1), valid=(valid, 1), resets=(resets, 1),
        d_ys=(d_ys, 1), d_h_final=(d_h, 0), d_c_final=(d_c if kind.has_cell else None, 0),
    )  # fmt: skip
    outputs = {
        "d_px": (jax.ShapeDtypeStruct((num_steps, batch, gates), state_dtype), 1),
        "d_h0": (jax.ShapeDtypeStruct(d_h.shape, d_h.dtype), 0),
    }
    if kind.distinct_recurrent:
        distinct = (num_steps, batch, len(kind.distinct_recurrent) * width)
        outputs["d_distinct"] = (jax.ShapeDtypeStruct(distinct, state_dtype), 1)
    if kind.has_cell:
        outputs["d_c0"] = (jax.ShapeDtypeStruct(d_c.shape, d_c.dtype), 0)
    kernel = functools.partial(_backward_kernel, config=config, state_dtype=state_dtype)
    out = _call(kernel, config, inputs, outputs)

    d_px = out["d_px"]
    d_r = d_px
    if kind.distinct_recurrent:  # the recurrent side's own cotangent for those gates
        blocks = jnp.split(d_px, kind.num_gates, axis=-1)
        for k, j in enumerate(kind.distinct_recurrent):
            blocks[j] = out["d_distinct"][..., k * width : (k + 1) * width]
        d_r = jnp.concatenate(blocks, axis=-1)
    # All steps at once: dW_h = H^T dR as one [H, T*B] @ [T*B, G] matmul.
    flat_h = hs.reshape(num_steps * batch, width)
    flat_r = d_r.reshape(num_steps * batch, gates)
    d_w = jax.lax.dot_general(
        flat_h, flat_r, (((0,), (0,)), ((), ())), preferred_element_type=state_dtype
    )
    d_b = None if b_h is None else jnp.sum(flat_r, axis=0, keepdims=True).astype(b_h.dtype)
    d_px = d_px.astype(d_ys.dtype)
    return d_w.astype(w_h.dtype), d_b, d_px, out["d_h0"], out.get("d_c0"), None, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _pad_to(a: Array, shape: tuple[int, ...]) -> Array:
    if a.shape == shape:
        return a
    return jnp.pad(a, [(0, n - s) for s, n in zip(a.shape, shape, strict=True)])


def _pad_gates(a: Array, num_gates: int, lead: tuple[int, ...], width: int) -> Array:
    """``[..., k*H]`` to ``[*lead, k*width]``, each gate's block padded on its own."""
    blocks = a.reshape(*a.shape[:-1], num_gates, a.shape[-1] // num_gates)
    return _pad_to(blocks, (*lead, num_gates, width)).reshape(*lead, num_gates * width)


def _default_block_batch(batch: int) -> int:
    # 16 rows is the smallest tl.dot tile; past 64 rows, more instances beat longer tiles.
    return min(64, max(16, pl.next_power_of_2(batch)))


def _check(kind: Kind, w_h, b_h, px, h0, c0, valid, resets, block_batch) -> None:
    def fail(name, expected, got):
        raise ValueError(f"recurrence({kind.name}): {name} must be {expected}; got {got}")

    if px.ndim != 3:
        fail("px", "[T, B, G]", px.shape)
    num_steps, batch, gates = px.shape
    hidden = h0.shape[-1]
    if gates != kind.num_gates * hidden:
        fail("px", f"[T, B, {kind.num_gates} * H] with H={hidden} from h0", px.shape)
    if h0.shape != (batch, hidden):
        fail("h0", f"[B, H] = {(batch, hidden)}", h0.shape)
    if w_h.shape != (hidden, gates):
        fail("w_h", f"[H, G] = {(hidden, gates)}", w_h.shape)
    if b_h is not None and b_h.shape != (gates,):
        fail("b_h", f"None or [G] = {(gates,)}", b_h.shape)
    if kind.has_cell and (c0 is None or c0.shape != h0.shape):
        fail("c0", f"[B, H] = {h0.shape}", None if c0 is None else c0.shape)
    if not kind.has_cell and c0 is not None:
        fail("c0", "None (the carry has no cell state)", c0.shape)
    for name, mask in (("valid", valid), ("resets", resets)):
        if mask is not None and (mask.shape != (num_steps, batch) or mask.dtype != jnp.bool_):
            fail(name, f"None or bool [T, B] = {(num_steps, batch)}", (mask.shape, mask.dtype))
    for name, a in (("w_h", w_h), ("b_h", b_h), ("px", px), ("h0", h0), ("c0", c0)):
        if a is not None and not jnp.issubdtype(a.dtype, jnp.floating):
            fail(name, "floating", a.dtype)
    if block_batch is not None and (block_batch < 1 or block_batch & (block_batch - 1)):
        fail("block_batch", "None or a positive power of two", block_batch)


def recurrence(
    kind: Kind,
    w_h: Array,
    b_h: Array | None,
    px: Array,
    h0: Array,
    c0: Array | None = None,
    *,
    valid: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    block_batch: int | None = None,
    interpret: bool | None = None,
) -> tuple[Array, Array, Array | None]:
    """Run a cell's recurrence over ``T`` steps in one Pallas kernel; differentiable.

    The same values, and derivatives, as ``lax.scan`` over ``kind``'s step with the
    recurrent matmul ``h W_h + b_h`` and a carry reset and masked as in :func:`seqjax.unroll`.

    Args:
        kind: the cell family: :data:`LSTM`, :data:`GRU` (reset-after), :data:`ELMAN_TANH`,
            :data:`ELMAN_RELU`.
        w_h: recurrent weights ``[H, G]``, gate blocks in the cell's order; float32,
            bfloat16 or float64.
        b_h: recurrent-side bias ``[G]`` added to ``h W_h`` (the GRU's ``b_h``, whose
            candidate block sits inside ``r * (...)``), or None for zeros (LSTM, Elman: their
            bias belongs in ``px``).
        px: projected inputs ``[T, B, G]`` (``x W_x + b``), ``G`` = ``4H`` (LSTM), ``3H``
            (GRU) or ``H`` (Elman).
        h0: initial hidden state ``[B, H]``.
        c0: initial LSTM cell state ``[B, H]``; None for the other kinds.
        valid: bool ``[T, B]`` or None (all True): where False, the step does not exist for
            that sequence: its carry passes unchanged (a reset there is ignored) and its
            output is zero. ``t < lengths`` gives :func:`seqjax.unroll`'s ``lengths``.
        resets: bool ``[T, B]`` or None: where True, the carry entering step ``t`` is
            replaced by zeros first.
        reverse: visit ``t = T-1`` down to ``0``; ``ys[t]`` stays aligned with ``px[t]``.
        block_batch: sequences per kernel instance, a power of two; by default
            ``min(64, max(16, 2^ceil(log2 B)))``. Compiled for a GPU, at least 16.
        interpret: run the kernels in Pallas interpret mode; None (default): when
            ``jax.default_backend()`` is ``"cpu"``, compiled otherwise.

    Returns:
        ``(ys, h, c)``: outputs ``[T, B, H]`` in ``px``'s dtype (zero where not ``valid``),
        the final ``h`` ``[B, H]`` in ``h0``'s dtype and the final ``c`` ``[B, H]`` in
        ``c0``'s dtype (None without a cell state). The state itself is carried in float32
        (float64 if any input is float64).

    Raises:
        ValueError: a shape does not match ``kind`` and the others, a mask is not bool
            ``[T, B]``, an input is not floating, or ``block_batch`` is not a power of two.

    Example:
        >>> import jax.numpy as jnp
        >>> from seqjax._kernels.pallas_rnn import GRU, recurrence
        >>> T, B, H = 5, 2, 3
        >>> w_h, b_h = jnp.zeros((H, 3 * H)), jnp.zeros(3 * H)
        >>> ys, h, c = recurrence(GRU, w_h, b_h, jnp.ones((T, B, 3 * H)), jnp.zeros((B, H)))
        >>> ys.shape, h.shape, c is None
        ((5, 2, 3), (2, 3), True)
    """
    _check(kind, w_h, b_h, px, h0, c0, valid, resets, block_batch)
    num_steps, batch, _ = px.shape
    hidden, k = h0.shape[-1], kind.num_gates
    if num_steps == 0:
        return jnp.zeros((0, batch, hidden), px.dtype), h0, c0
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    if block_batch is None:
        block_batch = _default_block_batch(batch)
    width = max(16, pl.next_power_of_2(hidden))
    padded = -(-batch // block_batch) * block_batch
    config = _Config(kind, bool(reverse), block_batch, width, bool(interpret))

    if valid is not None and resets is not None:
        resets = resets & valid  # a step that does not exist resets nothing

    def mask(m):  # padded sequences: no step exists
        return None if m is None else _pad_to(m.astype(jnp.int32), (num_steps, padded))

    def state(a):
        return None if a is None else _pad_to(a, (padded, width))

    ys, h, c = _recurrence(
        config,
        _pad_to(_pad_gates(w_h, k, (hidden,), width), (width, k * width)),
        None if b_h is None else _pad_gates(b_h, k, (), width)[None],
        _pad_gates(px, k, (num_steps, padded), width),
        state(h0),
        state(c0),
        mask(valid),
        mask(resets),
    )
    return ys[:, :batch, :hidden], h[:batch, :hidden], None if c is None else c[:batch, :hidden]

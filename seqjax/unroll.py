"""Run a cell over a sequence: :func:`unroll`, the front door to every evaluation method,
and :func:`unroll_reference`, the plain loop it is tested against."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, Layer
from seqjax.methods import Inputs, Method, ParallelInfo, resolve

__all__ = ["UnrollOptions", "unroll", "unroll_reference", "unroll_with_info"]


@dataclass(frozen=True)
class UnrollOptions:
    """The static options of :func:`unroll`, as one hashable object.

    :func:`unroll` and every layer and adapter take these (and the per-call ``lengths``,
    ``resets`` and ``time_axis``) as keyword arguments; models hold one object of them
    for their recurrent part and forward it whole. A new option of :func:`unroll` is a
    new field here, and the test suite fails until every layer accepts it.

    Attributes:
        reverse: run from the last valid step back to the first.
        truncate: truncated-BPTT window ``k`` (sequential methods), or None.
        method: a :class:`~seqjax.methods.Method`, a shorthand string, or None (``Scan()``).

    Example:
        >>> from seqjax import UnrollOptions
        >>> UnrollOptions(truncate=20).kwargs()
        {'reverse': False, 'truncate': 20, 'method': None}
    """

    reverse: bool = False
    truncate: int | None = None
    method: Method | str | None = None

    def __post_init__(self):
        _checks.flag("reverse", self.reverse, "UnrollOptions")
        method = resolve(self.method, "UnrollOptions")
        if self.truncate is not None:
            _checks.positive_int("truncate", self.truncate, "UnrollOptions")
            if not method.truncates:
                raise ValueError(
                    "UnrollOptions: truncate applies to the sequential methods (Scan, Remat); "
                    f"got method={method!r}"
                )

    def kwargs(self) -> dict:
        """The options as keyword arguments of :func:`unroll`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_cell(cell, where: str) -> None:
    # A class (LSTMCell instead of LSTMCell(3, 4)) or a layer fails much later otherwise.
    if not isinstance(cell, Cell):
        raise TypeError(
            f"{where}: cell must be a seqjax cell instance (e.g. LSTMCell(3, 4)); got {cell!r}"
            + (" (call a Stack or Bidirectional layer directly)" if isinstance(cell, Layer) else "")
        )


def _prepare(cell: Cell, params, xs, carry, lengths, time_axis: int, where: str):
    """Check arguments; return time-major xs, the carry, lengths, and the original axis."""
    _check_cell(cell, where)
    xs = _checks.floating_array("xs", xs, where)
    shape = xs.shape  # the caller's layout, for the hints of the checks below
    axis = _checks.time_axis_of("xs", xs.shape, time_axis, where)
    _checks.feature_size("xs", xs.shape, cell.input_size, where)
    cell.check_params(params, where)
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
        lengths = _checks.lengths_array(
            lengths, batch_shape, num_steps, where, xs_shape=shape, time_axis=axis
        )
    return xs, carry, lengths, axis


def _inputs(cell, params, xs, carry, lengths, resets, reverse, truncate, time_axis, where):
    """The checked, time-major :class:`~seqjax.methods.Inputs`, and the caller's time axis."""
    xs, carry, lengths, axis = _prepare(cell, params, xs, carry, lengths, time_axis, where)
    if lengths is not None:
        # Padding is inert in both directions: a NaN or Inf there would reach no value, but
        # the step still runs on it, and 0 x NaN in its derivative would poison every gradient.
        valid = _checks.valid_steps(lengths, xs.shape[0])[..., None]
        xs = jnp.where(valid, xs, jnp.zeros_like(xs))
    if resets is not None:
        resets = _checks.resets_array(resets, xs.shape[:-1], axis, where)
        if lengths is not None:
            # Padded steps do not exist, so a reset there does nothing (as in unroll_reference).
            steps = jnp.arange(xs.shape[0], dtype=lengths.dtype)
            resets = resets & (steps.reshape(-1, *([1] * lengths.ndim)) < lengths[None])
    if truncate is not None:
        truncate = _checks.positive_int("truncate", truncate, where)
    if not isinstance(reverse, bool | np.bool_):
        raise ValueError(f"{where}: reverse must be a bool; got {reverse!r}")
    return Inputs(xs, carry, lengths, resets, bool(reverse), truncate), axis


def _method(cell: Cell, method, truncate, where: str) -> Method:
    _check_cell(cell, where)
    method = resolve(method, where)
    if truncate is not None and not method.truncates:
        raise ValueError(
            f"{where}: truncate applies to the sequential methods (Scan, Remat); got "
            f"method={method!r}"
        )
    method.check(cell)
    return method


def unroll(
    cell: Cell,
    params: PyTree,
    xs: Array,
    carry: PyTree | None = None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    truncate: int | None = None,
    time_axis: int = 0,
    method: Method | str | None = None,
) -> tuple[PyTree, Array]:
    """Run ``cell`` over a sequence: ``lax.scan`` by default, or any evaluation ``method``.

    Every option here is accepted, and forwarded, by every layer, model and adapter
    (:class:`~seqjax.Stack`, :class:`~seqjax.Bidirectional`, :func:`~seqjax.embedded_unroll`,
    the Flax modules); the test suite checks that none drops one.

    Args:
        cell: a :class:`~seqjax.cells.Cell`.
        params: the cell's parameters.
        xs: inputs ``[T, *B, I]`` (or with the time axis at ``time_axis``); floating.
        carry: initial state with leaves ``[*B, H]``; the cell's zero state when omitted.
        lengths: valid length of each sequence, integers ``[*B]`` in ``[0, T]``. Steps at or
            past a sequence's length leave its carry unchanged and output zeros, so the
            returned carry is the one at the true length (length 0 returns ``carry``).
        resets: booleans ``[T, *B]`` (time on ``time_axis``): where ``resets[t, b]`` is
            True, sequence ``b`` starts afresh at step ``t`` from the cell's zero state, as at
            an episode boundary in a stream of concatenated episodes.
        reverse: run from the last valid step back to the first. ``ys[t]`` stays the
            output for ``xs[t]`` (as with ``lax.scan(reverse=True)``), so forward and
            backward outputs line up in a bidirectional layer.
        truncate: truncated-BPTT window ``k``: the forward pass is unchanged, but no
            gradient flows through the carry across the window borders ``t = k, 2k, ...``
            (``lax.stop_gradient``), so each window's gradient reaches back at most to its
            own start. With ``lengths``, only borders inside each sequence cut (a padded
            sequence's gradients equal its own, unpadded). ``None`` (default) or
            ``k >= T``: full backpropagation through time. Sequential methods only.
        time_axis: axis of ``xs`` (and of ``ys``) that is time; ``1`` for batch-major data.
        method: how to evaluate (:mod:`seqjax.methods`): :class:`~seqjax.Scan` (None, the
            default: ``lax.scan`` laid out as tuned for the data's platform),
            :class:`~seqjax.Remat` (checkpointed chunks: BPTT memory ~ ``T/k + k``),
            :class:`~seqjax.Associative` (linear-in-state cells), :class:`~seqjax.DEER` and
            :class:`~seqjax.QuasiDEER` (Newton iterations, any cell), or the shorthands
            ``"sequential"``, ``"associative"``, ``"deer"``, ``"quasi_deer"``. The values
            are the same up to rounding (and ``tol`` for the Newton methods).

    Returns:
        ``(carry, ys)``: the final carry (leaves ``[*B, H]``) and outputs ``[T, *B, H]`` in
        the layout of ``xs``.

    Raises:
        TypeError: ``xs`` is not floating, ``lengths`` not integer, ``resets`` not bool,
            or the method needs a capability the cell lacks.
        ValueError: a shape does not match the cell, ``lengths`` lies outside ``[0, T]``,
            ``truncate`` is not a positive int or is given to a parallel method, or
            ``method`` is unknown.

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
    where = "unroll"
    chosen = _method(cell, method, truncate, where)
    inputs, axis = _inputs(
        cell, params, xs, carry, lengths, resets, reverse, truncate, time_axis, where
    )
    carry, ys = chosen.run(cell, params, inputs)
    return carry, jnp.moveaxis(ys, 0, axis)


def unroll_with_info(
    cell: Cell,
    params: PyTree,
    xs: Array,
    carry: PyTree | None = None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    truncate: int | None = None,
    time_axis: int = 0,
    method: Method | str | None = None,
) -> tuple[PyTree, Array, ParallelInfo]:
    """:func:`unroll`, also returning a :class:`~seqjax.methods.ParallelInfo` report.

    For the Newton methods the report says how many iterations ran, the final residual
    and whether they converged (or fell back to the scan); exact methods report 0, 0, True.

    Example:
        >>> import jax
        >>> from seqjax import GRUCell, QuasiDEER, unroll_with_info
        >>> cell = GRUCell(3, 4)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (64, 3))
        >>> _, ys, info = unroll_with_info(cell, params, xs, method=QuasiDEER())
        >>> bool(info.converged), bool(info.residual <= 1e-6)
        (True, True)
    """
    where = "unroll_with_info"
    chosen = _method(cell, method, truncate, where)
    inputs, axis = _inputs(
        cell, params, xs, carry, lengths, resets, reverse, truncate, time_axis, where
    )
    carry, ys, info = chosen.run_with_info(cell, params, inputs)
    return carry, jnp.moveaxis(ys, 0, axis), info


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
        ys_b: list[Array | None] = [None] * num_steps
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

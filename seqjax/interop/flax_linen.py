"""Exact weight and state conversion between Flax linen's recurrent cells and seqjax cells.

Flax linen's ``LSTMCell`` and ``OptimizedLSTMCell`` store one ``Dense`` per gate (``ii``,
``if``, ``ig``, ``io`` for inputs, without bias; ``hi``, ``hf``, ``hg``, ``ho`` for the
state, with bias) and carry ``(c, h)``; seqjax fuses the gates (order i, f, g, o) and
carries :class:`~seqjax.LSTMCarry` ``(h, c)``. Flax's ``GRUCell`` is the reset-after GRU with
input biases for r, z, n and a recurrent bias for n only; ``SimpleCell`` is an Elman cell
whose bias sits on the input side.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from seqjax import LSTMCell
    >>> from seqjax.interop.flax_linen import carry_from_linen, params_from_linen
    >>> flax_cell = nn.OptimizedLSTMCell(4)
    >>> carry0 = flax_cell.initialize_carry(jax.random.key(0), (2, 3))
    >>> variables = flax_cell.init(jax.random.key(1), carry0, jnp.ones((2, 3)))
    >>> cell = LSTMCell(input_size=3, hidden_size=4)
    >>> params = params_from_linen(cell, variables)
    >>> (c, h), y = flax_cell.apply(variables, carry0, jnp.ones((2, 3)))
    >>> carry, y2 = cell.apply(params, carry_from_linen(cell, carry0), jnp.ones((2, 3)))
    >>> bool(jnp.allclose(y, y2, atol=1e-6))
    True

The same module also puts seqjax cells and layers *inside* linen models:
:class:`Recurrent` runs any seqjax cell or sequence layer over a sequence, holding its
parameters with ``self.param`` (one variable ``cell``, a nested dict named by the params'
fields: ``params/<module>/cell/w_x``), and :class:`RecurrentCell` is one step behind linen's
``RNNCellBase`` interface, for ``nn.RNN`` and ``nn.scan``. Both call the cell's methods; the
math is written once, in the cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from seqjax._types import Array, PyTree
from seqjax.cells import (
    Cell,
    ElmanCell,
    ElmanParams,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    LSTMParams,
    with_noise,
)
from seqjax.interop import _flax_common as common
from seqjax.unroll import UnrollOptions

__all__ = [
    "Recurrent",
    "RecurrentCell",
    "carry_from_linen",
    "carry_to_linen",
    "cell_from_linen",
    "params_from_linen",
    "params_to_linen",
    "unwrap_params",
    "wrap_params",
]

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def _inner(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    """The params dict, boxed values (``nn.with_partitioning``'s ``Partitioned``) unboxed."""
    return nn.meta.unbox(variables["params"] if "params" in variables else variables)


def _keys(tree) -> list[str] | str:
    """The keys of a params dict, for a message (or its type, when it is not a dict)."""
    return sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__


def _kernel(tree, name: str, shape: tuple[int, int]) -> jax.Array:
    try:
        kernel = jnp.asarray(tree[name]["kernel"])
    except KeyError as err:
        raise ValueError(
            f"params_from_linen: variables must hold {name}/kernel; got keys {_keys(tree)}"
        ) from err
    if kernel.shape != shape:
        raise ValueError(
            f"params_from_linen: variables' {name}/kernel must have shape {shape} (in, out); "
            f"got {kernel.shape}"
        )
    return kernel


def params_from_linen(cell, variables: Mapping[str, Any]):
    """Convert a Flax linen cell's variables to the params of the equivalent seqjax ``cell``.

    Args:
        cell: :class:`~seqjax.LSTMCell` (from ``LSTMCell``/``OptimizedLSTMCell``),
            :class:`~seqjax.GRUCell` with ``reset_after=True`` (from ``GRUCell``), or
            :class:`~seqjax.ElmanCell` (from ``SimpleCell`` with ``residual=False``).
        variables: the linen variables, ``{"params": {...}}`` or the inner dict.

    Returns:
        The cell's params; the two compute the same function.
    """
    if not isinstance(cell, LSTMCell | GRUCell | ElmanCell):
        raise TypeError(
            f"params_from_linen: cell must be an LSTMCell, GRUCell or ElmanCell; got {type(cell)}"
        )
    tree = _inner(variables)
    size_i, size_h = cell.input_size, cell.hidden_size
    if isinstance(cell, LSTMCell):
        return LSTMParams(
            w_x=jnp.concatenate([_kernel(tree, "i" + g, (size_i, size_h)) for g in _LSTM_GATES], 1),
            w_h=jnp.concatenate([_kernel(tree, "h" + g, (size_h, size_h)) for g in _LSTM_GATES], 1),
            b=jnp.concatenate([jnp.asarray(tree["h" + g]["bias"]) for g in _LSTM_GATES]),
        )
    if isinstance(cell, GRUCell):
        if not cell.reset_after:
            raise ValueError(
                "params_from_linen: cell must be a GRUCell(reset_after=True): Flax's GRUCell "
                "applies the reset gate after the recurrent matmul; got reset_after=False"
            )
        b_hn = jnp.asarray(tree["hn"]["bias"])
        zeros = jnp.zeros_like(b_hn)
        return GRUParams(
            w_x=jnp.concatenate([_kernel(tree, "i" + g, (size_i, size_h)) for g in _GRU_GATES], 1),
            w_h=jnp.concatenate([_kernel(tree, "h" + g, (size_h, size_h)) for g in _GRU_GATES], 1),
            b_x=jnp.concatenate([jnp.asarray(tree["i" + g]["bias"]) for g in _GRU_GATES]),
            b_h=jnp.concatenate([zeros, zeros, b_hn]),
        )
    return ElmanParams(
        w_x=_kernel(tree, "i", (size_i, size_h)),
        w_h=_kernel(tree, "h", (size_h, size_h)),
        b=jnp.asarray(tree["i"]["bias"]),
    )


def params_to_linen(cell, params) -> dict[str, Any]:
    """Convert seqjax params to Flax linen variables ``{"params": {...}}`` of the same function.

    LSTM and Elman parameters map one to one. A seqjax GRU has recurrent biases for r and z
    that Flax lacks; they are folded into Flax's input biases (the same function, with one
    float rounding of the sum).
    """
    if isinstance(cell, LSTMCell):
        kx = jnp.split(params.w_x, 4, axis=1)
        kh = jnp.split(params.w_h, 4, axis=1)
        bias = jnp.split(params.b, 4)
        tree = {"i" + g: {"kernel": k} for g, k in zip(_LSTM_GATES, kx, strict=True)}
        for g, k, b in zip(_LSTM_GATES, kh, bias, strict=True):
            tree["h" + g] = {"kernel": k, "bias": b}
    elif isinstance(cell, GRUCell):
        if not cell.reset_after:
            raise ValueError(
                "params_to_linen: cell must be a GRUCell(reset_after=True), as Flax's GRUCell is "
                "the reset-after GRU; got reset_after=False"
            )
        kx = jnp.split(params.w_x, 3, axis=1)
        kh = jnp.split(params.w_h, 3, axis=1)
        bx = jnp.split(params.b_x, 3)
        bh = jnp.split(params.b_h, 3)
        tree = {
            "ir": {"kernel": kx[0], "bias": bx[0] + bh[0]},
            "iz": {"kernel": kx[1], "bias": bx[1] + bh[1]},
            "in": {"kernel": kx[2], "bias": bx[2]},
            "hr": {"kernel": kh[0]},
            "hz": {"kernel": kh[1]},
            "hn": {"kernel": kh[2], "bias": bh[2]},
        }
    elif isinstance(cell, ElmanCell):
        tree = {"i": {"kernel": params.w_x, "bias": params.b}, "h": {"kernel": params.w_h}}
    else:
        raise TypeError(
            f"params_to_linen: cell must be an LSTMCell, GRUCell or ElmanCell; got {type(cell)}"
        )
    return {"params": tree}


def carry_from_linen(cell, carry):
    """Flax's carry to seqjax's: LSTM ``(c, h)`` becomes ``LSTMCarry(h, c)``; others unchanged."""
    if isinstance(cell, LSTMCell):
        c, h = carry
        return LSTMCarry(h=h, c=c)
    return carry


def carry_to_linen(cell, carry):
    """seqjax's carry to Flax's: ``LSTMCarry(h, c)`` becomes ``(c, h)``; others unchanged."""
    if isinstance(cell, LSTMCell):
        return (carry.c, carry.h)
    return carry


def cell_from_linen(flax_cell: nn.Module, variables: Mapping[str, Any]):
    """The seqjax cell that computes what a Flax linen cell with these ``variables`` computes.

    ``nn.LSTMCell`` and ``nn.OptimizedLSTMCell`` become :class:`~seqjax.LSTMCell`,
    ``nn.GRUCell`` :class:`~seqjax.GRUCell` (reset-after), ``nn.SimpleCell`` (without
    ``residual``) :class:`~seqjax.ElmanCell` with the same activation. The input size is
    read from the variables (linen cells learn it at ``init``).

    Raises:
        TypeError: ``flax_cell`` is not one of those four.
        ValueError: its nonlinearities differ from the seqjax cell's (LSTM, GRU: sigmoid
            gates and tanh), a SimpleCell is residual, or the variables lack a kernel.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> flax_cell = nn.GRUCell(4)
        >>> variables = flax_cell.init(jax.random.key(0), jnp.zeros((4,)), jnp.ones((3,)))
        >>> cell_from_linen(flax_cell, variables)
        GRUCell(input_size=3, hidden_size=4, reset_after=True)
    """
    where = "cell_from_linen"
    tree = _inner(variables)
    if not isinstance(flax_cell, nn.LSTMCell | nn.OptimizedLSTMCell | nn.GRUCell | nn.SimpleCell):
        raise TypeError(
            f"{where}: flax_cell must be a linen LSTMCell, OptimizedLSTMCell, GRUCell or "
            f"SimpleCell; got {type(flax_cell)}"
        )
    # The first input kernel of each cell: its rows are the input size.
    first = {nn.SimpleCell: "i", nn.GRUCell: "ir"}.get(type(flax_cell), "ii")
    try:
        size_i = int(jnp.shape(tree[first]["kernel"])[0])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{where}: variables must hold {first}/kernel; got keys {_keys(tree)}"
        ) from err
    size_h = flax_cell.features
    cell: Cell
    if isinstance(flax_cell, nn.LSTMCell | nn.OptimizedLSTMCell):
        cell = LSTMCell(size_i, size_h)
    elif isinstance(flax_cell, nn.GRUCell):
        cell = GRUCell(size_i, size_h)
    else:
        if flax_cell.residual:
            raise ValueError(
                f"{where}: flax_cell must not be a residual SimpleCell (h' = f(x W_i + b + h W_h "
                "+ h)), which has no seqjax counterpart; got residual=True"
            )
        cell = ElmanCell(size_i, size_h, activation=flax_cell.activation_fn)
    common.flax_activation_check(
        cell, getattr(flax_cell, "gate_fn", None), flax_cell.activation_fn, where
    )
    return cell


# --------------------------------------------------------------------------- linen adapters


def wrap_params(layer, params: PyTree) -> dict[str, Any]:
    """seqjax ``params`` as the parameter dict of a :class:`Recurrent` / :class:`RecurrentCell`.

    Returns ``{"cell": {...}}``, the params' arrays (not copies) in nested dicts named by
    their fields, to place at the adapter's path in a linen ``params`` collection.

    Example:
        >>> import jax
        >>> from seqjax import GRUCell
        >>> cell = GRUCell(3, 4)
        >>> sorted(wrap_params(cell, cell.init(jax.random.key(0)))["cell"])
        ['b_h', 'b_x', 'w_h', 'w_x']
    """
    common.check_params(layer, params, "wrap_params")
    return {"cell": common.to_nested_dict(params)}


def unwrap_params(layer, tree: Mapping[str, Any]) -> PyTree:
    """Inverse of :func:`wrap_params`: an adapter's parameter dict (boxed or not) to ``params``."""
    return common.from_nested_dict(layer, _inner(tree)["cell"], "unwrap_params")


def _deterministic(layer, params: PyTree) -> PyTree:
    """``params`` with every regulariser switched to its deterministic form."""
    if common.has_noise(layer):
        return with_noise(layer, params, None, deterministic=True)
    return params


def _init_fn(layer, param_dtype, sharding):
    """The ``self.param`` initialiser: ``layer.init``, as nested dicts, specs boxed on."""

    def init(key):
        params = layer.init(key, param_dtype)
        specs = iter(common.sharding_for(params, sharding))

        def box(leaf, _):
            spec = next(specs)
            return leaf if spec is None else nn.Partitioned(leaf, names=spec)

        return common.to_nested_dict(params, box)

    return init


class Recurrent(nn.Module):
    """A linen module running a seqjax cell or sequence layer over a sequence.

    Holds the layer's parameters with ``self.param("cell", ...)``: one linen variable whose
    value is the params as nested dicts named by their fields (``cell/w_x``, ``cell/0/w_h``
    for a Stack's first layer); :func:`wrap_params` / :func:`unwrap_params` convert.
    ``__call__`` runs a cell with :func:`seqjax.unroll` and calls a sequence layer
    (:class:`~seqjax.Stack`, :class:`~seqjax.Bidirectional`) directly.

    :func:`seqjax.unroll`'s Python-valued options (``time_axis``, ``reverse``,
    ``truncate``, ``method``) are attributes, as in ``nn.RNN``, so that the call takes only
    arrays and Flax's lifted transforms can trace every argument: ``nn.remat(Recurrent)``
    rematerialises the whole layer in the backward pass, and ``nn.scan`` over *depth*
    (identical layers, ``variable_axes={"params": 0}``) works as for any linen module.
    Scanning this module over *time* would nest a scan inside a scan: for Flax's
    scan-over-time API use :class:`RecurrentCell` with ``nn.RNN``.

    Attributes:
        layer: a seqjax cell or sequence layer (hashable hyperparameters only).
        param_dtype: dtype of the parameters drawn at ``init``.
        sharding: optional partition specs: a pytree with the params' structure whose leaves
            are tuples of mesh axis names (or None), one per dimension. Leaves are boxed as
            ``nn.Partitioned``, read by ``nn.get_partition_spec``.
        time_axis: the axis of ``xs`` and ``ys`` that is time (``1`` for ``[B, T, I]``).
        reverse: run backwards, as :func:`seqjax.unroll`.
        truncate: truncated-BPTT window, as :func:`seqjax.unroll`.
        method: the evaluation method (:mod:`seqjax.methods`), as :func:`seqjax.unroll`.
        deterministic: run regularisers (variational dropout, zoneout) deterministically;
            set it here or in the call, not in both (``nn.merge_param``, as ``nn.Dropout``:
            both raise a ValueError). Otherwise
            their noise is drawn with :func:`seqjax.with_noise` from the ``"dropout"`` rng
            stream, once per call: one mask per sequence, the same at every step.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, unroll
        >>> cell = LSTMCell(3, 4)
        >>> rnn = Recurrent(cell, time_axis=1)
        >>> xs = jnp.ones((2, 5, 3))                                   # [B, T, I]
        >>> variables = rnn.init(jax.random.key(0), xs)
        >>> carry, ys = rnn.apply(variables, xs, lengths=jnp.array([5, 2]))
        >>> params = unwrap_params(cell, variables["params"])
        >>> raw = unroll(cell, params, xs, lengths=jnp.array([5, 2]), time_axis=1)[1]
        >>> bool((ys == raw).all())
        True
    """

    layer: Any
    param_dtype: Any = jnp.float32
    sharding: Any = None
    time_axis: int = 0
    reverse: bool = False
    truncate: int | None = None
    method: Any = None
    deterministic: bool | None = None

    def setup(self):
        tree = self.param("cell", _init_fn(self.layer, self.param_dtype, self.sharding))
        self.cell_params = common.from_nested_dict(self.layer, tree, "Recurrent")

    def __call__(
        self,
        xs: Array,
        carry: PyTree | None = None,
        lengths: Array | None = None,
        resets: Array | None = None,
        deterministic: bool | None = None,
    ) -> tuple[PyTree, Array]:
        """Run over ``xs`` ``[T, *B, I]`` (time on ``time_axis``); returns ``(carry, ys)``.

        ``carry`` (leaves ``[*B, H]``), ``lengths`` ``[*B]`` and ``resets`` ``[T, *B]`` are
        :func:`seqjax.unroll`'s; ``ys`` is ``[T, *B, O]`` in the layout of ``xs``.
        ``deterministic`` matters only for a layer with regularisers.
        """
        key = None
        if common.has_noise(self.layer):
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            key = None if deterministic else self.make_rng("dropout")
        return common.run(
            self.layer,
            self.cell_params,
            xs,
            carry,
            key=key,
            lengths=lengths,
            resets=resets,
            time_axis=self.time_axis,
            options=UnrollOptions(reverse=self.reverse, truncate=self.truncate, method=self.method),
            where="Recurrent",
        )

    def step(self, carry: PyTree, x: Array) -> tuple[PyTree, Array]:
        """One step of a cell (``cell.apply``) from ``x`` ``[*B, I]``; use with ``method=``.

        Regularisers run deterministically (no per-sequence masks exist for one step).
        """
        params = _deterministic(self.layer, self.cell_params)
        return common.step(self.layer, params, carry, x, "Recurrent.step")

    @nn.nowrap
    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = None) -> PyTree:
        """The layer's initial state, leaves ``[*B, H]`` (dtype: ``param_dtype`` by default)."""
        return self.layer.init_carry(batch_shape, self.param_dtype if dtype is None else dtype)


class RecurrentCell(nn.RNNCellBase):
    """One step of a seqjax cell behind linen's ``RNNCellBase`` interface (``nn.RNN``, ``nn.scan``).

    ``cell(carry, x) -> (carry, y)`` is ``cell.apply``; ``initialize_carry(rng, input_shape)``
    is ``cell.init_carry(input_shape[:-1], param_dtype)`` (inputs of another dtype need
    an ``initial_carry`` of theirs; the carry stays seqjax's, e.g.
    :class:`~seqjax.LSTMCarry` ``(h, c)``). Parameters as in :class:`Recurrent`. ``nn.RNN``
    projects the input inside its scan, step by step; :class:`Recurrent` lets
    :func:`seqjax.unroll` place the projection where the backend runs it fastest. A step
    sees no whole sequence to draw one dropout mask for, so regularisers run
    deterministically here: train a regularised cell with :class:`Recurrent`.

    Attributes:
        cell: a seqjax cell (or a Stack of cells).
        param_dtype: dtype of the parameters drawn at ``init``.
        sharding: as in :class:`Recurrent`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> from seqjax import GRUCell
        >>> rnn = nn.RNN(RecurrentCell(GRUCell(3, 4)))
        >>> xs = jnp.ones((2, 5, 3), jnp.float32)                      # [B, T, I]
        >>> variables = rnn.init(jax.random.key(0), xs)
        >>> rnn.apply(variables, xs).shape
        (2, 5, 4)
    """

    cell: Any
    param_dtype: Any = jnp.float32
    sharding: Any = None

    def setup(self):
        if not common.steps(self.cell):
            raise TypeError(
                f"RecurrentCell: cell must be a seqjax cell or a Stack of cells; got a "
                f"{type(self.cell).__name__}, which runs only over whole sequences (use "
                "Recurrent)"
            )
        tree = self.param("cell", _init_fn(self.cell, self.param_dtype, self.sharding))
        self.cell_params = common.from_nested_dict(self.cell, tree, "RecurrentCell")

    def __call__(self, carry: PyTree, inputs: Array) -> tuple[PyTree, Array]:
        params = _deterministic(self.cell, self.cell_params)
        return common.step(self.cell, params, carry, inputs, "RecurrentCell")

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]) -> PyTree:
        del rng  # seqjax's initial state is deterministic
        return self.cell.init_carry(tuple(input_shape[:-1]), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1

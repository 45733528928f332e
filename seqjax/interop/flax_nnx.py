"""seqjax cells and layers inside Flax NNX models, and exact conversion from Flax NNX's cells.

Two modules wrap any seqjax cell or sequence layer (a :class:`~seqjax.Stack`, a
:class:`~seqjax.Bidirectional`) without restating its math:

* :class:`Recurrent` runs it over a whole sequence (:func:`seqjax.unroll` for a cell, the
  layer's own ``__call__`` otherwise), with unroll's options. This is the one to use.
* :class:`RecurrentCell` is one step (``cell.apply``) behind Flax's ``RNNCellBase``
  interface, for code written around ``nnx.RNN``/``nnx.Bidirectional``.

Parameters are ordinary :class:`flax.nnx.Param` variables, one per array of the seqjax
params, held in the params' own NamedTuple structure: state paths read ``params/w_x``,
``params/0/w_h`` (layer 0 of a Stack), ``params/forward/b``. ``nnx.state``, ``nnx.split``
/``merge``, ``nnx.Optimizer``, ``nnx.grad``, ``nnx.jit`` and orbax see them like any other
Flax parameter. At call time the NamedTuple is rebuilt around the variables' arrays, which
under ``jit`` is bookkeeping at trace time only: the compiled program is the raw cell's.
Each variable may carry a sharding annotation (``sharding=``), Flax's ``out_sharding``
metadata, read by ``nnx.get_partition_spec``/``nnx.get_named_sharding``.

Converters between Flax NNX's ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` and
``SimpleCell`` and seqjax params (:func:`cell_from_nnx`, :func:`params_from_nnx`,
:func:`params_to_nnx`, :func:`carry_from_nnx`, :func:`carry_to_nnx`) are exact: Flax to
seqjax to Flax gives back the same arrays bit for bit. Flax's LSTM carry is ``(c, h)``,
seqjax's :class:`~seqjax.LSTMCarry` is ``(h, c)``. NNX's ``GRUCell`` has input biases for
r, z, n and *no* recurrent bias; seqjax's r/z recurrent biases fold into Flax's input biases
on export (the same function), and a nonzero recurrent candidate bias (``b_h``'s n block,
which sits inside ``r * (...)``) has no Flax counterpart, so exporting one raises.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from seqjax import LSTMCell, unroll
    >>> from seqjax.interop.flax_nnx import Recurrent
    >>> cell = LSTMCell(input_size=3, hidden_size=4)
    >>> rnn = Recurrent(cell, rngs=nnx.Rngs(0))
    >>> carry, ys = rnn(jnp.ones((2, 5, 3)), time_axis=1)          # [B, T, I] -> [B, T, H]
    >>> ys.shape
    (2, 5, 4)
    >>> _, ys_raw = unroll(cell, rnn.seqjax_params(), jnp.ones((2, 5, 3)), time_axis=1)
    >>> bool((ys == ys_raw).all())
    True
    >>> sorted(nnx.state(rnn, nnx.Param)["params"].keys())
    ['b', 'w_h', 'w_x']
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

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
from seqjax.methods import Method
from seqjax.unroll import UnrollOptions

__all__ = [
    "Recurrent",
    "RecurrentCell",
    "carry_from_nnx",
    "carry_to_nnx",
    "cell_from_nnx",
    "params_from_nnx",
    "params_to_nnx",
]


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _param_tree(layer, params, sharding, mesh, where: str):
    common.check_params(layer, params, where)
    specs = iter(common.sharding_for(params, sharding))

    def make(leaf):
        spec = next(specs)
        if spec is None:
            return nnx.Param(leaf)
        # with_partitioning writes the metadata key this Flax version reads (out_sharding).
        return nnx.Param(nnx.with_partitioning(lambda: leaf, spec, mesh)())

    return nnx.data(jax.tree.map(make, params))


class _Adapter(nnx.Module):
    """Shared state handling: ``self.layer`` (static) and ``self.params`` (``nnx.Param`` tree)."""

    def __init__(self, layer, params, rngs, param_dtype, sharding, mesh, where: str):
        if params is None and rngs is None:
            raise ValueError(
                f"{where}: pass rngs (to draw new parameters with layer.init) or params (to "
                "wrap existing ones); got neither"
            )
        self.layer = layer
        self.param_dtype = param_dtype
        if params is None:
            params = layer.init(rngs.params(), param_dtype)
        self.params = _param_tree(layer, params, sharding, mesh, where)

    def seqjax_params(self) -> PyTree:
        """The params as the layer's own pytree of arrays (the values, not copies)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

    def load_params(self, params: PyTree) -> None:
        """Overwrite every variable with ``params`` (the layer's pytree); metadata is kept."""
        common.check_params(self.layer, params, f"{type(self).__name__}.load_params")
        variables = jax.tree.leaves(self.params, is_leaf=_is_variable)
        for variable, value in zip(variables, jax.tree.leaves(params), strict=True):
            variable[...] = jnp.asarray(value, variable[...].dtype)

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = None) -> PyTree:
        """The layer's initial state, leaves ``[*B, H]`` (dtype: the parameters' by default)."""
        return self.layer.init_carry(batch_shape, self.param_dtype if dtype is None else dtype)


class Recurrent(_Adapter):
    """An NNX module running a seqjax cell or sequence layer over a sequence.

    Args:
        layer: a seqjax cell (run with :func:`seqjax.unroll`) or sequence layer
            (:class:`~seqjax.Stack`, :class:`~seqjax.Bidirectional`, called directly).
        rngs: draws new parameters with ``layer.init(rngs.params(), param_dtype)`` (unless
            ``params`` is given) and, for a layer with regularisers, keeps a fork of its
            ``dropout`` stream for their noise (as ``nnx.Dropout`` does).
        params: wrap these parameters instead of drawing new ones (the layer's pytree).
        param_dtype: dtype of newly drawn parameters and of the default carry.
        sharding: optional partition specs, a pytree with the params' structure whose leaves
            are tuples of mesh axis names (or None), one per dimension, e.g.
            ``LSTMParams(w_x=(None, "model"), w_h=(None, "model"), b=("model",))``. Stored
            as Flax's sharding metadata; as with ``nnx.with_partitioning``, Flax places
            each value on the mesh in context (or ``mesh``) when it is created.
        mesh: the mesh for ``sharding`` when none is set in context.
        deterministic: run regularisers (variational dropout, zoneout) deterministically;
            ``model.train()`` / ``model.eval()`` set it, as for ``nnx.Dropout``.

    Regularisers (:class:`~seqjax.VariationalDropoutCell`, :class:`~seqjax.ZoneoutCell`,
    anywhere in the layer) draw their noise with :func:`seqjax.with_noise` once per call,
    for the batch shape of ``xs``: one dropout mask per sequence, the same at every step.

    Attributes:
        layer: the wrapped layer (static: part of the graph definition).
        params: the parameters, ``nnx.Param`` leaves in the layer's params structure.
        deterministic: see above.
        rngs: the noise stream (None for a layer without regularisers).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from seqjax import GRUCell, Stack
        >>> rnn = Recurrent(Stack.build(GRUCell, 3, (8, 8), bidirectional=True), rngs=nnx.Rngs(0))
        >>> carry, ys = rnn(jnp.ones((6, 2, 3)), lengths=jnp.array([6, 3]))
        >>> ys.shape                                               # [T, B, 2H]
        (6, 2, 16)
    """

    def __init__(
        self,
        layer,
        *,
        rngs: nnx.Rngs | None = None,
        params: PyTree | None = None,
        param_dtype: Any = jnp.float32,
        sharding: PyTree | None = None,
        mesh: jax.sharding.Mesh | None = None,
        deterministic: bool = False,
    ):
        super().__init__(layer, params, rngs, param_dtype, sharding, mesh, "Recurrent")
        self.deterministic = deterministic
        noisy = common.has_noise(layer)
        self.rngs = rngs["dropout"].fork() if noisy and rngs is not None else nnx.data(None)

    def __call__(
        self,
        xs: Array,
        carry: PyTree | None = None,
        *,
        lengths: Array | None = None,
        resets: Array | None = None,
        reverse: bool = False,
        truncate: int | None = None,
        time_axis: int = 0,
        method: Method | str | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> tuple[PyTree, Array]:
        """Run over ``xs`` ``[T, *B, I]`` (time on ``time_axis``); returns ``(carry, ys)``.

        The sequence arguments are :func:`seqjax.unroll`'s, every one of them, forwarded to
        the layer; ``ys`` is ``[T, *B, O]`` in the layout of ``xs``. ``deterministic`` and
        ``rngs`` (an ``nnx.Rngs``, a stream or a key) override the module's for this call,
        as in ``nnx.Dropout``; they matter only for a layer with regularisers.
        """
        key = self._noise_key(deterministic, rngs)
        return common.run(
            self.layer,
            self.seqjax_params(),
            xs,
            carry,
            key=key,
            lengths=lengths,
            resets=resets,
            time_axis=time_axis,
            options=UnrollOptions(reverse=reverse, truncate=truncate, method=method),
            where="Recurrent",
        )

    def _noise_key(self, deterministic, rngs) -> jax.Array | None:
        if not common.has_noise(self.layer):
            return None
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic:
            return None
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            return rngs["dropout"]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if rngs is None:
            raise ValueError(
                "Recurrent: the layer has regularisers and deterministic is False, so it "
                "needs randomness: build the module with rngs=, pass rngs= to the call, or "
                "run deterministically (model.eval() or deterministic=True); got no rngs"
            )
        return rngs

    def step(self, carry: PyTree, x: Array) -> tuple[PyTree, Array]:
        """One step of a cell (``cell.apply``) from ``x`` ``[*B, I]``, for generation.

        Regularisers run deterministically (no per-sequence masks exist for one step).
        """
        params = self.seqjax_params()
        if common.has_noise(self.layer):
            params = with_noise(self.layer, params, None, deterministic=True)
        return common.step(self.layer, params, carry, x, "Recurrent.step")


class RecurrentCell(_Adapter, nnx.RNNCellBase):
    """One step of a seqjax cell behind Flax NNX's cell interface, for ``nnx.RNN``.

    ``cell(carry, x) -> (carry, y)`` is ``cell.apply``; ``initialize_carry(input_shape)``
    is ``cell.init_carry(input_shape[:-1], param_dtype)`` (inputs of another dtype need
    an ``initial_carry`` of theirs; the carry stays seqjax's, e.g.
    :class:`~seqjax.LSTMCarry` ``(h, c)``). Same arguments as :class:`Recurrent`.
    ``nnx.RNN`` computes the input projection inside its scan; :class:`Recurrent` lets
    :func:`seqjax.unroll` place it where the backend runs it fastest. A step sees no whole
    sequence to draw one dropout mask for, so regularisers run deterministically here:
    train a regularised cell with :class:`Recurrent`.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from seqjax import LSTMCell
        >>> rnn = nnx.RNN(RecurrentCell(LSTMCell(3, 4), rngs=nnx.Rngs(0)))
        >>> rnn(jnp.ones((2, 5, 3), jnp.float32)).shape          # batch-major, as nnx.RNN
        (2, 5, 4)
    """

    def __init__(
        self,
        cell,
        *,
        rngs: nnx.Rngs | None = None,
        params: PyTree | None = None,
        param_dtype: Any = jnp.float32,
        sharding: PyTree | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if not common.steps(cell):
            raise TypeError(
                f"RecurrentCell: cell must be a seqjax cell or a Stack of cells; got a "
                f"{type(cell).__name__}, which runs only over whole sequences (use Recurrent)"
            )
        super().__init__(cell, params, rngs, param_dtype, sharding, mesh, "RecurrentCell")

    def __call__(self, carry: PyTree, inputs: Array) -> tuple[PyTree, Array]:
        params = self.seqjax_params()
        if common.has_noise(self.layer):
            # One step cannot hold a per-sequence mask: regularisers run deterministically.
            params = with_noise(self.layer, params, None, deterministic=True)
        return common.step(self.layer, params, carry, inputs, "RecurrentCell")

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None) -> PyTree:
        if carry_init is not None:
            raise ValueError(
                "RecurrentCell.initialize_carry: carry_init must be None (the initial state is "
                "the cell's init_carry; pass initial_carry to nnx.RNN instead); got a carry_init"
            )
        return self.init_carry(tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        return 1


# --------------------------------------------------------------------------- Flax's own cells

_LSTM_GATES = ("ii", "if_", "ig", "io")
_LSTM_HIDDEN = ("hi", "hf", "hg", "ho")


def _read(variable) -> Array:
    return jnp.asarray(variable[...])


def cell_from_nnx(flax_cell: nnx.Module):
    """The seqjax cell that computes what a Flax NNX cell computes.

    ``nnx.LSTMCell`` and ``nnx.OptimizedLSTMCell`` become :class:`~seqjax.LSTMCell`,
    ``nnx.GRUCell`` :class:`~seqjax.GRUCell` (reset-after), ``nnx.SimpleCell`` (without
    ``residual``) :class:`~seqjax.ElmanCell` with the same activation.

    Raises:
        TypeError: ``flax_cell`` is not one of those four.
        ValueError: its nonlinearities are not the ones seqjax's cell computes (LSTM, GRU:
            sigmoid gates and tanh), or a SimpleCell is residual.
    """
    cell: Cell
    if isinstance(flax_cell, nnx.LSTMCell | nnx.OptimizedLSTMCell):
        cell = LSTMCell(flax_cell.in_features, flax_cell.hidden_features)
    elif isinstance(flax_cell, nnx.GRUCell):
        cell = GRUCell(flax_cell.in_features, flax_cell.hidden_features)
    elif isinstance(flax_cell, nnx.SimpleCell):
        if flax_cell.residual:
            raise ValueError(
                "cell_from_nnx: flax_cell must not be a residual SimpleCell (h' = f(x W_i + b + "
                "h W_h + h)), which has no seqjax counterpart; got residual=True"
            )
        cell = ElmanCell(
            flax_cell.in_features, flax_cell.hidden_features, activation=flax_cell.activation_fn
        )
    else:
        raise TypeError(
            "cell_from_nnx: flax_cell must be an nnx.LSTMCell, OptimizedLSTMCell, GRUCell or "
            f"SimpleCell; got {type(flax_cell)}"
        )
    common.flax_activation_check(
        cell,
        getattr(flax_cell, "gate_fn", None),
        flax_cell.activation_fn,
        "cell_from_nnx",
    )
    return cell


def _check_pair(cell, flax_cell, where: str) -> None:
    common.check_cell_type(cell, where)
    expected = type(cell_from_nnx(flax_cell))
    if not isinstance(cell, expected) or (cell.input_size, cell.hidden_size) != (
        flax_cell.in_features,
        flax_cell.hidden_features,
    ):
        raise ValueError(
            f"{where}: the Flax cell is a {type(flax_cell).__name__}({flax_cell.in_features}, "
            f"{flax_cell.hidden_features}), which converts to a {expected.__name__} of those "
            f"sizes; got {cell!r}"
        )


def params_from_nnx(cell, flax_cell: nnx.Module):
    """Read a Flax NNX cell's parameters as the params of the equivalent seqjax ``cell``.

    Args:
        cell: the seqjax cell (e.g. from :func:`cell_from_nnx`); sizes must match.
        flax_cell: an ``nnx.LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` or ``SimpleCell``.

    Returns:
        :class:`~seqjax.LSTMParams`, :class:`~seqjax.GRUParams` (recurrent biases zero, as
        Flax has none) or :class:`~seqjax.ElmanParams`; the two cells then compute the same
        function. Nothing is rounded: every seqjax array is a Flax array or a concatenation.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> flax_cell = nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
        >>> cell = cell_from_nnx(flax_cell)
        >>> params = params_from_nnx(cell, flax_cell)
        >>> h, x = jnp.zeros((2, 4)), jnp.ones((2, 3))
        >>> bool(jnp.allclose(cell.apply(params, h, x)[1], flax_cell(h, x)[1], atol=1e-6))
        True
    """
    where = "params_from_nnx"
    _check_pair(cell, flax_cell, where)
    if isinstance(flax_cell, nnx.LSTMCell):
        return LSTMParams(
            w_x=jnp.concatenate([_read(getattr(flax_cell, g).kernel) for g in _LSTM_GATES], 1),
            w_h=jnp.concatenate([_read(getattr(flax_cell, g).kernel) for g in _LSTM_HIDDEN], 1),
            b=jnp.concatenate([_read(getattr(flax_cell, g).bias) for g in _LSTM_HIDDEN]),
        )
    if isinstance(flax_cell, nnx.OptimizedLSTMCell):
        return LSTMParams(
            w_x=_read(flax_cell.dense_i.kernel),
            w_h=_read(flax_cell.dense_h.kernel),
            b=_read(flax_cell.dense_h.bias),
        )
    if isinstance(flax_cell, nnx.GRUCell):
        b_x = _read(flax_cell.dense_i.bias)
        return GRUParams(
            w_x=_read(flax_cell.dense_i.kernel),
            w_h=_read(flax_cell.dense_h.kernel),
            b_x=b_x,
            b_h=jnp.zeros_like(b_x),
        )
    simple = cast(nnx.SimpleCell, flax_cell)  # _check_pair admits only the four cells
    return ElmanParams(
        w_x=_read(simple.dense_i.kernel),
        w_h=_read(simple.dense_h.kernel),
        b=_read(simple.dense_i.bias),
    )


def params_to_nnx(cell, params, flax_cell: nnx.Module) -> nnx.Module:
    """Write seqjax ``params`` into a Flax NNX cell of the same sizes, in place; return it.

    Every shape is checked before anything is written. LSTM and Elman parameters map one to
    one (an ``nnx.LSTMCell`` gets them split per gate). A seqjax GRU's recurrent r and z
    biases are added to Flax's input biases (the same function, with one float rounding of
    the sum, exact when they are zero as after :func:`params_from_nnx`).

    Raises:
        ValueError: sizes differ; or a GRU's recurrent candidate bias ``b_h[2H:]`` is
            nonzero: it is multiplied by the reset gate, NNX's GRUCell has no such bias, and
            dropping it would change the function. (Flax linen's ``GRUCell`` has it: see
            :func:`seqjax.interop.flax_linen.params_to_linen`.)
        TypeError: GRU params are traced (under ``jit``), so that check cannot be made.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from seqjax import LSTMCell
        >>> cell = LSTMCell(3, 4)
        >>> params = cell.init(jax.random.key(0))
        >>> flax_cell = params_to_nnx(cell, params, nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0)))
        >>> carry = cell.init_carry((2,))
        >>> (c, h), y = flax_cell(carry_to_nnx(cell, carry), jnp.ones((2, 3)))
        >>> bool(jnp.allclose(y, cell.apply(params, carry, jnp.ones((2, 3)))[1], atol=1e-6))
        True
    """
    where = "params_to_nnx"
    _check_pair(cell, flax_cell, where)
    common.check_params(cell, params, where)
    size_h = cell.hidden_size
    writes: list[tuple[Any, Array]] = []
    if isinstance(flax_cell, nnx.LSTMCell):
        kx = jnp.split(params.w_x, 4, axis=1)
        kh = jnp.split(params.w_h, 4, axis=1)
        bias = jnp.split(params.b, 4)
        for g, k in zip(_LSTM_GATES, kx, strict=True):
            writes.append((getattr(flax_cell, g).kernel, k))
        for g, k, b in zip(_LSTM_HIDDEN, kh, bias, strict=True):
            writes += [(getattr(flax_cell, g).kernel, k), (getattr(flax_cell, g).bias, b)]
    elif isinstance(flax_cell, nnx.OptimizedLSTMCell):
        writes = [
            (flax_cell.dense_i.kernel, params.w_x),
            (flax_cell.dense_h.kernel, params.w_h),
            (flax_cell.dense_h.bias, params.b),
        ]
    elif isinstance(flax_cell, nnx.GRUCell):
        b_hn = params.b_h[2 * size_h :]
        if isinstance(b_hn, jax.core.Tracer):
            raise TypeError(
                "params_to_nnx: a GRU's recurrent candidate bias must be checked to be zero, "
                "which needs concrete params; call it outside jit (got traced params)"
            )
        if bool(jnp.any(b_hn != 0)):
            raise ValueError(
                "params_to_nnx: Flax NNX's GRUCell has no recurrent candidate bias (the "
                "b_h[2H:] block inside r * (h W_hn + b_hn)), so these params cannot be "
                f"expressed exactly; got nonzero values (max |b_hn| = "
                f"{float(jnp.max(jnp.abs(b_hn))):.3g}). Use Flax linen's GRUCell, which has "
                "it, or keep the seqjax GRUCell"
            )
        folded = params.b_x.at[: 2 * size_h].add(params.b_h[: 2 * size_h])
        writes = [
            (flax_cell.dense_i.kernel, params.w_x),
            (flax_cell.dense_i.bias, folded),
            (flax_cell.dense_h.kernel, params.w_h),
        ]
    else:
        simple = cast(nnx.SimpleCell, flax_cell)  # _check_pair admits only the four cells
        writes = [
            (simple.dense_i.kernel, params.w_x),
            (simple.dense_i.bias, params.b),
            (simple.dense_h.kernel, params.w_h),
        ]
    for variable, value in writes:
        common.check_shape(value, variable[...].shape, "a parameter", where)
    for variable, value in writes:
        variable[...] = jnp.asarray(value, variable[...].dtype)
    return flax_cell


def carry_from_nnx(cell, carry) -> PyTree:
    """Flax's carry to seqjax's: LSTM ``(c, h)`` becomes ``LSTMCarry(h, c)``; others unchanged."""
    if isinstance(cell, LSTMCell):
        c, h = carry
        return LSTMCarry(h=h, c=c)
    return carry


def carry_to_nnx(cell, carry) -> PyTree:
    """seqjax's carry to Flax's: ``LSTMCarry(h, c)`` becomes ``(c, h)``; others unchanged."""
    if isinstance(cell, LSTMCell):
        return (carry.c, carry.h)
    return carry

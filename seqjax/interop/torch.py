"""PyTorch weights and states for seqjax models: ``state_dict`` import and export.

Converts between seqjax parameters and the weights of ``torch.nn.RNN``, ``nn.LSTM`` and
``nn.GRU`` (and of ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``, whose keys are the
single-cell ones below), and between seqjax carries and PyTorch's ``h_0``/``c_0``. It never
imports PyTorch: arrays come in as NumPy arrays (or torch tensors, read through
``.detach().cpu()``) and weights go out as NumPy arrays. It only transposes, stacks and sums;
the math lives in the cells.

Correspondence (``G`` is the gate width: ``H`` Elman, ``4H`` LSTM, ``3H`` GRU; gate blocks
are in the same order on both sides, LSTM i, f, g, o and GRU r, z, n):

* ``ElmanCell`` with ``jnp.tanh`` / ``jax.nn.relu``: ``nn.RNN(nonlinearity='tanh' / 'relu')``;
  ``LSTMCell``: ``nn.LSTM`` without ``proj_size``; ``GRUCell(reset_after=True)``: ``nn.GRU``;
  ``LSTMProjCell(I, hidden_size=P, cell_size=C)``: ``nn.LSTM(I, hidden_size=C, proj_size=P)``
  (seqjax's ``hidden_size`` is always the size of ``h``, which the projection makes ``P``).
* A cell is a 1-layer unidirectional module; ``Bidirectional(cell, cell)`` a 1-layer module
  with ``bidirectional=True``; a ``Stack`` of either a multi-layer module, layer ``k`` being
  the keys ending ``_l{k}`` and its backward direction ``_l{k}_reverse``.
* ``w_x [I, G]`` and ``w_h [H, G]`` are ``weight_ih [G, I]`` and ``weight_hh [G, H]``
  transposed. Elman and LSTM cells have one bias ``b = bias_ih + bias_hh`` and export
  ``bias_ih = b, bias_hh = 0``; a GRU's ``b_x, b_h`` are ``bias_ih, bias_hh``.
* A carry (an array ``h`` or an ``LSTMCarry(h, c)`` per cell) is ``h_0`` / ``(h_0, c_0)``
  ``[L * D, *B, H]`` (``L`` layers, ``D`` directions), entry ``layer * D + direction``.
* With a projection, ``w_h [P, 4C]`` is ``weight_hh [4C, P]`` transposed, the extra
  ``w_r [C, P]`` is ``weight_hr [P, C]`` transposed, and ``h_0`` is ``[L * D, *B, P]`` while
  ``c_0`` is ``[L * D, *B, C]``.

Exporting and importing back gives bit-identical parameters. Importing and exporting PyTorch
weights gives the same function (Elman and LSTM biases come back summed into ``bias_ih``).
A PyTorch module built with ``bias=False`` has no bias keys; they import as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax._types import Array, PyTree
from seqjax.cells import (
    ElmanCell,
    ElmanParams,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    LSTMParams,
    LSTMProjCell,
    LSTMProjParams,
)
from seqjax.layers import Bidirectional, BidirectionalCarry, BidirectionalParams, Stack

__all__ = [
    "carry_from_torch",
    "carry_to_torch",
    "cell_params_from_torch",
    "cell_params_to_torch",
    "params_from_torch",
    "params_to_torch",
]

_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_MODULES = {
    "RNN_TANH": "nn.RNN(nonlinearity='tanh')",
    "RNN_RELU": "nn.RNN(nonlinearity='relu')",
    "LSTM": "nn.LSTM",
    "GRU": "nn.GRU",
}


def _torch_mode(cell, where: str) -> str:
    """PyTorch's name for the recurrence of ``cell``, or an error if it has none."""
    if isinstance(cell, ElmanCell):
        if cell.activation is jnp.tanh:
            return "RNN_TANH"
        if cell.activation is jax.nn.relu:
            return "RNN_RELU"
        raise ValueError(
            f"{where}: nn.RNN supports only the activations jnp.tanh ('tanh') and jax.nn.relu "
            f"('relu'); got an ElmanCell with activation {cell.activation!r}"
        )
    if isinstance(cell, LSTMProjCell) and cell.hidden_size >= cell.cell_size:
        raise ValueError(
            f"{where}: nn.LSTM needs proj_size < hidden_size, i.e. an LSTMProjCell with "
            f"hidden_size < cell_size; got hidden_size={cell.hidden_size}, "
            f"cell_size={cell.cell_size}"
        )
    if isinstance(cell, LSTMCell | LSTMProjCell):
        return "LSTM"
    if isinstance(cell, GRUCell):
        if not cell.reset_after:
            raise ValueError(
                f"{where}: cell must be a GRUCell(reset_after=True): PyTorch's GRU applies the "
                "reset gate after the recurrent matmul, r * (h W_hn + b_hn), and reset_after="
                "False computes (r * h) W_hn + b_hn, a different function, so no weights map "
                "between them; got GRUCell(reset_after=False)"
            )
        return "GRU"
    raise TypeError(
        f"{where}: expected an ElmanCell, LSTMCell, LSTMProjCell or GRUCell; got "
        f"{type(cell).__name__}"
    )


def _layout(model, where: str) -> tuple[tuple[Any, ...], ...]:
    """The cells of ``model`` as PyTorch orders them: per layer, forward then backward."""
    layers = model.layers if isinstance(model, Stack) else (model,)
    layout: list[tuple[Any, ...]] = []
    for layer in layers:
        if isinstance(layer, Bidirectional):
            layout.append((layer.forward, layer.backward))
        elif isinstance(layer, ElmanCell | LSTMCell | LSTMProjCell | GRUCell):
            layout.append((layer,))
        else:
            raise TypeError(
                f"{where}: model must be a cell, a Bidirectional pair of cells or a Stack of "
                f"either (what a PyTorch RNN/LSTM/GRU matches); got {type(layer).__name__}"
                + (" inside a Stack" if layer is not model else "")
            )
    cells = [cell for pair in layout for cell in pair]
    modes = {_torch_mode(cell, where) + ("+proj" if _proj(cell) else "") for cell in cells}
    directions = {len(pair) for pair in layout}
    hidden_sizes = {cell.hidden_size for cell in cells}
    cell_sizes = {cell.cell_size for cell in cells if _proj(cell)}  # PyTorch's hidden_size
    if len(modes) > 1 or len(directions) > 1 or len(hidden_sizes) > 1 or len(cell_sizes) > 1:
        raise ValueError(
            f"{where}: model must have one kind of cell, one hidden_size and either every "
            f"layer bidirectional or none, as a PyTorch module has; got cells {sorted(modes)}, "
            "hidden sizes "
            f"{sorted(hidden_sizes)} and {sorted(directions)} directions per layer"
            + (f" (LSTMProjCell cell_size {sorted(cell_sizes)})" if cell_sizes else "")
        )
    return tuple(layout)


def _proj(cell) -> bool:
    """Whether ``cell`` is an LSTM with a projection (PyTorch's ``proj_size``)."""
    return isinstance(cell, LSTMProjCell)


def _keys(cell) -> tuple[str, ...]:
    return (*_KEYS, "weight_hr") if _proj(cell) else _KEYS


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def _from_tensor(value):
    """A torch tensor as a NumPy array (read without importing torch); anything else as is.
    NumPy has no bfloat16 of its own: such a tensor goes through float32 (exact) to
    ``ml_dtypes``' bfloat16, JAX's."""
    if not hasattr(value, "detach"):
        return value
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
        return np.asarray(value.float()).astype(jnp.bfloat16)
    return np.asarray(value)


def _shapes(cell, mode: str) -> dict[str, tuple[int, ...]]:
    """The seqjax params shapes of ``cell``, by field name."""
    width = cell.cell_size if _proj(cell) else cell.hidden_size
    gates = _GATES[mode] * width
    Shapes = dict[str, tuple[int, ...]]
    weights: Shapes = {"w_x": (cell.input_size, gates), "w_h": (cell.hidden_size, gates)}
    biases: Shapes = {"b_x": (gates,), "b_h": (gates,)} if mode == "GRU" else {"b": (gates,)}
    projection: Shapes = {"w_r": (width, cell.hidden_size)} if _proj(cell) else {}
    return weights | biases | projection


_PARAMS_TYPES = {
    "RNN_TANH": ElmanParams,
    "RNN_RELU": ElmanParams,
    "LSTM": LSTMParams,
    "GRU": GRUParams,
}


def _params_type(cell, mode: str):
    return LSTMProjParams if _proj(cell) else _PARAMS_TYPES[mode]


def _describe(cell) -> str:
    """``LSTMCell(3, 5)``: the cell without the long repr of an activation function."""
    if _proj(cell):
        return f"LSTMProjCell({cell.input_size}, {cell.hidden_size}, cell_size={cell.cell_size})"
    return f"{type(cell).__name__}({cell.input_size}, {cell.hidden_size})"


def _cell_from_torch(cell, arrays: dict[str, Any], suffix: str, where: str) -> PyTree:
    """Params for ``cell`` from the four (five, with a projection) PyTorch arrays (biases may
    be None)."""
    mode = _torch_mode(cell, where)
    shapes = _shapes(cell, mode)
    torch_shapes = {
        "weight_ih": shapes["w_x"][::-1],
        "weight_hh": shapes["w_h"][::-1],
        "bias_ih": shapes["w_x"][1:],
        "bias_hh": shapes["w_x"][1:],
    }
    letters = {"weight_ih": "[G, I]", "weight_hh": "[G, H]", "bias_ih": "[G]", "bias_hh": "[G]"}
    gate_width = f"{_GATES[mode]}H" if _GATES[mode] > 1 else "H"
    if _proj(cell):
        torch_shapes["weight_hr"] = shapes["w_r"][::-1]
        letters |= {"weight_hh": "[G, P]", "weight_hr": "[P, C]"}
        gate_width = "4C"
    arrays = {key: None if a is None else np.asarray(_from_tensor(a)) for key, a in arrays.items()}
    dtype = arrays["weight_ih"].dtype
    for key, array in arrays.items():
        if array is None:
            continue
        if array.shape != torch_shapes[key]:
            raise ValueError(
                f"{where}: {key}{suffix} must have shape {torch_shapes[key]} ({letters[key]}, "
                f"G = {gate_width}, for {_describe(cell)}); got shape {array.shape}"
            )
        if not jnp.issubdtype(array.dtype, jnp.floating):  # bfloat16 included
            raise TypeError(f"{where}: {key}{suffix} must be floating; got dtype {array.dtype}")
        if array.dtype != dtype:
            raise TypeError(
                f"{where}: {key}{suffix} must have the dtype of weight_ih{suffix}, {dtype}; "
                f"got dtype {array.dtype}"
            )
    zeros = np.zeros(torch_shapes["bias_ih"], dtype)
    bias_ih = zeros if arrays["bias_ih"] is None else arrays["bias_ih"]
    bias_hh = zeros if arrays["bias_hh"] is None else arrays["bias_hh"]
    w_x, w_h = jnp.asarray(arrays["weight_ih"].T), jnp.asarray(arrays["weight_hh"].T)
    if mode == "GRU":
        return GRUParams(w_x=w_x, w_h=w_h, b_x=jnp.asarray(bias_ih), b_h=jnp.asarray(bias_hh))
    # An all-zero bias_hh (what export writes) is skipped rather than added, so that an
    # export-import round trip keeps every bit, the sign of zero included.
    b = bias_ih + bias_hh if bias_hh.any() else bias_ih
    if _proj(cell):
        w_r = jnp.asarray(arrays["weight_hr"].T)
        return LSTMProjParams(w_x=w_x, w_h=w_h, b=jnp.asarray(b), w_r=w_r)
    return _PARAMS_TYPES[mode](w_x=w_x, w_h=w_h, b=jnp.asarray(b))


def _cell_to_torch(cell, params, suffix: str, where: str) -> dict[str, np.ndarray]:
    """The four (five) PyTorch arrays, keyed with ``suffix``, for ``cell``'s ``params``."""
    mode = _torch_mode(cell, where)
    params_type = _params_type(cell, mode)
    if not isinstance(params, params_type):
        raise TypeError(
            f"{where}: params{suffix} for {_describe(cell)} must be a {params_type.__name__}; "
            f"got {type(params).__name__}"
        )
    for name, shape in _shapes(cell, mode).items():
        if np.shape(getattr(params, name)) != shape:
            raise ValueError(
                f"{where}: params{suffix}.{name} must have shape {shape} for {_describe(cell)}; "
                f"got shape {np.shape(getattr(params, name))}"
            )
    # Fresh C-ordered copies: writable (torch.from_numpy warns on the read-only views of
    # JAX arrays) and owned by the caller.
    if mode == "GRU":
        bias_ih, bias_hh = np.array(params.b_x), np.array(params.b_h)
    else:
        bias_ih = np.array(params.b)
        bias_hh = np.zeros_like(bias_ih)
    arrays = {
        "weight_ih": np.array(np.asarray(params.w_x).T, order="C"),
        "weight_hh": np.array(np.asarray(params.w_h).T, order="C"),
        "bias_ih": bias_ih,
        "bias_hh": bias_hh,
    }
    if _proj(cell):
        arrays["weight_hr"] = np.array(np.asarray(params.w_r).T, order="C")
    return {key + suffix: array for key, array in arrays.items()}


def cell_params_from_torch(
    cell, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None
) -> PyTree:
    """Params for one cell from PyTorch's weights (e.g. of ``nn.LSTMCell``).

    Args:
        cell: an :class:`~seqjax.ElmanCell` (``jnp.tanh`` or ``jax.nn.relu``), an
            :class:`~seqjax.LSTMCell` or a :class:`~seqjax.GRUCell` with ``reset_after=True``.
        weight_ih: ``[G, I]`` input weights, ``G`` the gate width (``H``, ``4H``, ``3H``).
        weight_hh: ``[G, H]`` recurrent weights.
        bias_ih: ``[G]`` input bias; zeros when None (PyTorch's ``bias=False``).
        bias_hh: ``[G]`` recurrent bias; zeros when None.
        weight_hr: ``[P, C]`` projection of an :class:`~seqjax.LSTMProjCell` (``P`` its
            ``hidden_size``, ``C`` its ``cell_size``; ``G = 4C`` and ``weight_hh`` is
            ``[4C, P]``); required for that cell, None for every other.

    All are NumPy arrays (or torch tensors) of one floating dtype, which the params keep.

    Returns:
        The cell's params (``ElmanParams``, ``LSTMParams``, ``LSTMProjParams`` or
        ``GRUParams``). Elman and LSTM params get ``b = bias_ih + bias_hh``; GRU params keep
        the two biases apart.

    Raises:
        TypeError: ``cell`` is not one of those cells, or a dtype differs or is not floating.
        ValueError: a shape does not match the cell, or the cell has no PyTorch counterpart
            (another Elman activation; ``GRUCell(reset_after=False)``).

    Example:
        >>> import numpy as np
        >>> from seqjax import LSTMCell
        >>> cell = LSTMCell(input_size=3, hidden_size=2)
        >>> rng = np.random.default_rng(0)
        >>> weight_ih = rng.standard_normal((8, 3)).astype(np.float32)      # [4H, I]
        >>> weight_hh = rng.standard_normal((8, 2)).astype(np.float32)      # [4H, H]
        >>> bias = np.ones(8, np.float32)
        >>> params = cell_params_from_torch(cell, weight_ih, weight_hh, bias, bias)
        >>> params.w_x.shape, params.w_h.shape, params.b.tolist() == [2.0] * 8
        ((3, 8), (2, 8), True)
    """
    arrays = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    if _proj(cell):
        arrays["weight_hr"] = weight_hr
    elif weight_hr is not None:
        raise ValueError(
            "cell_params_from_torch: weight_hr is the projection of an LSTMProjCell; got one "
            f"for {type(cell).__name__}"
        )
    for key in ("weight_ih", "weight_hh", "weight_hr"):
        if key in arrays and arrays[key] is None:
            raise ValueError(f"cell_params_from_torch: {key} is required; got None")
    return _cell_from_torch(cell, arrays, "", "cell_params_from_torch")


def cell_params_to_torch(cell, params: PyTree) -> dict[str, np.ndarray]:
    """PyTorch's weights for one cell: the inverse of :func:`cell_params_from_torch`.

    Args:
        cell: a cell as for :func:`cell_params_from_torch`.
        params: its params (``w_x [I, G]``, ``w_h [H, G]``, biases ``[G]``).

    Returns:
        ``{"weight_ih": [G, I], "weight_hh": [G, H], "bias_ih": [G], "bias_hh": [G]}`` as
        NumPy arrays of the params' dtype, loadable into ``nn.RNNCell`` / ``nn.LSTMCell`` /
        ``nn.GRUCell``. Elman and LSTM cells export ``bias_ih = b`` and ``bias_hh = 0``. An
        :class:`~seqjax.LSTMProjCell` adds ``"weight_hr": [P, C]`` (PyTorch has no
        single-cell module with a projection; these are the ``nn.LSTM`` arrays unsuffixed).

    Raises:
        TypeError: ``cell`` is unsupported or ``params`` is not its params type.
        ValueError: a params shape does not match the cell, or the cell has no PyTorch
            counterpart.

    Example:
        >>> import jax
        >>> from seqjax import GRUCell
        >>> cell = GRUCell(input_size=3, hidden_size=2)
        >>> weights = cell_params_to_torch(cell, cell.init(jax.random.key(0)))
        >>> {key: value.shape for key, value in weights.items()}
        {'weight_ih': (6, 3), 'weight_hh': (6, 2), 'bias_ih': (6,), 'bias_hh': (6,)}
    """
    return _cell_to_torch(cell, params, "", "cell_params_to_torch")


def params_from_torch(model, state_dict: dict[str, Any]) -> PyTree:
    """Params for ``model`` from the ``state_dict`` of a PyTorch ``nn.RNN/LSTM/GRU``.

    Args:
        model: a cell (a 1-layer unidirectional module), a :class:`~seqjax.Bidirectional`
            pair of cells (1 layer, ``bidirectional=True``) or a :class:`~seqjax.Stack` of
            either (``num_layers = len(model.layers)``). Every cell must be the same kind
            with the same ``hidden_size``, as in PyTorch.
        state_dict: ``{"weight_ih_l{k}[_reverse]": [G, I_k], "weight_hh_l{k}[_reverse]":
            [G, H], "bias_ih_l{k}[_reverse]": [G], "bias_hh_l{k}[_reverse]": [G]}`` with NumPy
            arrays or torch tensors; the biases may all be absent (``bias=False``). Strip any
            module prefix (``"encoder.rnn."``) from the keys first. An ``nn.LSTM`` with
            ``proj_size`` adds ``"weight_hr_l{k}[_reverse]": [P, C]`` and matches
            :class:`~seqjax.LSTMProjCell` layers (``hidden_size = P``, ``cell_size = C``).

    Returns:
        Params in the model's structure: the cell's params, ``BidirectionalParams`` or a
        tuple with one entry per layer.

    Raises:
        TypeError: the model is not one of those, or a dtype is wrong.
        ValueError: keys are missing or unexpected (e.g. ``weight_hr_l0`` from LSTM
            ``proj_size`` read into an :class:`~seqjax.LSTMCell`: use
            :class:`~seqjax.LSTMProjCell` for it), a shape is wrong, or the model has no
            PyTorch counterpart.

    Example:
        >>> import numpy as np
        >>> from seqjax import ElmanCell, Stack
        >>> model = Stack.build(ElmanCell, input_size=3, hidden_sizes=(2, 2))
        >>> shapes = {"weight_ih_l0": (2, 3), "weight_hh_l0": (2, 2),
        ...           "weight_ih_l1": (2, 2), "weight_hh_l1": (2, 2)}   # bias=False
        >>> state_dict = {key: np.ones(shape, np.float32) for key, shape in shapes.items()}
        >>> params = params_from_torch(model, state_dict)
        >>> len(params), params[1].w_x.shape, params[1].b.tolist()
        (2, (2, 2), [0.0, 0.0])
    """
    where = "params_from_torch"
    if not isinstance(state_dict, Mapping):
        hint = " (pass module.state_dict())" if hasattr(state_dict, "state_dict") else ""
        raise TypeError(
            f"{where}: state_dict must be a mapping of names to arrays{hint}; "
            f"got {type(state_dict).__name__}"
        )
    layout = _layout(model, where)
    expected = [
        key + _suffix(layer, direction)
        for layer, cells in enumerate(layout)
        for direction in range(len(cells))
        for key in _keys(cells[0])
    ]
    has_bias = any(key.startswith("bias_") for key in state_dict)
    missing = [key for key in expected if key not in state_dict and (has_bias or "weight" in key)]
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        module = _MODULES[_torch_mode(layout[0][0], where)]
        raise ValueError(
            f"{where}: state_dict must hold the keys of {module} with num_layers={len(layout)}, "
            f"bidirectional={len(layout[0]) == 2}; got missing keys {missing}, unexpected keys "
            f"{unexpected} (strip any module prefix such as 'rnn.' from the keys first; "
            "an nn.LSTM with proj_size, whose weights include weight_hr_l*, matches "
            "LSTMProjCell layers)"
        )
    params = []
    for layer, cells in enumerate(layout):
        directions = []
        for direction, cell in enumerate(cells):
            suffix = _suffix(layer, direction)
            arrays = {key: state_dict.get(key + suffix) for key in _keys(cell)}
            directions.append(_cell_from_torch(cell, arrays, suffix, where))
        params.append(BidirectionalParams(*directions) if len(cells) == 2 else directions[0])
    return tuple(params) if isinstance(model, Stack) else params[0]


def params_to_torch(model, params: PyTree) -> dict[str, np.ndarray]:
    """The ``state_dict`` of the PyTorch module equivalent to ``model`` with ``params``.

    Args:
        model: a model as for :func:`params_from_torch`.
        params: its params.

    Returns:
        ``{"weight_ih_l0": ..., ...}``, NumPy arrays of the params' dtype, for a module
        with ``bias=True``: ``module.load_state_dict({k: torch.from_numpy(v) for k, v in
        state_dict.items()})``. :func:`params_from_torch` gives back bit-identical params.
        bfloat16 arrays (``ml_dtypes``) are not read by ``torch.from_numpy``:
        ``torch.from_numpy(v.astype(np.float32)).bfloat16()`` is exact.

    Raises:
        TypeError: the model is unsupported or params do not have its structure.
        ValueError: a params shape does not match, or the model has no PyTorch counterpart.

    Example:
        >>> import jax
        >>> from seqjax import Bidirectional, LSTMCell
        >>> model = Bidirectional(LSTMCell(3, 2), LSTMCell(3, 2))
        >>> state_dict = params_to_torch(model, model.init(jax.random.key(0)))
        >>> sorted(state_dict)[:4]
        ['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_ih_l0', 'bias_ih_l0_reverse']
        >>> state_dict["weight_hh_l0_reverse"].shape                    # [4H, H]
        (8, 2)
    """
    where = "params_to_torch"
    layout = _layout(model, where)
    layer_params = _per_layer(model, layout, params, "params", where)
    state_dict = {}
    for layer, (cells, p) in enumerate(zip(layout, layer_params, strict=True)):
        directions = _per_direction(cells, p, BidirectionalParams, f"params[{layer}]", where)
        for direction, (cell, cell_params) in enumerate(zip(cells, directions, strict=True)):
            state_dict.update(_cell_to_torch(cell, cell_params, _suffix(layer, direction), where))
    return state_dict


def _per_layer(model, layout, tree, name: str, where: str) -> tuple:
    if not isinstance(model, Stack):
        return (tree,)
    if not isinstance(tree, tuple | list) or len(tree) != len(layout):
        raise TypeError(
            f"{where}: {name} for a {len(layout)}-layer Stack must be a tuple of "
            f"{len(layout)} entries; got {type(tree).__name__}"
            + (f" of {len(tree)}" if isinstance(tree, tuple | list) else "")
        )
    return tuple(tree)


def _per_direction(cells, tree, pair_type, name: str, where: str) -> tuple:
    if len(cells) == 1:
        return (tree,)
    if not isinstance(tree, pair_type):
        raise TypeError(
            f"{where}: {name} of a Bidirectional layer must be a {pair_type.__name__}; "
            f"got {type(tree).__name__}"
        )
    return tuple(tree)


def _state(name: str, value, layout, where: str, size: int | None = None) -> Array:
    """``value`` as ``[L * D, *B, size]``; ``size`` is the cells' ``hidden_size`` by default."""
    value = jnp.asarray(_from_tensor(value))
    count = len(layout) * len(layout[0])
    hidden = layout[0][0].hidden_size if size is None else size
    letter = "H" if size is None else "C"
    if value.ndim < 2 or value.shape[0] != count or value.shape[-1] != hidden:
        raise ValueError(
            f"{where}: {name} must have shape [L * D, *B, {letter}] = [{count}, *B, {hidden}] "
            f"({len(layout)} layers, {len(layout[0])} directions); got shape {value.shape}"
        )
    return value


def carry_from_torch(model, h0, c0=None) -> PyTree:
    """The seqjax carry for ``model`` from PyTorch's initial state ``h_0`` (and ``c_0``).

    Traceable (under ``jit`` and ``grad``) when given JAX arrays.

    Args:
        model: a model as for :func:`params_from_torch`.
        h0: ``[L * D, *B, H]`` (``L`` layers, ``D`` directions), entry ``layer * D +
            direction``, as PyTorch lays out ``h_0`` (batch-major modules included).
        c0: ``[L * D, *B, H]``, the LSTM cell state; required for LSTMs, None otherwise.
            With :class:`~seqjax.LSTMProjCell` layers ``h0`` is ``[L * D, *B, P]`` and
            ``c0`` ``[L * D, *B, C]`` (``P`` their ``hidden_size``, ``C`` their
            ``cell_size``).

    Returns:
        The carry in the model's structure: per cell an array ``[*B, H]`` or an
        ``LSTMCarry(h, c)``; ``BidirectionalCarry`` pairs; a tuple per layer for a Stack.

    Raises:
        ValueError: a shape is wrong, or ``c0`` is missing for an LSTM or given otherwise.

    Example:
        >>> import numpy as np
        >>> from seqjax import GRUCell, Stack
        >>> model = Stack.build(GRUCell, input_size=3, hidden_sizes=(2, 2), bidirectional=True)
        >>> h0 = np.arange(16, dtype=np.float32).reshape(4, 2, 2)    # [L * D, B, H]
        >>> carry = carry_from_torch(model, h0)
        >>> carry[1].backward.tolist()                               # h0[1 * 2 + 1]
        [[12.0, 13.0], [14.0, 15.0]]
    """
    where = "carry_from_torch"
    layout = _layout(model, where)
    lstm = isinstance(layout[0][0], LSTMCell | LSTMProjCell)
    h0 = _state("h0", h0, layout, where)
    if lstm and c0 is None:
        raise ValueError(f"{where}: an LSTM state needs c0 as well as h0; got c0=None")
    if not lstm and c0 is not None:
        raise ValueError(
            f"{where}: c0 is the LSTM cell state; got one for {_describe(layout[0][0])}"
        )
    if lstm and _proj(layout[0][0]):  # c0 is [L * D, *B, C], h0 [L * D, *B, P]
        c0 = _state("c0", c0, layout, where, size=layout[0][0].cell_size)
        if c0.shape[:-1] != h0.shape[:-1]:
            raise ValueError(
                f"{where}: c0 must have the shape of h0 but for its last axis (C), "
                f"{h0.shape[:-1]} + (C,); got shape {c0.shape}"
            )
    elif lstm:
        c0 = _state("c0", c0, layout, where)
        if c0.shape != h0.shape:
            raise ValueError(
                f"{where}: c0 must have the shape of h0, {h0.shape}; got shape {c0.shape}"
            )
    num_directions = len(layout[0])
    carries = []
    for layer in range(len(layout)):
        index = [layer * num_directions + direction for direction in range(num_directions)]
        directions = [LSTMCarry(h0[i], c0[i]) if lstm else h0[i] for i in index]
        carries.append(BidirectionalCarry(*directions) if num_directions == 2 else directions[0])
    return tuple(carries) if isinstance(model, Stack) else carries[0]


def carry_to_torch(model, carry: PyTree) -> Array | tuple[Array, Array]:
    """PyTorch's ``h_n`` (and ``c_n``) from a seqjax carry: the inverse of :func:`carry_from_torch`.

    Traceable (under ``jit`` and ``grad``); returns JAX arrays (``torch.from_numpy(np.array(
    h_n))`` makes a tensor of one).

    Args:
        model: a model as for :func:`params_from_torch`.
        carry: its carry, e.g. the final carry from running it.

    Returns:
        ``h_n`` ``[L * D, *B, H]``, or ``(h_n, c_n)`` for an LSTM.

    Raises:
        TypeError: the model is unsupported or the carry does not have its structure.

    Example:
        >>> from seqjax import LSTMCell, Stack
        >>> model = Stack.build(LSTMCell, input_size=3, hidden_sizes=(2, 2, 2))
        >>> h_n, c_n = carry_to_torch(model, model.init_carry((5,)))
        >>> h_n.shape, c_n.shape                                      # [L * D, B, H]
        ((3, 5, 2), (3, 5, 2))
    """
    where = "carry_to_torch"
    layout = _layout(model, where)
    layer_carries = _per_layer(model, layout, carry, "carry", where)
    states: list[Any] = []
    for layer, (cells, c) in enumerate(zip(layout, layer_carries, strict=True)):
        states.extend(_per_direction(cells, c, BidirectionalCarry, f"carry[{layer}]", where))
    if not isinstance(layout[0][0], LSTMCell | LSTMProjCell):
        return jnp.stack(states)
    if not all(isinstance(state, LSTMCarry) for state in states):
        raise TypeError(
            f"{where}: each LSTM carry must be an LSTMCarry(h, c); got "
            f"{[type(state).__name__ for state in states]}"
        )
    return jnp.stack([s.h for s in states]), jnp.stack([s.c for s in states])

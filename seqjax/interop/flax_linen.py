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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells import ElmanCell, ElmanParams, GRUCell, GRUParams, LSTMCarry, LSTMCell, LSTMParams

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def _inner(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    return variables["params"] if "params" in variables else variables


def _kernel(tree, name: str, shape: tuple[int, int]) -> jax.Array:
    try:
        kernel = jnp.asarray(tree[name]["kernel"])
    except KeyError as err:
        raise ValueError(f"params_from_linen: variables lack {name}/kernel") from err
    if kernel.shape != shape:
        raise ValueError(
            f"params_from_linen: {name}/kernel must have shape {shape} (in, out); "
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
                "params_from_linen: Flax's GRUCell applies the reset gate after the recurrent "
                "matmul; convert it to GRUCell(reset_after=True), got reset_after=False"
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
                "params_to_linen: Flax's GRUCell is the reset-after GRU; got reset_after=False"
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

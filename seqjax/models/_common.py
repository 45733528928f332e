"""Pieces every task-shape model shares: running an encoder, summarising it, ids on time 0."""

from __future__ import annotations

import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell, Layer
from seqjax.layers import Bidirectional, Embedding, Stack, last_valid, output_size, run_layer
from seqjax.unroll import UnrollOptions

__all__ = ["output_size"]  # re-exported for the models


def check_parts(model, where: str) -> None:
    """The parts a model holds, checked at construction (each fails much later otherwise):
    ``encoder`` a cell or sequence layer, ``embed`` an Embedding or None, ``pool`` a function
    or None, ``options`` an UnrollOptions; whichever of these fields ``model`` has."""
    fields = getattr(type(model), "__dataclass_fields__", {})
    if "encoder" in fields and not isinstance(model.encoder, Cell | Layer):
        raise TypeError(
            f"{where}: encoder must be a seqjax cell, Stack or Bidirectional instance; got "
            f"{model.encoder!r}"
        )
    embed = getattr(model, "embed", None)
    if embed is not None and not isinstance(embed, Embedding):
        raise TypeError(f"{where}: embed must be a seqjax.Embedding or None; got {embed!r}")
    if "pool" in fields and model.pool is not None:
        _checks.function("pool", model.pool, where)
    if "options" in fields and not isinstance(model.options, UnrollOptions):
        raise TypeError(
            f"{where}: options must be a seqjax.UnrollOptions (e.g. UnrollOptions(truncate=20)); "
            f"got {model.options!r}"
        )


def run_encoder(
    encoder, params: PyTree, xs: Array, lengths: Array | None, options: UnrollOptions
) -> tuple[PyTree, Array]:
    """Run a cell (through :func:`unroll`) or a sequence layer over time-major ``xs``."""
    return run_layer(encoder, params, xs, None, lengths=lengths, options=options)


def last_state(encoder, ys: Array, lengths: Array | None, reverse: bool = False) -> Array:
    """Each sequence's summary after reading all of it: ``ys [T, *B, F] -> [*B, F]``.

    Where each direction finished reading: the output at the last valid step for a forward
    encoder, at ``t = 0`` for one run with ``reverse``; for one whose top layer is
    :class:`Bidirectional`, each half where its own direction finished.
    """

    def finished(part, backwards):
        return part[0] if backwards else last_valid(part, lengths)

    top = encoder.layers[-1] if isinstance(encoder, Stack) else encoder
    if not isinstance(top, Bidirectional):
        return finished(ys, reverse)
    split = top.forward.hidden_size
    forward = finished(ys[..., :split], reverse)
    return jnp.concatenate([forward, finished(ys[..., split:], not reverse)], axis=-1)


def ids_time_major(name: str, ids, time_axis: int, where: str) -> Array:
    """Integer ids ``[T, *B]`` (time on ``time_axis``) moved to time-major."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{where}: {name} must hold integer ids; got dtype {ids.dtype}")
    if ids.ndim < 1 or not (_checks.is_int(time_axis) and -ids.ndim <= time_axis < ids.ndim):
        raise ValueError(
            f"{where}: {name} must have a time axis at time_axis={time_axis}; got shape {ids.shape}"
        )
    return jnp.moveaxis(ids, time_axis, 0)


def step_mask(lengths: Array | None, num_steps: int, batch_shape: tuple[int, ...]) -> Array:
    """Booleans ``[T, *B]``: True at valid steps (all of them when ``lengths`` is None)."""
    if lengths is None:
        return jnp.ones((num_steps, *batch_shape), bool)
    return jnp.broadcast_to(_checks.valid_steps(lengths, num_steps), (num_steps, *batch_shape))


def zero_padded(ys: Array, mask: Array) -> Array:
    """``ys [T, *B, F]`` with the steps where ``mask [T, *B]`` is False set to zero."""
    return jnp.where(jnp.broadcast_to(mask[..., None], ys.shape), ys, jnp.zeros_like(ys))


def check_lengths(
    lengths, batch_shape: tuple[int, ...], num_steps: int, where: str, name: str = "lengths"
):
    """``lengths`` checked as :func:`seqjax.unroll` checks it (None passes through)."""
    if lengths is None:
        return None
    return _checks.lengths_array(lengths, tuple(batch_shape), num_steps, where, name)

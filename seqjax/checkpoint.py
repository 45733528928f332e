"""Save and restore a whole training state with orbax-checkpoint, refusing incompatible ones.

A checkpoint directory holds one sub-directory per saved step (orbax writes each to a
temporary name and renames it when complete, so an interrupted save never replaces a good
one) with the state's arrays and a JSON ``meta`` record of the model's configuration.
Restoring checks ``meta`` against the running model first and raises before anything is
read or written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from seqjax._types import PyTree

__all__ = [
    "IncompatibleCheckpointError",
    "check_compatible",
    "latest_step",
    "read_meta",
    "restore",
    "save",
]


class IncompatibleCheckpointError(ValueError):
    """The checkpoint was written by a model with another configuration."""


def _manager(directory: str | os.PathLike, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _as_json(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as it reads back from JSON (tuples as lists, keys as strings), so that a
    saved record compares equal to the one that wrote it."""
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint: meta must be a dict; got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"checkpoint: meta must hold JSON values only (str, int, float, bool, None, lists "
            f"and dicts of them; convert NumPy scalars with .item()): {err}"
        ) from err


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest saved step in ``directory``, or None if it holds no checkpoint."""
    if not os.path.isdir(directory):
        return None
    return _manager(directory).latest_step()


def check_compatible(directory: str | os.PathLike, meta: dict[str, Any]) -> int | None:
    """Raise :class:`IncompatibleCheckpointError` unless the newest checkpoint matches ``meta``.

    Returns:
        The newest step, or None when the directory holds no checkpoint yet.
    """
    meta = _as_json(meta)
    step = latest_step(directory)
    if step is None:
        return None
    saved = read_meta(directory)
    if saved != meta:
        diff = {
            k: (saved.get(k), meta.get(k))
            for k in sorted(set(saved) | set(meta))
            if saved.get(k) != meta.get(k)
        }
        raise IncompatibleCheckpointError(
            f"checkpoint directory {os.fspath(directory)!r} holds a model with another "
            f"configuration (saved vs requested: {diff}); use another directory, or the "
            "saved configuration; nothing was read or overwritten"
        )
    return step


def save(
    directory: str | os.PathLike,
    step: int,
    state: PyTree,
    meta: dict[str, Any],
    *,
    max_to_keep: int | None = 3,
) -> None:
    """Save ``state`` (a pytree of arrays) as checkpoint ``step``, with the ``meta`` record.

    Raises :class:`IncompatibleCheckpointError` (writing nothing) if the directory already
    holds checkpoints of another configuration.
    """
    meta = _as_json(meta)
    check_compatible(directory, meta)
    manager = _manager(directory, max_to_keep)
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()


def restore(
    directory: str | os.PathLike, like: PyTree, meta: dict[str, Any], step: int | None = None
) -> tuple[int, PyTree]:
    """Restore the newest (or the given) checkpoint into the structure of ``like``.

    Args:
        directory: the checkpoint directory.
        like: a state of the same structure, shapes and dtypes (e.g. a freshly built one).
        meta: the running model's configuration, checked against the saved one first.
        step: which checkpoint; the newest when None.

    Returns:
        ``(step, state)``.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``.
        IncompatibleCheckpointError: the saved configuration differs from ``meta``.
    """
    newest = check_compatible(directory, meta)
    if newest is None:
        raise FileNotFoundError(f"restore: no checkpoint in {os.fspath(directory)!r}")
    step = newest if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = _manager(directory).restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return step, restored["state"]


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` record of the newest checkpoint in ``directory``.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``.
    """
    step = latest_step(directory)
    if step is None:
        raise FileNotFoundError(f"read_meta: no checkpoint in {os.fspath(directory)!r}")
    try:
        saved = _manager(directory).restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return saved["meta"]
    except (KeyError, FileNotFoundError) as err:  # a numbered folder written by something else
        raise ValueError(
            f"read_meta: step {step} in {os.fspath(directory)!r} is not a seqjax checkpoint "
            f"(no meta record): {err!r}"
        ) from err

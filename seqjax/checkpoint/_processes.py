"""Checkpoints written and read by several processes (``jax.distributed``): who does what.

Every process calls :func:`~seqjax.checkpoint.save` and :func:`~seqjax.checkpoint.restore`
with the same arguments. Orbax writes and reads each process's shards; what touches the
directory as a whole (the lock, quarantine moves, the manifest, retention) is done by
process 0 alone; and wherever one process's outcome could differ from another's (a file
that fails its checksum, a lock that is taken, a disk that is full), the processes
*agree* before going on: each outcome is gathered, and if any process failed, every process
raises the same error, so that no process waits in a collective for one that gave up.

With one process every function here is the plain call: no collective, no cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

import jax
import numpy as np

from seqjax.checkpoint import _errors

_T = TypeVar("_T")

# The errors a process can hand to the others by name; anything else arrives as RuntimeError.
_KNOWN = {
    cls.__name__: cls
    for cls in (
        _errors.CheckpointLockedError,
        _errors.CheckpointNotWritableError,
        _errors.CorruptCheckpointError,
        _errors.IncompatibleCheckpointError,
        _errors.NonFiniteStateError,
        FileNotFoundError,
    )
}


def count() -> int:
    """How many processes take part."""
    return jax.process_count()


def is_main() -> bool:
    """Whether this is process 0, the one that writes what belongs to the whole directory."""
    return jax.process_index() == 0


def gather(value: Any) -> list[Any]:
    """Every process's JSON ``value``, in process order (a collective: all must call it)."""
    if count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[: data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(n)]).decode())
        for row, n in zip(np.reshape(rows, (count(), -1)), np.ravel(sizes), strict=True)
    ]


def _describe(error: BaseException | None) -> dict | None:
    if error is None:
        return None
    return {
        "type": type(error).__name__,
        "errno": getattr(error, "errno", None),
        "message": str(error),
    }


def _rebuild(record: dict, process: int) -> BaseException:
    message = f"process {process}: {record['message']}"
    cls = _KNOWN.get(record["type"])
    if cls is None:
        return RuntimeError(f"{message} ({record['type']})")
    if issubclass(cls, OSError) and record["errno"] is not None:
        return cls(record["errno"], message)
    return cls(message)


def agree(error: BaseException | None) -> None:
    """Raise on every process if ``error`` is not None on any (a collective).

    A process that failed raises its own error; the others raise the first failure's, of
    the same class where it is one of :mod:`seqjax.checkpoint`'s (else ``RuntimeError``),
    its message prefixed with the failing process's index.
    """
    if count() == 1:
        if error is not None:
            raise error
        return
    records = gather(_describe(error))
    if error is not None:
        raise error
    for process, record in enumerate(records):
        if record is not None:
            raise _rebuild(record, process)


def on_main(fn: Callable[[], _T]) -> _T | None:
    """``fn()`` on process 0 alone, then :func:`agree` on its outcome (a collective).

    Returns ``fn()``'s result on process 0 and None on the others.
    """
    if count() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # handed to every process by agree()
            error = err
    agree(error)  # raises in every process if fn raised in any: result is set below
    return cast(_T, result)


def attempt(fn: Callable[[], _T], errors: tuple[type[BaseException], ...]) -> _T:
    """``fn()`` on every process, then :func:`agree` on the ``errors`` it raised (a collective)."""
    if count() == 1:
        return fn()
    result, error = None, None
    try:
        result = fn()
    except errors as err:
        error = err
    agree(error)  # raises in every process if fn raised in any: result is set below
    return cast(_T, result)

"""Saving, restoring and retention: the public functions of :mod:`seqjax.checkpoint`."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import operator
import os
import shutil
import socket
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from seqjax import _checks
from seqjax._types import PyTree
from seqjax.checkpoint import _processes
from seqjax.checkpoint._errors import (
    CheckpointNotWritableError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    NonFiniteStateError,
    Restored,
    SkippedCheckpointWarning,
    SkippedStep,
)
from seqjax.checkpoint._files import (
    _DELETING,
    _FORMAT,
    _VERSION,
    LOCK_FILE,
    MANIFEST,
    QUARANTINE,
    _as_json,
    _canonical,
    _check_files,
    _entry,
    _fsync_dir,
    _hash_files,
    _incompatible,
    _leaves,
    _load_step,
    _move_aside,
    _newest_meta,
    _read_checked_meta,
    _read_manifest,
    _sha256,
    _step_folders,
)
from seqjax.checkpoint._lock import (
    _WriteLock,
)


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest step in ``directory`` with a valid manifest, or None if there is none.

    Only the manifest is checked; the step's data is verified by :func:`restore`, which may
    fall back to an older step.

    Example:
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> print(checkpoint.latest_step(directory))
        None
        >>> checkpoint.save(directory, 7, {"w": jnp.zeros(3)}, {"model": "demo"})
        >>> checkpoint.latest_step(directory)
        7
    """
    if not os.path.isdir(directory):
        return None
    for step, folder in _step_folders(os.fspath(directory)):
        try:
            _read_manifest(step, folder)
        except CorruptCheckpointError:
            continue
        return step
    return None


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` record of the newest step in ``directory`` whose record verifies.

    Raises:
        FileNotFoundError: no step folder in ``directory``.
        CorruptCheckpointError: step folders, none of whose meta record verifies (each
            named, with what failed).

    Example:
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> checkpoint.save(directory, 1, {"w": jnp.zeros(3)}, {"sizes": (4, 8)})
        >>> checkpoint.read_meta(directory)
        {'sizes': [4, 8]}
    """
    directory = os.fspath(directory)
    failures = []
    for step, folder in _step_folders(directory):
        try:
            return _read_checked_meta(step, folder)[1]
        except CorruptCheckpointError as err:
            failures.append(str(err))
    if not failures:
        raise FileNotFoundError(f"read_meta: no checkpoint in {directory!r}")
    raise CorruptCheckpointError(
        f"read_meta: no step in {directory!r} verifies: " + "; ".join(failures)
    )


def check_compatible(directory: str | os.PathLike, meta: dict[str, Any]) -> int | None:
    """Raise :class:`IncompatibleCheckpointError` unless the newest checkpoint matches ``meta``.

    The newest checkpoint is the newest step whose manifest and meta record verify.

    Returns:
        That step, or None when the directory holds none (a fresh run; step folders that do
        not verify are then named in a :class:`SkippedCheckpointWarning` and left in place).

    Example:
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> checkpoint.save(directory, 3, {"w": jnp.zeros(3)}, {"hidden_size": 16})
        >>> checkpoint.check_compatible(directory, {"hidden_size": 16})
        3
        >>> try:
        ...     checkpoint.check_compatible(directory, {"hidden_size": 32})
        ... except checkpoint.IncompatibleCheckpointError as err:
        ...     print("16, 32" in str(err))
        True
    """
    meta, directory = _as_json(meta), os.fspath(directory)
    found = _newest_meta(directory)
    if found is None:
        broken = [folder for _, folder in _step_folders(directory)]
        if broken:
            warnings.warn(
                SkippedCheckpointWarning(
                    f"no step in {directory!r} verifies, so training starts afresh; the step "
                    f"folders {broken} were left in place"
                ),
                stacklevel=2,
            )
        return None
    step, saved = found
    if saved != meta:
        raise _incompatible(directory, saved, meta)
    return step


def _refuse_non_finite(directory: str, step: int, entries: list) -> None:
    bad = [
        f"{entry['path']} ({nan} NaN, {inf} Inf of {int(np.prod(entry['shape'], dtype=int))})"
        for entry, (nan, inf) in entries
        if nan or inf
    ]
    if bad:
        raise NonFiniteStateError(
            f"save: refused step {step} for {directory!r}: the state holds non-finite values "
            f"in {', '.join(bad)}; nothing was written and older steps are intact (restore "
            "the newest good step and lower the learning rate, or skip the bad batch)"
        )


def save(
    directory: str | os.PathLike,
    step: int,
    state: PyTree,
    meta: dict[str, Any],
    *,
    max_to_keep: int | None = 3,
) -> None:
    """Save ``state`` (a pytree of arrays) as checkpoint ``step``, verified, with ``meta``.

    In order: refuses a non-finite state and an incompatible directory (writing nothing);
    takes the directory's lock unless this process holds it (:class:`CheckpointLock`); moves
    an existing ``<directory>/<step>`` folder to ``quarantine/``; writes the step with orbax,
    synchronously; fsyncs it and writes its manifest atomically; reads it back and checks it;
    only then deletes steps older than this one beyond the newest ``max_to_keep`` good ones
    (never a newer step, never a folder without a valid manifest).

    With several processes (``jax.distributed``) every process calls it with the same
    arguments and its part of the global arrays; process 0 locks, writes the manifest and
    retains, and a failure anywhere raises the same error in every process (module
    docstring).

    Args:
        directory: the checkpoint directory; created if needed.
        step: the step number, an int >= 0 (the folder's name).
        state: a pytree of arrays (jax or NumPy) and scalars.
        meta: the model's configuration, JSON values only; every step in a directory has
            the same one.
        max_to_keep: how many good steps to keep, this one included; None keeps all.

    Raises:
        NonFiniteStateError: a floating leaf holds NaN or Inf (the message names the leaves).
        IncompatibleCheckpointError: the directory holds checkpoints of another ``meta``.
        CheckpointLockedError: another process holds the directory.
        CheckpointNotWritableError: the directory cannot be created or written.
        CorruptCheckpointError: the new step was written but does not read back equal (it is
            moved to ``quarantine/``; older steps are kept).

    Example:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> for step in (1, 2, 3):
        ...     checkpoint.save(directory, step, {"w": jnp.full(3, step)}, {}, max_to_keep=2)
        >>> sorted(os.listdir(directory))
        ['.seqjax.lock', '2', '3']
        >>> try:
        ...     checkpoint.save(directory, 4, {"w": jnp.array([0.0, jnp.nan])}, {})
        ... except checkpoint.NonFiniteStateError as err:
        ...     print("['w'] (1 NaN, 0 Inf of 2)" in str(err))
        True
    """
    meta, directory = _as_json(meta), os.path.abspath(os.fspath(directory))
    if not _checks.is_int(step) or step < 0:
        raise ValueError(f"save: step must be an int >= 0; got {step!r}")
    step = operator.index(step)
    if max_to_keep is not None and (not _checks.is_int(max_to_keep) or max_to_keep < 1):
        raise ValueError(f"save: max_to_keep must be an int >= 1 or None; got {max_to_keep!r}")
    # Every process, the same leaves in the same order: a sharded leaf's checksum is a
    # computation over the global array.
    entries = [_entry(path, leaf) for path, leaf in _leaves(state)]
    _refuse_non_finite(directory, step, entries)
    with _locked(directory):
        _write_step(directory, step, state, meta, [e for e, _ in entries], max_to_keep)


@contextlib.contextmanager
def _locked(directory: str):
    """The directory's write lock: this process's, or (several processes) process 0's."""
    if _processes.count() == 1:
        with _WriteLock(directory):
            yield
        return
    lock = _WriteLock(directory)
    _processes.on_main(lock.__enter__)
    try:
        # The others must see the lock file process 0 holds: one shared file system.
        _processes.attempt(lambda: _check_shared(directory), (OSError,))
        yield
    finally:
        if _processes.is_main():
            lock.__exit__(None, None, None)


def _check_shared(directory: str) -> None:
    if not os.path.exists(os.path.join(directory, LOCK_FILE)):
        raise CheckpointNotWritableError(
            errno.ENOENT,
            f"save: process {jax.process_index()} does not see the lock file that process 0 "
            f"holds in {directory!r}: every process must write to one shared file system",
        )


def _write_step(directory, step, state, meta, entries, max_to_keep) -> None:
    """Write, verify and retain one step, under the directory's lock."""
    folder = os.path.join(directory, str(step))

    def prepare():
        newest = _newest_meta(directory)
        if newest is not None and newest[1] != meta:
            raise _incompatible(directory, newest[1], meta)
        if os.path.lexists(folder):
            _move_aside(directory, folder, f"replaced by a new save of step {step}")

    _processes.on_main(prepare)
    _processes.attempt(lambda: _orbax_save(folder, step, state, meta), (OSError,))
    _processes.on_main(lambda: _write_manifest(folder, step, meta, entries))
    try:
        _load_step(directory, step, folder, state, meta, files_checked=True)
    except (CorruptCheckpointError, IncompatibleCheckpointError) as err:
        reason = f"did not read back equal: {err}"
        moved = _processes.on_main(lambda: _move_aside(directory, folder, reason))
        raise CorruptCheckpointError(
            f"save: step {step} was written but does not read back equal ({err}); it was "
            f"moved to {moved or os.path.join(directory, QUARANTINE)!r} and older steps were "
            "kept"
        ) from err
    if max_to_keep is not None:
        _processes.on_main(lambda: _retain(directory, step, max_to_keep))


def _orbax_save(folder: str, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        checkpointer.save(
            folder,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
    except OSError as err:  # a full disk, a directory gone: orbax's error names neither
        raise CheckpointNotWritableError(
            err.errno, f"save: step {step} could not be written to {folder!r}: {err}"
        ) from err
    finally:
        checkpointer.close()


def _write_manifest(folder: str, step: int, meta: dict[str, Any], entries: list) -> None:
    """Hash every file of the step, and write the manifest last, atomically."""
    written = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if _processes.count() > 1:
        written["processes"] = _processes.count()
    manifest = {
        "format": _FORMAT,
        # Version 1 unless an array is recorded by fingerprint (held whole by no process).
        "version": 2 if any("fingerprint" in e for e in entries) else _VERSION,
        "step": step,
        "meta_sha256": _sha256(_canonical(meta)),
        "arrays": entries,
        "files": _hash_files(folder, fsync=True),
        "written": written,
    }
    manifest["manifest_sha256"] = _sha256(_canonical(manifest))
    tmp = os.path.join(folder, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, MANIFEST))
    _fsync_dir(folder)


def _retain(directory: str, saved: int, max_to_keep: int) -> None:
    """Delete steps older than ``saved`` beyond the newest ``max_to_keep`` good ones.

    Good steps newer than ``saved`` count but are never deleted; a folder without a valid
    manifest is neither counted nor deleted; a step is counted only if its files verify.
    """
    kept = 0
    for step, folder in _step_folders(directory):
        try:
            manifest = _read_manifest(step, folder)
        except CorruptCheckpointError:
            continue
        if step < saved and kept >= max_to_keep:
            doomed = folder + _DELETING
            os.rename(folder, doomed)  # a half-deleted folder never looks like a step
            shutil.rmtree(doomed)
            continue
        if step != saved:  # the saved step was read back in full already
            try:
                _check_files(step, folder, manifest)
            except CorruptCheckpointError:
                continue
        kept += 1
    for name in os.listdir(directory):  # deletions that a killed process left half done
        if name.endswith(_DELETING) and name[: -len(_DELETING)].isdigit():
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def restore_verified(
    directory: str | os.PathLike, like: PyTree, meta: dict[str, Any], step: int | None = None
) -> Restored:
    """Restore the newest step that verifies (or the given one) into the structure of ``like``.

    Each step is checked in full before it is returned: its manifest, the checksum of every
    file, of the meta record and of every array as read back. With ``step=None`` the steps
    are tried newest first; those that fail are passed over, named in a
    :class:`SkippedCheckpointWarning` and in :attr:`Restored.skipped`, and left in place.

    Args:
        directory: the checkpoint directory.
        like: a state of the same structure and shapes (e.g. a freshly built one); the
            restored arrays take its shardings and dtypes.
        meta: the running model's configuration, checked against the saved one.
        step: which step; the newest good one when None.

    Returns:
        ``Restored(step, state, skipped)``.

    Raises:
        FileNotFoundError: no step folder in ``directory``, or no folder for ``step``.
        IncompatibleCheckpointError: the saved configuration or state layout differs.
        CorruptCheckpointError: the given ``step`` fails verification, or (``step=None``) no
            step does; the message names each step folder and what failed.

    Example:
        >>> import os, tempfile, warnings
        >>> import jax.numpy as jnp
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> checkpoint.save(directory, 1, {"w": jnp.ones(3)}, {})
        >>> os.makedirs(os.path.join(directory, "2"))  # an interrupted save, say
        >>> with warnings.catch_warnings(record=True):
        ...     restored = checkpoint.restore_verified(directory, {"w": jnp.zeros(3)}, {})
        >>> restored.step, restored.state["w"].tolist(), [s.step for s in restored.skipped]
        (1, [1.0, 1.0, 1.0], [2])
    """
    return _restore(directory, like, meta, step, stacklevel=3)


def _restore(
    directory: str | os.PathLike,
    like: PyTree,
    meta: dict[str, Any],
    step: int | None,
    stacklevel: int,
) -> Restored:
    meta, directory = _as_json(meta), os.fspath(directory)
    folders = _step_folders(directory)
    if step is not None:
        step = operator.index(step)
        folder = dict(folders).get(step)
        if folder is None:
            raise FileNotFoundError(
                f"restore: no step {step} in {directory!r} (step folders: "
                f"{sorted(s for s, _ in folders)})"
            )
        try:
            return Restored(step, _load_step(directory, step, folder, like, meta), ())
        except CorruptCheckpointError as err:
            raise CorruptCheckpointError(f"restore: in {directory!r}, {err}") from err
    if not folders:
        raise FileNotFoundError(f"restore: no checkpoint in {directory!r}")
    skipped = []
    for candidate, folder in folders:
        try:
            state = _load_step(directory, candidate, folder, like, meta)
        except CorruptCheckpointError as err:
            skipped.append(SkippedStep(candidate, folder, str(err)))
            continue
        if skipped:
            warnings.warn(
                SkippedCheckpointWarning(
                    f"restore: restored step {candidate} from {directory!r}, passing over newer "
                    f"steps that failed verification (left in place): "
                    + "; ".join(s.reason for s in skipped)
                ),
                stacklevel=stacklevel,
            )
        return Restored(candidate, state, tuple(skipped))
    raise CorruptCheckpointError(
        f"restore: no step in {directory!r} verifies (nothing was deleted): "
        + "; ".join(s.reason for s in skipped)
    )


def restore(
    directory: str | os.PathLike, like: PyTree, meta: dict[str, Any], step: int | None = None
) -> tuple[int, PyTree]:
    """Restore the newest good (or the given) checkpoint; :func:`restore_verified` as a pair.

    Returns:
        ``(step, state)``.

    Raises:
        The exceptions of :func:`restore_verified`, and its :class:`SkippedCheckpointWarning`.

    Example:
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> checkpoint.save(directory, 5, {"w": jnp.arange(3.0)}, {"model": "demo"})
        >>> step, state = checkpoint.restore(directory, {"w": jnp.zeros(3)}, {"model": "demo"})
        >>> step, state["w"].tolist()
        (5, [0.0, 1.0, 2.0])
    """
    restored = _restore(directory, like, meta, step, stacklevel=3)
    return restored.step, restored.state

"""Save and restore a whole training state with orbax-checkpoint, verified against checksums.

A checkpoint directory holds one folder per saved step, ``<directory>/<step>``, written by
orbax (its arrays in ``state/``, a JSON ``meta`` record of the model's configuration in
``meta/``), and a manifest, ``seqjax_manifest.json``, written last and atomically. The
manifest records the sha256 of every array's bytes (as read back to the host), of the
canonical ``meta`` JSON and of every file in the folder, and its own sha256. A step is *good*
when its manifest is valid and everything it records matches; a folder without a valid
manifest (an interrupted save, a foreign folder with a numeric name) is never good.

Guarantees:

* :func:`save` refuses a state with NaN or Inf in a floating leaf
  (:class:`NonFiniteStateError`) and writes nothing; it reads every new step back and checks
  it before deleting anything older, and retention (``max_to_keep``) counts good steps only.
  Nothing that is not a good step is ever deleted: a folder in the way of a new save is moved
  to ``<directory>/quarantine/``, others are left where they are.
* :func:`restore` with ``step=None`` returns the newest good step; newer steps that fail are
  named in a :class:`SkippedCheckpointWarning` (and in :attr:`Restored.skipped`), never
  deleted. An explicit ``step`` that fails raises :class:`CorruptCheckpointError`.
* One writer at a time: :class:`CheckpointLock` holds an exclusive ``flock`` on
  ``<directory>/.seqjax.lock``; a second writer gets :class:`CheckpointLockedError` at once.
  The kernel drops the lock when its process dies, so a killed run never blocks the next.
* No failure hangs: orbax saves synchronously (its asynchronous saver left threads waiting
  ~300 s for a coordination signal after a failed save), and :func:`check_writable` raises
  before orbax is called for a path that cannot be written.

Every failure to restore is one of this module's exceptions (subclasses of ``ValueError`` or
``OSError``) or a ``FileNotFoundError``, naming the directory, step folder and file.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import operator
import os
import shutil
import socket
import tempfile
import threading
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from seqjax._types import PyTree

MANIFEST = "seqjax_manifest.json"
LOCK_FILE = ".seqjax.lock"
QUARANTINE = "quarantine"
_FORMAT = "seqjax-checkpoint-manifest"
_VERSION = 1
_DELETING = ".seqjax-deleting"


class IncompatibleCheckpointError(ValueError):
    """The checkpoint was written by a model with another configuration or state layout."""


class CorruptCheckpointError(ValueError):
    """A step folder failed verification or could not be read; the message names what failed."""


class NonFiniteStateError(ValueError):
    """:func:`save` was given a state with NaN or Inf in a floating leaf; nothing was written."""


class CheckpointLockedError(OSError):
    """Another writer holds the checkpoint directory's lock."""


class CheckpointNotWritableError(OSError):
    """The checkpoint directory cannot be created or written."""


class SkippedCheckpointWarning(UserWarning):
    """:func:`restore` passed over newer steps that failed verification (left in place)."""


class SkippedStep(NamedTuple):
    """A step folder :func:`restore_verified` passed over, and why."""

    step: int
    path: str
    reason: str


class Restored(NamedTuple):
    """What :func:`restore_verified` restored: the step, the state, and the steps it skipped."""

    step: int
    state: PyTree
    skipped: tuple[SkippedStep, ...]


# --- small helpers -----------------------------------------------------------------------


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


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host(leaf: Any) -> np.ndarray:
    """A leaf's value on the host, as the bytes that are hashed (typed PRNG keys as key data)."""
    return np.asarray(jax.device_get(jax.random.key_data(leaf) if _is_key(leaf) else leaf))


def _host_shape(leaf: Any) -> tuple[int, ...]:
    return jax.random.key_data(leaf).shape if _is_key(leaf) else tuple(np.shape(leaf))


def _array_sha256(value: np.ndarray) -> str:
    digest = hashlib.sha256(f"{value.dtype.name}{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _leaves(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _step_folders(directory: str) -> list[tuple[int, str]]:
    """Every ``<directory>/<digits>`` entry, newest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CheckpointNotWritableError(
            err.errno, f"cannot list checkpoint directory {directory!r}: {err.strerror}"
        ) from err
    steps = [(int(n), os.path.join(directory, n)) for n in names if n.isascii() and n.isdigit()]
    return sorted(steps, reverse=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_files(folder: str, *, fsync: bool = False) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` but the manifest."""
    files = {}
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel in (MANIFEST, MANIFEST + ".tmp"):
                continue
            digest, size = hashlib.sha256(), 0
            with open(full, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    size += len(chunk)
                if fsync:
                    os.fsync(f.fileno())
            files[rel] = {"size": size, "sha256": digest.hexdigest()}
        if fsync:
            _fsync_dir(root)
    return files


def _move_aside(directory: str, folder: str, reason: str) -> str:
    """Move ``folder`` into ``<directory>/quarantine/`` under a unique name; never delete it."""
    target_dir = os.path.join(directory, QUARANTINE)
    os.makedirs(target_dir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    base = os.path.join(target_dir, f"{os.path.basename(folder)}.{stamp}")
    target, n = base, 1
    while os.path.lexists(target):
        target, n = f"{base}.{n}", n + 1
    os.rename(folder, target)
    with open(target + ".reason.txt", "w") as f:
        f.write(reason + "\n")
    _fsync_dir(directory)
    return target


# --- verification ------------------------------------------------------------------------


def _fail(step: int, folder: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"step {step} ({folder!r}): {what}")


def _read_manifest(step: int, folder: str) -> dict[str, Any]:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise _fail(step, folder, "is not a seqjax checkpoint (not a directory)")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _fail(
            step, folder, f"is not a seqjax checkpoint, or its save was interrupted: no {MANIFEST}"
        ) from None
    except OSError as err:
        raise _fail(step, folder, f"cannot read {MANIFEST}: {err.strerror}") from err
    try:
        manifest = json.loads(raw)
        recorded = manifest.pop("manifest_sha256")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise _fail(step, folder, f"{MANIFEST} is not a valid manifest (corrupted)") from None
    if recorded != _sha256(_canonical(manifest)):
        raise _fail(step, folder, f"{MANIFEST} does not match its own checksum (corrupted)")
    if manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
        raise _fail(step, folder, f"{MANIFEST} has an unknown format {manifest.get('format')!r}")
    if manifest.get("step") != step:
        raise _fail(step, folder, f"{MANIFEST} records step {manifest.get('step')}, not {step}")
    if not {"meta_sha256", "arrays", "files"} <= set(manifest):
        raise _fail(step, folder, f"{MANIFEST} lacks its meta_sha256, arrays or files record")
    return manifest


def _check_files(step: int, folder: str, manifest: dict[str, Any], arrays: bool = True) -> None:
    """Check every file the manifest records (``arrays=False``: all but the arrays' ``state/``)."""
    for rel, want in manifest["files"].items():
        if not arrays and rel.startswith("state/"):
            continue
        full = os.path.join(folder, *rel.split("/"))
        try:
            size = os.path.getsize(full)
            if size != want["size"]:
                raise _fail(
                    step,
                    folder,
                    f"file {rel} has {size} bytes, the manifest records "
                    f"{want['size']} (truncated or overwritten)",
                )
            with open(full, "rb") as f:
                digest = hashlib.sha256()
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
        except FileNotFoundError:
            raise _fail(step, folder, f"file {rel} is missing") from None
        except OSError as err:
            raise _fail(step, folder, f"cannot read file {rel}: {err.strerror}") from err
        if digest.hexdigest() != want["sha256"]:
            raise _fail(step, folder, f"file {rel} does not match its checksum (corrupted)")


def _orbax_restore(folder: str, args: ocp.args.Composite) -> Any:
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        return checkpointer.restore(folder, args=args)
    finally:
        checkpointer.close()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _read_checked_meta(
    step: int, folder: str, arrays: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and the verified ``meta`` record of one step (and, with ``arrays``, the
    checksums of the arrays' files: not their values)."""
    manifest = _read_manifest(step, folder)
    _check_files(step, folder, manifest, arrays=arrays)
    try:
        meta = _orbax_restore(folder, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises bare Exception, KeyError, JSONDecodeError...
        raise _fail(step, folder, f"cannot read the meta record: {_short(err)}") from err
    if _sha256(_canonical(meta)) != manifest["meta_sha256"]:
        raise _fail(step, folder, "the meta record does not match its checksum (corrupted)")
    return manifest, meta


def _incompatible(directory: str, saved: dict, meta: dict) -> IncompatibleCheckpointError:
    diff = {
        k: (saved.get(k), meta.get(k))
        for k in sorted(set(saved) | set(meta))
        if saved.get(k) != meta.get(k)
    }
    return IncompatibleCheckpointError(
        f"checkpoint directory {directory!r} holds a model with another "
        f"configuration (saved vs requested: {diff}); use another directory, or the "
        "saved configuration; nothing was read or overwritten"
    )


def _load_step(
    directory: str,
    step: int,
    folder: str,
    like: PyTree,
    meta: dict[str, Any] | None,
    files_checked: bool = False,
) -> PyTree:
    """Verify one step completely and return its state in the structure of ``like``
    (``files_checked``: its files were hashed a moment ago, by :func:`save`)."""
    manifest, saved_meta = _read_checked_meta(step, folder, arrays=not files_checked)
    if meta is not None and saved_meta != meta:
        raise _incompatible(directory, saved_meta, meta)
    entries = manifest["arrays"]
    like_leaves = _leaves(like)
    if [p for p, _ in like_leaves] != [e["path"] for e in entries]:
        raise IncompatibleCheckpointError(
            f"step {step} ({folder!r}) holds a state with leaves "
            f"{[e['path'] for e in entries]}, not the requested {[p for p, _ in like_leaves]}"
        )
    abstract = []
    for (path, leaf), entry in zip(like_leaves, entries, strict=True):
        shape, requested = tuple(entry["shape"]), _host_shape(leaf)
        if requested != shape:
            raise IncompatibleCheckpointError(
                f"step {step} ({folder!r}): state leaf {path} was saved with shape {shape}, "
                f"the requested one has {requested}"
            )
        if isinstance(leaf, jax.Array) and not _is_key(leaf):
            leaf = jax.ShapeDtypeStruct(shape, jnp.dtype(entry["dtype"]), sharding=leaf.sharding)
        abstract.append(ocp.utils.to_shape_dtype_struct(leaf))
    abstract = jax.tree.unflatten(jax.tree.structure(like), abstract)
    try:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        state = _orbax_restore(folder, args)["state"]
    except Exception as err:  # TensorStore and orbax raise bare Exception with long dumps
        raise _fail(step, folder, f"the arrays cannot be read: {_short(err)}") from err
    restored = _leaves(state)
    if [p for p, _ in restored] != [e["path"] for e in entries]:
        raise _fail(step, folder, f"orbax restored the leaves {[p for p, _ in restored]}")
    for (path, value), entry in zip(restored, entries, strict=True):
        if _array_sha256(_host(value)) != entry["sha256"]:
            raise _fail(step, folder, f"state leaf {path} does not match its checksum (corrupted)")
    return jax.tree.map(_cast_like, state, like)


def _cast_like(value: Any, like: Any) -> Any:
    """The verified value in the dtype of the running state's leaf (as orbax would cast it)."""
    if _is_key(like) or _is_key(value):
        return value
    if hasattr(value, "astype") and hasattr(like, "dtype") and value.dtype != like.dtype:
        return value.astype(like.dtype)
    return value


def _newest_meta(directory: str) -> tuple[int, dict[str, Any]] | None:
    """The newest step whose manifest and meta record verify, and that record."""
    for step, folder in _step_folders(directory):
        try:
            return step, _read_checked_meta(step, folder)[1]
        except CorruptCheckpointError:
            continue
    return None


# --- the writer's lock -------------------------------------------------------------------

_held: dict[str, CheckpointLock] = {}  # realpath -> the lock this process holds on it
_held_guard = threading.Lock()


class CheckpointLock:
    """An exclusive lock on a checkpoint directory, for the one process that writes to it.

    The lock is an ``fcntl.flock`` on ``<directory>/.seqjax.lock``, which also records the
    holder's pid, host and start time for the error a second writer gets. The kernel drops it
    when the holding process exits or is killed, so a stale lock file never blocks. The lock
    belongs to the open file, which a ``fork`` shares: a forked child that outlives its parent
    keeps the directory locked. While a process holds it, :func:`save` in that process writes
    under it; without it, :func:`save` takes it for the duration of the write.

    Args:
        directory: the checkpoint directory; created if needed (see :func:`check_writable`).

    Raises:
        CheckpointLockedError: (on acquiring) another process, or another lock object in this
            process, holds the directory.
        CheckpointNotWritableError: (on acquiring) the directory cannot be created or written.

    Example:
        >>> import tempfile
        >>> from seqjax import checkpoint
        >>> directory = tempfile.mkdtemp()
        >>> with checkpoint.CheckpointLock(directory):
        ...     try:
        ...         checkpoint.CheckpointLock(directory).acquire()
        ...     except checkpoint.CheckpointLockedError as err:
        ...         print("second writer refused")
        second writer refused
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> CheckpointLock:
        """Take the lock at once or raise :class:`CheckpointLockedError`; returns ``self``."""
        if self._fd is not None:
            return self
        check_writable(self.directory)
        key = os.path.realpath(self.directory)
        path = os.path.join(self.directory, LOCK_FILE)
        with _held_guard:
            if key in _held:
                raise CheckpointLockedError(
                    errno.EWOULDBLOCK,
                    f"checkpoint directory {self.directory!r} is already locked by this "
                    f"process (pid {os.getpid()}) through another CheckpointLock",
                )
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise CheckpointNotWritableError(
                    err.errno, f"cannot open the lock file {path!r}: {err.strerror}"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CheckpointLockedError(
                        err.errno,
                        f"checkpoint directory {self.directory!r} is locked by another writer"
                        f"{holder}; two runs must not write one directory (the lock is "
                        "released when that process exits)",
                    ) from None
                raise CheckpointNotWritableError(
                    err.errno, f"cannot lock {path!r}: {err.strerror}"
                ) from err
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self._fd = fd
            _held[key] = self
        return self

    def _check_still_held(self) -> None:
        """Raise if the lock file was deleted or replaced, so another writer could lock it."""
        path = os.path.join(self.directory, LOCK_FILE)
        try:
            same = os.stat(path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            same = False
        if not same:
            raise CheckpointLockedError(
                errno.ESTALE,
                f"the lock file {path!r} was deleted or replaced while this process held it; "
                "another writer may be using the directory, so nothing was written",
            )

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        with _held_guard:
            if self._fd is None:
                return
            _held.pop(os.path.realpath(self.directory), None)
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> CheckpointLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"CheckpointLock({self.directory!r}, held={self.held})"


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f" (pid {holder['pid']} on host {holder['host']}, since {holder['since']})"
    except (OSError, ValueError, TypeError, KeyError):
        return ""


class _WriteLock:
    """The lock for one write: the one this process holds already, or a new one for the write."""

    def __init__(self, directory: str):
        self._directory = directory
        self._own: CheckpointLock | None = None

    def __enter__(self) -> None:
        with _held_guard:
            held = _held.get(os.path.realpath(self._directory))
        if held is not None:
            check_writable(self._directory)
            held._check_still_held()
        else:
            self._own = CheckpointLock(self._directory).acquire()  # checks it too

    def __exit__(self, *exc_info) -> None:
        if self._own is not None:
            self._own.release()


# --- public API --------------------------------------------------------------------------


def check_writable(directory: str | os.PathLike) -> str:
    """Create ``directory`` if needed and check at once that files can be written in it.

    Call it before training starts, so that a bad checkpoint path fails in a second, not at
    the first save.

    Args:
        directory: the checkpoint directory (its parents are created too).

    Returns:
        The directory's absolute path.

    Raises:
        CheckpointNotWritableError: the path is a file, a parent is a file or cannot be
            created, or the directory is read-only or not ours to write (an ``OSError`` whose
            ``errno`` is the system's).

    Example:
        >>> import os, tempfile
        >>> from seqjax import checkpoint
        >>> path = checkpoint.check_writable(os.path.join(tempfile.mkdtemp(), "run", "ck"))
        >>> os.path.isdir(path)
        True
        >>> file = tempfile.mkstemp()[1]
        >>> try:
        ...     checkpoint.check_writable(file)
        ... except checkpoint.CheckpointNotWritableError as err:
        ...     print("exists and is not a directory" in str(err))
        True
    """
    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointNotWritableError(
            errno.ENOTDIR, f"checkpoint directory {path!r} exists and is not a directory"
        )
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".seqjax-write-test-", dir=path)
        try:
            os.write(fd, b"seqjax")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise CheckpointNotWritableError(
            err.errno,
            f"checkpoint directory {path!r} cannot be written: {err.strerror}"
            + (f" ({err.filename})" if err.filename else ""),
        ) from err
    return path


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


def _refuse_non_finite(directory: str, step: int, host: list[tuple[str, np.ndarray]]) -> None:
    bad = []
    for path, value in host:
        if jnp.issubdtype(value.dtype, jnp.inexact):
            finite = np.isfinite(value)
            if not finite.all():
                nan = int(np.isnan(value).sum())
                bad.append(
                    f"{path} ({nan} NaN, {value.size - int(finite.sum()) - nan} Inf "
                    f"of {value.size})"
                )
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
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"save: step must be an int >= 0; got {step}")
    if max_to_keep is not None and max_to_keep < 1:
        raise ValueError(f"save: max_to_keep must be >= 1 or None; got {max_to_keep}")
    host = [(path, _host(leaf)) for path, leaf in _leaves(state)]
    _refuse_non_finite(directory, step, host)
    with _WriteLock(directory):
        newest = _newest_meta(directory)
        if newest is not None and newest[1] != meta:
            raise _incompatible(directory, newest[1], meta)
        folder = os.path.join(directory, str(step))
        if os.path.lexists(folder):
            _move_aside(directory, folder, f"replaced by a new save of step {step}")
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
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "step": step,
            "meta_sha256": _sha256(_canonical(meta)),
            "arrays": [
                {
                    "path": path,
                    "dtype": value.dtype.name,
                    "shape": list(value.shape),
                    "sha256": _array_sha256(value),
                }
                for path, value in host
            ],
            "files": _hash_files(folder, fsync=True),
            "written": {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            },
        }
        manifest["manifest_sha256"] = _sha256(_canonical(manifest))
        tmp = os.path.join(folder, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, MANIFEST))
        _fsync_dir(folder)
        try:
            _load_step(directory, step, folder, state, meta, files_checked=True)
        except (CorruptCheckpointError, IncompatibleCheckpointError) as err:
            moved = _move_aside(directory, folder, f"did not read back equal: {err}")
            raise CorruptCheckpointError(
                f"save: step {step} was written but does not read back equal ({err}); it was "
                f"moved to {moved!r} and older steps were kept"
            ) from err
        if max_to_keep is not None:
            _retain(directory, step, max_to_keep)


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

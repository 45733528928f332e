"""One writer at a time: the directory lock, and the check that a directory can be written."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile
import threading

import jax

from seqjax.checkpoint import _processes
from seqjax.checkpoint._errors import (
    CheckpointLockedError,
    CheckpointNotWritableError,
)
from seqjax.checkpoint._files import (
    LOCK_FILE,
)

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

    In a run of several processes (``jax.distributed``) the run is one writer: every process
    creates its ``CheckpointLock`` and acquires it together (a collective), process 0 takes the
    ``flock`` for all of them, and when it cannot (another run holds the directory, or a
    process cannot write it) every process raises the same error. :attr:`held` is then true
    in every process, and :meth:`release` drops the ``flock`` in process 0.

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
        self._run_holds = False  # several processes: the run holds it, through process 0

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now (with several processes, whether the run does)."""
        return self._fd is not None or self._run_holds

    def acquire(self) -> CheckpointLock:
        """Take the lock at once or raise :class:`CheckpointLockedError`; returns ``self``.

        With several processes, a collective: every process calls it (see the class).
        """
        if self.held:
            return self
        if not _several_processes():
            return self._acquire_here()
        _processes.attempt(lambda: check_writable(self.directory), (OSError,))
        _processes.on_main(self._acquire_here)  # raises in every process if it failed
        self._run_holds = True
        return self

    def _acquire_here(self) -> CheckpointLock:
        """The ``flock``, taken by this process."""
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
            same = self._fd is not None and os.stat(path).st_ino == os.fstat(self._fd).st_ino
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
        self._run_holds = False
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


def _several_processes() -> bool:
    """Whether this process is one of several; without ``jax.distributed`` it is alone, and
    the question leaves JAX's backends unstarted (a lock may be taken before JAX is set up)."""
    initialized = getattr(jax.distributed, "is_initialized", None)
    if initialized is not None and not initialized():
        return False
    return _processes.count() > 1


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
            # This process's flock (checked writable too): with several processes only process
            # 0 comes here, inside save's own agreement, so acquire()'s collective is not for it.
            self._own = CheckpointLock(self._directory)._acquire_here()

    def __exit__(self, *exc_info) -> None:
        if self._own is not None:
            self._own.release()


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

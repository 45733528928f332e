"""Save and restore a whole training state with orbax-checkpoint, verified against checksums.

A checkpoint directory holds one folder per saved step, ``<directory>/<step>``, written by
orbax (its arrays in ``state/``, a JSON ``meta`` record of the model's configuration in
``meta/``), and a manifest, ``seqjax_manifest.json``, written last and atomically. The
manifest records the sha256 of every array's bytes (as read back to the host; see below for
arrays split across processes), of the canonical ``meta`` JSON and of every file in the
folder, and its own sha256. A step is *good* when its manifest is valid and everything it
records matches; a folder without a valid manifest (an interrupted save, a foreign folder
with a numeric name) is never good.

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
  A run of several processes is one writer: its process 0 holds the lock for all of them.
* No failure hangs: orbax saves synchronously (its asynchronous saver left threads waiting
  ~300 s for a coordination signal after a failed save), and :func:`check_writable` raises
  before orbax is called for a path that cannot be written.

Several processes (``jax.distributed``, see :func:`seqjax.sharding.initialize_distributed`):
every process calls :func:`save` and :func:`restore` alike, on one shared file system.
Orbax writes and reads each process's shards; process 0 alone takes the lock, moves
folders to quarantine, writes the manifest and deletes old steps; each process checks its
share of the files and the arrays it restored; and wherever an outcome could differ between
processes (a corrupt file, a taken lock, a full disk) they agree first, so that every process
raises the same error and none waits for another that gave up. An array that no single
process holds whole (a carry split by stream) is recorded in the manifest by a
*fingerprint*, a 128-bit sum of per-byte hashes that one computation over the global array
gives whatever its sharding, the same that NumPy computes on one host: a checkpoint written
by four processes verifies when restored by one, and the other way round. Such manifests
are version 2; every other manifest stays version 1.

Every failure to restore is one of this module's exceptions (subclasses of ``ValueError`` or
``OSError``) or a ``FileNotFoundError``, naming the directory, step folder and file.
"""

from seqjax.checkpoint._errors import (
    CheckpointLockedError,
    CheckpointNotWritableError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    NonFiniteStateError,
    Restored,
    SkippedCheckpointWarning,
    SkippedStep,
)
from seqjax.checkpoint._files import LOCK_FILE, MANIFEST, QUARANTINE
from seqjax.checkpoint._lock import CheckpointLock, check_writable
from seqjax.checkpoint._store import (
    check_compatible,
    latest_step,
    read_meta,
    restore,
    restore_verified,
    save,
)

__all__ = [
    "LOCK_FILE",
    "MANIFEST",
    "QUARANTINE",
    "CheckpointLock",
    "CheckpointLockedError",
    "CheckpointNotWritableError",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "NonFiniteStateError",
    "Restored",
    "SkippedCheckpointWarning",
    "SkippedStep",
    "check_compatible",
    "check_writable",
    "latest_step",
    "read_meta",
    "restore",
    "restore_verified",
    "save",
]

"""The exceptions, warning and results of :mod:`seqjax.checkpoint`."""

from __future__ import annotations

from typing import NamedTuple

from seqjax._types import PyTree


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

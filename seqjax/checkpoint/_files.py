"""Step folders, manifests and verification: what makes a checkpoint step good."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from seqjax._types import PyTree
from seqjax.checkpoint import _processes
from seqjax.checkpoint._errors import (
    CheckpointNotWritableError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
)

#: The file in each step's folder, written last, that records the checksums of the rest.
MANIFEST = "seqjax_manifest.json"
#: The file :class:`CheckpointLock` holds an exclusive ``flock`` on, so one writer at a time.
LOCK_FILE = ".seqjax.lock"
#: The subdirectory a folder in the way of a new save is moved to (nothing is deleted).
QUARANTINE = "quarantine"
_FORMAT = "seqjax-checkpoint-manifest"
# Version 2 adds array entries with a "fingerprint" in place of the "sha256" (arrays that no
# single process holds whole); a save writes version 1 whenever every array has its sha256.
_VERSION = 1
_VERSIONS = (1, 2)
_DELETING = ".seqjax-deleting"


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


def _readable(leaf: Any) -> bool:
    """Whether this process holds ``leaf``'s whole value (always, with one process)."""
    if not isinstance(leaf, jax.Array):
        return True
    return leaf.is_fully_addressable or leaf.is_fully_replicated


# --- fingerprints: checksums of arrays that no single process holds whole ----------------
#
# A sum over every byte b_k (k its index in the array's row-major bytes) of a mixing hash of
# (k, b_k), in four independent 32-bit lanes, modulo 2^32. Integer sums do not depend on
# their order, so the value is the same whatever the sharding, the number of processes or
# the device: one process can check what four processes wrote. A sharded array's
# fingerprint is one jitted reduction over the global array; a host array's is the same
# arithmetic in NumPy. 128 bits catch any accidental corruption; the files' sha256 are
# checked as well.

_LANES = (0x9E3779B9, 0x7F4A7C15, 0x85EBCA6B, 0xC2B2AE35)


def _mix(h, xp):
    """A 32-bit integer hash (lowbias32) on NumPy or JAX uint32 arrays."""
    h = h ^ (h >> 16)
    h = h * xp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * xp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def _fold(index, values, xp) -> list:
    return [
        xp.sum(_mix(_mix(index + xp.uint32(lane), xp) ^ values, xp), dtype=xp.uint32)
        for lane in _LANES
    ]


def _hex(lanes) -> str:
    return "".join(f"{int(v):08x}" for v in lanes)


def _fingerprint(value: np.ndarray) -> str:
    """The fingerprint of a host array."""
    data = np.ascontiguousarray(value).reshape(-1).view(np.uint8).astype(np.uint32)
    index = (np.arange(data.size, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
    return _hex(_fold(index, data, np))


@jax.jit
def _device_summary(x: jax.Array):
    """Fingerprint lanes, NaN count and Inf count of a (sharded) array, as scalars."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)  # the bytes' order in memory
    if x.dtype == jnp.bool_:
        data = x.astype(jnp.uint8)
    else:
        data = jax.lax.bitcast_convert_type(x, jnp.uint8)  # [..., itemsize], little-endian
    data = data.astype(jnp.uint32)
    index, stride = jnp.zeros(data.shape, jnp.uint32), 1
    for axis in reversed(range(data.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, data.shape, axis) * jnp.uint32(
            stride % 2**32
        )
        stride *= data.shape[axis]
    lanes = _fold(index, data, jnp)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        nan, inf = jnp.sum(jnp.isnan(x)), jnp.sum(jnp.isinf(x))
    else:
        nan = inf = jnp.zeros((), jnp.int32)
    return lanes, nan, inf


def _summary(leaf: Any) -> tuple[str, int, int]:
    """``(fingerprint, NaN count, Inf count)`` of a leaf, read on the host if this process
    holds it whole, else by one computation over the global array (every process must call
    this for the same leaves in the same order)."""
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    if _readable(leaf):
        value = _host(leaf)
        inexact = jnp.issubdtype(value.dtype, jnp.inexact)
        nan = int(np.isnan(value).sum()) if inexact else 0
        inf = int(np.isinf(value).sum()) if inexact else 0
        return _fingerprint(value), nan, inf
    lanes, nan, inf = _device_summary(leaf)
    return _hex(np.asarray(v) for v in lanes), int(nan), int(inf)


def _entry(path: str, leaf: Any) -> tuple[dict[str, Any], tuple[int, int]]:
    """A leaf's manifest entry (sha256 where this process holds it whole, else fingerprint)
    and its ``(NaN, Inf)`` counts."""
    shape = list(_host_shape(leaf))
    if _readable(leaf):
        value = _host(leaf)
        counts = (0, 0)
        if jnp.issubdtype(value.dtype, jnp.inexact):
            finite = np.isfinite(value)
            nan = int(np.isnan(value).sum())
            counts = (nan, value.size - int(finite.sum()) - nan)
        entry = {"path": path, "dtype": value.dtype.name, "shape": shape}
        return entry | {"sha256": _array_sha256(value)}, counts
    dtype = jax.random.key_data(leaf).dtype if _is_key(leaf) else leaf.dtype
    fingerprint, nan, inf = _summary(leaf)
    entry = {"path": path, "dtype": jnp.dtype(dtype).name, "shape": shape}
    return entry | {"fingerprint": fingerprint}, (nan, inf)


def _leaf_matches(value: Any, entry: dict[str, Any]) -> bool:
    """Whether a restored leaf has the checksum its manifest entry records."""
    if "fingerprint" in entry:
        return _summary(value)[0] == entry["fingerprint"]
    if _readable(value) or _is_key(value):
        return _array_sha256(_host(value)) == entry["sha256"]
    # Saved whole by one process, restored sharded over several: gathered to check it.
    from jax.experimental import multihost_utils

    return (
        _array_sha256(np.asarray(multihost_utils.process_allgather(value, tiled=True)))
        == (entry["sha256"])
    )


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
    if manifest.get("format") != _FORMAT or manifest.get("version") not in _VERSIONS:
        raise _fail(step, folder, f"{MANIFEST} has an unknown format {manifest.get('format')!r}")
    if manifest.get("step") != step:
        raise _fail(step, folder, f"{MANIFEST} records step {manifest.get('step')}, not {step}")
    if not {"meta_sha256", "arrays", "files"} <= set(manifest):
        raise _fail(step, folder, f"{MANIFEST} lacks its meta_sha256, arrays or files record")
    return manifest


def _check_files(
    step: int, folder: str, manifest: dict[str, Any], arrays: bool = True, shared: bool = False
) -> None:
    """Check every file the manifest records (``arrays=False``: all but the arrays' ``state/``).

    ``shared``: with several processes, each checks every ``P``-th file only (the callers
    then agree on the outcome).
    """
    for number, (rel, want) in enumerate(manifest["files"].items()):
        if not arrays and rel.startswith("state/"):
            continue
        if shared and number % _processes.count() != jax.process_index():
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


def _orbax_restore(folder: str, args: ocp.args.Composite, every_process: bool = False) -> Any:
    """Restore ``args`` from ``folder``: in this process alone, or (``every_process``) in all
    of them together, as restoring arrays sharded across processes needs."""
    options = {}
    if not every_process and _processes.count() > 1:  # no barrier: one process reads alone
        me = jax.process_index()
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        )
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(), **options)
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
    checksums of the arrays' files: not their values). Any one process may call it."""
    manifest = _read_manifest(step, folder)
    _check_files(step, folder, manifest, arrays=arrays)
    return manifest, _checked_meta(step, folder, manifest)


def _checked_meta(step: int, folder: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``meta`` record, checked against the manifest's checksum of it."""
    try:
        meta = _orbax_restore(folder, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises bare Exception, KeyError, JSONDecodeError...
        raise _fail(step, folder, f"cannot read the meta record: {_short(err)}") from err
    if _sha256(_canonical(meta)) != manifest["meta_sha256"]:
        raise _fail(step, folder, "the meta record does not match its checksum (corrupted)")
    return meta


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
    (``files_checked``: its files were hashed a moment ago, by :func:`save`).

    With several processes every one calls this: each checks its share of the files and
    the arrays it restored, and they agree (the same error on all) before orbax reads the
    arrays and before returning.
    """
    errors = (CorruptCheckpointError, IncompatibleCheckpointError)
    abstract, entries = _processes.attempt(
        lambda: _abstract_state(directory, step, folder, like, meta, files_checked), errors
    )
    state = _processes.attempt(lambda: _read_arrays(step, folder, abstract), errors)
    return _processes.attempt(lambda: _checked_state(step, folder, state, like, entries), errors)


def _read_arrays(step: int, folder: str, abstract: PyTree) -> PyTree:
    try:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        return _orbax_restore(folder, args, every_process=True)["state"]
    except Exception as err:  # TensorStore and orbax raise bare Exception with long dumps
        raise _fail(step, folder, f"the arrays cannot be read: {_short(err)}") from err


def _abstract_state(directory, step, folder, like, meta, files_checked):
    """The verified manifest's array entries, and the abstract state orbax restores into."""
    manifest = _read_manifest(step, folder)
    _check_files(step, folder, manifest, arrays=not files_checked, shared=True)
    saved_meta = _checked_meta(step, folder, manifest)
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
        if "sha256" not in entry and "fingerprint" not in entry:
            raise _fail(step, folder, f"{MANIFEST} records no checksum for state leaf {path}")
        if isinstance(leaf, jax.Array) and not _is_key(leaf):
            leaf = jax.ShapeDtypeStruct(shape, jnp.dtype(entry["dtype"]), sharding=leaf.sharding)
        abstract.append(ocp.utils.to_shape_dtype_struct(leaf))
    return jax.tree.unflatten(jax.tree.structure(like), abstract), entries


def _checked_state(step, folder, state, like, entries):
    """The restored ``state``, each leaf checked against its manifest entry, cast like ``like``."""
    restored = _leaves(state)
    if [p for p, _ in restored] != [e["path"] for e in entries]:
        raise _fail(step, folder, f"orbax restored the leaves {[p for p, _ in restored]}")
    for (path, value), entry in zip(restored, entries, strict=True):
        if not _leaf_matches(value, entry):
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

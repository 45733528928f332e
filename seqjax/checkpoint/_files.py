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
_VERSION = 1
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

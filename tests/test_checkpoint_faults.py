"""Fault injection for seqjax.checkpoint: corrupt, kill, lock out, refuse, and restore the good.

Each fault is applied to a copy of a directory holding two good steps (1 and 2); every test
checks that the state restored is bit for bit the one last saved as good, that nothing good
was deleted, and that the fault is named once (exception class and message, or warning).

The faults are a registry (``CORRUPTIONS``) shared with the long campaign,
``benchmarks/checkpoint_faults.py``. ``SEQJAX_SLOW=1`` adds many more random trials here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from seqjax import checkpoint
from seqjax.checkpoint import _files

ROOT = Path(__file__).resolve().parent.parent
SLOW = os.environ.get("SEQJAX_SLOW") == "1"
META = {"model": "fault-injection", "hidden_size": 64}


def make_state(step: int, size: int = 64) -> dict:
    """A training-state-like pytree whose every value depends on ``step`` (float32, int32)."""
    rng = np.random.default_rng(step)
    return {
        "params": {
            "w": jnp.asarray(rng.standard_normal((size, size)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(size), jnp.float32),
        },
        "opt_state": {"mu": jnp.asarray(rng.standard_normal((size, size)), jnp.float32)},
        "step": jnp.asarray(step, jnp.int32),
        "key": jnp.asarray(rng.integers(0, 2**32, 2, dtype=np.uint32)),
    }


def bitwise_equal(a, b) -> bool:
    la, lb = _files._leaves(a), _files._leaves(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for (_, x), (_, y) in zip(
            [(p, np.asarray(v)) for p, v in la], [(p, np.asarray(v)) for p, v in lb], strict=True
        )
    )


def snapshot(directory) -> dict[str, str]:
    """Every file under ``directory`` (the lock file aside) and its sha256."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, directory)
            if rel != checkpoint.LOCK_FILE:
                out[rel] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
    return out


# --- the faults: each corrupts step folder `folder` and returns what the error must name -----


def _data_files(folder: str) -> list[str]:
    files = [
        os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f != checkpoint.MANIFEST
    ]
    return sorted(files)


def _largest_data_file(folder: str) -> str:
    return max((f for f in _data_files(folder) if f"{os.sep}d{os.sep}" in f), key=os.path.getsize)


def _rel(folder: str, path: str) -> str:
    return os.path.relpath(path, folder).replace(os.sep, "/")


def truncate_largest(folder: str, rng: random.Random) -> str:
    path = _largest_data_file(folder)
    size = os.path.getsize(path)
    os.truncate(path, rng.randrange(size))
    return f"file {_rel(folder, path)} has"


def flip_byte_largest(folder: str, rng: random.Random) -> str:
    path = _largest_data_file(folder)
    data = bytearray(Path(path).read_bytes())
    data[rng.randrange(len(data))] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return f"file {_rel(folder, path)} does not match its checksum"


def flip_random_bit(folder: str, rng: random.Random) -> str:
    """One bit, anywhere in any file of the step (the manifest included)."""
    path = rng.choice(_data_files(folder) + [os.path.join(folder, checkpoint.MANIFEST)])
    data = bytearray(Path(path).read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    Path(path).write_bytes(bytes(data))
    if path.endswith(checkpoint.MANIFEST):
        return checkpoint.MANIFEST
    return f"file {_rel(folder, path)} does not match its checksum"


def delete_random_file(folder: str, rng: random.Random) -> str:
    path = rng.choice(_data_files(folder))
    os.remove(path)
    return f"file {_rel(folder, path)} is missing"


def delete_manifest(folder: str, rng: random.Random) -> str:
    os.remove(os.path.join(folder, checkpoint.MANIFEST))
    return f"is not a seqjax checkpoint, or its save was interrupted: no {checkpoint.MANIFEST}"


def garbage_meta(folder: str, rng: random.Random) -> str:
    Path(folder, "meta", "metadata").write_text('{"model": "fault-injection", "hidden_')
    return "file meta/metadata"


def forge_arrays(folder: str, rng: random.Random) -> str:
    """Swap in another state's arrays, written by orbax itself, and rehash every file into a
    self-consistent manifest: only the per-array checksums (of the values read back) can
    catch it."""
    other = os.path.join(os.path.dirname(folder), "forged")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    state = make_state(rng.randrange(3, 10**6))
    checkpointer.save(other, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    checkpointer.close()
    shutil.rmtree(os.path.join(folder, "state"))
    shutil.move(os.path.join(other, "state"), os.path.join(folder, "state"))
    shutil.rmtree(other)
    path = os.path.join(folder, checkpoint.MANIFEST)
    manifest = json.loads(Path(path).read_text())
    del manifest["manifest_sha256"]
    manifest["files"] = _files._hash_files(folder)
    manifest["manifest_sha256"] = _files._sha256(_files._canonical(manifest))
    Path(path).write_text(json.dumps(manifest))
    return "state leaf ['key'] does not match its checksum"


CORRUPTIONS: dict[str, Callable[[str, random.Random], str]] = {
    "truncate_largest": truncate_largest,
    "flip_byte_largest": flip_byte_largest,
    "flip_random_bit": flip_random_bit,
    "delete_random_file": delete_random_file,
    "delete_manifest": delete_manifest,
    "garbage_meta": garbage_meta,
    "forge_arrays": forge_arrays,
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A directory holding steps 1 and 2, saved once for the module."""
    directory = tmp_path_factory.mktemp("good")
    for step in (1, 2):
        checkpoint.save(directory, step, make_state(step), META)
    return directory


@pytest.fixture
def copy(good, tmp_path):
    target = tmp_path / "ck"
    shutil.copytree(good, target)
    return target


def _seeds(name: str) -> list[int]:
    random_faults = {"truncate_largest", "flip_random_bit", "delete_random_file", "forge_arrays"}
    return list(range(40 if SLOW else 3)) if name in random_faults else [0]


@pytest.mark.parametrize(
    "name, seed", [(name, seed) for name in CORRUPTIONS for seed in _seeds(name)]
)
def test_corrupt_newest_step_falls_back_to_the_older_good_one(copy, name, seed):
    expected = CORRUPTIONS[name](str(copy / "2"), random.Random(seed))
    before = snapshot(copy)
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match="restored step 1") as caught:
        restored = checkpoint.restore_verified(copy, make_state(0), META)
    assert restored.step == 1 and bitwise_equal(restored.state, make_state(1))
    [skipped] = restored.skipped
    assert skipped.step == 2 and skipped.path == str(copy / "2")
    assert expected in skipped.reason, skipped.reason
    assert len(caught) == 1 and skipped.reason in str(caught[0].message)
    assert snapshot(copy) == before  # nothing deleted or repaired behind the caller's back
    # An explicit request for the broken step is refused, naming the folder and the fault.
    with pytest.raises(checkpoint.CorruptCheckpointError, match="step 2 .*/ck/2") as err:
        checkpoint.restore(copy, make_state(0), META, step=2)
    assert skipped.reason in str(err.value)


def test_foreign_numeric_folder_is_passed_over_and_left_alone(copy):
    (copy / "9" / "sub").mkdir(parents=True)
    (copy / "9" / "sub" / "notes.txt").write_text("not a checkpoint")
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match="step 9 .*not a seqjax"):
        step, state = checkpoint.restore(copy, make_state(0), META)
    assert step == 2 and bitwise_equal(state, make_state(2))
    assert (copy / "9" / "sub" / "notes.txt").read_text() == "not a checkpoint"
    assert checkpoint.latest_step(copy) == 2 and checkpoint.check_compatible(copy, META) == 2


def test_no_step_verifies_is_one_clear_error_and_deletes_nothing(copy):
    truncate_largest(str(copy / "1"), random.Random(0))
    delete_manifest(str(copy / "2"), random.Random(0))
    before = snapshot(copy)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="no step in .* verifies") as err:
        checkpoint.restore(copy, make_state(0), META)
    assert "step 2 (" in str(err.value) and "step 1 (" in str(err.value)
    assert snapshot(copy) == before
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoint.restore(copy / "empty", make_state(0), META)
    with pytest.raises(FileNotFoundError, match="no step 5 in"):
        checkpoint.restore(copy, make_state(0), META, step=5)


def test_read_meta_names_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "7").mkdir()
    with pytest.raises(checkpoint.CorruptCheckpointError, match="7'.*is not a seqjax checkpoint"):
        checkpoint.read_meta(tmp_path)
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match="starts afresh"):
        assert checkpoint.check_compatible(tmp_path, META) is None


def test_incompatible_state_layout_is_refused_not_skipped(copy):
    pattern = r"\['opt_state'\]\['mu'\] was saved with shape \(64, 64\), the requested one"
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match=pattern):
        checkpoint.restore(copy, make_state(0, size=32), META)
    like = make_state(0)
    del like["key"]
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="holds a state with leaves"):
        checkpoint.restore(copy, like, META)
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="64, 65"):
        checkpoint.restore(copy, make_state(0), META | {"hidden_size": 65})


# --- non-finite states and retention -------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_is_refused_and_nothing_is_written(copy, bad):
    state = make_state(3)
    state["opt_state"]["mu"] = state["opt_state"]["mu"].at[5, 7].set(bad)
    before = snapshot(copy)
    with pytest.raises(checkpoint.NonFiniteStateError, match=r"\['opt_state'\]\['mu'\] \("):
        checkpoint.save(copy, 3, state, META)
    assert snapshot(copy) == before
    step, restored = checkpoint.restore(copy, make_state(0), META)
    assert step == 2 and bitwise_equal(restored, make_state(2))


def test_retention_counts_good_steps_only(tmp_path):
    directory = tmp_path / "ck"
    nan_state = make_state(3)
    nan_state["params"]["w"] = jnp.full_like(nan_state["params"]["w"], jnp.nan)
    checkpoint.save(directory, 1, make_state(1), META, max_to_keep=2)
    checkpoint.save(directory, 2, make_state(2), META, max_to_keep=2)
    for step in (3, 4):  # a diverged run: every later state is NaN
        with pytest.raises(checkpoint.NonFiniteStateError, match="refused step"):
            checkpoint.save(directory, step, nan_state, META, max_to_keep=2)
    shutil.copytree(directory / "2", directory / "5")  # an interrupted save: no manifest
    os.remove(directory / "5" / checkpoint.MANIFEST)
    checkpoint.save(directory, 6, make_state(6), META, max_to_keep=2)
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    assert steps == [2, 5, 6]  # 2 and 6 good; 5 neither counted nor deleted
    checkpoint.save(directory, 7, make_state(7), META, max_to_keep=2)
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    assert steps == [5, 6, 7]
    assert not any(p.name.endswith(_files._DELETING) for p in directory.iterdir())
    step, state = checkpoint.restore(directory, make_state(0), META)
    assert step == 7 and bitwise_equal(state, make_state(7))


def test_a_broken_folder_in_the_way_of_a_save_is_moved_to_quarantine(copy):
    flip_byte_largest(str(copy / "2"), random.Random(0))
    broken = snapshot(copy / "2")
    with pytest.warns(checkpoint.SkippedCheckpointWarning):
        step, _ = checkpoint.restore(copy, make_state(0), META)
    assert step == 1
    checkpoint.save(copy, 2, make_state(22), META)  # the resumed run reaches step 2 again
    [moved] = [p for p in (copy / checkpoint.QUARANTINE).iterdir() if p.is_dir()]
    assert moved.name.startswith("2.") and snapshot(moved) == broken
    assert "replaced by a new save of step 2" in Path(f"{moved}.reason.txt").read_text()
    step, state = checkpoint.restore(copy, make_state(0), META)
    assert step == 2 and bitwise_equal(state, make_state(22))


# --- unwritable paths: at once, never a hang -----------------------------------------------


def test_file_as_directory_and_file_as_parent_fail_at_once(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    for path in (file, file / "ck"):
        start = time.monotonic()
        with pytest.raises(checkpoint.CheckpointNotWritableError, match=str(file)):
            checkpoint.check_writable(path)
        with pytest.raises(checkpoint.CheckpointNotWritableError, match=str(file)):
            checkpoint.save(path, 1, make_state(1), META)
        with pytest.raises(checkpoint.CheckpointNotWritableError):
            checkpoint.CheckpointLock(path).acquire()
        assert time.monotonic() - start < 2.0
    assert file.read_text() == "x"


READ_ONLY_CHILD = """
import json, sys, time
from seqjax import checkpoint
import jax.numpy as jnp
out = {}
for name, call in [
    ("check_writable", lambda: checkpoint.check_writable(sys.argv[1])),
    ("save", lambda: checkpoint.save(sys.argv[1], 1, {"w": jnp.zeros(3)}, {})),
    ("lock", lambda: checkpoint.CheckpointLock(sys.argv[1]).acquire()),
]:
    start = time.monotonic()
    try:
        call()
        out[name] = ["no error", 0.0]
    except Exception as err:
        out[name] = [f"{type(err).__name__}: {err}", time.monotonic() - start]
print(json.dumps(out))
"""


def run_unprivileged(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python; as root, in a user namespace where permissions bind."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("root without `unshare`: permissions do not bind")
        prefix = ["unshare", "--user"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [*prefix, sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_read_only_directory_fails_at_once(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        proc = run_unprivileged(READ_ONLY_CHILD, str(directory))
    finally:
        directory.chmod(0o755)
    if proc.returncode and "unshare" in proc.stderr:
        pytest.skip(f"no user namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    for name, (error, seconds) in result.items():
        assert error.startswith("CheckpointNotWritableError: [Errno 13]"), (name, error)
        assert f"{directory}' cannot be written: Permission denied" in error
        assert seconds < 2.0, (name, seconds)
    assert list(directory.iterdir()) == []


# --- two writers, and kill -9 during saves -------------------------------------------------

WRITER_CHILD = """
import sys
from seqjax import checkpoint
from tests.test_checkpoint_faults import META, make_state
directory, size = sys.argv[1], int(sys.argv[2])
with checkpoint.CheckpointLock(directory):
    print("locked", flush=True)
    for step in range(1, 10**6):
        checkpoint.save(directory, step, make_state(step, size), META, max_to_keep=3)
        print("saved", step, flush=True)
"""


def start_writer(directory, size: int = 128) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-c", WRITER_CHILD, str(directory), str(size)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(proc: subprocess.Popen, word: str) -> list[str]:
    lines = []
    while not lines or not lines[-1].startswith(word):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer exited: {proc.stderr.read()[-3000:]}")
        lines.append(line.strip())
    return lines


def kill_during_save(directory, seed: int, size: int = 128) -> tuple[int, float]:
    """Start a writer, kill -9 it at a random time after its first save; return the newest
    step it reported saved and the delay."""
    rng = random.Random(seed)
    proc = start_writer(directory, size)
    try:
        wait_for(proc, "saved 1")
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    reported = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
    return max([1, *reported]), delay


@pytest.mark.parametrize("seed", range(25 if SLOW else 3))
def test_kill_9_during_saves_then_resume_from_the_newest_good_step(tmp_path, seed):
    directory = tmp_path / "ck"
    reported, _ = kill_during_save(directory, seed)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        restored = checkpoint.restore_verified(directory, make_state(0, 128), META)
    # The writer may die between a save's return and its report: one step more is fine.
    assert restored.step in (reported, reported + 1), (restored, reported)
    assert bitwise_equal(restored.state, make_state(restored.step, 128))
    assert all(s.step > restored.step for s in restored.skipped)
    # The run resumes: the kernel dropped the dead writer's lock, and the next save moves
    # whatever half-written folder is in its way aside.
    with checkpoint.CheckpointLock(directory):
        checkpoint.save(directory, restored.step + 1, make_state(99, 128), META)
    step, state = checkpoint.restore(directory, make_state(0, 128), META)
    assert step == restored.step + 1 and bitwise_equal(state, make_state(99, 128))


def test_second_writer_is_refused_at_once_and_a_killed_writer_never_blocks(tmp_path):
    directory = tmp_path / "ck"  # empty: both writers start from nothing
    first = start_writer(directory)
    try:
        wait_for(first, "locked")
        start = time.monotonic()
        pattern = f"is locked by another writer \\(pid {first.pid} on host "
        with pytest.raises(checkpoint.CheckpointLockedError, match=pattern):
            checkpoint.CheckpointLock(directory).acquire()
        with pytest.raises(checkpoint.CheckpointLockedError, match=pattern):
            checkpoint.save(directory, 1000, make_state(1000, 128), META)
        assert time.monotonic() - start < 1.0
        wait_for(first, "saved 2")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    assert not (directory / "1000").exists()
    with checkpoint.CheckpointLock(directory) as lock:  # the dead writer's lock is gone
        assert lock.held
        with pytest.raises(checkpoint.CheckpointLockedError, match="already locked by this"):
            checkpoint.CheckpointLock(directory).acquire()
        checkpoint.save(directory, 1000, make_state(1000, 128), META)  # under the held lock
    assert not lock.held
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert checkpoint.restore(directory, make_state(0, 128), META)[0] == 1000


def test_a_lock_file_deleted_under_a_held_lock_stops_the_next_save(tmp_path):
    with checkpoint.CheckpointLock(tmp_path):
        checkpoint.save(tmp_path, 1, make_state(1), META)
        os.remove(tmp_path / checkpoint.LOCK_FILE)  # another writer could now lock a new one
        with pytest.raises(checkpoint.CheckpointLockedError, match="deleted or replaced"):
            checkpoint.save(tmp_path, 2, make_state(2), META)
    assert checkpoint.latest_step(tmp_path) == 1

"""Fault-injection campaign for seqjax.checkpoint: does a run always resume from a good state?

Question: under corruption of the newest step, kill -9 during saves, two writers on one
directory, unwritable paths and diverged (NaN/Inf) states, does ``seqjax.checkpoint`` resume
from the newest good state bit for bit, name every fault in one clear error or warning, never
delete a good state, and never hang? And what does its verification cost against orbax alone?

* Corruptions (``CORRUPTIONS`` of ``tests/test_checkpoint_faults.py``), each on a fresh copy of
  a directory with good steps 1 and 2, applied to step 2: ``restore(step=None)`` must give
  step 1 bit for bit with one ``SkippedCheckpointWarning`` and no file changed
  (``recovered``); ``restore(step=2)`` must raise ``CorruptCheckpointError`` naming the
  folder (``clear error``). Random faults get ``--repeats`` trials, fixed ones one.
* kill -9: a writer process saves in a loop under ``CheckpointLock`` and is killed at a
  random time in [0, 1.5] s after its first save; the restored step must be the newest it
  reported (or one more) and equal what it saved; then a new writer takes the lock and saves.
* Two writers started 0.3 s apart on one empty directory: exactly one is refused with
  ``CheckpointLockedError`` at once, the other keeps saving.
* Unwritable paths (read-only directory, a file as the directory, a file as its parent):
  ``check_writable``, ``save`` and ``CheckpointLock`` each raise ``CheckpointNotWritableError``
  in under 2 s.
* Non-finite states: a NaN or +-Inf at a random position of a random leaf is refused with
  ``NonFiniteStateError`` and nothing is written.
* Cost: ``save`` (with its read-back) and ``restore`` (with its checks) against a bare orbax
  ``Checkpointer`` save and restore of the same state, median of ``--repeats`` rounds.

``intact`` counts corruptions that changed no value that is read (the step restored equals
what was saved). A ``hang`` is a call that has not returned after 60 s (in-process calls are
interrupted by SIGALRM; processes by their timeout).

Usage::

    python benchmarks/checkpoint_faults.py                 # -> benchmarks/results/
    python benchmarks/checkpoint_faults.py --repeats 100   # 100 trials of each random fault
    python benchmarks/checkpoint_faults.py --quick --out /tmp/bench
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import _harness as h

sys.path.insert(0, str(h.REPO_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from seqjax import checkpoint  # noqa: E402
from tests import test_checkpoint_faults as faults  # noqa: E402

SCRIPT = "checkpoint_faults"
TITLE = "seqjax.checkpoint under injected faults"
HANG_S = 60
RANDOM_FAULTS = {"truncate_largest", "flip_random_bit", "delete_random_file", "forge_arrays"}


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    def alarm(*_):
        raise Hang(f"no return after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tally(fault: str, section: str) -> dict:
    return {
        "section": section,
        "fault": fault,
        "tried": 0,
        "recovered": 0,
        "clear_error": 0,
        "silent_wrong": 0,
        "other_error": 0,
        "hangs": 0,
        "intact": 0,
        "examples": [],
    }


def note(row: dict, text: str) -> None:
    if len(row["examples"]) < 2 and text not in row["examples"]:
        row["examples"].append(text[:240])


def corruption_trials(root: Path, repeats: int) -> list[dict]:
    good = root / "good"
    for step in (1, 2):
        checkpoint.save(good, step, faults.make_state(step), faults.META)
    rows = []
    for name, corrupt in faults.CORRUPTIONS.items():
        row = tally(name, "corrupt newest step")
        for seed in range(repeats if name in RANDOM_FAULTS else 1):
            row["tried"] += 1
            target = root / f"{name}-{seed}"
            shutil.copytree(good, target)
            corrupt(str(target / "2"), random.Random(seed))
            before = faults.snapshot(target)
            try:
                with deadline(HANG_S), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    restored = checkpoint.restore_verified(
                        target, faults.make_state(0), faults.META
                    )
                skipped = [w for w in caught if w.category is checkpoint.SkippedCheckpointWarning]
                if (
                    restored.step == 1
                    and faults.bitwise_equal(restored.state, faults.make_state(1))
                    and len(skipped) == 1
                    and faults.snapshot(target) == before
                ):
                    row["recovered"] += 1
                    note(row, str(skipped[0].message).split("(left in place): ")[-1])
                elif (
                    restored.step == 2
                    and faults.bitwise_equal(restored.state, faults.make_state(2))
                    and not skipped
                ):  # the fault changed no byte that is read: step 2 is still good
                    row["intact"] += 1
                    note(row, "the fault changed no value; step 2 restored, intact")
                else:
                    row["silent_wrong"] += 1
                    note(row, f"restored step {restored.step}, warnings {len(skipped)}")
            except Hang:
                row["hangs"] += 1
            except Exception as err:  # noqa: BLE001 - the campaign counts whatever escapes
                row["other_error"] += 1
                note(row, f"{type(err).__name__}: {err}")
            try:
                with deadline(HANG_S):
                    _, state = checkpoint.restore(target, faults.make_state(0), faults.META, step=2)
                if not faults.bitwise_equal(state, faults.make_state(2)):
                    row["silent_wrong"] += 1
            except checkpoint.CorruptCheckpointError as err:
                row["clear_error"] += str(target / "2") in str(err)
            except Hang:
                row["hangs"] += 1
            except Exception as err:  # noqa: BLE001
                row["other_error"] += 1
                note(row, f"explicit step: {type(err).__name__}: {err}")
            shutil.rmtree(target)
        rows.append(row)
    return rows


def kill_trials(root: Path, kills: int) -> dict:
    row = tally("kill -9 at a random time during saves", "process killed")
    for seed in range(kills):
        row["tried"] += 1
        directory = root / f"kill-{seed}"
        try:
            reported, delay = faults.kill_during_save(directory, seed)
            with deadline(HANG_S), warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                restored = checkpoint.restore_verified(
                    directory, faults.make_state(0, 128), faults.META
                )
                like = faults.make_state(restored.step, 128)
                ok = restored.step in (reported, reported + 1) and faults.bitwise_equal(
                    restored.state, like
                )
                with checkpoint.CheckpointLock(directory):
                    checkpoint.save(directory, restored.step + 1, like, faults.META)
            if ok:
                row["recovered"] += 1
                skipped = [s.step for s in restored.skipped]
                note(
                    row,
                    f"killed after {delay:.2f} s: resumed step {restored.step}, skipped {skipped}",
                )
            else:
                row["silent_wrong"] += 1
                note(row, f"reported {reported}, restored {restored.step}")
        except Hang:
            row["hangs"] += 1
        except Exception as err:  # noqa: BLE001
            row["other_error"] += 1
            note(row, f"{type(err).__name__}: {err}")
        shutil.rmtree(directory, ignore_errors=True)
    return row


def two_writer_trials(root: Path, pairs: int) -> dict:
    row = tally("two writers 0.3 s apart, empty directory", "concurrent writers")
    for trial in range(pairs):
        row["tried"] += 1
        directory = root / f"pair-{trial}"
        first = faults.start_writer(directory)
        time.sleep(0.3)
        second = faults.start_writer(directory)
        procs = [first, second]
        try:
            outcome = {}
            deadline_at = time.monotonic() + HANG_S
            while len(outcome) < 1 and time.monotonic() < deadline_at:
                for proc in procs:
                    if proc.poll() is not None and proc.pid not in outcome:
                        outcome[proc.pid] = proc.stderr.read()
                time.sleep(0.05)
            if not outcome:
                row["hangs"] += 1
                continue
            [(pid, stderr)] = outcome.items()
            survivor = second if pid == first.pid else first
            faults.wait_for(survivor, "saved 2")
            refused = "CheckpointLockedError" in stderr and "is locked by another writer" in stderr
            row["clear_error"] += refused
            if not refused:
                row["other_error"] += 1
                note(row, stderr[-240:])
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            restored = checkpoint.restore_verified(
                directory, faults.make_state(0, 128), faults.META
            )
        if faults.bitwise_equal(restored.state, faults.make_state(restored.step, 128)):
            row["recovered"] += 1
            note(
                row,
                f"{'second' if pid == second.pid else 'first'} refused; resumed step "
                f"{restored.step}",
            )
        else:
            row["silent_wrong"] += 1
        shutil.rmtree(directory, ignore_errors=True)
    return row


def unwritable_trials(root: Path) -> list[dict]:
    rows = []
    file = root / "a-file"
    file.write_text("x")
    calls: dict[str, Callable] = {
        "check_writable": checkpoint.check_writable,
        "save": lambda p: checkpoint.save(p, 1, faults.make_state(1), faults.META),
        "CheckpointLock": lambda p: checkpoint.CheckpointLock(p).acquire(),
    }
    for label, path in (("file as the directory", file), ("file as its parent", file / "ck")):
        row = tally(label, "unwritable path")
        for name, call in calls.items():
            row["tried"] += 1
            start = time.monotonic()
            try:
                with deadline(HANG_S):
                    call(path)
                row["silent_wrong"] += 1
            except checkpoint.CheckpointNotWritableError as err:
                seconds = time.monotonic() - start
                row["clear_error"] += seconds < 2.0
                note(row, f"{name} {seconds:.3f} s: {err}")
            except Hang:
                row["hangs"] += 1
            except Exception as err:  # noqa: BLE001
                row["other_error"] += 1
                note(row, f"{type(err).__name__}: {err}")
        rows.append(row)
    row = tally("read-only directory", "unwritable path")
    directory = root / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        proc = faults.run_unprivileged(faults.READ_ONLY_CHILD, str(directory), timeout=HANG_S)
        result = json.loads(proc.stdout.splitlines()[-1])
        for name, (error, seconds) in result.items():
            row["tried"] += 1
            if error.startswith("CheckpointNotWritableError") and seconds < 2.0:
                row["clear_error"] += 1
                note(row, f"{name} {seconds:.3f} s: {error}")
            else:
                row["other_error"] += 1
                note(row, f"{name}: {error}")
    except subprocess.TimeoutExpired:
        row["tried"] += 1
        row["hangs"] += 1
    except BaseException as err:  # pytest.skip outside pytest, or no user namespace
        note(row, f"not run: {type(err).__name__}: {err}")
    finally:
        directory.chmod(0o755)
    rows.append(row)
    return rows


def non_finite_trials(root: Path, repeats: int) -> dict:
    row = tally("NaN or +-Inf at a random position", "diverged state")
    directory = root / "nonfinite"
    checkpoint.save(directory, 1, faults.make_state(1), faults.META)
    before = faults.snapshot(directory)
    rng = random.Random(0)
    for trial in range(repeats):
        row["tried"] += 1
        state = faults.make_state(2)
        leaves, treedef = jax.tree.flatten(state)
        floats = [i for i, leaf in enumerate(leaves) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        i = rng.choice(floats)
        flat = np.asarray(leaves[i]).copy().reshape(-1)
        flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, -np.inf])
        leaves[i] = jnp.asarray(flat.reshape(leaves[i].shape))
        try:
            checkpoint.save(directory, 2 + trial, jax.tree.unflatten(treedef, leaves), faults.META)
            row["silent_wrong"] += 1
        except checkpoint.NonFiniteStateError as err:
            row["clear_error"] += faults.snapshot(directory) == before
            note(row, str(err).split(": the state holds ")[-1])
    step, state = checkpoint.restore(directory, faults.make_state(0), faults.META)
    row["recovered"] = row["tried"] * (
        step == 1 and faults.bitwise_equal(state, faults.make_state(1))
    )
    return row


def cost_rows(root: Path, sizes_mb: Sequence[int], repeats: int) -> list[dict]:
    rows = []
    for mb in sizes_mb:
        rng = np.random.default_rng(0)
        state = {"w": jnp.asarray(rng.standard_normal(mb * 2**18), jnp.float32)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        directory = root / f"cost-{mb}"
        times = {"seqjax save": [], "orbax save": [], "seqjax restore": [], "orbax restore": []}
        for i in range(repeats + 1):  # the first round warms up
            start = time.perf_counter()
            checkpoint.save(directory, i, state, {})
            t_save = time.perf_counter() - start
            start = time.perf_counter()
            checkpoint.restore(directory, state, {})
            t_restore = time.perf_counter() - start
            raw = root / f"raw-{mb}-{i}"
            ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
            start = time.perf_counter()
            ckptr.save(
                raw,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({})
                ),
            )
            t_osave = time.perf_counter() - start
            start = time.perf_counter()
            ckptr.restore(raw, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            t_orestore = time.perf_counter() - start
            ckptr.close()
            shutil.rmtree(raw)
            if i:
                for key, t in zip(times, (t_save, t_osave, t_restore, t_orestore), strict=True):
                    times[key].append(t * 1e3)
        shutil.rmtree(directory)
        for key, samples in times.items():
            rows.append(
                {
                    "section": "cost",
                    "contender": key,
                    "state_mb": mb,
                    "median_ms": statistics.median(samples),
                    "min_ms": min(samples),
                    "max_ms": max(samples),
                    "n_samples": len(samples),
                }
            )
    return rows


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    root = Path(tempfile.mkdtemp(prefix="seqjax-ckpt-faults-"))
    try:
        kills = 1 if args.quick else args.repeats
        pairs = 1 if args.quick else max(1, args.repeats // 4)
        rec.add(corruption_trials(root, args.repeats))
        rec.add([kill_trials(root, kills)])
        rec.add([two_writer_trials(root, pairs)])
        rec.add(unwritable_trials(root))
        rec.add([non_finite_trials(root, args.repeats)])
        sizes = [1] if args.quick else [4, 64, 256]
        rec.add(cost_rows(root, sizes, 1 if args.quick else args.repeats // 8 or 1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rec


def summarize(rows: list[dict]) -> str:
    counted = [r for r in rows if r["section"] != "cost"]
    table = h.markdown_table(
        counted,
        [
            ("section", "section"),
            ("fault", "fault"),
            ("tried", "tried"),
            ("recovered", "recovered"),
            ("clear error", "clear_error"),
            ("silent wrong", "silent_wrong"),
            ("other error", "other_error"),
            ("hangs", "hangs"),
            ("intact", "intact"),
            ("example", lambda r: " / ".join(r["examples"]).replace("|", "/")),
        ],
    )
    cost = [r for r in rows if r["section"] == "cost"]
    by = {(r["state_mb"], r["contender"]): r["median_ms"] for r in cost}
    cost_table = h.markdown_table(
        [
            {
                "state_mb": mb,
                "save": by[mb, "seqjax save"],
                "osave": by[mb, "orbax save"],
                "restore": by[mb, "seqjax restore"],
                "orestore": by[mb, "orbax restore"],
            }
            for mb in sorted({r["state_mb"] for r in cost})
        ],
        [
            ("state MB", "state_mb"),
            ("seqjax save ms", "save"),
            ("orbax save ms", "osave"),
            ("ratio", lambda r: r["save"] / r["osave"]),
            ("seqjax restore ms", "restore"),
            ("orbax restore ms", "orestore"),
            ("ratio", lambda r: r["restore"] / r["orestore"]),
        ],
    )
    return (
        "recovered: resumed from the newest good state bit for bit (corruptions: with one "
        "SkippedCheckpointWarning and no file changed); clear error: one of "
        "seqjax.checkpoint's exceptions naming the folder or file (corruptions: "
        "`restore(step=2)`), in under 2 s for unwritable paths; intact: the fault changed "
        "no value that is read, and the step restored equals what was saved.\n\n"
        + table
        + "\n\nCost (median ms; save includes fsync, read-back and retention checks):\n\n"
        + cost_table
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=40)
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    bad = sum(r["silent_wrong"] + r["other_error"] + r["hangs"] for r in rec.rows if "tried" in r)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

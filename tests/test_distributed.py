"""Several processes on jax.distributed train as one, fail fast together, and resume.

The module fixture starts real processes (``tests/distributed_worker.py``) with a coordinator
on localhost and gloo CPU collectives, one host device each:

1. two processes train a small LSTM language model for 4 updates, each loading only its own
   streams, checkpointing every 2 (the carries are sharded across the processes), after one
   full-BPTT update of the initial parameters (``shard_map_bptt_step``) set aside; beside
   them, one process trains the same global batch on one device for 10 updates;
2. a byte of step 4's data is flipped; two processes resume, and both must pass over step 4
   and resume from step 2; after saving step 6 they keep training without saving; then
   process 1 is killed (SIGKILL) and process 0 must exit with an error, fast;
3. two new processes resume from the last checkpoint (step 6) and train to step 10.

The parameters after 1. and 3. must equal the one-device run's after 4 and 10 updates (and
the full-BPTT update its ``bptt_step``'s).
Start-up (importing JAX, joining, compiling) is most of the ~40 s this takes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import checkpoint, sharding
from seqjax.checkpoint import _files, _processes
from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER = 6  # the step after whose checkpoint process 1 is killed
DEADLINE = 120  # no phase may take longer: a hang fails the test instead of the CI job


def start(processes: int, out: Path, *options: str) -> list[subprocess.Popen]:
    return worker.launch(processes, out, *options, cwd=ROOT)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    return worker.wait(procs, DEADLINE)


results = worker.results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    ck = str(base / "checkpoints")
    began = time.monotonic()
    reference = start(
        1, base / "reference", "--reference", "--steps", "10", "--record-at", "4", "--bptt"
    )
    first = finish(
        start(2, base / "first", "--steps", "4", "--checkpoint-dir", ck, "--bptt", "--hold-lock")
    )
    timings = {"first": time.monotonic() - began}

    # Step 4's largest data file gets a flipped byte: the next run must pass over it.
    state_files = (Path(ck) / "4" / "state").rglob("*")
    victim = max((f for f in state_files if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    killed = start(
        2, base / "killed", "--steps", "1000", "--checkpoint-dir", ck,
        "--marker-at", str(KILL_AFTER), "--step-sleep", "0.2",
    )  # fmt: skip
    marker = base / "killed" / "marker-1"
    waited = time.monotonic()
    while not marker.exists() and killed[1].poll() is None:
        assert time.monotonic() - waited < DEADLINE, "process 1 never reached the marker"
        time.sleep(0.05)
    os.kill(killed[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = finish(killed[:1])[0]  # it printed what it resumed from before the kill
    survivor_s = time.monotonic() - killed_at
    killed[1].communicate()
    timings["killed"] = time.monotonic() - began - timings["first"]

    resumed = finish(start(2, base / "resumed", "--steps", "10", "--checkpoint-dir", ck))
    timings["resumed"] = time.monotonic() - began - timings["first"] - timings["killed"]
    print("phases (s):", {k: round(v, 1) for k, v in timings.items()})

    def ok(outcomes, out):
        return results(out, 2) if all(r[0] == 0 for r in outcomes) else None

    return {
        "first": first,
        "first_results": ok(first, base / "first"),
        "reference": finish(reference),
        "reference_result": results(base / "reference", 1)[0],
        "survivor": survivor,
        "survivor_s": survivor_s,
        "resumed": resumed,
        "resumed_results": ok(resumed, base / "resumed"),
        "checkpoints": ck,
    }


def _ok(outcomes):
    for code, stdout, stderr in outcomes:
        assert code == 0, stdout[-2000:] + stderr[-4000:]


# Adam divides by the root of the second moments: float32 rounding in the order of the
# cross-process sums moves a few parameters by ~1e-5 after 4 updates (measured 2.4e-5).
TOL = 2e-4


def test_two_processes_equal_one_device(run):
    _ok(run["first"])
    _ok(run["reference"])
    first, reference = run["first_results"], run["reference_result"]
    assert [r["rows"] for r in first] == [[0, 4], [4, 8]]  # each process loaded its own half
    assert all(r["processes"] == 2 and r["devices"] == 2 for r in first)
    want = np.asarray(reference["recorded"]["4"])
    assert np.max(np.abs(want - np.asarray(reference["params"]))) > 1e-2  # training moves them
    for r in first:
        np.testing.assert_allclose(r["params"], want, atol=TOL, rtol=0)
    np.testing.assert_allclose(first[0]["losses"], reference["losses"][:4], rtol=1e-5)


def test_full_bptt_step_over_two_processes_equals_one_device(run):
    _ok(run["first"])
    want = np.asarray(run["reference_result"]["bptt_params"])
    assert np.max(np.abs(want - np.asarray(run["reference_result"]["params"]))) > 1e-2
    for r in run["first_results"]:
        np.testing.assert_allclose(r["bptt_params"], want, atol=TOL, rtol=0)


def test_only_process_zero_logs(run):
    (_, out0, _), (_, out1, _) = run["first"]
    assert out0.count("step ") == 4 and "step " not in out1


def test_checkpoints_hold_sharded_carries_by_fingerprint(run):
    step, folder = _files._step_folders(run["checkpoints"])[-1]  # the oldest kept
    manifest = _files._read_manifest(step, folder)
    kinds = {e["path"].split("]")[0]: ("fingerprint" in e) for e in manifest["arrays"]}
    assert kinds == {"['carry'": True, "['opt_state'": False, "['params'": False, "['step'": False}
    assert manifest["version"] == 2 and manifest["written"]["processes"] == 2


def test_a_corrupt_step_is_passed_over_by_every_process(run):
    _, stdout, stderr = run["survivor"]
    assert "resumed from step 2" in stdout, stdout[-2000:]
    assert "passing over newer steps that failed verification" in stderr, stderr[-3000:]
    assert "step 4" in stderr and "does not match its checksum" in stderr


def test_a_killed_process_stops_the_others_with_an_error(run):
    code, _, stderr = run["survivor"]
    assert code != 0, stderr[-3000:]
    assert run["survivor_s"] < 30, run["survivor_s"]
    clear = ("Connection closed by peer", "heartbeat", "another task died", "fatal errors")
    assert any(text in stderr for text in clear), stderr[-3000:]


def test_a_restart_resumes_from_the_last_checkpoint(run):
    _ok(run["resumed"])
    resumed, reference = run["resumed_results"], run["reference_result"]
    assert all(r["restored_from"] == KILL_AFTER and r["step"] == 10 for r in resumed)
    for r in resumed:
        np.testing.assert_allclose(r["params"], reference["params"], atol=TOL, rtol=0)
    assert checkpoint.latest_step(run["checkpoints"]) == 10


def test_a_second_run_is_refused_in_every_process(tmp_path):
    """Another writer holds the directory: process 0 cannot take the run's lock, and both
    processes raise its error at once (process 1 learns it from process 0 instead of going on
    to train and wait for process 0 in a collective); nothing is written."""
    ck = tmp_path / "checkpoints"
    with checkpoint.CheckpointLock(ck):
        began = time.monotonic()
        run = start(2, tmp_path / "run", "--steps", "2", "--checkpoint-dir", str(ck), "--hold-lock")
        outcomes = finish(run)
        seconds = time.monotonic() - began
    for process, (code, _, stderr) in enumerate(outcomes):
        assert code != 0, f"process {process} was not refused"
        assert "CheckpointLockedError" in stderr and "is locked by another writer" in stderr, (
            stderr[-3000:]
        )
    assert "process 0: " in outcomes[1][2]  # process 1's error is process 0's, handed on
    assert seconds < 60, seconds
    assert checkpoint.latest_step(ck) is None


# --- in one process: the pieces the processes rely on ----------------------------------------

LEAVES = [
    jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7,
    jnp.arange(4, dtype=jnp.bfloat16) / 3,
    jnp.array([1 + 2j, -3j], jnp.complex64),
    jnp.array([True, False, True]),
    jnp.arange(5, dtype=jnp.int8),
    jnp.arange(3, dtype=jnp.float64) / 3,
    jax.random.key_data(jax.random.key(3)),
    jnp.asarray(3.5, jnp.float32),
]


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda x: f"{x.dtype}{list(x.shape)}")
def test_fingerprint_on_device_equals_fingerprint_on_host(leaf):
    lanes, nan, inf = _files._device_summary(leaf)
    host = np.asarray(leaf)
    assert _files._hex(np.asarray(v) for v in lanes) == _files._fingerprint(host)
    changed = host.copy().reshape(-1)
    changed[-1] = changed[0] if changed[-1] != changed[0] else not changed[0]
    assert _files._fingerprint(changed.reshape(host.shape)) != _files._fingerprint(host)
    assert int(nan) == 0 and int(inf) == 0


def test_fingerprint_sees_swapped_values_and_counts_non_finite():
    x = np.array([1.0, 2.0, np.nan, np.inf], np.float32)
    assert _files._fingerprint(x) != _files._fingerprint(x[[1, 0, 2, 3]])
    _, nan, inf = _files._device_summary(jnp.asarray(x))
    assert (int(nan), int(inf)) == (1, 1)


def test_one_process_agreement_is_the_plain_call():
    assert _processes.gather({"a": 1}) == [{"a": 1}]
    assert _processes.on_main(lambda: 5) == 5
    with pytest.raises(checkpoint.CorruptCheckpointError, match="bad"):
        _processes.agree(checkpoint.CorruptCheckpointError("bad"))
    rebuilt = _processes._rebuild(
        _processes._describe(checkpoint.CheckpointLockedError(11, "held")), 0
    )
    assert isinstance(rebuilt, checkpoint.CheckpointLockedError) and rebuilt.errno == 11
    assert "process 0: " in str(rebuilt)


def test_process_helpers_in_one_process(capsys):
    mesh = sharding.batch_mesh()
    assert sharding.process_rows(4 * mesh.size, mesh) == slice(0, 4 * mesh.size)
    assert sharding.is_main_process()
    sharding.main_process_print("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"
    grid = sharding.grid_mesh(batch=1, time=len(jax.devices()))
    assert grid.axis_names == ("batch", "time")
    with pytest.raises(ValueError, match="need"):
        sharding.grid_mesh(batch=len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="positive int"):
        sharding.grid_mesh(batch=0)

"""Do 4 processes on jax.distributed train as one device does, fail together, and resume?

Question: with ``--processes`` local processes (default 4) joined by a coordinator on
localhost, gloo CPU collectives and one host device each, training the small LSTM language
model of ``tests/distributed_worker.py`` (each process loads only its own streams; streamed
truncated BPTT with :func:`seqjax.sharding.shard_map_tbptt_scan`; checkpoints with the
carries sharded across processes):

1. do the parameters after ``N`` updates equal a one-process, one-device run of the same
   global batch (``max |diff|``)?
2. killed mid-run (SIGKILL), first a worker (the last process), later the coordinator
   (process 0): does every other process exit with an error, and how fast?
3. does a restart resume from the last checkpoint and reach the uninterrupted run's
   parameters?
4. what does an update cost (median over the updates after the first, which compiles),
   against the one-device run?

On a machine with fewer cores than processes the time column measures contention, not the
speed of a cluster; it is recorded so that a run on a real cluster has something to compare.

Usage::

    python benchmarks/multiprocess_training.py                 # 4 processes
    python benchmarks/multiprocess_training.py --quick --out /tmp/bench   # 2 processes
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _harness as h

sys.path.insert(0, str(h.REPO_ROOT))

import numpy as np  # noqa: E402

from tests import distributed_worker as worker  # noqa: E402

SCRIPT = "multiprocess_training"
TITLE = "Multi-process training on jax.distributed: equal, fail-fast, resumable"
DEADLINE = 300
CLEAR = ("Connection closed by peer", "heartbeat", "another task died", "fatal errors")


def plan(quick: bool) -> dict:
    if quick:
        return {"processes": 2, "first": 2, "kill_1": 4, "kill_2": 6, "last": 8}
    return {"processes": 4, "first": 6, "kill_1": 8, "kill_2": 10, "last": 14}


def start(processes: int, out: Path, *options: str) -> list:
    return worker.launch(processes, out, *options, cwd=h.REPO_ROOT)


def median_update_ms(result: dict) -> float:
    later = result["update_s"][1:] or result["update_s"]
    return 1e3 * statistics.median(later)


def kill_phase(base: Path, name: str, processes: int, victim: int, at: int, ck: str) -> dict:
    """Train until step ``at`` is saved, SIGKILL ``victim``, time the others' exits."""
    out = base / name
    options = ["--checkpoint-dir", ck, "--marker-at", str(at), "--step-sleep", "0.2"]
    procs = start(processes, out, "--steps", "100000", *options)
    marker = out / f"marker-{victim}"
    began = time.monotonic()
    while not marker.exists() and procs[victim].poll() is None:
        if time.monotonic() - began > DEADLINE:
            break
        time.sleep(0.05)
    os.kill(procs[victim].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    exits, texts = [], []
    for i, p in enumerate(procs):
        if i == victim:
            p.communicate()
            continue
        code, _, stderr = worker.wait([p], DEADLINE)[0]
        exits.append((code, time.monotonic() - killed_at))
        texts.append(stderr)
    return {
        "phase": name,
        "victim": victim,
        "killed_after_step": at,
        "survivors_failed": sum(code != 0 for code, _ in exits),
        "survivors": len(exits),
        "slowest_exit_s": max(s for _, s in exits),
        "clear_error": all(any(c in t for c in CLEAR) for t in texts),
    }


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    p = plan(args.quick)
    n = p["processes"]
    with tempfile.TemporaryDirectory() as tmp:
        base, ck = Path(tmp), str(Path(tmp) / "checkpoints")
        ref = start(1, base / "reference", "--reference", "--steps", str(p["last"]),
                    "--record-at", str(p["first"]))  # fmt: skip
        first = worker.wait(start(n, base / "first", "--steps", str(p["first"]),
                                  "--checkpoint-dir", ck), DEADLINE)  # fmt: skip
        assert all(code == 0 for code, _, _ in first), [e[-2000:] for _, _, e in first]
        assert worker.wait(ref, DEADLINE)[0][0] == 0
        reference = worker.results(base / "reference", 1)[0]
        got = worker.results(base / "first", n)
        want = np.asarray(reference["recorded"][str(p["first"])])
        rec.add([{
            "phase": "train", "processes": n, "steps": p["first"],
            "max_abs_diff_vs_one_device": max(float(np.max(np.abs(np.asarray(r["params"]) - want)))
                                              for r in got),
            "rows_per_process": [r["rows"] for r in got],
            "update_ms_median": median_update_ms(got[0]),
            "one_device_update_ms_median": median_update_ms(reference),
        }])  # fmt: skip
        print(rec.rows[-1])
        kills = [("kill a worker", n - 1, p["kill_1"])]
        if not args.quick:  # the quick run checks the script, one kill is enough for that
            kills.append(("kill the coordinator", 0, p["kill_2"]))
        for phase, victim, after in kills:
            rec.add([kill_phase(base, phase, n, victim, after, ck)])
            print(rec.rows[-1])
        last = worker.wait(start(n, base / "resumed", "--steps", str(p["last"]),
                                 "--checkpoint-dir", ck), DEADLINE)  # fmt: skip
        assert all(code == 0 for code, _, _ in last), [e[-2000:] for _, _, e in last]
        resumed = worker.results(base / "resumed", n)
        want = np.asarray(reference["params"])
        rec.add([{
            "phase": "resume", "processes": n, "steps": p["last"],
            "restored_from": resumed[0]["restored_from"],
            "max_abs_diff_vs_one_device": max(float(np.max(np.abs(np.asarray(r["params"]) - want)))
                                              for r in resumed),
        }])  # fmt: skip
        print(rec.rows[-1])
    return rec


def summarize(rows: Sequence[dict]) -> str:
    train, kills, resume = rows[0], rows[1:-1], rows[-1]
    n = train["processes"]
    return "\n".join([
        f"{n} processes on one machine, 1 host device each, coordinator on localhost, gloo "
        "collectives; heartbeat timeout 5 s. The model: embedding 8, two LSTMs of 16, "
        "vocabulary 16, 8 streams, windows of 6 steps.",
        "",
        "| check | result |",
        "|---|---|",
        f"| params after {train['steps']} updates vs one device (max abs diff) | "
        f"{train['max_abs_diff_vs_one_device']:.2e} |",
        f"| streams loaded per process | {train['rows_per_process']} |",
        f"| time per update, {n} processes / one device (ms, median) | "
        f"{train['update_ms_median']:.1f} / {train['one_device_update_ms_median']:.1f} |",
        *[
            f"| {k['phase']} (process {k['victim']}) after step {k['killed_after_step']}: "
            f"survivors that exited with an error, slowest exit, JAX's error named | "
            f"{k['survivors_failed']}/{k['survivors']}, {k['slowest_exit_s']:.1f} s, "
            f"{'yes' if k['clear_error'] else 'no'} |"
            for k in kills
        ],
        f"| restart: resumed from step, params after {resume['steps']} vs one device | "
        f"{resume['restored_from']}, {resume['max_abs_diff_vs_one_device']:.2e} |",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=1)
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    kills = rec.rows[1:-1]
    return 0 if all(k["survivors_failed"] == k["survivors"] for k in kills) else 1


if __name__ == "__main__":
    raise SystemExit(main())

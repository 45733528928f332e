"""`seqjax train-charlm` as two processes on jax.distributed trains as one process does.

The module fixture runs the real command (``python -m seqjax_cli train-charlm``) with a tiny
configuration:

1. two processes (coordinator on localhost, gloo CPU collectives, one host device each)
   train 6 updates, saving every 3 into one checkpoint directory; beside them, concurrently,
   one process trains the same global batch of 4 streams on 2 host devices for 10 updates;
2. the same two commands again, as a long run (``--steps 100000``), resume from step 6; once
   they have saved step 9, process 1 alone gets SIGTERM, and both must stop, saved.

The checkpoints of the two runs (read back here with the library's restore) must hold the
same state at steps 6 and 9, only process 0 may print, and the resumed processes must say
where they resumed. Start-up (importing JAX, joining, compiling) is most of its ~20-40 s
on 2 cores (the resumed processes reuse the first ones' compiled programs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import seqjax_cli
from seqjax import checkpoint
from seqjax.apps import char_lm, data
from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden-size", "16", "--embed-size", "8", "--batch-size", "4", "--window", "8"]
TINY += ["--length", "20", "--checkpoint-every", "3"]
DEADLINE = 120  # no phase may take longer: a hang fails the test instead of the CI job

# The one-process reference splits the 4 streams over 2 host devices in one process; the
# two processes split them the same way, one device each. Both sum the per-device losses
# and gradients once per window (psum), in-process or through gloo: a sum of two terms,
# which float addition gives the same either way. The tolerance allows for a collective
# that adds in another order or fuses differently (as test_distributed.py measures for
# Adam after a few updates, ~1e-5); measured here: 0 (bit-identical) at steps 6 and 10 (when
# the resumed run stopped at 10).
TOL = 1e-5
RESUMED_TO = 9  # the resumed run is stopped once it has saved this step (the reference's too)


def _train(corpus: str, directory: Path, steps: int, *options: str) -> list[str]:
    command = [sys.executable, "-m", "seqjax_cli", "train-charlm", "--corpus", corpus, *TINY]
    return [*command, "--steps", str(steps), "--checkpoint-dir", str(directory), *options]


def _start(argv: list[str], cache: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    # The resumed processes reuse the programs the first ones compiled (the same programs:
    # a cache hit is the executable a compile would give).
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    pipe = subprocess.PIPE
    return subprocess.Popen(argv, cwd=ROOT, stdout=pipe, stderr=pipe, text=True, env=env)


def _pair(corpus: str, directory: Path, steps: int, *options: str) -> list[subprocess.Popen]:
    """Two processes of one run, started together on a free localhost port."""
    joined = ["--devices", "1", "--coordinator", f"localhost:{worker.free_port()}"]
    joined += ["--num-processes", "2"]
    return [
        _start(
            _train(corpus, directory, steps, *joined, *options, "--process-id", str(i)),
            directory.parent / "jax-cache",
        )
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("charlm-distributed")
    corpus = base / "corpus.txt"
    corpus.write_bytes(data.python_stdlib_text(20_000))
    shared, alone = base / "two-processes", base / "one-process"
    began = time.monotonic()
    reference = _start(
        _train(str(corpus), alone, 10, "--devices", "2", "--length", "0"), base / "jax-cache"
    )
    first = worker.wait(_pair(str(corpus), shared, 6), DEADLINE)
    # Resumed as a long run; once step 9 is saved, SIGTERM to process 1 alone.
    pair = _pair(str(corpus), shared, 100_000, "--length", "0")
    waited = time.monotonic()
    while (checkpoint.latest_step(shared) or 0) < RESUMED_TO and all(
        p.poll() is None for p in pair
    ):
        assert time.monotonic() - waited < DEADLINE, f"the run never saved step {RESUMED_TO}"
        time.sleep(0.1)
    pair[1].send_signal(signal.SIGTERM)
    resumed = worker.wait(pair, DEADLINE)
    reference_out = worker.wait([reference], DEADLINE)
    print(f"phases: {time.monotonic() - began:.1f} s")
    return {
        "first": first,
        "resumed": resumed,
        "reference": reference_out,
        "shared": shared,
        "alone": alone,
    }


def _ok(outcomes) -> None:
    for code, stdout, stderr in outcomes:
        assert code == 0, stdout[-2000:] + stderr[-4000:]


def _state(directory: Path, step: int):
    config = char_lm.CharLMConfig(**checkpoint.read_meta(directory))
    like = char_lm.new_state(char_lm.CharLM(config))
    return checkpoint.restore(directory, like, config.meta(), step=step)[1]


def _assert_same_state(directory: Path, reference: Path, step: int) -> None:
    got, want = _state(directory, step), _state(reference, step)
    assert int(got.step) == step
    for path, a, b in zip(
        jax.tree_util.tree_leaves_with_path(got),
        jax.tree.leaves(got),
        jax.tree.leaves(want),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=TOL, rtol=0, err_msg=str(path[0])
        )


def _printed(stdout: str) -> list[str]:
    """What the command printed: gloo's own start-up line left out."""
    return [line for line in stdout.splitlines() if not line.startswith("[Gloo]")]


def test_two_processes_train_as_one_process(runs):
    _ok(runs["first"])
    _ok(runs["reference"])
    _assert_same_state(runs["shared"], runs["alone"], 6)
    first, later = _state(runs["alone"], 6), _state(runs["alone"], 10)
    moved = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(later.params), strict=True)
    )
    assert moved > 1e-3  # the updates move the parameters: the comparison means something


def test_only_process_zero_prints(runs):
    _ok(runs["first"])
    (_, out0, _), (_, out1, _) = runs["first"]
    printed = "\n".join(_printed(out0))
    assert "(2 processes x 1 device)" in printed
    for expected in ("step 6/6", "saved checkpoint step 6", "held-out bits per character"):
        assert expected in printed, printed
    assert "--- sample" in printed
    assert _printed(out1) == [], out1


def test_both_processes_resume_the_saved_run_and_continue(runs):
    (_, out0, _), (_, out1, _) = runs["resumed"]
    printed = "\n".join(_printed(out0))
    assert "resuming the run in" in printed and "from step 6" in printed, printed
    assert "loaded checkpoint step 6" in printed, printed
    assert _printed(out1) == [], out1
    _assert_same_state(runs["shared"], runs["alone"], RESUMED_TO)


def test_a_signal_to_one_process_stops_every_process_saved_and_says_so(runs):
    """Process 0, not signalled, stops after the same call as process 1 and reports it: the
    stop line with the resume command, status 143, no evaluation (it used to evaluate and exit
    0 as if the run were complete, and say nothing of the stop)."""
    (code0, out0, err0), (code1, out1, err1) = runs["resumed"]
    assert (code0, code1) == (128 + signal.SIGTERM, 128 + signal.SIGTERM), err0[-3000:] + err1
    printed = "\n".join(_printed(out0))
    saved = checkpoint.latest_step(runs["shared"])
    assert saved >= RESUMED_TO
    assert f"SIGTERM: stopped at update {saved} of 100000; checkpoint step {saved}" in printed
    assert "resume with: seqjax train-charlm --checkpoint-dir" in printed, printed
    assert "held-out bits per character" not in printed, printed
    assert _printed(out1) == [], out1


# --- the options, checked before any work (no JAX) -------------------------------------------


@pytest.mark.parametrize(
    "options, words",
    [
        (["--coordinator", "localhost"], "--coordinator: must be HOST:PORT"),
        (["--coordinator", "localhost:70000"], "a port in [1, 65535]"),
        (["--num-processes", "0"], "--num-processes: must be a positive integer"),
        (["--process-id", "-1"], "--process-id: must be a non-negative integer"),
        (["--coordinator", "h:1", "--num-processes", "2"], "go together; got only --coordinator"),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id must lie in [0, --num-processes = 2); got 2",
        ),
        (["--distributed", "--process-id", "0"], "cannot be combined with --process-id"),
        (
            ["--batch-size", "6", "--coordinator", "h:1", "--num-processes", "4"]
            + ["--process-id", "0"],
            "--batch-size (6 streams) must be divisible by the 4 devices of --num-processes 4",
        ),
    ],
)
def test_process_options_are_checked_without_jax(capsys, options, words):
    with pytest.raises(SystemExit) as info:
        seqjax_cli.parse(["train-charlm", *options])
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_the_streams_must_divide_over_every_process_device():
    values = dict(backprop=None, window=8, batch_size=6)
    assert seqjax_cli.check_combination({**values, "devices": 2}, 2) == (
        "--batch-size (6 streams) must be divisible by the 4 devices of --num-processes 2 x "
        "--devices 2"
    )
    problem = seqjax_cli.check_combination({**values, "devices": "auto"}, 4)
    assert problem is not None and "the 4 devices of --num-processes 4" in problem
    assert "(1 per process)" in problem
    assert seqjax_cli.check_combination({**values, "devices": 3}, 2) is None  # 6 % 6 == 0
    assert seqjax_cli.check_combination({**values, "devices": 1}, 3) is None


def test_ctrl_c_while_waiting_for_the_other_processes_ends_at_once(tmp_path):
    """Process 0 of 2 alone waits in jax.distributed's join; Ctrl-C must not wait for JAX's
    5-minute timeout (a Python handler would run only after it)."""
    port = worker.free_port()
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(data.python_stdlib_text(5_000))
    joined = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", "0"]
    proc = _start(_train(str(corpus), tmp_path / "ck", 2, *joined), tmp_path / "jax-cache")
    waited = time.monotonic()
    while not _listening(port):  # the coordinator's service is up: process 0 is joining
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - waited < DEADLINE, "the coordinator never started"
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT
    assert not (tmp_path / "ck").exists()  # nothing was written


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("localhost", port)) == 0

"""One process of a multi-process training run: the program that tests/test_distributed.py
and benchmarks/multiprocess_training.py start several times over.

A small language model (embedding, two stacked LSTMs, a readout) trained by streamed truncated
BPTT on synthetic token streams, one window per update. With ``--processes P`` the process
joins a run of ``P`` processes on ``jax.distributed`` (coordinator on localhost), loads only
the streams :func:`seqjax.sharding.process_rows` gives it, trains with
:func:`seqjax.sharding.shard_map_tbptt_scan` over every process's devices, prints from
process 0 only, and checkpoints with :mod:`seqjax.checkpoint` (the carries, split by stream,
are sharded across processes); with ``--hold-lock`` every process holds the directory's lock
for the whole run, without it each save takes it. With
``--reference`` it is the plain one-device run of the same global batch
(:func:`seqjax.tbptt_step`), the numbers the others must reproduce.

It resumes from the newest checkpoint in ``--checkpoint-dir``. After saving step
``--marker-at`` it writes ``marker-<process>`` in ``--out`` and keeps training without saving
(``--step-sleep`` seconds between updates), so that a test can kill a process mid-run.
At the end it writes ``result-<process>.json``: the parameters, the losses, where it resumed.

Usage::

    python -m tests.distributed_worker --processes 2 --process-id 0 --port 12345 \\
        --steps 4 --checkpoint-dir /tmp/ck --out /tmp/out
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Sizes: vocabulary, embedding, hidden, streams (the global batch), window.
V, E, H, B, K = 16, 8, 16, 8, 6
SEED = 7
META = {"model": "distributed-worker-lm", "V": V, "E": E, "H": H, "B": B, "K": K}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--devices", type=int, default=1, help="host devices per process")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, default=2, help="checkpoint every k updates")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--hold-lock", action="store_true", help="CheckpointLock for the run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--marker-at", type=int, default=None)
    parser.add_argument("--step-sleep", type=float, default=0.1)
    parser.add_argument("--record-at", type=int, nargs="*", default=[])
    parser.add_argument("--reference", action="store_true", help="one process, one device")
    parser.add_argument("--heartbeat", type=int, default=5)
    parser.add_argument("--cache-dir", default=None, help="JAX's persistent compilation cache")
    parser.add_argument(
        "--bptt", action="store_true", help="also one full-BPTT update (shard_map_bptt_step)"
    )
    return parser.parse_args(argv)


def stream(row: int, length: int):
    """Token stream ``row`` of the global batch: generated per row, so a process makes only
    its own rows (as it would read only its own shard of a corpus)."""
    import numpy as np

    return np.random.default_rng([SEED, row]).integers(0, V, size=length, dtype=np.int32)


def main(argv=None) -> int:
    args = parse(argv)
    from seqjax import sharding

    if args.reference:
        sharding.use_cpu_devices(1)
    else:
        sharding.initialize_distributed(
            f"localhost:{args.port}",
            args.processes,
            args.process_id,
            cpu_devices=args.devices,
            heartbeat_timeout_s=args.heartbeat,
            shutdown_timeout_s=args.heartbeat,
            initialization_timeout_s=60,
        )
    import jax
    import jax.numpy as jnp
    import numpy as np

    import seqjax as sj

    if args.cache_dir:  # later runs of the same programs (a restart) skip compiling them
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from seqjax import checkpoint

    embed, rnn, head = (
        sj.Embedding(V, E),
        sj.Stack((sj.LSTMCell(E, H), sj.LSTMCell(H, H))),
        sj.Dense(H, V),
    )
    optimizer = sj.default_optimizer(3e-2, max_norm=1.0)

    @jax.jit  # one compiled call, not one per operation: start-up time is the test's budget
    def initial():
        keys = jax.random.split(jax.random.key(SEED), 3)
        params = (embed.init(keys[0]), rnn.init(keys[1]), head.init(keys[2]))
        return params, optimizer.init(params)

    params, opt_state = initial()

    def forward(p, carry, ids):
        carry, ys = rnn(p[1], embed(p[0], ids), carry)
        return carry, head(p[2], ys)

    if args.reference:
        mesh, rows = None, slice(0, B)

        def mean_loss(p, carry, window):
            carry, logits = forward(p, carry, window[0])
            return sj.cross_entropy(logits, window[1]), carry

        step_fn = sj.tbptt_step(mean_loss, optimizer)
        run = jax.jit(lambda p, s, c, w: sj.tbptt_scan(step_fn, p, s, c, w))

        def batch_mean_loss(p, batch):  # [K, B] inputs and targets, from the zero state
            _, logits = forward(p, rnn.init_carry((batch[0].shape[1],)), batch[0])
            return sj.cross_entropy(logits, batch[1])

        bptt = jax.jit(sj.bptt_step(batch_mean_loss, optimizer))
        place = lambda tree, axis: jax.tree.map(jnp.asarray, tree)  # noqa: E731
        replicate = place
    else:
        mesh = sharding.batch_mesh()
        rows = sharding.process_rows(B, mesh)

        def summed_loss(p, carry, window):
            carry, logits = forward(p, carry, window[0])
            total = sj.cross_entropy(logits, window[1], average=False)
            return total, (jnp.asarray(window[1].size, total.dtype), carry)

        run = sharding.shard_map_tbptt_scan(summed_loss, optimizer, mesh)

        def batch_summed_loss(p, batch):  # this device's streams: summed loss, count
            _, logits = forward(p, rnn.init_carry((batch[0].shape[1],)), batch[0])
            total = sj.cross_entropy(logits, batch[1], average=False)
            return total, jnp.asarray(batch[1].size, total.dtype)

        bptt = sharding.shard_map_bptt_step(batch_summed_loss, optimizer, mesh, batch_axis=1)

        def place(tree, axis):
            return sharding.shard_batch(tree, mesh, axis=axis)

        def replicate(tree, axis=None):
            return sharding.replicate(tree, mesh)

    length = args.steps * K + 1
    local = np.stack([stream(r, length) for r in range(rows.start, rows.stop)])  # [b, L]
    state = {
        "params": replicate(params, None),
        "opt_state": replicate(opt_state, None),
        "carry": place(rnn.init_carry((rows.stop - rows.start,)), 0),
        "step": replicate(jnp.zeros((), jnp.int32), None),
    }
    bptt_params = None
    if args.bptt:  # one update over the first 2K steps of every stream, from the initial state
        ids = local[:, : 2 * K + 1].T
        batch = place((ids[:-1], ids[1:]), 1)
        bptt_params = flat(bptt(state["params"], state["opt_state"], batch)[0])
    restored_from = None
    if args.checkpoint_dir and args.hold_lock:  # one writer for the run; without it, each
        # save takes the lock for its write. Every process acquires, process 0 locks.
        checkpoint.CheckpointLock(args.checkpoint_dir).acquire()  # held until the process ends
    if args.checkpoint_dir and checkpoint.latest_step(args.checkpoint_dir) is not None:
        restored_from, state = checkpoint.restore(args.checkpoint_dir, state, META)
        sharding.main_process_print(f"resumed from step {restored_from}")

    me = jax.process_index()
    losses, recorded, update_s = [], {}, []
    step = int(state["step"])
    while step < args.steps:
        began = time.perf_counter()
        ids = local[:, step * K : step * K + K + 1].T  # [K + 1, b]
        window = place((ids[None, :-1], ids[None, 1:]), 2)  # [1, K, B] each
        p, s, c, metrics = run(state["params"], state["opt_state"], state["carry"], window)
        step += 1
        state = {"params": p, "opt_state": s, "carry": c, "step": state["step"] + 1}
        losses.append(float(metrics.loss[0]))  # waits for the update
        update_s.append(time.perf_counter() - began)
        sharding.main_process_print(f"step {step} loss {losses[-1]:.4f}")
        if step in args.record_at:
            recorded[step] = flat(p)
        past_marker = args.marker_at is not None and step > args.marker_at
        if args.checkpoint_dir and step % args.every == 0 and not past_marker:
            checkpoint.save(args.checkpoint_dir, step, state, META)
        if args.marker_at is not None and step == args.marker_at:
            (args.out / f"marker-{me}").write_text(str(step))
        if past_marker:
            time.sleep(args.step_sleep)
    result = {
        "process": me,
        "processes": jax.process_count(),
        "devices": len(jax.devices()),
        "rows": [rows.start, rows.stop],
        "step": step,
        "restored_from": restored_from,
        "losses": losses,
        "params": flat(state["params"]),
        "recorded": recorded,
        "update_s": update_s,  # the first includes compiling
        "bptt_params": bptt_params,
    }
    tmp = args.out / f"result-{me}.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, args.out / f"result-{me}.json")
    return 0


def flat(tree) -> list[float]:
    import jax
    import numpy as np

    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)]).tolist()


# --- starting a run of several local processes (for the test and the benchmark) ------------


def free_port() -> int:
    """A TCP port free on localhost now, for the coordinator."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(processes: int, out: Path, *options: str, cwd: Path | None = None) -> list:
    """Start ``processes`` workers joined by a coordinator on a free localhost port; their
    results go to ``out`` and compiled programs to the cache beside it."""
    out.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, "-m", "tests.distributed_worker", "--processes", str(processes)]
    common += ["--port", str(free_port()), "--out", str(out)]
    common += ["--cache-dir", str(out.parent / "jax-cache")]
    root = Path(__file__).resolve().parent.parent if cwd is None else cwd
    pipe = subprocess.PIPE
    return [
        subprocess.Popen(
            [*common, "--process-id", str(i), *options],
            cwd=root,
            stdout=pipe,
            stderr=pipe,
            text=True,
        )  # fmt: skip
        for i in range(processes)
    ]


def wait(procs: list, deadline: float) -> list[tuple[int, str, str]]:
    """``(returncode, stdout, stderr)`` of each process; one still running after ``deadline``
    seconds is killed (a hang fails its caller instead of blocking it)."""
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
            stderr += f"\n[killed after {deadline} s]"
        out.append((p.returncode, stdout, stderr))
    return out


def results(out: Path, count: int) -> list[dict]:
    """The ``result-<process>.json`` of processes ``0 .. count - 1``."""
    return [json.loads((out / f"result-{i}.json").read_text()) for i in range(count)]


if __name__ == "__main__":
    raise SystemExit(main())

"""One step's recurrent matmul on one XLA:CPU device: how much do the other cores add?

Question: a scan step's ``h @ W_h`` (``[B, H] @ [H, 4H]``, the LSTM's, at issue 7's four
shapes) is split by XLA:CPU over its intra-op threads. How much faster is it with every core
than pinned to one, and how steady is that over time? It is the floor of one device's LSTM
step, so it bounds what one device can reach against PyTorch's oneDNN LSTM, which uses every
core for the whole step.

* The loop: ``lax.scan`` over 512 steps of ``h = tanh((h @ W)[:, :H])``, ``W`` an
  argument (not a constant XLA could pre-pack), float32, so the matmul dominates.
* Each round starts two fresh worker processes, one allowed every core and one pinned to the
  first (``os.sched_setaffinity`` before JAX starts, so XLA sizes its thread pool to it);
  who goes first alternates; ``--repeats`` rounds. A worker compiles, warms up, then times
  12 windows of about 0.5 s each, one after another, and reports the median time per step
  of each window. The windows show how the rate moves within one process over seconds.
* Read ``all cores / one core``: 1 means the other cores added nothing, 1/cores is perfect
  scaling. ``best`` compares the fastest windows: what the machine gives when it is quiet.

Usage::

    python benchmarks/step_matmul.py                  # -> benchmarks/results/
    python benchmarks/step_matmul.py --quick --out /tmp/bench
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import _harness as h

SCRIPT = "step_matmul"
WORKER = "--step-worker"
TITLE = "One step's recurrent matmul on one XLA:CPU device: every core vs one core"

FULL_CONFIGS = [(32, 256), (8, 128), (1, 64), (128, 512)]  # (B, H) of issue 7's configs
QUICK_CONFIGS = [(2, 4)]


def worker(configs: list[list[int]], steps: int, windows: int, window_ms: float) -> list[dict]:
    """In this process (its affinity already set): per config, the time per step of each window."""
    import jax
    import jax.numpy as jnp

    rows = []
    for b, hid in configs:
        w = jax.random.normal(jax.random.key(0), (hid, 4 * hid), jnp.float32) / hid**0.5
        h0 = jnp.ones((b, hid), jnp.float32)

        @jax.jit
        def loop(h, w, hid=hid):
            def body(h, _):
                return jnp.tanh((h @ w)[:, :hid]), None

            return jax.lax.scan(body, h, None, length=steps)[0]

        for _ in range(3):
            jax.block_until_ready(loop(h0, w))
        start = time.perf_counter()
        jax.block_until_ready(loop(h0, w))
        calls = max(1, int(window_ms / 1e3 / (time.perf_counter() - start)))
        per_window = []
        for _ in range(windows):
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(loop(h0, w))
                samples.append(time.perf_counter() - start)
            per_window.append(1e6 * statistics.median(samples) / steps)
        rows.append({"B": b, "H": hid, "G": 4 * hid, "us_per_step": per_window})
    return rows


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    steps, windows, window_ms = (8, 2, 1.0) if args.quick else (512, 12, 500.0)
    cores = sorted(os.sched_getaffinity(0))
    job = json.dumps([configs, steps, windows, window_ms])
    for rnd in range(args.repeats):
        order = [cores, cores[:1]]
        for allowed in order if rnd % 2 == 0 else order[::-1]:
            done = subprocess.run(
                [sys.executable, __file__, WORKER, json.dumps(allowed), job],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            for row in json.loads(done.stdout.splitlines()[-1]):
                per_step = row.pop("us_per_step")
                gflop = 2 * row["B"] * row["H"] * row["G"] / 1e9
                rec.add(
                    [
                        {
                            **row,
                            "round": rnd,
                            "window": k,
                            "cores": len(allowed),
                            "us_per_step": us,
                            "gflops": gflop / (us / 1e6),
                        }
                        for k, us in enumerate(per_step)
                    ],
                    config=f"B{row['B']} H{row['H']}",
                    steps=steps,
                    dtype="float32",
                )
            print(f"round {rnd}: {len(allowed)} core(s) done", flush=True)
    return rec


def summarize(rows: Sequence[dict]) -> str:
    by: dict = {}
    for r in rows:
        by.setdefault(r["config"], {}).setdefault(r["cores"], []).append(r)
    most = max((c for g in by.values() for c in g), default=1)
    table = []
    for cfg, g in by.items():
        if most not in g or 1 not in g:
            continue
        many, one = ([r["us_per_step"] for r in g[c]] for c in (most, 1))
        rate = statistics.median(r["gflops"] for r in g[most])

        def spread(xs):
            q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
            mid = statistics.median(xs)
            return f"{mid:.1f} ({min(xs):.1f} / {q[0]:.1f}-{q[2]:.1f} / {max(xs):.1f})"

        fast = sum(x < 0.75 * statistics.median(one) for x in many) / len(many)
        table.append(
            {
                "config (G = 4H)": cfg,
                f"{most} cores: us per step, median (min / q1-q3 / max)": spread(many),
                "1 core": spread(one),
                "all cores / one core, medians": (
                    f"{statistics.median(many) / statistics.median(one):.2f}"
                ),
                "best windows": f"{min(many) / min(one):.2f}",
                "windows > 1.33x faster than 1 core": f"{100 * fast:.0f} %",
                f"GF/s {most} cores (median)": f"{rate:.0f}",
            }
        )
    return "\n".join(
        [
            "## Time per step of the looped recurrent matmul, per window",
            "",
            "Each window is the median over about 0.5 s of calls of one process; every round "
            "runs a fresh process on every core and one pinned to one core. Ratios < 1: the "
            "other cores help.",
            "",
            h.markdown_table(table, [(k, k) for k in table[0]] if table else []),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=4)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.quick and "--repeats" not in argv:
        args.repeats = 1  # every round is one fresh process per core set
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER]:  # one worker: affinity first, then JAX
        os.sched_setaffinity(0, json.loads(sys.argv[2]))
        print(json.dumps(worker(*json.loads(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(main())

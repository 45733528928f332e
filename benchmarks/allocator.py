"""Fresh memory on every call: what page faults cost seqjax and PyTorch on CPU, and a fix.

Question: XLA:CPU allocates an executable's temporaries (the scan's saved residuals, its
stacked outputs) on every call, and PyTorch allocates its LSTM workspace on every call.
glibc hands blocks above its mmap threshold (at most 32 MB, and every block of a thread's
arena above 64 MB) back to the kernel when they are freed, so the next call touches fresh
pages: one minor page fault and a page the kernel zeroes per 4 KiB. How much of an LSTM
forward+backward is that, for each library, and does the seqjax / PyTorch ratio change
when the memory is kept instead?

* Environments: ``default`` (as a user gets it) and ``kept``:
  ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=<16 GiB>:
  glibc.malloc.arena_max=1`` (no mmap'd blocks, no trimming, one arena, so freed blocks are
  reused by the next call). glibc only; set before the process starts.
* Contenders: seqjax ``unroll(LSTMCell)`` forward+backward (loss ``mean(y**2)``, gradients
  for every parameter and the input; its default derivative) on one device and, as
  ``seqjax xN``, with the batch split over N = usable cores host devices as in
  ``unroll_backward.py``; PyTorch ``nn.LSTM`` (``torch.set_num_threads`` = usable cores).
  Each runs in fresh processes, at issue 7's four shapes.
* Rounds: each round runs a process per (library, environment), in an order that rotates
  from round to round. A process warms up, then times ``calls`` calls per shape (median) and
  counts its minor page faults and kernel CPU time per call (``getrusage``).
* Read the ratio columns: ``kept / default`` per library, and seqjax / PyTorch in each
  environment.

Usage::

    python benchmarks/allocator.py                    # -> benchmarks/results/
    python benchmarks/allocator.py --quick --out /tmp/bench
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import _harness as h

SCRIPT = "allocator"
WORKER = "--allocator-worker"
TITLE = "Page faults on fresh memory: seqjax and PyTorch LSTM forward+backward, default vs kept"

KEPT = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1"
ENVIRONMENTS = {"default": None, "kept": KEPT}
FULL_CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128), (1, 1024, 32, 64), (128, 64, 128, 512)]
QUICK_CONFIGS = [(2, 5, 3, 4)]


def _timed(call, calls: int) -> dict:
    for _ in range(3):
        call()
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "faults_per_call": (after.ru_minflt - before.ru_minflt) / calls,
        "sys_ms_per_call": 1e3 * (after.ru_stime - before.ru_stime) / calls,
    }


def seqjax_worker(configs, calls: int, devices: int = 1) -> list[dict]:
    """seqjax on one device, or with the batch split over ``devices`` host devices exactly
    as ``unroll_backward.py`` splits it (``shard_map``, loss and gradients ``psum``-ed)."""
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    from unroll_backward import seqjax_split_fn

    import seqjax
    from seqjax import sharding

    rows = []
    for b, t, i, hid in configs:
        cell = seqjax.LSTMCell(i, hid)
        params = cell.init(jax.random.key(0), jnp.float32)
        xs = jax.random.normal(jax.random.key(1), (t, b, i), jnp.float32)

        def loss(p, x, cell=cell):
            return jnp.mean(seqjax.unroll(cell, p, x)[1] ** 2)

        if devices == 1:
            fn = jax.value_and_grad(loss, argnums=(0, 1))
        elif b % devices:
            rows.append(None)  # the batch does not split evenly
            continue
        else:
            mesh = sharding.batch_mesh()
            fn = seqjax_split_fn(cell, "auto", mesh, t * b * hid)  # as on one device
            params, xs = sharding.replicate(params, mesh), sharding.shard_batch(xs, mesh)
        grad = jax.jit(fn).lower(params, xs).compile()
        row = _timed(lambda g=grad, p=params, x=xs: jax.block_until_ready(g(p, x)), calls)
        row["temp_mb"] = getattr(grad.memory_analysis(), "temp_size_in_bytes", 0) / 2**20
        rows.append(row)
    return rows


def torch_worker(configs, calls: int) -> list[dict]:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = []
    for b, t, i, hid in configs:
        layer = torch.nn.LSTM(i, hid)
        xs = torch.randn(t, b, i, requires_grad=True)

        def call(layer=layer, xs=xs):
            layer.zero_grad(set_to_none=True)
            xs.grad = None
            (layer(xs)[0] ** 2).mean().backward()

        rows.append(_timed(call, calls))
    return rows


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    calls = 3 if args.quick else 15
    cores = len(os.sched_getaffinity(0))
    libraries = ["seqjax"] + ([f"seqjax x{cores}"] if cores > 1 else [])
    libraries += ["torch"] if importlib.util.find_spec("torch") else []
    jobs = [(lib, env) for lib in libraries for env in ENVIRONMENTS]
    for rnd in range(args.repeats):
        for lib, env in jobs[rnd % len(jobs) :] + jobs[: rnd % len(jobs)]:
            child = dict(os.environ)
            if ENVIRONMENTS[env]:
                child["GLIBC_TUNABLES"] = ENVIRONMENTS[env]
            done = subprocess.run(
                [sys.executable, __file__, WORKER, lib, json.dumps([configs, calls])],
                env=child, capture_output=True, text=True, check=True,
            )  # fmt: skip
            measured = json.loads(done.stdout.splitlines()[-1])
            for (b, t, i, hid), row in zip(configs, measured, strict=True):
                if row is None:
                    continue
                rec.add(
                    [{**row, "library": lib, "environment": env, "round": rnd}],
                    config=f"B{b} T{t} I{i} H{hid}", B=b, T=t, I=i, H=hid,
                    dtype="float32", cell="lstm", mode="fwd+bwd", calls=calls,
                    glibc_tunables=ENVIRONMENTS[env],
                )  # fmt: skip
            print(f"round {rnd}: {lib} {env} done", flush=True)
    return rec


def summarize(rows: Sequence[dict]) -> str:
    by: dict = {}
    for r in rows:
        by.setdefault(r["config"], {}).setdefault((r["library"], r["environment"]), []).append(r)

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    table = []
    for cfg, g in by.items():
        row = {"config": cfg, "seqjax temp MiB": med(g[("seqjax", "default")], "temp_mb")}
        libs = sorted({lib for lib, _ in g}, key=lambda lib: (lib == "torch", lib))
        for lib in libs:
            for env in ENVIRONMENTS:
                rs = g.get((lib, env))
                row[f"{lib} {env} ms"] = (
                    f"{med(rs, 'median_ms'):.1f} ({med(rs, 'faults_per_call'):.0f} faults)"
                    if rs
                    else None
                )
            if g.get((lib, "default")) and g.get((lib, "kept")):
                row[f"{lib} kept/default"] = med(g[(lib, "kept")], "median_ms") / med(
                    g[(lib, "default")], "median_ms"
                )
        for lib in libs[:-1] if "torch" in libs else []:
            for env in ENVIRONMENTS:
                if g.get((lib, env)) and g.get(("torch", env)):
                    row[f"{lib}/torch {env}"] = med(g[(lib, env)], "median_ms") / med(
                        g[("torch", env)], "median_ms"
                    )
        table.append(row)
    columns = list(dict.fromkeys(k for row in table for k in row))
    return "\n".join(
        [
            "## Median ms per forward+backward (minor page faults per call), medians over rounds",
            "",
            "Ratios < 1: the first named is faster. `seqjax temp MiB`: XLA's temporary buffer "
            "for one call, which the default environment page-faults in on every call.",
            "",
            h.markdown_table(table, [(k, k) for k in columns]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=6)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.quick and "--repeats" not in argv:
        args.repeats = 1  # every round is one fresh process per library and environment
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER]:  # one process, one library, its environment as started
        lib, job = sys.argv[2], json.loads(sys.argv[3])
        if lib == "torch":
            print(json.dumps(torch_worker(*job)))
        else:  # "seqjax" or "seqjax xN"
            devices = int(lib.partition(" x")[2] or 1)
            print(json.dumps(seqjax_worker(*job, devices=devices)))
        raise SystemExit(0)
    raise SystemExit(main())

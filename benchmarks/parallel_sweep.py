"""When does evaluating a recurrence in parallel over time beat the sequential scan?

Question: for sequence lengths T from 10^2 up, how do ``seqjax.unroll`` (``lax.scan``) and
``seqjax.unroll(method=...)`` with the parallel methods compare, forward and forward+backward
(gradient of ``mean(ys**2)`` w.r.t. the params and ``xs``)?

* GRU, H = 16: sequential scan vs DEER (dense Jacobians) vs quasi-DEER (analytic diagonal).
* minGRU, H = 16: sequential scan vs one associative scan.
* A training step (loss, gradients, SGD update) at T = 4096: minGRU (associative) vs a GRU of
  the same size (sequential), B8 I64 H64.

Every timed program is checked: the parallel outputs must match the sequential ones within
1e-4 relative (the script fails otherwise), and Newton rows record their iteration count.

Usage::

    python benchmarks/parallel_sweep.py                 # CPU: T = 1e2 .. 1e5
    python benchmarks/parallel_sweep.py --gpu-sweep     # accelerator: T = 1e2 .. 1e6 (~4 min H100)
    python benchmarks/parallel_sweep.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax import unroll, unroll_with_info

SCRIPT = "parallel_sweep"
TITLE = "Parallel-in-time evaluation vs the sequential scan, over sequence length T"
DTYPE = jnp.float32
B, I, H = 1, 16, 16
CPU_TS = (100, 1_000, 10_000, 100_000)
GPU_TS = (100, 1_000, 10_000, 100_000, 1_000_000)
QUICK_TS = (64,)
TRAIN = dict(B=8, T=4096, I=64, H=64)
QUICK_TRAIN = dict(B=2, T=64, I=8, H=8)
MODES = ("fwd", "fwd+bwd")


@functools.cache  # one function object per variant, so the harness compiles each once
def make_fn(cell, method: str | None, mode: str):
    """``(params, xs) -> ys`` or ``-> (loss, grads)``; ``method=None`` is ``seqjax.unroll``."""

    def forward(params, xs):
        if method is None:
            return seqjax.unroll(cell, params, xs)[1]
        return unroll(cell, params, xs, method=method)[1]

    if mode == "fwd":
        return forward
    return jax.value_and_grad(lambda p, x: jnp.mean(forward(p, x) ** 2), argnums=(0, 1))


@functools.cache
def make_train_step(cell, method: str | None):
    def loss(params, xs, targets):
        if method is None:
            ys = seqjax.unroll(cell, params, xs)[1]
        else:
            ys = unroll(cell, params, xs, method=method)[1]
        return jnp.mean((ys - targets) ** 2)

    def step(params, xs, targets):
        value, grads = jax.value_and_grad(loss)(params, xs, targets)
        return value, jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)

    return step


def _rel_diff(a, b) -> float:
    diffs = [
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        / (float(np.max(np.abs(np.asarray(y, np.float64)))) + 1e-30)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(diffs)


def _timing(args, t: int) -> dict:
    """Fewer rounds at long T, where one sequential call alone takes seconds."""
    if args.quick or t <= 10_000:
        return dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    return dict(repeats=3 if t <= 100_000 else 1, warmup=1, min_sample_s=0.0)


def sweep(args, rec: h.Recorder, ts: Sequence[int]) -> None:
    key = jax.random.key(0)
    cells = {
        "gru": (seqjax.GRUCell(I, H), (None, "deer", "quasi_deer")),
        "min_gru": (seqjax.MinGRUCell(I, H), (None, "associative")),
    }
    for t in ts:
        xs = jax.random.normal(jax.random.fold_in(key, t), (t, B, I), DTYPE)
        for cell_name, (cell, methods) in cells.items():
            params = cell.init(jax.random.fold_in(key, 1), DTYPE)
            # Past 10^5 steps: forward only, and no dense DEER (O(T D^3) work per iteration), so
            # the accelerator sweep stays within minutes; sequential calls alone take seconds.
            long = t > 100_000
            if long:
                methods = tuple(m for m in methods if m != "deer")
            iterations = {}
            for method in methods[1:]:
                if method in ("deer", "quasi_deer"):
                    info = jax.jit(
                        lambda p, x, m=method, c=cell: unroll_with_info(c, p, x, method=m)[2]
                    )(params, xs)
                    iterations[method] = (int(info.iterations), bool(info.converged))
            for mode in MODES[:1] if long else MODES:
                print(f"[T={t}] {cell_name} {mode}")
                contenders = [
                    h.Contender(
                        label=method or "sequential",
                        fn=make_fn(cell, method, mode),
                        args=(params, xs),
                        meta=dict(
                            method=method or "sequential",
                            iterations=iterations.get(method, (None, None))[0],
                            converged=iterations.get(method, (None, None))[1],
                        ),
                    )
                    for method in methods
                ]
                outputs: list = []
                rows = h.measure_group(contenders, outputs=outputs, **_timing(args, t))
                for row, out in zip(rows, outputs, strict=True):
                    row["max_rel_diff"] = _rel_diff(out, outputs[0])
                    if row["max_rel_diff"] > 1e-4:
                        sys.exit(
                            f"{cell_name} {row['label']} T={t} {mode}: differs from sequential"
                        )
                rec.add(
                    rows, experiment="sweep", config=f"B{B} T{t} I{I} H{H}", B=B, T=t, I=I, H=H,
                    dtype="float32", cell=cell_name, mode=mode,
                )  # fmt: skip
                rec.write(summarize(rec.rows), TITLE)  # partial results survive a time limit


def train(args, rec: h.Recorder) -> None:
    size = QUICK_TRAIN if args.quick else TRAIN
    b, t, i, hid = size["B"], size["T"], size["I"], size["H"]
    key = jax.random.key(1)
    xs = jax.random.normal(key, (t, b, i), DTYPE)
    targets = jax.random.normal(jax.random.fold_in(key, 1), (t, b, hid), DTYPE)
    contenders = []
    for label, cell, method in (
        ("gru_sequential", seqjax.GRUCell(i, hid), None),
        ("min_gru_associative", seqjax.MinGRUCell(i, hid), "associative"),
        ("min_gru_sequential", seqjax.MinGRUCell(i, hid), None),
    ):
        params = cell.init(jax.random.fold_in(key, 2), DTYPE)
        contenders.append(
            h.Contender(
                label, make_train_step(cell, method), (params, xs, targets), {"method": label}
            )
        )
    print(f"[train T={t}]")
    rows = h.measure_group(contenders, **_timing(args, t))
    rec.add(
        rows, experiment="train", config=f"B{b} T{t} I{i} H{hid}", B=b, T=t, I=i, H=hid,
        dtype="float32", cell="train_step", mode="train",
    )  # fmt: skip


def summarize(rows: Sequence[dict]) -> str:
    out = []
    sweep_rows = [r for r in rows if r["experiment"] == "sweep"]
    ts = sorted({r["T"] for r in sweep_rows})
    by = {(r["cell"], r["mode"], r["label"], r["T"]): r for r in sweep_rows}
    table, crossings = [], []
    for cell, methods in (("gru", ("deer", "quasi_deer")), ("min_gru", ("associative",))):
        for mode in MODES:
            for method in methods:
                cross = None
                for t in ts:
                    seq, par = (
                        by.get((cell, mode, "sequential", t)),
                        by.get((cell, mode, method, t)),
                    )
                    if seq is None or par is None:
                        continue
                    speedup = seq["median_ms"] / par["median_ms"]
                    if speedup > 1 and cross is None:
                        cross = t
                    table.append(
                        {
                            "cell": cell, "mode": mode, "method": method, "T": t,
                            "sequential": seq["median_ms"], "parallel": par["median_ms"],
                            "speedup": speedup, "iterations": par.get("iterations"),
                        }
                    )  # fmt: skip
                crossings.append(
                    {
                        "cell": cell, "mode": mode, "method": method,
                        "first T faster": cross if cross is not None else "none in sweep",
                    }
                )  # fmt: skip
    out.append("## Sweep (B1 I16 H16, float32): median ms per call\n")
    out.append(
        h.markdown_table(
            table,
            [
                ("cell", "cell"),
                ("mode", "mode"),
                ("method", "method"),
                ("T", "T"),
                ("sequential ms", "sequential"),
                ("parallel ms", "parallel"),
                ("speed-up", "speedup"),
                ("Newton iterations", "iterations"),
            ],
        )  # fmt: skip
    )
    out.append("\n## First swept T at which the parallel method is faster\n")
    out.append(
        h.markdown_table(
            crossings,
            [
                ("cell", "cell"),
                ("mode", "mode"),
                ("method", "method"),
                ("first T faster", "first T faster"),
            ],
        )  # fmt: skip
    )
    train_rows = {r["label"]: r for r in rows if r["experiment"] == "train"}
    if train_rows:
        base = train_rows["gru_sequential"]["median_ms"]
        cfg = next(iter(train_rows.values()))["config"]
        out.append(f"\n## Training step ({cfg}): loss, gradients, SGD update\n")
        out.append(
            h.markdown_table(
                [
                    {"contender": k, "ms": r["median_ms"], "speedup": base / r["median_ms"]}
                    for k, r in train_rows.items()
                ],
                [
                    ("contender", "contender"),
                    ("median ms", "ms"),
                    ("speed-up vs sequential GRU", "speedup"),
                ],
            )  # fmt: skip
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument(
        "--gpu-sweep", action="store_true", help="T up to 1e6 (for an accelerator; ~4 min H100)"
    )
    extra.add_argument("--max-t", type=int, default=None, help="drop swept T above this")
    known, rest = extra.parse_known_args(argv)
    args = h.parse_args(__doc__.splitlines()[0], rest)
    ts = QUICK_TS if args.quick else GPU_TS if known.gpu_sweep else CPU_TS
    if known.max_t is not None:
        ts = tuple(t for t in ts if t <= known.max_t)
    if jax.default_backend() != "cpu":
        # Every contender in full float32 (not TF32), so the 1e-4 agreement check is meaningful.
        jax.config.update("jax_default_matmul_precision", "highest")
    rec = h.Recorder(SCRIPT, args)
    sweep(args, rec, ts)
    train(args, rec)
    rec.write(summarize(rec.rows), TITLE)


if __name__ == "__main__":
    main()

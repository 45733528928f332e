"""Forward+backward of an LSTM/GRU layer: seqjax autodiff vs seqjax custom vs PyTorch vs Flax.

Question: how fast is ``jax.value_and_grad`` of ``mean(unroll(cell, params, xs)[1] ** 2)``
(gradients for every parameter and the input) with ``backward="autodiff"`` and with
``backward="custom"`` (the structured derivative, seqjax/_backward.py), against Flax linen
``nn.RNN(OptimizedLSTMCell | GRUCell)`` and, when installed, PyTorch ``nn.LSTM`` / ``nn.GRU``
(oneDNN on CPU, cuDNN on GPU) on the same shapes, float32, time-major, and what fraction of
the machine's large-matmul rate each reaches.

* Work per call: the matmul FLOPs of forward+backward, ``2 T B G (I + H)`` forward and twice
  that backward (``G`` = 4H for the LSTM, 3H for the GRU); ``matmul_fraction`` = that work /
  median time / the rate of one large ``[4096, 1024] @ [1024, 1024]`` float32 matmul measured
  in the same run (``matmul_gflops`` in every row).
* JAX contenders are timed interleaved by ``_harness.measure_group``; PyTorch is timed in the
  same process right after each group, with the same warm-up and repeat counts (median of
  rounds of ``number`` calls), ``torch.set_num_threads`` = usable cores.
* Read ``ratio_vs_torch`` and ``ratio_vs_flax`` (seqjax median / peer median; < 1: seqjax
  faster) per row, and ``custom/autodiff``.

Usage::

    python benchmarks/unroll_backward.py                  # full sizes -> benchmarks/results/
    python benchmarks/unroll_backward.py --quick --out /tmp/bench
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import _harness as h
import flax.linen as nn
import jax
import jax.numpy as jnp

import seqjax
from seqjax.interop.flax_linen import params_to_linen

SCRIPT = "unroll_backward"
TITLE = "unroll forward+backward: seqjax autodiff vs custom backward vs PyTorch vs Flax"

# (B, T, I, H), the four configurations of issue 7.
FULL_CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128), (1, 1024, 32, 64), (128, 64, 128, 512)]
QUICK_CONFIGS = [(2, 5, 3, 4)]
CELLS = ("lstm", "gru")
DTYPE = jnp.float32


def config_name(b: int, t: int, i: int, hid: int) -> str:
    return f"B{b} T{t} I{i} H{hid}"


def matmul_gflops(args) -> float:
    """GFLOP/s of one large float32 matmul on this backend (median of interleaved rounds)."""
    n, k, m = (256, 256, 256) if args.quick else (4096, 1024, 1024)
    a = jax.random.normal(jax.random.key(0), (n, k), DTYPE)
    b = jax.random.normal(jax.random.key(1), (k, m), DTYPE)
    rows = h.measure_group(
        [h.Contender("matmul", jnp.matmul, (a, b))],
        repeats=max(args.repeats, 3),
        warmup=args.warmup,
        min_sample_s=args.min_sample_ms / 1e3,
    )
    return 2 * n * k * m / (rows[0]["median_ms"] / 1e3) / 1e9


def work_gflop(name: str, b: int, t: int, i: int, hid: int) -> float:
    gates = {"lstm": 4, "gru": 3}[name] * hid
    return 3 * 2 * t * b * gates * (i + hid) / 1e9


def seqjax_fn(cell, backward: str):
    def loss(params, xs):
        return jnp.mean(seqjax.unroll(cell, params, xs, backward=backward)[1] ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def flax_fn(name: str, hid: int):
    cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[name](hid)
    model = nn.RNN(cell, time_major=True)

    def loss(variables, xs):
        return jnp.mean(model.apply(variables, xs) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def torch_time(name: str, b: int, t: int, i: int, hid: int, args) -> dict | None:
    """Median ms of one forward+backward of ``nn.LSTM`` / ``nn.GRU``, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[name](i, hid).to(device)
    xs = torch.randn(t, b, i, device=device, requires_grad=True)

    def call():
        layer.zero_grad(set_to_none=True)
        xs.grad = None
        loss = (layer(xs)[0] ** 2).mean()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()

    def sample(number):
        start = time.perf_counter()
        for _ in range(number):
            call()
        return (time.perf_counter() - start) / number

    per_call = min(sample(1) for _ in range(max(args.warmup, 1)))
    number = max(1, int(args.min_sample_ms / 1e3 / per_call) + 1) if per_call > 0 else 1
    ms = [1e3 * sample(number) for _ in range(args.repeats)]
    return {
        "label": "torch",
        "library": "torch",
        "median_ms": statistics.median(ms),
        "q1_ms": min(ms) if len(ms) < 2 else statistics.quantiles(ms, n=4)[0],
        "q3_ms": max(ms) if len(ms) < 2 else statistics.quantiles(ms, n=4)[2],
        "number": number,
        "torch_device": device,
        "torch_version": torch.__version__,
    }


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    rate = matmul_gflops(args)
    print(f"large matmul: {rate:.1f} GFLOP/s")
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    key = jax.random.key(0)
    for b, t, i, hid in configs:
        cfg = config_name(b, t, i, hid)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (t, b, i), DTYPE)
        for name in CELLS:
            cell = {"lstm": seqjax.LSTMCell, "gru": seqjax.GRUCell}[name](i, hid)
            params = cell.init(jax.random.fold_in(key, 2), DTYPE)
            variables = {"params": {"cell": params_to_linen(cell, params)["params"]}}
            print(f"[{cfg}] {name}")
            group = [
                h.Contender("seqjax autodiff", seqjax_fn(cell, "autodiff"), (params, xs),
                            {"library": "seqjax", "backward": "autodiff"}),
                h.Contender("seqjax custom", seqjax_fn(cell, "custom"), (params, xs),
                            {"library": "seqjax", "backward": "custom"}),
                h.Contender("flax", flax_fn(name, hid), (variables, xs), {"library": "flax"}),
            ]  # fmt: skip
            rows = h.measure_group(group, **timing)
            peer = torch_time(name, b, t, i, hid, args)
            if peer is not None:
                rows.append(peer)
                print(f"  torch ({peer['torch_device']:<4})             median "
                      f"{peer['median_ms']:9.3f} ms")  # fmt: skip
            gflop = work_gflop(name, b, t, i, hid)
            for row in rows:
                row["matmul_fraction"] = gflop / (row["median_ms"] / 1e3) / rate
            rec.add(rows, config=cfg, B=b, T=t, I=i, H=hid, dtype="float32", cell=name,
                    mode="fwd+bwd", work_gflop=gflop, matmul_gflops=rate)  # fmt: skip
    return rec


def summarize(rows: Sequence[dict]) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["cell"]), {})[r["label"]] = r
    table = []
    for (cfg, cell), g in groups.items():
        auto, cust, fx, pt = (
            g.get(k) for k in ("seqjax autodiff", "seqjax custom", "flax", "torch")
        )
        best = min((auto, cust), key=lambda r: r["median_ms"])
        table.append(
            {
                "config": cfg,
                "cell": cell,
                "autodiff": auto["median_ms"],
                "custom": cust["median_ms"],
                "flax": fx["median_ms"],
                "torch": pt["median_ms"] if pt else None,
                "custom/autodiff": cust["median_ms"] / auto["median_ms"],
                "best/flax": best["median_ms"] / fx["median_ms"],
                "best/torch": best["median_ms"] / pt["median_ms"] if pt else None,
                "best matmul frac": best["matmul_fraction"],
            }
        )
    rate = rows[0]["matmul_gflops"] if rows else float("nan")
    parts = [
        "## Forward+backward, median ms",
        "",
        f"Large-matmul rate in this run: {rate:.1f} GFLOP/s. `best` = the faster seqjax "
        "backward; ratios < 1: seqjax faster. `best matmul frac` = matmul FLOPs of "
        "forward+backward / time / the large-matmul rate.",
        "",
        h.markdown_table(table, [(k, k) for k in table[0]] if table else []),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=15)
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

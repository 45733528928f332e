"""Forward+backward of an LSTM/GRU layer: seqjax autodiff vs seqjax custom vs PyTorch vs Flax.

Question: how fast is ``jax.value_and_grad`` of ``mean(unroll(cell, params, xs)[1] ** 2)``
(gradients for every parameter and the input) with ``Scan(derivative="autodiff")`` and with
``Scan(derivative="structured")`` (rows labelled ``custom``; seqjax/methods/_structured.py),
against Flax linen
``nn.RNN(OptimizedLSTMCell | GRUCell)`` and, when installed, PyTorch ``nn.LSTM`` / ``nn.GRU``
(oneDNN on CPU, cuDNN on GPU) on the same shapes, float32, time-major, and what fraction of
the machine's large-matmul rate each reaches.

* Work per call: the matmul FLOPs of forward+backward, ``2 T B G (I + H)`` forward and twice
  that backward (``G`` = 4H for the LSTM, 3H for the GRU); ``matmul_fraction`` = that work /
  median time / the rate of one large ``[4096, 1024] @ [1024, 1024]`` float32 matmul measured
  in the same run (``matmul_gflops`` in every row).
* JAX contenders are timed interleaved by ``_harness.measure_group``; PyTorch is timed with
  the same warm-up and repeat counts (median of rounds of ``number`` calls),
  ``torch.set_num_threads`` = usable cores, in three bursts per configuration: all
  configurations before any JAX work, then just before and just after that configuration's
  JAX group. On CPU each burst is a process of its own, started after 2 s without JAX work:
  threads XLA:CPU leaves spinning slowed PyTorch, in this process and in one started right
  after. PyTorch's time is its fastest burst (``torch_burst_medians_ms`` keeps all three):
  on this shared 2-core machine it moved up to 2x between runs, and seqjax is held to its
  best.
* Read ``ratio_vs_torch`` and ``ratio_vs_flax`` (seqjax median / peer median; < 1: seqjax
  faster) per row, and ``custom/autodiff``.

* ``--devices N`` (default 2, set before JAX initialises): the process holds ``N`` host
  devices (on CPU, ``jax_num_cpu_devices``), and each group adds the data-parallel rows
  ``seqjax autodiff xN`` / ``seqjax custom xN``: the batch split over the ``N`` devices with
  ``shard_map`` (:mod:`seqjax.sharding`), each device differentiating its shard, the loss and
  parameter gradients summed once with ``psum``. Where ``B`` is not divisible by ``N`` the
  rows are absent. One XLA:CPU device threads each step's matmul over the cores but runs the
  rest of the step (elementwise work, dispatch) on one thread, so small steps leave cores
  idle; with ``N`` = cores every core runs a scan, so the ``xN`` rows against PyTorch
  (oneDNN on every core) are the like-for-like comparison of the whole machine.
  The single-device rows run on device 0 in the same process.

Usage::

    python benchmarks/unroll_backward.py                  # full sizes -> benchmarks/results/
    python benchmarks/unroll_backward.py --quick --out /tmp/bench
    python benchmarks/unroll_backward.py --devices 1      # single-device rows only
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import _harness as h
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax import sharding
from seqjax.apps import bench
from seqjax.interop.flax_linen import params_to_linen

# Importing JAX does not start its backends: the host device count can still be set here.
if __name__ == "__main__":  # host devices must exist before JAX initialises
    jax.config.update("jax_num_cpu_devices", int(h.early_option("--devices", "2")))

SCRIPT = "unroll_backward"
TORCH_WORKER = "--torch-worker"
TITLE = "unroll forward+backward: seqjax autodiff vs custom backward vs PyTorch vs Flax"

# (B, T, I, H), the four configurations of issue 7.
FULL_CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128), (1, 1024, 32, 64), (128, 64, 128, 512)]
QUICK_CONFIGS = [(2, 5, 3, 4)]
CELLS = ("lstm", "gru")
DTYPE = jnp.float32
TORCH_SETTLE_S = 2.0  # idle seconds before a PyTorch process starts, for XLA's threads to stop


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


# The rows keep the labels of earlier results: "custom" is the structured derivative.
METHODS = {
    "auto": seqjax.Scan(),
    "autodiff": seqjax.Scan(derivative="autodiff"),
    "custom": seqjax.Scan(derivative="structured"),
}


def seqjax_fn(cell, backward: str):
    def loss(params, xs):
        return jnp.mean(seqjax.unroll(cell, params, xs, method=METHODS[backward])[1] ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def prototype_lstm(params, xs):
    """``ys [T, B, H]`` of an LSTM from a zero carry, with a hand-derived ``custom_vjp``.

    Not part of seqjax: a measured upper bound for the structured derivative. The forward
    scan saves only ``y``, ``c`` and the four activated gates ``[B, 4H]`` per step; the reverse
    scan computes the gate cotangents ``dG [B, 4H]`` (one write) and ``dG W_h^T`` per step;
    then ``dW_h``, ``dW_x``, ``db`` and ``dxs`` are one large matmul (or sum) each.
    Forward mode (``jax.jvp``) is not supported, which seqjax's structured derivative keeps.
    """
    w_x, w_h, b = params
    zero = jnp.zeros((xs.shape[1], w_h.shape[0]), xs.dtype)

    def scan_forward(params, xs):
        w_x, w_h, b = params

        def body(carry, x):
            h, c = carry
            i, f, g, o = jnp.split(x @ w_x + b + h @ w_h, 4, axis=-1)
            si, sf, tg, so = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
            c = sf * c + si * tg
            h = so * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([si, sf, tg, so], axis=-1))

        return jax.lax.scan(body, (zero, zero), xs)[1]

    @jax.custom_vjp
    def run(params, xs):
        return scan_forward(params, xs)[0]

    def fwd(params, xs):
        ys, cs, acts = scan_forward(params, xs)
        return ys, (params, xs, ys, cs, acts)

    def bwd(res, d_ys):
        params, xs, ys, cs, acts = res
        w_x, w_h, _ = params
        w_h_t = w_h.T

        def body(carry, slices):
            dh, dc = carry
            dy, act, c, c_prev = slices
            si, sf, tg, so = jnp.split(act, 4, axis=-1)
            dh = dh + dy
            tc = jnp.tanh(c)
            do = dh * tc * so * (1 - so)
            dc = dc + dh * so * (1 - tc * tc)
            di, df, dg = (
                dc * tg * si * (1 - si),
                dc * c_prev * sf * (1 - sf),
                dc * si * (1 - tg * tg),
            )
            d_gates = jnp.concatenate([di, df, dg, do], axis=-1)
            return (d_gates @ w_h_t, dc * sf), d_gates

        c_prev = jnp.concatenate([zero[None], cs[:-1]])
        slices = (d_ys, acts, cs, c_prev)
        d_gates = jax.lax.scan(body, (zero, zero), slices, reverse=True)[1]
        flat = d_gates.reshape(-1, d_gates.shape[-1])
        h_prev = jnp.concatenate([zero[None], ys[:-1]]).reshape(-1, zero.shape[-1])
        d_params = type(params)(xs.reshape(-1, xs.shape[-1]).T @ flat, h_prev.T @ flat, flat.sum(0))
        return d_params, d_gates @ w_x.T

    run.defvjp(fwd, bwd)
    return run(params, xs)


def prototype_fn():
    def loss(params, xs):
        return jnp.mean(prototype_lstm(params, xs) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def split_fn(apply, mesh, count: int):
    """Forward+backward of ``sum(apply(params, xs) ** 2) / count`` with the batch split over
    ``mesh`` by ``shard_map``: each device differentiates its shard, then the loss and the
    parameter gradients are summed once with ``psum``. The same recipe for every library, so
    the x``N`` rows compare them on the same cores. Inputs from ``sharding.replicate``
    (params) and ``sharding.shard_batch(xs, mesh)``."""

    def local(params, xs):
        value, (d_params, d_xs) = jax.value_and_grad(
            lambda p, x: jnp.sum(apply(p, x) ** 2) / count, argnums=(0, 1)
        )(params, xs)
        value, d_params = jax.lax.psum((value, d_params), sharding.AXIS)
        return value, (d_params, d_xs)

    return sharding.data_parallel(
        local, mesh, in_axes=(None, 1), out_axes=(None, (None, 1)), use_shard_map=True
    )


def seqjax_split_fn(cell, backward: str, mesh, count: int):
    """``seqjax_fn`` split over ``mesh`` (see ``split_fn``)."""
    method = METHODS[backward]
    return split_fn(lambda p, x: seqjax.unroll(cell, p, x, method=method)[1], mesh, count)


def flax_model(name: str, hid: int) -> nn.RNN:
    return nn.RNN({"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[name](hid), time_major=True)


def flax_fn(name: str, hid: int):
    model = flax_model(name, hid)

    def loss(variables, xs):
        return jnp.mean(model.apply(variables, xs) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def torch_times(jobs: list[tuple], args, when: str) -> dict:
    """``{(cell, B, T, I, H): row}``: median ms of one forward+backward of ``nn.LSTM`` /
    ``nn.GRU`` per job; empty without torch. ``when`` names this burst in the rows.

    On CPU, PyTorch runs in a process of its own, after ``TORCH_SETTLE_S`` without JAX work:
    threads XLA:CPU leaves spinning took cores from oneDNN's (LSTM B32/T128 72-102 ms in a
    process started right after a JAX group, 38-45 ms alone).
    """
    if importlib.util.find_spec("torch") is None:
        return {}
    timing = (args.warmup, args.repeats, args.min_sample_ms)
    if jax.default_backend() != "cpu":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return {job: {**_torch_time(device, *job, *timing), "torch_burst": when} for job in jobs}
    time.sleep(TORCH_SETTLE_S)
    work = [["cpu", *job, *timing] for job in jobs]
    done = subprocess.run(
        [sys.executable, __file__, TORCH_WORKER, json.dumps(work)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = json.loads(done.stdout.splitlines()[-1])
    pairs = zip(jobs, rows, strict=True)
    return {job: {**row, "torch_process": "separate", "torch_burst": when} for job, row in pairs}


def fastest_burst(bursts: list[dict]) -> dict | None:
    """The burst with the lowest median, recording every burst's: on a shared machine
    PyTorch's time moved up to 2x between runs, so seqjax is held to PyTorch's best."""
    bursts = [b for b in bursts if b is not None]
    if not bursts:
        return None
    best = min(bursts, key=lambda b: b["median_ms"])
    return {**best, "torch_burst_medians_ms": {b["torch_burst"]: b["median_ms"] for b in bursts}}


def _torch_time(device, name, b, t, i, hid, warmup, repeats, min_sample_ms) -> dict:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # every usable core
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

    per_call = min(sample(1) for _ in range(max(warmup, 1)))
    number = max(1, int(min_sample_ms / 1e3 / per_call) + 1) if per_call > 0 else 1
    ms = [1e3 * sample(number) for _ in range(repeats)]
    return {
        "label": "torch",
        "library": "torch",
        "median_ms": statistics.median(ms),
        "q1_ms": min(ms) if len(ms) < 2 else statistics.quantiles(ms, n=4)[0],
        "q3_ms": max(ms) if len(ms) < 2 else statistics.quantiles(ms, n=4)[2],
        "number": number,
        "torch_device": device,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    jobs = [(n, *c) for c in configs for n in CELLS]
    first = torch_times(jobs, args, "before any JAX")
    rate = matmul_gflops(args)
    print(f"large matmul: {rate:.1f} GFLOP/s")
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    mesh = sharding.batch_mesh()
    n_dev = mesh.size
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
            proto = {"library": "prototype", "backward": "hand-derived vjp"}
            if name == "lstm":
                group.append(h.Contender("prototype lstm vjp", prototype_fn(), (params, xs), proto))
            if n_dev > 1 and b % n_dev == 0:
                split_args = (sharding.replicate(params, mesh), sharding.shard_batch(xs, mesh))
                count = t * b * hid
                if name == "lstm":
                    group.append(
                        h.Contender(
                            f"prototype lstm vjp x{n_dev}",
                            split_fn(prototype_lstm, mesh, count),
                            split_args,
                            {**proto, "devices": n_dev},
                        )
                    )
                flax_split_args = (sharding.replicate(variables, mesh), split_args[1])
                group.append(
                    h.Contender(
                        f"flax x{n_dev}",
                        split_fn(flax_model(name, hid).apply, mesh, count),
                        flax_split_args,
                        {"library": "flax", "devices": n_dev},
                    )
                )
                for backward in ("autodiff", "custom"):
                    group.append(
                        h.Contender(
                            f"seqjax {backward} x{n_dev}",
                            seqjax_split_fn(cell, backward, mesh, count),
                            split_args,
                            {"library": "seqjax", "backward": backward, "devices": n_dev},
                        )
                    )
            job = (name, b, t, i, hid)
            before = torch_times([job], args, "before the group").get(job)
            outputs: list = []
            rows = h.measure_group(group, **timing, outputs=outputs)
            after = torch_times([job], args, "after the group").get(job)
            for row, out in zip(rows, outputs, strict=True):
                # Flax's parameter gradients are a dict in its own layout: for Flax compare
                # the loss and the input gradient, which every contender returns alike.
                got, ref = (out, outputs[0])  # outputs[0]: seqjax autodiff
                if row["library"] == "flax":
                    got, ref = (got[0], got[1][1]), (ref[0], ref[1][1])
                row["max_abs_diff_vs_autodiff"] = max(
                    float(np.max(np.abs(np.asarray(a) - np.asarray(r))))
                    for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True)
                )
                row["max_rel_diff_vs_autodiff"] = bench.max_relative_difference(ref, got)
                if row["max_rel_diff_vs_autodiff"] > bench.tolerance():
                    raise SystemExit(
                        f"[{cfg}] {name}: {row['label']} differs from seqjax autodiff by "
                        f"{row['max_rel_diff_vs_autodiff']:.1e} relative (> "
                        f"{bench.tolerance():g}): it does not compute the same function, so "
                        "its time is not comparable"
                    )
            peer = fastest_burst([first.get(job), before, after])
            if peer is not None:
                rows.append(peer)
                print(f"  torch ({peer['torch_device']:<4})             median "
                      f"{peer['median_ms']:9.3f} ms")  # fmt: skip
            gflop = work_gflop(name, b, t, i, hid)
            for row in rows:
                row["matmul_fraction"] = gflop / (row["median_ms"] / 1e3) / rate
            for row in rows:
                row.setdefault("devices", 1)
            rec.add(rows, config=cfg, B=b, T=t, I=i, H=hid, dtype="float32", cell=name,
                    mode="fwd+bwd", work_gflop=gflop, matmul_gflops=rate,
                    host_devices=n_dev)  # fmt: skip
    return rec


def _gap(ratio: float | None, target: float) -> str:
    """``met`` or how much faster seqjax must get: ``ratio`` = seqjax / peer, met at <= target."""
    if ratio is None:
        return "n/a"
    if ratio <= target:
        return f"met ({ratio:.2f})"
    return f"{ratio:.2f}: needs {100 * (1 - target / ratio):.0f}% less time"


def summarize(rows: Sequence[dict]) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["cell"]), {})[r["label"]] = r
    n_dev = rows[0].get("host_devices", 1) if rows else 1
    table, split_table, targets, proto_table = [], [], [], []
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
                "torch bursts": (
                    " / ".join(f"{v:.1f}" for v in pt["torch_burst_medians_ms"].values())
                    if pt and "torch_burst_medians_ms" in pt
                    else None
                ),
                "custom/autodiff": cust["median_ms"] / auto["median_ms"],
                "best/flax": best["median_ms"] / fx["median_ms"],
                "best/torch": best["median_ms"] / pt["median_ms"] if pt else None,
                "best matmul frac": best["matmul_fraction"],
            }
        )
        split = [g[k] for k in (f"seqjax autodiff x{n_dev}", f"seqjax custom x{n_dev}") if k in g]
        best_split = min(split, key=lambda r: r["median_ms"]) if split else None
        fx_split = g.get(f"flax x{n_dev}")
        if split:
            split_table.append(
                {
                    "config": cfg,
                    "cell": cell,
                    f"autodiff x{n_dev}": split[0]["median_ms"],
                    f"custom x{n_dev}": split[1]["median_ms"],
                    f"flax x{n_dev}": fx_split["median_ms"] if fx_split else None,
                    "torch": pt["median_ms"] if pt else None,
                    "torch threads": pt.get("torch_threads") if pt else None,
                    "best split": best_split["backward"],
                    "best split/flax split": (
                        best_split["median_ms"] / fx_split["median_ms"] if fx_split else None
                    ),
                    "best split/torch": best_split["median_ms"] / pt["median_ms"] if pt else None,
                    "best split matmul frac": best_split["matmul_fraction"],
                }
            )
        protos = [g[k] for k in ("prototype lstm vjp", f"prototype lstm vjp x{n_dev}") if k in g]
        if protos:
            proto_table.append(
                {
                    "config": cfg,
                    "cell": cell,
                    "prototype 1 device": protos[0]["median_ms"],
                    f"prototype x{n_dev}": protos[1]["median_ms"] if len(protos) > 1 else None,
                    "torch": pt["median_ms"] if pt else None,
                    "1 device/torch": protos[0]["median_ms"] / pt["median_ms"] if pt else None,
                    f"x{n_dev}/torch": (
                        protos[1]["median_ms"] / pt["median_ms"] if pt and len(protos) > 1 else None
                    ),
                    "max abs grad diff vs autodiff": "{:.1e}".format(
                        max(r.get("max_abs_diff_vs_autodiff", 0.0) for r in protos)
                    ),
                }
            )
        overall = min([best, *split], key=lambda r: r["median_ms"])
        matmul_target = cfg.startswith(("B32 T128", "B128 T64"))
        flax_target = not cfg.startswith("B1 ")
        targets.append(
            {
                "config": cfg,
                "cell": cell,
                "fastest seqjax": f"{overall['label']} {overall['median_ms']:.1f} ms",
                "faster than torch (1 device)": _gap(
                    best["median_ms"] / pt["median_ms"] if pt else None, 1.0
                ),
                f"faster than torch (x{n_dev})": _gap(
                    best_split["median_ms"] / pt["median_ms"] if pt and best_split else None,
                    1.0,
                ),
                ">= 1.5x faster than flax (1 device)": _gap(
                    best["median_ms"] / fx["median_ms"] if flax_target else None, 1 / 1.5
                ),
                f">= 1.5x faster than flax (x{n_dev} each)": _gap(
                    best_split["median_ms"] / fx_split["median_ms"]
                    if flax_target and best_split and fx_split
                    else None,
                    1 / 1.5,
                ),
                "1.5x flax's fastest needs (matmul frac)": (
                    f"{1.5 * max(r['matmul_fraction'] for r in (fx, fx_split) if r):.2f}"
                    if flax_target
                    else "n/a"
                ),
                ">= 50% matmul rate (fastest)": (
                    (
                        f"met ({overall['matmul_fraction']:.2f})"
                        if overall["matmul_fraction"] >= 0.5
                        else f"{overall['matmul_fraction']:.2f} of 0.50"
                    )
                    if matmul_target
                    else "n/a"
                ),
            }
        )
    rate = rows[0]["matmul_gflops"] if rows else float("nan")
    parts = [
        "## Forward+backward on one device, median ms",
        "",
        f"Large-matmul rate in this run: {rate:.1f} GFLOP/s. `best` = the faster seqjax "
        "backward; ratios < 1: seqjax faster. `best matmul frac` = matmul FLOPs of "
        "forward+backward / time / the large-matmul rate. "
        + (
            "seqjax and Flax run on one XLA:CPU device, which threads each step's matmul but "
            "runs the rest of the step on one thread; PyTorch uses every core, in processes "
            "of its own, and its time is its fastest burst (`torch bursts`: before any JAX / "
            "before the group / after it)."
            if jax.default_backend() == "cpu"
            else f"Backend: {jax.default_backend()}; PyTorch on the same device."
        ),
        "",
        h.markdown_table(table, [(k, k) for k in table[0]] if table else []),
    ]
    if split_table:
        parts += [
            "",
            f"## Forward+backward with the batch split over {n_dev} host devices, median ms",
            "",
            f"`shard_map` over {n_dev} host CPU devices (`seqjax.sharding`), each running the "
            "unroll and its derivative on its part of the batch; loss and parameter gradients "
            f"summed once with `psum`. PyTorch runs with {n_dev} threads on the same cores, so "
            "both sides use the whole machine: this is the like-for-like row. B1 cannot be "
            "split and has no row here.",
            "",
            h.markdown_table(split_table, [(k, k) for k in split_table[0]]),
        ]
    if proto_table:
        parts += [
            "",
            "## Prototype, not in seqjax: a hand-derived LSTM derivative",
            "",
            "`prototype_lstm` in this script: `custom_vjp` whose forward scan saves y, c and "
            "the activated gates per step and whose reverse scan writes one `[B, 4H]` gate "
            "cotangent per step, then one large matmul per weight/input gradient. It shows what "
            f"the structured derivative can reach on {jax.default_backend()} when its reverse "
            "step is this lean; seqjax's structured derivative is generic over cells and keeps "
            "forward mode: compare its column above.",
            "",
            h.markdown_table(proto_table, [(k, k) for k in proto_table[0]]),
        ]
    parts += [
        "",
        "## Issue 7's targets, as measured in this run",
        "",
        "Ratio = seqjax / peer median (met at <= 1 against PyTorch, <= 0.67 against Flax, the "
        "only other JAX library timed here); 'needs X% less time' is how far seqjax is. "
        f"`x{n_dev} each`: seqjax and Flax both split the batch over the host devices with the "
        "same `shard_map` recipe. `1.5x flax's fastest needs`: the `matmul frac` a run 1.5x "
        "faster than Flax's faster row would have (forward+backward matmul FLOPs / time / the "
        "large-matmul rate). That rate is one large matmul's, not a ceiling: a scan step's "
        "matmul can run faster (benchmarks/step_matmul.py).",
        "",
        h.markdown_table(targets, [(k, k) for k in targets[0]] if targets else []),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=15, devices=2)
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [TORCH_WORKER]:  # torch_times' clean process: one JSON list out
        print(json.dumps([_torch_time(*job) for job in json.loads(sys.argv[2])]))
        raise SystemExit(0)
    raise SystemExit(main())

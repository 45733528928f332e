"""The benchmark suite: seqjax against every peer library, LSTM/GRU/Elman, sweeps over T, B, H.

Question: how fast is one seqjax recurrent layer (``seqjax.unroll`` with its defaults) next to
Flax linen and NNX, Equinox, Haiku, PyTorch (oneDNN on CPU, cuDNN on GPU) and, on a GPU,
cuDNN through ``jax.experimental.rnn``, forward and forward+backward (loss ``mean(ys**2)``,
gradients for every parameter and the input), float32, time-major ``xs [T, B, I]``?

* Same function: every peer runs on seqjax's weights, converted exactly (``_peers.py``), and
  its outputs or loss and every gradient are checked against seqjax's before it is timed; a
  peer that disagrees is reported as ``mismatch`` and not timed. Peers that are not installed
  or cannot run here (``jax.cudnn`` off GPU, Equinox without an Elman cell) are ``skipped``.
* Timing (``seqjax.apps.bench.run_group``): JAX contenders compiled ahead of time, compile time
  reported apart (``compile_s``); PyTorch eager (``first_call_s``); interleaved rounds,
  median and quartiles. Memory where the backend reports it (``peak_bytes``, ``peak_source``).
* Experiments: the default four configs of issue 7; ``--sweep-T`` (T = 128 .. 16384 at B8 I64
  H128: time should grow linearly in T, compile time stay flat); ``--sweep-BH`` (B in 1, 8,
  32, 128 by H in 64 .. 512 at T128 I64).

Results: ``<device>-suite.{jsonl,md,png}`` (and ``-suite-sweep-T``, ``-suite-sweep-BH``) under
``--out``. The figure to read is the ratio peer / seqjax (> 1: seqjax faster).

Usage::

    python benchmarks/suite.py                        # the four configs, every peer installed
    python benchmarks/suite.py --sweep-T --cells lstm --peers torch flax.linen
    python benchmarks/suite.py --sweep-BH --modes fwd+bwd
    python benchmarks/suite.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

# With PyTorch in the same process on a GPU, JAX must not take 75 % of the memory up front;
# growing on demand also makes the device's high-water mark meaningful.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import _harness as h  # noqa: E402
import _peers  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from seqjax.apps import bench  # noqa: E402

SCRIPT = "suite"
TITLE = "seqjax against Flax linen/NNX, Equinox, Haiku, PyTorch and cuDNN (LSTM, GRU, Elman)"

# (B, T, I, H), float32: the four configs of issue 7.
CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128), (1, 1024, 32, 64), (128, 64, 128, 512)]
QUICK_CONFIGS = [(2, 6, 3, 4)]
SWEEP_T = [128 * 2**k for k in range(8)]  # 128 .. 16384
SWEEP_T_SHAPE = (8, 64, 128)  # B, I, H
QUICK_SWEEP_T = [4, 8, 16]
SWEEP_B = [1, 8, 32, 128]
SWEEP_H = [64, 128, 256, 512]
SWEEP_BH_SHAPE = (128, 64)  # T, I
CELLS = ("lstm", "gru", "elman")
# DeepBench's RNN training set (baidu-research/DeepBench, code/kernels/rnn_problems.h):
# (hidden, batch, steps) per cell, input size = hidden as there. Its longest GRU rows
# (T = 750, 1500) are left out here to keep one accelerator run within minutes.
DEEPBENCH = {
    "lstm": [(h, b, 25) for h in (512, 1024, 2048) for b in (16, 32, 64, 128)]
    + [(1536, b, 50) for b in (8, 16, 32)]
    + [(256, b, 150) for b in (16, 32, 64)],
    "gru": [(h, 32, t) for h in (1536, 2048, 2560) for t in (187, 375)] + [(2816, 32, 187)],
}
QUICK_DEEPBENCH = {"lstm": [(4, 2, 3)], "gru": [(4, 2, 5)]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The harness's shared flags plus the suite's experiment and selection flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, few repeats (smoke)")
    parser.add_argument("--out", type=Path, default=h.DEFAULT_OUT, help="results folder")
    parser.add_argument("--repeats", type=int, help="timed rounds per group (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed calls per contender")
    parser.add_argument("--min-sample-ms", type=float, help="shortest sample (default 50)")
    parser.add_argument("--sweep-T", action="store_true", help="sweep T = 128 .. 16384")
    parser.add_argument("--sweep-BH", action="store_true", help="sweep B and H at T = 128")
    parser.add_argument(
        "--deepbench", action="store_true", help="DeepBench's LSTM and GRU training shapes"
    )
    parser.add_argument(
        "--also-default", action="store_true", help="with a sweep, also run the default configs"
    )
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--modes", nargs="+", choices=bench.MODES, default=list(bench.MODES))
    parser.add_argument(
        "--peers", nargs="+", choices=list(_peers.PEERS), help="peers to time (default: all)"
    )
    parser.add_argument("--T-values", type=int, nargs="+", help="override the T sweep's values")
    parser.add_argument(
        "--compile-repeats", type=int, default=None,
        help="sweep-T: compiles per JAX contender, median reported (default 5; 1 in --quick)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.compile_repeats is None:
        args.compile_repeats = 1 if args.quick else 5
    if args.repeats is None:
        args.repeats = 2 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.min_sample_ms is None:
        args.min_sample_ms = 0.0 if args.quick else 50.0
    for name in ("repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    return args


def config_name(b: int, t: int, i: int, hid: int) -> str:
    return f"B{b} T{t} I{i} H{hid}"


def run_configs(args, rec: h.Recorder, configs, experiment: str) -> None:
    """Time every selected peer on each ``(B, T, I, H)`` of ``configs``; rows into ``rec``."""
    names = ["seqjax", *(p for p in (args.peers or _peers.PEERS) if p != "seqjax")]
    key = jax.random.key(0)
    compiled_again = []  # sweep-T: (contenders, recorded rows), compiled again at the end
    for b, t, i, hid, *only in configs:
        cfg = config_name(b, t, i, hid)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (t, b, i), jnp.float32)
        for name in (c for c in args.cells if not only or c in only):
            cell = bench.CELL_TYPES[name](i, hid)
            params = cell.init(jax.random.fold_in(key, 2), jnp.float32)
            for mode in args.modes:
                if args.quick and mode == "fwd+bwd" and name != "lstm":
                    continue  # the smoke run: one gradient check per peer is enough
                print(f"[{experiment}: {cfg}] {name} {mode}", flush=True)
                contenders, skipped = [], []
                for peer in names:
                    try:
                        contenders.append(_peers.PEERS[peer](cell, params, xs, mode))
                    except bench.PeerUnavailable as why:
                        skipped.append({"library": peer, "status": f"skipped: {why}"})
                    except Exception as err:  # a peer failing to build must not end the run
                        msg = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                        skipped.append({"library": peer, "status": f"error: {msg}"})
                rows = bench.run_group(
                    cell, params, xs, mode, contenders, repeats=args.repeats,
                    warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3, log=print,
                )  # fmt: skip
                base = rows[0].get("median_ms") if rows[0]["library"] == "seqjax" else None
                for row in rows:
                    if base and "median_ms" in row:
                        row["ratio"] = row["median_ms"] / base
                recorded = rec.add(
                    rows + skipped,
                    experiment=experiment, config=cfg, B=b, T=t, I=i, H=hid, dtype="float32",
                    layout="time_major", cell=name, mode=mode, tolerance=bench.tolerance(),
                )  # fmt: skip
                if experiment == "sweep-T":
                    compiled_again.append((contenders, recorded))
                # Device buffers of one group must not pile up across a long sweep.
                jax.clear_caches()
    recompile(compiled_again, args.compile_repeats)


def recompile(groups: Sequence[tuple], repeats: int) -> None:
    """Compile every JAX contender of ``groups`` ``repeats - 1`` more times; median into its row.

    ``groups``: ``(contenders, rows)`` per timed group, here one per T. One compile of a small
    scan takes ~0.1-0.5 s and varies by tens of percent from minute to minute on a shared
    machine, which hides whether compile time grows with T. The compiles go round-robin over
    the groups (caches cleared before each), so a slow minute falls on every T alike rather
    than on whichever T was compiling then; the median of the samples is reported.
    """
    pending = []
    for contenders, rows in groups:
        by_library = {c.library: c for c in contenders}
        for row in rows:
            if by_library.get(row["library"]) and row.get("compile_s") is not None:
                row["compile_samples_s"] = [row["compile_s"]]  # PyTorch (eager) has none
                pending.append((by_library[row["library"]], row))
    for _ in range(repeats - 1):
        for contender, row in pending:
            jax.clear_caches()
            row["compile_samples_s"].append(contender.prepare()[1]["compile_s"])
    for _, row in pending:
        row["compile_s"] = statistics.median(row["compile_samples_s"])


# --------------------------------------------------------------------------- tables


def _ms(r: dict) -> str:
    return f"{r['median_ms']:.3f} ({r['q1_ms']:.3f}-{r['q3_ms']:.3f})" if "median_ms" in r else ""


def _short(status: str) -> str:
    return {"ok": ""}.get(status, status.split(":")[0])


def _libraries(rows: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["library"] not in seen:
            seen.append(r["library"])
    return seen


def _groups(rows: Sequence[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["cell"], r["mode"]), {})[r["library"]] = r
    return groups


def ratio_table(rows: Sequence[dict]) -> str:
    """One row per (config, cell, mode): seqjax's median and every peer's ratio to it."""
    libs = [lib for lib in _libraries(rows) if lib != "seqjax"]
    table = []
    for (cfg, cell, mode), by_lib in _groups(rows).items():
        line = {"config": cfg, "cell": cell, "mode": mode, "seqjax": _ms(by_lib.get("seqjax", {}))}
        for lib in libs:
            r = by_lib.get(lib)
            if r is None:
                line[lib] = ""
            elif "ratio" in r:
                line[lib] = f"{r['ratio']:.2f}"
            else:
                line[lib] = _short(r["status"])
        table.append(line)
    columns = [("config", "config"), ("cell", "cell"), ("mode", "mode")]
    columns += [("seqjax ms", "seqjax")] + [(lib, lib) for lib in libs]
    return h.markdown_table(table, columns)


def detail_table(rows: Sequence[dict]) -> str:
    """Every contender: time, ratio, compile, memory, the equivalence check and its status."""

    def peak(r):
        return f"{r['peak_bytes'] / 2**20:.1f}" if r.get("peak_bytes") else ""

    def compile_s(r):
        if r.get("compile_s") is not None:
            return f"{r['compile_s']:.2f}"
        return f"({r['first_call_s']:.2f})" if r.get("first_call_s") is not None else ""

    columns = [
        ("config", "config"), ("cell", "cell"), ("mode", "mode"), ("library", "library"),
        ("ms median (q1-q3)", _ms), ("ratio", lambda r: r.get("ratio")),
        ("compile s", compile_s), ("peak MiB", peak),
        ("rel diff", lambda r: f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else ""),
        ("checked against", "reference"), ("status", "status"),
    ]  # fmt: skip
    return h.markdown_table(rows, columns)


def sweep_t_table(rows: Sequence[dict]) -> str:
    """Per (cell, mode, library): time per step at each T, and compile time's spread."""
    out = []
    keyed: dict = {}
    for r in rows:
        if "median_ms" in r:
            keyed.setdefault((r["cell"], r["mode"], r["library"]), []).append(r)
    for (cell, mode, lib), rs in keyed.items():
        rs = sorted(rs, key=lambda r: r["T"])
        per_step = [1e3 * r["median_ms"] / r["T"] for r in rs]
        compiles = [r["compile_s"] for r in rs if r.get("compile_s") is not None]
        out.append(
            {
                "cell": cell,
                "mode": mode,
                "library": lib,
                "T": f"{rs[0]['T']}..{rs[-1]['T']}",
                "us_per_step": " / ".join(f"{v:.1f}" for v in per_step),
                "linearity": per_step[-1] / per_step[0],
                "compile": " / ".join(f"{c:.2f}" for c in compiles),
                "compile_spread": (max(compiles) / min(compiles)) if compiles else None,
                "compile_trend": (compiles[-1] / compiles[0]) if compiles else None,
            }
        )
    return h.markdown_table(
        out,
        [
            ("cell", "cell"), ("mode", "mode"), ("library", "library"), ("T", "T"),
            ("µs per step at each T", "us_per_step"),
            ("per-step time, last T / first T", "linearity"),
            ("compile s at each T", "compile"), ("compile max / min", "compile_spread"),
            ("compile last T / first T", "compile_trend"),
        ],
    )  # fmt: skip


def summarize(rows: Sequence[dict], experiment: str) -> str:
    parts = [
        "Ratios are peer median / seqjax median in the same group (> 1: seqjax faster). Every "
        "timed peer computed the same function as seqjax on the same weights (`rel diff` = "
        "largest |peer - seqjax| / max|seqjax| over outputs, or loss and every gradient; "
        f"tolerance {bench.tolerance():g}). `skipped`: not installed or not supported here; "
        "`mismatch`: a different function, not timed; `error`: failed here. Compile s in "
        "parentheses: PyTorch's first (eager) call. Peak memory: XLA's buffer sizes for JAX, "
        "`torch.cuda.max_memory_allocated` for PyTorch on GPU, none for PyTorch on CPU.",
        "",
        "Haiku's GRU is the reset-before form and its Elman cell uses ReLU (see `_peers.py`): "
        "checked against the matching seqjax cell, timed against seqjax's default one.",
        "",
    ]
    if experiment == "sweep-T":
        parts += [
            "## Linearity in T and compile time",
            "",
            "Linear cost: per-step time flat (ratio last/first near 1). Compile time: median of "
            "`--compile-repeats` compiles per T, taken round-robin over T (caches cleared). "
            "Flat compile: max/min "
            "near 1 (target: within 1.2).",
            "",
            sweep_t_table(rows),
            "",
        ]
    parts += ["## Ratio to seqjax", "", ratio_table(rows), "", "## Every contender", ""]
    parts.append(detail_table(rows))
    return "\n".join(parts)


# --------------------------------------------------------------------------- plots


def _tick(config: str, cell: str) -> str:
    """``lstm`` over ``B32 T128`` over ``I64 H256``: narrow enough for neighbours not to touch."""
    sizes, _, features = config.partition(" I")
    return f"{cell}\n{sizes}\nI{features}" if features else f"{cell}\n{config}"


def plot(rows: Sequence[dict], path: Path, experiment: str, title: str) -> bool:
    """Write the experiment's figure to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    timed = [r for r in rows if "median_ms" in r]
    modes = [m for m in bench.MODES if any(r["mode"] == m for r in timed)]
    libs = _libraries(timed)
    if experiment == "sweep-T":
        series = sorted({(r["cell"], r["mode"]) for r in timed})
        # Colour by library, marker by cell, line by mode: 12 lines outrun the 10 default
        # colours, which gave two unrelated lines the same one.
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        markers = dict(zip(sorted({cell for cell, _ in series}), "osD^v", strict=False))
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for k, lib in enumerate(libs):
            for cell, mode in series:
                rs = sorted(
                    (r for r in timed if (r["library"], r["cell"], r["mode"]) == (lib, cell, mode)),
                    key=lambda r: r["T"],
                )
                if not rs:
                    continue
                label = f"{lib} {cell} {mode}"
                look = dict(
                    linestyle="-" if mode == "fwd+bwd" else "--", marker=markers[cell],
                    color=colours[k % len(colours)], label=label,
                )  # fmt: skip
                ts = [r["T"] for r in rs]
                axes[0].plot(ts, [1e3 * r["median_ms"] / r["T"] for r in rs], **look)
                comp = [(r["T"], r["compile_s"]) for r in rs if r.get("compile_s") is not None]
                if comp:
                    axes[1].plot(*zip(*comp, strict=True), **look)
        axes[0].set(
            xscale="log", yscale="log", xlabel="sequence length T",
            ylabel="time per step (µs, median)", title="cost per step (flat = linear in T)",
        )  # fmt: skip
        axes[1].set(
            xscale="log", xlabel="sequence length T", ylabel="compile time (s)",
            title="XLA compile time (flat = independent of T)",
        )  # fmt: skip
        axes[1].set_ylim(bottom=0)
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    else:
        groups = list(_groups(timed))
        labels = sorted({(g[0], g[1]) for g in groups}, key=lambda g: groups.index((*g, modes[0]))
                        if (*g, modes[0]) in groups else 0)  # fmt: skip
        peers = [lib for lib in libs if lib != "seqjax"]
        fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.9 * len(labels) + 3),
                                 3.6 * len(modes)), squeeze=False)  # fmt: skip
        width = 0.8 / max(len(peers), 1)
        for ax, mode in zip(axes[:, 0], modes, strict=True):
            for k, lib in enumerate(peers):
                xs_, ys_ = [], []
                for j, (cfg, cell) in enumerate(labels):
                    r = next((r for r in timed if (r["config"], r["cell"], r["mode"],
                              r["library"]) == (cfg, cell, mode, lib)), None)  # fmt: skip
                    if r is not None and "ratio" in r:
                        xs_.append(j - 0.4 + (k + 0.5) * width)
                        ys_.append(r["ratio"])
                ax.bar(xs_, ys_, width, label=lib)
            ax.axhline(1.0, color="black", lw=1)
            ax.set_yscale("log")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels([_tick(cfg, cell) for cfg, cell in labels], fontsize=7)
            ax.set_ylabel("peer time / seqjax time\n(> 1: seqjax faster)")
            ax.set_title(f"{mode}")
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[0, 0].legend(fontsize=7, ncol=min(len(peers), 4))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return True


# --------------------------------------------------------------------------- main


def run_experiment(args, experiment: str) -> h.Recorder:
    script = SCRIPT if experiment == "default" else f"{SCRIPT}-{experiment}"
    rec = h.Recorder(script, args)
    if experiment == "default":
        configs = QUICK_CONFIGS if args.quick else CONFIGS
    elif experiment == "deepbench":
        table = QUICK_DEEPBENCH if args.quick else DEEPBENCH
        configs = [(b, t, h, h, cell) for cell, rows in table.items() for h, b, t in rows]
    elif experiment == "sweep-T":
        b, i, hid = (2, 3, 4) if args.quick else SWEEP_T_SHAPE
        ts = args.T_values or (QUICK_SWEEP_T if args.quick else SWEEP_T)
        configs = [(b, t, i, hid) for t in ts]
    else:
        t, i = (4, 3) if args.quick else SWEEP_BH_SHAPE
        bs, hs = ([1, 2], [2, 4]) if args.quick else (SWEEP_B, SWEEP_H)
        configs = [(b, t, i, hid) for hid in hs for b in bs]
    run_configs(args, rec, configs, experiment)
    for dist in ("torch", "equinox", "dm-haiku", "matplotlib"):
        rec.env["versions"][dist] = h.package_version(dist)
    body = summarize(rec.rows, experiment)
    title = f"{TITLE}: {experiment}"
    rec.write(body, title)
    dev = f"{rec.env['platform']} {rec.env['device_kind']}"
    plot(rec.rows, rec.md_path.with_suffix(".png"), experiment, f"{title}\n({dev})")
    print(body)
    return rec


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = (("sweep-T", args.sweep_T), ("sweep-BH", args.sweep_BH), ("deepbench", args.deepbench))
    experiments = [e for e, on in chosen if on]
    if not experiments or args.also_default:
        experiments.insert(0, "default")
    print(f"backend {jax.default_backend()}: {jax.devices()[0].device_kind}; "
          f"experiments {experiments}")  # fmt: skip
    for experiment in experiments:
        run_experiment(args, experiment)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

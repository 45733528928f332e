"""Echo-state networks: does seqjax match ReservoirPy's accuracy, and collect states faster?

Three questions, each answered in the same run on the same machine:

1. ``accuracy``: Mackey-Glass (tau = 17, ``seqjax.apps.series.mackey_glass``, the same array fed to
   both libraries), one-step-ahead and 84-step closed-loop NRMSE (RMSE / std of the target),
   seqjax (``EchoStateNetwork``, float32, and again in float64) vs ReservoirPy 0.4
   (``Reservoir >> Ridge``, float64), the same hyperparameters (units, spectral radius,
   leak rate, input scaling, connectivities, ridge, washout), median over 100 seeds. Each
   library draws its own random reservoir from the seed (the libraries' generators
   differ), so per-seed numbers differ and only the distributions over seeds can be
   compared: the markdown gives each seqjax row's difference and ratio of medians to
   ReservoirPy's with a 95 % bootstrap interval (independent resampling of both libraries'
   seeds, 10,000 resamples) and the rank statistic P(seqjax error < ReservoirPy error)
   (Mann-Whitney's U / n^2; 0.5 = no difference). The closed-loop errors spread over
   more than a decade between seeds, so 20 seeds cannot tell a 5 % difference from noise.
   seqjax's float32 and float64 rows use the same reservoir per seed (values are drawn in
   float32 either way). ``seqjax-fixed-fan-in`` is ``EchoStateCell(fixed_fan_in=True)``:
   every unit exactly ``round(connectivity * H)`` incoming connections instead of
   ReservoirPy's ``round(connectivity * H^2)`` placed over the whole matrix. The row
   ``seqjax-rpy-weights`` runs seqjax (float64) on ReservoirPy's own ``W``, ``Win`` and
   bias (``seqjax.reservoir.from_reservoirpy``) with seqjax's ridge readout: it separates
   the draw from the arithmetic and should equal ``reservoirpy`` seed for seed. Each row
   also records the reservoir's actual spectral radius (``numpy.linalg.eigvals``).
2. ``throughput``: collecting reservoir states for 64 series x 1000 units x 10,000 steps.
   seqjax: one jitted ``unroll`` over the batch ``[T, 64, 1]`` (float32). ReservoirPy:
   ``Reservoir.run`` one series after another (its multi-series ``run`` does the same with
   ``workers=1``), float64, states of each series dropped after its run to bound memory.
3. ``storage``: the reservoir as a dense matrix or a BCOO sparse matrix, per step of a
   batched scan; the evidence for ``seqjax.cells._esn._SPARSE_BELOW``.

Usage::

    python benchmarks/esn_vs_reservoirpy.py                  # full sizes -> benchmarks/results/
    python benchmarks/esn_vs_reservoirpy.py --quick --out /tmp/bench
    python benchmarks/esn_vs_reservoirpy.py --seeds 40 --parts accuracy --out /tmp/bench
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

from seqjax import EchoStateCell, EchoStateNetwork, unroll
from seqjax.apps.series import mackey_glass
from seqjax.forecast import forecast

SCRIPT = "esn_vs_reservoirpy"
TITLE = "Echo-state networks: seqjax vs ReservoirPy (Mackey-Glass accuracy, state throughput)"

# Shared hyperparameters (ReservoirPy names in comments).
HP = dict(
    units=500,  # units
    spectral_radius=1.25,  # sr
    leak_rate=0.3,  # lr
    input_scaling=1.0,  # input_scaling
    connectivity=0.1,  # rc_connectivity
    input_connectivity=0.1,  # input_connectivity
    ridge=1e-7,  # Ridge(ridge=...)
    washout=100,  # Ridge.fit(warmup=...)
)
FULL = dict(train=2000, test=500, horizon=84, seeds=100, batch=64, tp_units=1000, tp_steps=10_000)
QUICK = dict(train=300, test=100, horizon=20, seeds=2, batch=4, tp_units=50, tp_steps=200)
BOOTSTRAP = 10_000  # resamples for the intervals on the medians


def nrmse(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    return float(np.sqrt(np.mean((pred - target) ** 2)) / np.std(target))


# --------------------------------------------------------------------------- accuracy


def actual_spectral_radius(w) -> float:
    """``max |eigenvalue|`` of a dense, BCOO or scipy sparse matrix, by a dense eigensolve."""
    if hasattr(w, "todense"):
        w = w.todense()
    return float(np.abs(np.linalg.eigvals(np.asarray(w, np.float64))).max())


def seqjax_errors(
    series: np.ndarray,
    units: int,
    seed: int,
    sizes: dict,
    dtype=jnp.float32,
    fixed_fan_in: bool = False,
) -> tuple[float, float, float]:
    cell = EchoStateCell(
        1,
        units,
        spectral_radius=HP["spectral_radius"],
        leak_rate=HP["leak_rate"],
        input_scaling=HP["input_scaling"],
        connectivity=HP["connectivity"],
        input_connectivity=HP["input_connectivity"],
        fixed_fan_in=fixed_fan_in,
    )
    esn = EchoStateNetwork(cell, 1)
    params, one_step, closed = _fit_and_score(
        esn, esn.init(jax.random.key(seed), dtype), series, sizes, dtype
    )
    rho = actual_spectral_radius(params.reservoir.w) * float(params.reservoir.spectral_radius)
    return one_step, closed, rho


def _fit_and_score(esn, params, series: np.ndarray, sizes: dict, dtype):
    """Ridge-fit ``esn`` on the training steps; ``(params, one-step, closed-loop NRMSE)``."""
    train, test, horizon = sizes["train"], sizes["test"], sizes["horizon"]
    u = jnp.asarray(series, dtype)[:, None]
    params = esn.fit(params, u[:train], u[1 : train + 1], ridge=HP["ridge"], washout=HP["washout"])
    _, ys = esn(params, u[: train + test])
    one_step = nrmse(ys[train:], series[train + 1 : train + test + 1])
    closed = forecast(esn, params, u[:train], horizon)
    return params, one_step, nrmse(closed, series[train : train + horizon])


def _reservoirpy_reservoir(units: int, seed: int):
    from reservoirpy.nodes import Reservoir

    return Reservoir(
        units,
        lr=HP["leak_rate"],
        sr=HP["spectral_radius"],
        input_scaling=HP["input_scaling"],
        rc_connectivity=HP["connectivity"],
        input_connectivity=HP["input_connectivity"],
        seed=seed,
    )


def seqjax_on_reservoirpy_weights(
    series: np.ndarray, units: int, seed: int, sizes: dict
) -> tuple[float, float, float]:
    """seqjax float64 on ReservoirPy's own reservoir (same seed as ``reservoirpy_errors``)."""
    from seqjax.layers import DenseParams
    from seqjax.reservoir import EchoStateNetworkParams, from_reservoirpy

    reservoir = _reservoirpy_reservoir(units, seed)
    reservoir.initialize(series[:1, None].astype(np.float64))
    cell, reservoir_params = from_reservoirpy(reservoir, dtype=jnp.float64)
    esn = EchoStateNetwork(cell, 1)
    readout = DenseParams(w=jnp.zeros((units, 1), jnp.float64), b=jnp.zeros((1,), jnp.float64))
    start = EchoStateNetworkParams(reservoir_params, readout)
    _, one_step, closed = _fit_and_score(esn, start, series, sizes, jnp.float64)
    return one_step, closed, actual_spectral_radius(reservoir.W)


def reservoirpy_errors(
    series: np.ndarray, units: int, seed: int, sizes: dict
) -> tuple[float, float, float]:
    from reservoirpy.nodes import Ridge

    train, test, horizon = sizes["train"], sizes["test"], sizes["horizon"]
    reservoir = _reservoirpy_reservoir(units, seed)
    readout = Ridge(ridge=HP["ridge"])
    u = series[:, None].astype(np.float64)
    states = reservoir.run(u[:train])
    readout.fit(states, u[1 : train + 1], warmup=HP["washout"])
    test_states = reservoir.run(u[train : train + test])  # continues from the training state
    one_step = nrmse(readout.run(test_states), series[train + 1 : train + test + 1])
    # Closed loop: the last training step's output is the first forecast, then fed back.
    forecasts = []
    reservoir.reset()
    reservoir.run(u[:train])
    y = readout.step(reservoir.state["out"])
    for _ in range(horizon):
        forecasts.append(y.copy())
        y = readout.step(reservoir.step(y))
    closed = nrmse(np.stack(forecasts), series[train : train + horizon])
    return one_step, closed, actual_spectral_radius(reservoir.W)


LIBRARIES = [
    ("seqjax", seqjax_errors),
    ("seqjax-float64", lambda *a: seqjax_errors(*a, dtype=jnp.float64)),
    ("seqjax-fixed-fan-in", lambda *a: seqjax_errors(*a, fixed_fan_in=True)),
    ("reservoirpy", reservoirpy_errors),
    ("seqjax-rpy-weights", seqjax_on_reservoirpy_weights),
]
NEEDS_RPY = {"reservoirpy", "seqjax-rpy-weights"}


def accuracy(rec: h.Recorder, sizes: dict, units: int, have_rpy: bool) -> list[dict]:
    series = mackey_glass(sizes["train"] + sizes["test"] + sizes["horizon"] + 1, discard=500)
    rows = []
    for seed in range(sizes["seeds"]):
        for library, run in LIBRARIES:
            if library in NEEDS_RPY and not have_rpy:
                continue
            one, closed, rho = run(series, units, seed, sizes)
            print(
                f"  seed {seed} {library:<19} one-step {one:.2e}  closed-loop {closed:.2e}"
                f"  spectral radius {rho:.4f}"
            )
            rows.append(
                dict(
                    experiment="accuracy",
                    library=library,
                    seed=seed,
                    nrmse_one_step=one,
                    nrmse_closed_loop=closed,
                    actual_spectral_radius=rho,
                    units=units,
                    **{k: v for k, v in HP.items() if k != "units"},
                    **{k: sizes[k] for k in ("train", "test", "horizon")},
                )
            )
    return rec.add(rows)


# --------------------------------------------------------------------------- throughput


def throughput(rec: h.Recorder, args, sizes: dict, have_rpy: bool) -> list[dict]:
    batch, units, steps = sizes["batch"], sizes["tp_units"], sizes["tp_steps"]
    series = mackey_glass(steps * batch, discard=500).reshape(batch, steps).T
    xs = jnp.asarray(series, jnp.float32)[..., None]  # [T, B, 1]
    cell = EchoStateCell(1, units, spectral_radius=HP["spectral_radius"], leak_rate=HP["leak_rate"])
    params = cell.init(jax.random.key(0))

    def collect(params, xs):
        return unroll(cell, params, xs)[1]

    meta = dict(experiment="throughput", B=batch, T=steps, I=1, H=units, dtype="float32")
    rows = h.measure_group(
        [h.Contender("seqjax", collect, (params, xs), dict(meta, library="seqjax"))],
        repeats=args.repeats,
        warmup=args.warmup,
        min_sample_s=args.min_sample_ms / 1e3,
    )
    if have_rpy:
        from reservoirpy.nodes import Reservoir

        reservoir = Reservoir(units, lr=HP["leak_rate"], sr=HP["spectral_radius"], seed=0)
        u = series[:, :, None].astype(np.float64)
        reservoir.run(u[:10, 0])  # initialise (draws W, W_in)
        samples = []
        for _ in range(1 if not args.quick else 2):
            start = time.perf_counter()
            for b in range(batch):
                reservoir.reset()
                reservoir.run(u[:, b])
            samples.append(time.perf_counter() - start)
        ms = [1e3 * s for s in samples]
        rows.append(
            dict(
                meta,
                dtype="float64",
                library="reservoirpy",
                label="reservoirpy",
                median_ms=statistics.median(ms),
                q1_ms=min(ms),
                q3_ms=max(ms),
                min_ms=min(ms),
                max_ms=max(ms),
                n_samples=len(ms),
                compile_s=0.0,
            )
        )
    for row in rows:
        row["series_steps_per_s"] = batch * steps / (row["median_ms"] / 1e3)
    return rec.add(rows)


# --------------------------------------------------------------------------- storage


def storage(rec: h.Recorder, args, configs: Sequence[tuple[int, int, float]]) -> list[dict]:
    rows = []
    for batch, units, connectivity in configs:
        steps = 50 if args.quick else 200
        xs = jax.random.normal(jax.random.key(1), (steps, batch, 1), jnp.float32)
        contenders = []
        for sparse in (False, True):
            cell = EchoStateCell(1, units, connectivity=connectivity, sparse=sparse)
            params = cell.init(jax.random.key(0))

            def run(params, xs, cell=cell):
                return unroll(cell, params, xs)[0]

            meta = dict(
                experiment="storage",
                B=batch,
                T=steps,
                I=1,
                H=units,
                dtype="float32",
                config=f"B{batch} H{units} c{connectivity}",
                connectivity=connectivity,
                storage="bcoo" if sparse else "dense",
            )
            contenders.append(h.Contender(meta["storage"], run, (params, xs), meta))
        print(f"storage B{batch} H{units} connectivity {connectivity}")
        rows += h.measure_group(
            contenders,
            repeats=args.repeats,
            warmup=args.warmup,
            min_sample_s=args.min_sample_ms / 1e3,
        )
    return rec.add(rows)


# --------------------------------------------------------------------------- report


def _median_intervals(x: np.ndarray, y: np.ndarray, rng) -> dict:
    """Difference and ratio of medians ``x`` vs ``y`` with 95 % bootstrap intervals (both
    samples resampled independently: the libraries' draws for one seed are unrelated), and
    the rank statistic ``P(x < y)`` (Mann-Whitney U / (n m), ties counted half)."""
    mx = np.median(x[rng.integers(0, len(x), (BOOTSTRAP, len(x)))], axis=1)
    my = np.median(y[rng.integers(0, len(y), (BOOTSTRAP, len(y)))], axis=1)
    diff, ratio = np.quantile(mx - my, [0.025, 0.975]), np.quantile(mx / my, [0.025, 0.975])
    less = np.mean((x[:, None] < y[None, :]) + 0.5 * (x[:, None] == y[None, :]))
    return dict(
        diff=float(np.median(x) - np.median(y)),
        diff_lo=float(diff[0]),
        diff_hi=float(diff[1]),
        ratio=float(np.median(x) / np.median(y)),
        ratio_lo=float(ratio[0]),
        ratio_hi=float(ratio[1]),
        p_less=float(less),
    )


def _verdict(c: dict, seeds: int) -> str:
    if seeds < 10:  # a bootstrap of a handful of values says nothing (--quick)
        return f"not judged: {seeds} seeds"
    if c["ratio_hi"] < 1:
        return "lower (better): the interval excludes equality"
    if c["ratio_lo"] > 1:
        return "higher (worse): the interval excludes equality"
    return (
        f"no difference detectable with {seeds} seeds; at most "
        f"{100 * (c['ratio_hi'] - 1):.0f} % worse (upper end of the interval)"
    )


def _accuracy_markdown(acc: list[dict]) -> list[str]:
    out = []
    metrics = [
        ("nrmse_one_step", "one-step"),
        ("nrmse_closed_loop", f"{acc[0]['horizon']}-step closed loop"),
    ]
    libs = list(dict.fromkeys(r["library"] for r in acc))
    errors = {
        (lib, key): np.array([r[key] for r in acc if r["library"] == lib])
        for lib in libs
        for key, _ in metrics
    }
    out.append("## Mackey-Glass (tau = 17) NRMSE over seeds\n")
    table = []
    for lib in libs:
        row = dict(library=lib, seeds=len(errors[(lib, metrics[0][0])]))
        for key, _ in metrics:
            v = errors[(lib, key)]
            q1, q3 = np.quantile(v, [0.25, 0.75])
            row[key] = f"{np.median(v):.2e} ({q1:.2e} - {q3:.2e})"
            row[key + "_range"] = f"{v.min():.2e} - {v.max():.2e}"
        table.append(row)
    columns = [("library", "library"), ("seeds", "seeds")]
    for key, name in metrics:
        columns += [(f"{name} NRMSE median (IQR)", key), ("range", key + "_range")]
    out.append(h.markdown_table(table, columns))
    if "reservoirpy" not in libs:
        return out
    rng = np.random.default_rng(0)
    out.append(
        "\n### seqjax vs ReservoirPy\n\n"
        "Difference and ratio of medians (seqjax row / ReservoirPy), 95 % bootstrap intervals "
        f"({BOOTSTRAP} resamples of each library's seeds, independently); P(seqjax < rpy): "
        "the chance that a random seqjax seed's error is below a random ReservoirPy seed's "
        "(Mann-Whitney U / n^2; 0.5 = no difference, below 0.5 = seqjax worse).\n"
    )
    table = []
    seeds = len(errors[("reservoirpy", metrics[0][0])])
    for lib in libs:
        if lib in ("reservoirpy", "seqjax-rpy-weights"):
            continue
        for key, name in metrics:
            c = _median_intervals(errors[(lib, key)], errors[("reservoirpy", key)], rng)
            table.append(dict(library=lib, metric=name, verdict=_verdict(c, seeds), **c))
    out.append(
        h.markdown_table(
            table,
            [
                ("seqjax row", "library"),
                ("error", "metric"),
                (
                    "median difference (95 % CI)",
                    lambda r: f"{r['diff']:+.2e} ({r['diff_lo']:+.2e} to {r['diff_hi']:+.2e})",
                ),
                (
                    "ratio (95 % CI)",
                    lambda r: f"{r['ratio']:.3f} ({r['ratio_lo']:.3f} - {r['ratio_hi']:.3f})",
                ),
                ("P(seqjax < rpy)", lambda r: f"{r['p_less']:.2f}"),
                ("seqjax is", "verdict"),
            ],
        )
    )
    if "seqjax-rpy-weights" in libs:
        gaps = {
            name: np.max(
                np.abs(errors[("seqjax-rpy-weights", key)] / errors[("reservoirpy", key)] - 1)
            )
            for key, name in metrics
        }
        out.append(
            "\nOn ReservoirPy's own reservoir (row seqjax-rpy-weights, float64, seqjax's SVD "
            "ridge solve) seqjax's errors equal ReservoirPy's (normal equations) to "
            + ", ".join(f"{g:.1e} ({name})" for name, g in gaps.items())
            + " relative, the largest over seeds: the two compute the same thing, and the "
            "rows above differ only by their random draws.\n"
        )
    wanted = acc[0]["spectral_radius"]
    lines = []
    for lib in libs:
        mine = [r for r in acc if r["library"] == lib]
        off = [r for r in mine if abs(r["actual_spectral_radius"] / wanted - 1) > 1e-3]
        worst = max(abs(r["actual_spectral_radius"] / wanted - 1) for r in mine)
        line = (
            f"- {lib}: {len(off)} of {len(mine)} reservoirs off by more than 0.1 % "
            f"(largest {100 * worst:.2f} %)"
        )
        if off and len(off) < len(mine):
            good = [r["nrmse_closed_loop"] for r in mine if r not in off]
            line += (
                f"; closed-loop median {statistics.median(good):.2e} without them, "
                f"{statistics.median(r['nrmse_closed_loop'] for r in off):.2e} over them"
            )
        lines.append(line)
    out.append(
        f"\nActual spectral radius (numpy.linalg.eigvals) against the {wanted} asked for. "
        "seqjax rescales by its block power iteration (``spectral_radius``); ReservoirPy by "
        "ARPACK ``eigs(k=1, v0=ones)``, which can converge to a smaller eigenvalue and then "
        "scales the reservoir above the radius asked for:\n\n" + "\n".join(lines) + "\n"
    )
    hp = {k: acc[0][k] for k in HP}
    out.append(f"\nHyperparameters: {hp}; train {acc[0]['train']}, test {acc[0]['test']}.\n")
    return out


def markdown(rows: list[dict], command: str) -> str:
    out = [f"Command: `{command}`\n"]
    acc = [r for r in rows if r["experiment"] == "accuracy"]
    if acc:
        out += _accuracy_markdown(acc)
    tp = [r for r in rows if r["experiment"] == "throughput"]
    if tp:
        out.append("## State collection throughput\n")
        out.append(
            h.markdown_table(
                tp,
                [
                    ("library", "library"),
                    ("B x T x H", lambda r: f"{r['B']} x {r['T']} x {r['H']}"),
                    ("dtype", "dtype"),
                    ("time (s)", lambda r: f"{r['median_ms'] / 1e3:.2f}"),
                    ("series-steps / s", lambda r: f"{r['series_steps_per_s']:.3g}"),
                ],
            )
        )
        by = {r["library"]: r for r in tp}
        if "reservoirpy" in by:
            ratio = by["reservoirpy"]["median_ms"] / by["seqjax"]["median_ms"]
            out.append(f"\nseqjax is {ratio:.1f}x faster (ratio of times).\n")
    st = [r for r in rows if r["experiment"] == "storage"]
    if st:
        out.append("## Reservoir storage: dense vs BCOO, per scan step\n")
        table = []
        for config in dict.fromkeys(r["config"] for r in st):
            pair = {r["storage"]: r for r in st if r["config"] == config}
            table.append(
                dict(
                    config=config,
                    dense=pair["dense"]["median_ms"] / pair["dense"]["T"],
                    bcoo=pair["bcoo"]["median_ms"] / pair["bcoo"]["T"],
                )
            )
        out.append(
            h.markdown_table(
                table,
                [
                    ("config", "config"),
                    ("dense ms/step", lambda r: f"{r['dense']:.3f}"),
                    ("BCOO ms/step", lambda r: f"{r['bcoo']:.3f}"),
                    ("ratio BCOO / dense", lambda r: f"{r['bcoo'] / r['dense']:.2f}"),
                ],
            )
        )
    return "\n".join(out)


PARTS = ("accuracy", "throughput", "storage")


def main(argv: Sequence[str] | None = None) -> None:
    # float64 for the seqjax-float64 accuracy rows (ReservoirPy's precision); every other
    # array here is given float32 explicitly.
    jax.config.update("jax_enable_x64", True)
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--seeds", type=int, default=None, help="accuracy seeds (default 100)")
    extra.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    own, rest = extra.parse_known_args(argv)
    parts = [p for p in own.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts must name some of {PARTS}; got {own.parts!r}")
    args = h.parse_args(__doc__.splitlines()[0], rest, repeats=5)
    command = shlex.join(["python", "benchmarks/esn_vs_reservoirpy.py", *argv])
    rec = h.Recorder(SCRIPT, args)
    sizes = dict(QUICK if args.quick else FULL)
    if own.seeds is not None:
        sizes["seeds"] = own.seeds
    units = 50 if args.quick else HP["units"]
    try:
        import reservoirpy  # noqa: F401

        have_rpy = True
        rec.env["versions"]["reservoirpy"] = reservoirpy.__version__
    except ImportError:
        have_rpy = False
        print("reservoirpy is not installed: seqjax rows only")
    rows = []
    if "accuracy" in parts:
        print("accuracy")
        rows += accuracy(rec, sizes, units, have_rpy)
    if "throughput" in parts:
        print("throughput")
        rows += throughput(rec, args, sizes, have_rpy)
    if "storage" in parts:
        configs = (
            [(4, 60, 0.1), (4, 200, 0.01)]
            if args.quick
            else [
                (64, 1000, 0.1),
                (64, 2000, 0.01),
                (1, 1000, 0.1),
                (1, 2000, 0.01),
            ]
        )
        rows += storage(rec, args, configs)
    rec.write(markdown(rows, command), TITLE)


if __name__ == "__main__":
    main()

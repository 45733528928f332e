"""Echo-state networks: does seqjax match ReservoirPy's accuracy, and collect states faster?

Three questions, each answered in the same run on the same machine:

1. ``accuracy``: Mackey-Glass (tau = 17, ``seqjax.series.mackey_glass``, the same array fed to
   both libraries), one-step-ahead and 84-step closed-loop NRMSE (RMSE / std of the target),
   seqjax (``EchoStateNetwork``, float32, and again in float64) vs ReservoirPy 0.4
   (``Reservoir >> Ridge``, float64), the same hyperparameters (units, spectral radius,
   leak rate, input scaling, connectivities, ridge, washout), median over 20 seeds. Each
   library draws its own random reservoir from the seed (the libraries' generators
   differ), so per-seed numbers differ and the medians are what to compare: the spread
   between seeds (about 1.4e-3 to 5e-3, with outliers) is wider than any difference between
   the libraries, so 5 seeds cannot rank them. seqjax's float32 and float64 rows use the
   same reservoir per seed (values are drawn in float32 either way). The row
   ``seqjax-rpy-weights`` runs seqjax (float64) on ReservoirPy's own ``W``, ``Win`` and
   bias (``seqjax.reservoir.from_reservoirpy``) with seqjax's ridge readout: it separates
   the draw from the arithmetic and should equal ``reservoirpy`` seed for seed.
2. ``throughput``: collecting reservoir states for 64 series x 1000 units x 10,000 steps.
   seqjax: one jitted ``unroll`` over the batch ``[T, 64, 1]`` (float32). ReservoirPy:
   ``Reservoir.run`` one series after another (its multi-series ``run`` does the same with
   ``workers=1``), float64, states of each series dropped after its run to bound memory.
3. ``storage``: the reservoir as a dense matrix or a BCOO sparse matrix, per step of a
   batched scan; the evidence for ``seqjax.cells._esn._SPARSE_BELOW``.

Usage::

    python benchmarks/esn_vs_reservoirpy.py                  # full sizes -> benchmarks/results/
    python benchmarks/esn_vs_reservoirpy.py --quick --out /tmp/bench
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

from seqjax import EchoStateCell, EchoStateNetwork, unroll
from seqjax.series import mackey_glass

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
FULL = dict(train=2000, test=500, horizon=84, seeds=20, batch=64, tp_units=1000, tp_steps=10_000)
QUICK = dict(train=300, test=100, horizon=20, seeds=2, batch=4, tp_units=50, tp_steps=200)


def nrmse(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    return float(np.sqrt(np.mean((pred - target) ** 2)) / np.std(target))


# --------------------------------------------------------------------------- accuracy


def seqjax_errors(
    series: np.ndarray, units: int, seed: int, sizes: dict, dtype=jnp.float32
) -> tuple[float, float]:
    train, test, horizon = sizes["train"], sizes["test"], sizes["horizon"]
    cell = EchoStateCell(
        1,
        units,
        spectral_radius=HP["spectral_radius"],
        leak_rate=HP["leak_rate"],
        input_scaling=HP["input_scaling"],
        connectivity=HP["connectivity"],
        input_connectivity=HP["input_connectivity"],
    )
    esn = EchoStateNetwork(cell, 1)
    u = jnp.asarray(series, dtype)[:, None]
    params = esn.fit(
        esn.init(jax.random.key(seed), dtype),
        u[:train],
        u[1 : train + 1],
        ridge=HP["ridge"],
        washout=HP["washout"],
    )
    _, ys = esn(params, u[: train + test])
    one_step = nrmse(ys[train:], series[train + 1 : train + test + 1])
    _, closed = esn.forecast(params, u[:train], horizon)
    return one_step, nrmse(closed, series[train : train + horizon])


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
) -> tuple[float, float]:
    """seqjax float64 on ReservoirPy's own reservoir (same seed as ``reservoirpy_errors``)."""
    from seqjax.layers import DenseParams
    from seqjax.reservoir import EchoStateNetworkParams, from_reservoirpy

    train, test, horizon = sizes["train"], sizes["test"], sizes["horizon"]
    reservoir = _reservoirpy_reservoir(units, seed)
    reservoir.initialize(series[:1, None].astype(np.float64))
    cell, reservoir_params = from_reservoirpy(reservoir, dtype=jnp.float64)
    esn = EchoStateNetwork(cell, 1)
    readout = DenseParams(w=jnp.zeros((units, 1), jnp.float64), b=jnp.zeros((1,), jnp.float64))
    u = jnp.asarray(series, jnp.float64)[:, None]
    params = esn.fit(
        EchoStateNetworkParams(reservoir_params, readout),
        u[:train],
        u[1 : train + 1],
        ridge=HP["ridge"],
        washout=HP["washout"],
    )
    _, ys = esn(params, u[: train + test])
    one_step = nrmse(ys[train:], series[train + 1 : train + test + 1])
    _, closed = esn.forecast(params, u[:train], horizon)
    return one_step, nrmse(closed, series[train : train + horizon])


def reservoirpy_errors(
    series: np.ndarray, units: int, seed: int, sizes: dict
) -> tuple[float, float]:
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
    return one_step, nrmse(np.stack(forecasts), series[train : train + horizon])


def accuracy(rec: h.Recorder, sizes: dict, units: int, have_rpy: bool) -> list[dict]:
    series = mackey_glass(sizes["train"] + sizes["test"] + sizes["horizon"] + 1, discard=500)
    rows = []
    for seed in range(sizes["seeds"]):
        libraries = [
            ("seqjax", seqjax_errors),
            ("seqjax-float64", lambda *a: seqjax_errors(*a, dtype=jnp.float64)),
        ]
        if have_rpy:
            libraries.append(("reservoirpy", reservoirpy_errors))
            libraries.append(("seqjax-rpy-weights", seqjax_on_reservoirpy_weights))
        for library, run in libraries:
            one, closed = run(series, units, seed, sizes)
            print(f"  seed {seed} {library:<12} one-step {one:.2e}  closed-loop {closed:.2e}")
            rows.append(
                dict(
                    experiment="accuracy",
                    library=library,
                    seed=seed,
                    nrmse_one_step=one,
                    nrmse_closed_loop=closed,
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


def markdown(rows: list[dict]) -> str:
    out = []
    acc = [r for r in rows if r["experiment"] == "accuracy"]
    libs = sorted({r["library"] for r in acc}, reverse=True)
    out.append("## Mackey-Glass (tau = 17) NRMSE, median over seeds\n")
    table = []
    for lib in libs:
        mine = [r for r in acc if r["library"] == lib]
        table.append(
            dict(
                library=lib,
                seeds=len(mine),
                one=statistics.median(r["nrmse_one_step"] for r in mine),
                closed=statistics.median(r["nrmse_closed_loop"] for r in mine),
                one_range=f"{min(r['nrmse_one_step'] for r in mine):.2e} - "
                f"{max(r['nrmse_one_step'] for r in mine):.2e}",
                closed_range=f"{min(r['nrmse_closed_loop'] for r in mine):.2e} - "
                f"{max(r['nrmse_closed_loop'] for r in mine):.2e}",
            )
        )
    out.append(
        h.markdown_table(
            table,
            [
                ("library", "library"),
                ("seeds", "seeds"),
                ("one-step NRMSE (median)", lambda r: f"{r['one']:.2e}"),
                ("range", "one_range"),
                (
                    f"{acc[0]['horizon']}-step closed-loop NRMSE (median)",
                    lambda r: f"{r['closed']:.2e}",
                ),
                ("range", "closed_range"),
            ],
        )
    )
    paired = {
        (r["library"], r["seed"]): r["nrmse_one_step"]
        for r in acc
        if r["library"] in ("reservoirpy", "seqjax-rpy-weights")
    }
    seeds = sorted({s for (_, s) in paired})
    if seeds and all(("seqjax-rpy-weights", s) in paired for s in seeds):
        gap = max(
            abs(paired[("seqjax-rpy-weights", s)] / paired[("reservoirpy", s)] - 1) for s in seeds
        )
        out.append(
            "\nOn ReservoirPy's own reservoir (row seqjax-rpy-weights) seqjax's one-step NRMSE "
            f"equals ReservoirPy's to {gap:.1e} relative (largest over seeds): the two compute "
            "the same thing, and the rows above differ only by their random draws.\n"
        )
    hp = {k: acc[0][k] for k in HP}
    out.append(f"\nHyperparameters: {hp}; train {acc[0]['train']}, test {acc[0]['test']}.\n")
    tp = [r for r in rows if r["experiment"] == "throughput"]
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


def main(argv: Sequence[str] | None = None) -> None:
    # float64 for the seqjax-float64 accuracy rows (ReservoirPy's precision); every other
    # array here is given float32 explicitly.
    jax.config.update("jax_enable_x64", True)
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=5)
    rec = h.Recorder(SCRIPT, args)
    sizes = QUICK if args.quick else FULL
    units = 50 if args.quick else HP["units"]
    try:
        import reservoirpy  # noqa: F401

        have_rpy = True
        rec.env["versions"]["reservoirpy"] = reservoirpy.__version__
    except ImportError:
        have_rpy = False
        print("reservoirpy is not installed: seqjax rows only")
    print("accuracy")
    rows = accuracy(rec, sizes, units, have_rpy)
    print("throughput")
    rows += throughput(rec, args, sizes, have_rpy)
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
    rec.write(markdown(rows), TITLE)


if __name__ == "__main__":
    main()

"""Forecasting a chaotic and a real series: AR(tau) and latent-AR RNNs against naive baselines.

Two series: Mackey-Glass (tau = 17, one sample per time unit; seqjax.apps.series.mackey_glass)
and the yearly sunspot numbers 1700-2008 (seqjax.apps.data.sunspots, shipped inside statsmodels;
skipped with a note when statsmodels is absent). Each is z-scored with its training
statistics; the test part is the tail. Models:

* last value (persistence) and a linear AR(tau) fitted by least squares: the baselines;
* an MLP on the window of tau past values (AR(tau), trained with Adam);
* LSTM and GRU latent-AR models (a cell reads the series, a dense head predicts the next
  value), trained teacher-forced on random subsequences.

Reported on the test part: one-step NRMSE and MASE (teacher forcing: true values in), and
the closed-loop NRMSE over the next H steps from many test origins (each model warmed up on
the true context, then fed its own predictions under lax.scan). PNGs of forecasts vs truth.

    python examples/forecast.py --quick            # seconds; what the test suite runs
    python examples/forecast.py                    # the numbers in examples/README.md
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import GRUCell, LSTMCell, bptt_step, default_optimizer
from seqjax.apps.series import mackey_glass
from seqjax.forecast import (
    ARModel,
    LatentAR,
    fit_linear_ar,
    forecast,
    last_value_forecast,
    one_step_loss,
    origins,
)
from seqjax.losses import mase, nrmse


class Task(NamedTuple):
    name: str
    series: np.ndarray  # [T, 1] z-scored with the training statistics
    split: int  # series[:split] trains, series[split:] tests
    order: int  # tau, the AR window
    horizon: int  # closed-loop steps
    context: int  # steps of context before each closed-loop origin
    stride: int  # between closed-loop origins
    window: int  # training subsequence length for the RNNs
    unit: str  # the x axis of the plot
    t0: int  # the x value of series[0]


def mackey_glass_task(quick: bool) -> Task:
    length, split = (700, 500) if quick else (3000, 2000)
    raw = mackey_glass(length, tau=17, discard=500)
    return _task("Mackey-Glass (tau = 17)", raw, split, 18, 100, 100, 20, 100, "time step", 0)


def sunspots_task(quick: bool) -> Task | None:
    if importlib.util.find_spec("statsmodels") is None:
        return None
    from seqjax.apps.data import sunspots

    _, raw = sunspots()
    # 1700-1920 trains, 1921-2008 tests; horizon 11 years, about one solar cycle.
    return _task("yearly sunspots", raw, 221, 10, 11, 30, 1, 40, "year", 1700)


def _task(name, raw, split, order, horizon, context, stride, window, unit, t0) -> Task:
    mean, std = raw[:split].mean(), raw[:split].std()
    series = ((raw - mean) / std).astype(np.float32)[:, None]
    return Task(name, series, split, order, horizon, context, stride, window, unit, t0)


def train(loss_fn, params, batches, steps: int, learning_rate: float):
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.05)
    optimizer = default_optimizer(schedule, max_norm=1.0)
    opt_state = optimizer.init(params)
    step = jax.jit(bptt_step(loss_fn, optimizer))
    for i in range(steps):
        params, opt_state, metrics = step(params, opt_state, batches(i))
    return params, float(metrics.loss) if steps else float("nan")


def train_ar_mlp(task: Task, args, key):
    model = ARModel(task.order, 1, hidden_sizes=(args.hidden,))
    train_series = jnp.asarray(task.series[: task.split])
    windows = train_series[jnp.arange(task.split - task.order)[:, None] + jnp.arange(task.order)]
    targets = train_series[task.order :]
    rng = np.random.default_rng(args.seed)

    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean((model.predict(params, x) - y) ** 2)

    def batches(_):
        pick = rng.integers(0, len(targets), args.batch_size)
        return windows[pick], targets[pick]

    params, _ = train(loss_fn, model.init(key), batches, args.steps, args.learning_rate)
    return model, params


def train_latent_ar(task: Task, cell, args, key):
    model = LatentAR(cell, residual=True)
    train_series = task.series[: task.split]
    rng = np.random.default_rng(args.seed)
    warm_up = min(10, task.window // 4)  # the state settles before the loss counts

    def batches(_):
        starts = rng.integers(0, task.split - task.window + 1, args.batch_size)
        picked = train_series[starts[None, :] + np.arange(task.window)[:, None]]  # [L, B, 1]
        return jnp.asarray(picked)

    def loss_fn(params, xs):
        return one_step_loss(model, params, xs, skip=warm_up)

    params, _ = train(loss_fn, model.init(key), batches, args.steps, args.learning_rate)
    return model, params


@functools.partial(jax.jit, static_argnums=(0, 5))
def evaluate_model(model, params, series, contexts, futures, split: int):
    """One-step NRMSE and MASE on the test part, closed-loop paths, NRMSE overall and per step.

    One compiled call per model. ``model=None`` is the persistence baseline. Errors are
    scaled by the standard deviation of the test part.
    """
    truth, history = series[split:], series[:split]
    horizon = futures.shape[0]
    if model is None:
        predicted = series[split - 1 : -1]
        paths = last_value_forecast(contexts, horizon)
    else:
        predicted = model(params, series[:-1])[1][split - 1 :]  # ys[t] predicts series[t + 1]
        paths = forecast(model, params, contexts, horizon)
    scale = jnp.std(truth)
    per_step = jnp.sqrt(jnp.mean((paths - futures) ** 2, axis=(1, 2))) / scale
    scores = (
        nrmse(predicted, truth),
        mase(predicted, truth, history),
        nrmse(paths, futures, scale=scale),
    )
    return scores, paths, per_step


def evaluate(task: Task, models: dict, plot_origin: int):
    series = jnp.asarray(task.series)
    starts = np.arange(max(task.split, task.context), len(series) - task.horizon + 1, task.stride)
    contexts, futures = origins(series, starts, task.context, task.horizon)
    rows, shown = {}, {}
    for name, (model, params) in models.items():
        scores, paths, per_step = evaluate_model(
            model, params, series, contexts, futures, task.split
        )
        rows[name] = {
            "one-step NRMSE": float(scores[0]),
            "one-step MASE": float(scores[1]),
            f"closed-loop NRMSE (H={task.horizon})": float(scores[2]),
            "per_step": np.asarray(per_step),
        }
        shown[name] = np.asarray(paths[:, plot_origin, 0])
    return rows, shown, starts, futures


def run_task(task: Task, args) -> dict:
    key = jax.random.key(args.seed)
    k_mlp, k_lstm, k_gru = jax.random.split(key, 3)
    models, seconds = {}, {}
    start = time.perf_counter()
    models["last value"] = (None, None)
    models[f"linear AR({task.order})"] = fit_linear_ar(
        jnp.asarray(task.series[: task.split]), task.order
    )
    seconds[f"linear AR({task.order})"] = time.perf_counter() - start
    builders = {
        f"MLP AR({task.order})": lambda: train_ar_mlp(task, args, k_mlp),
        "LSTM latent-AR": lambda: train_latent_ar(task, LSTMCell(1, args.hidden), args, k_lstm),
        "GRU latent-AR": lambda: train_latent_ar(task, GRUCell(1, args.hidden), args, k_gru),
    }
    for name, build in builders.items():
        start = time.perf_counter()
        models[name] = build()
        seconds[name] = time.perf_counter() - start
    plot_origin = 0
    rows, shown, starts, futures = evaluate(task, models, plot_origin)
    return {"rows": rows, "shown": shown, "starts": starts, "futures": futures, "seconds": seconds}


def report(task: Task, result: dict, args) -> None:
    rows = result["rows"]
    columns = [c for c in next(iter(rows.values())) if c != "per_step"]
    test = len(task.series) - task.split
    print(
        f"\n{task.name}: train {task.split} steps, test {test}, AR order {task.order}, "
        f"{len(result['starts'])} closed-loop origins"
    )
    print(f"{'model':<18}" + "".join(f"{c:>26}" for c in columns) + f"{'train s':>9}")
    for name, row in rows.items():
        cells = "".join(f"{row[c]:>26.4f}" for c in columns)
        print(f"{name:<18}{cells}{result['seconds'].get(name, 0.0):>9.1f}")


def plot(task: Task, result: dict, out: str) -> str:
    from seqjax.apps.plots import plot_forecasts

    origin = int(result["starts"][0])
    back = min(origin, 3 * task.horizon)
    slug = task.name.split(" (")[0].lower().replace(" ", "_").replace("-", "_")
    path = os.path.join(out, f"forecast_{slug}.png")
    return plot_forecasts(
        task.series[origin : origin + task.horizon, 0],
        result["shown"],
        path,
        context=task.series[origin - back : origin, 0],
        start=task.t0 + origin,
        errors={name: row["per_step"] for name, row in result["rows"].items()},
        title=f"{task.name}: closed-loop forecasts from {task.unit} {task.t0 + origin}",
        xlabel=task.unit,
        ylabel="value (z-scored)",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short series, 30 updates: a smoke run"
    )
    parser.add_argument("--steps", type=int, default=3000, help="Adam updates per trained model")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (MLP and RNNs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--series", choices=["both", "mackey-glass", "sunspots"], default="both")
    parser.add_argument("--out", default="runs/forecast", help="folder for the PNGs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.hidden = 20, 8
    os.makedirs(args.out, exist_ok=True)
    tasks = []
    if args.series in ("both", "mackey-glass"):
        tasks.append(mackey_glass_task(args.quick))
    if args.series in ("both", "sunspots"):
        tasks.append(sunspots_task(args.quick))
        if tasks[-1] is None:
            print('(statsmodels is not installed, so no sunspots: pip install "seqjax[series]")')
    can_plot = importlib.util.find_spec("matplotlib") is not None
    for task in filter(None, tasks):
        result = run_task(task, args)
        report(task, result, args)
        if can_plot:
            print(f"wrote {plot(task, result, args.out)}")
    if not can_plot:
        print('(matplotlib is not installed, so no plots: pip install "seqjax[plot]")')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

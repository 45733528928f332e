"""Forecast the Mackey-Glass series with an echo-state network.

An ESN (``seqjax.EchoStateNetwork``) reads the series one step at a time; its linear readout
is fitted three ways to predict the next value: closed-form ridge regression, online RLS
(``seqjax.reservoir.rls_regression``), and Adam through ``seqjax.bptt_step``. Then the ridge
readout runs closed loop: after a teacher-forced warm-up it is fed its own predictions.

With ``--force``, a second network learns by FORCE (Sussillo & Abbott 2009,
``seqjax.reservoir.force_train``): a reservoir without input, driven only by its own readout
through fixed feedback weights, is trained by RLS at every step to produce a sum of two sines,
then runs closed loop with learning switched off (``force_run``).

Usage::

    python examples/esn_forecast.py                # 500 units, 84-step forecast, PNG in --out
    python examples/esn_forecast.py --quick        # a few seconds
    python examples/esn_forecast.py --quick --force
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import EchoStateCell, EchoStateNetwork, bptt_step
from seqjax.apps.series import mackey_glass
from seqjax.forecast import forecast
from seqjax.losses import nrmse
from seqjax.reservoir import feedback_weights, force_run, force_train, rls_regression


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small reservoir, short series")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="also run the FORCE example")
    args = parser.parse_args(argv)
    if args.force:
        force_example(args.seed)
    units, train, test, horizon = (100, 500, 200, 40) if args.quick else (500, 2000, 500, 84)
    washout, ridge = 100, 1e-7

    series = jnp.asarray(mackey_glass(train + test + 1, discard=500), jnp.float32)[:, None]
    xs, ys = series[:-1], series[1:]  # predict the next value
    cell = EchoStateCell(1, units, spectral_radius=1.25, leak_rate=0.3, input_scaling=1.0)
    esn = EchoStateNetwork(cell, output_size=1)
    params = esn.init(jax.random.key(args.seed))
    print(f"ESN: {units} units, spectral radius 1.25, leak 0.3; train {train}, test {test}")

    # 1. Closed-form ridge readout.
    fitted = esn.fit(params, xs[:train], ys[:train], ridge=ridge, washout=washout)
    _, pred = esn(fitted, xs)
    print(f"ridge readout   one-step NRMSE {float(nrmse(pred[train:], ys[train:])):.2e}")

    # 2. Online RLS readout over the same states.
    _, features = esn.features(params, xs)
    state, _ = rls_regression(features[:train], ys[:train], alpha=1e-4, washout=washout)
    _, pred_rls = esn(params._replace(readout=state.readout), xs)
    print(f"RLS readout     one-step NRMSE {float(nrmse(pred_rls[train:], ys[train:])):.2e}")

    # 3. Gradient descent (Adam) on the readout with seqjax's training step; the reservoir
    # is fixed (stop_gradient), so only the readout moves.
    def loss_fn(p, batch):
        inputs, targets = batch
        return jnp.mean((esn(p, inputs)[1][washout:] - targets[washout:]) ** 2)

    optimizer = optax.adam(1e-2)
    step = jax.jit(bptt_step(loss_fn, optimizer))
    trained, opt_state = params, optimizer.init(params)
    for _ in range(100 if args.quick else 500):
        trained, opt_state, metrics = step(trained, opt_state, (xs[:train], ys[:train]))
    _, pred_adam = esn(trained, xs)
    print(
        f"Adam readout    one-step NRMSE {float(nrmse(pred_adam[train:], ys[train:])):.2e} "
        f"(final train loss {float(metrics.loss):.2e})"
    )

    # Closed loop: warm up on the training inputs, then feed predictions back.
    predicted = forecast(esn, fitted, xs[:train], horizon)
    truth = xs[train : train + horizon]
    error = float(nrmse(predicted, truth))
    print(f"ridge readout   {horizon}-step closed-loop NRMSE {error:.2e}")
    for k in sorted({9, 19, 39, horizon - 1} & set(range(horizon))):
        got, want = float(predicted[k, 0]), float(truth[k, 0])
        print(f"  step {k + 1:3d}: forecast {got:.4f}  truth {want:.4f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    t_hist = np.arange(train - 150, train)
    ax.plot(
        t_hist, np.asarray(xs[train - 150 : train, 0]), color="0.5", label="warm-up (true input)"
    )
    t = np.arange(train, train + horizon)
    ax.plot(t, np.asarray(truth[:, 0]), color="k", label="truth")
    ax.plot(t, np.asarray(predicted[:, 0]), "--", color="C3", label="ESN closed loop")
    ax.axvline(train, color="0.7", lw=0.8)
    ax.set_xlabel("time step")
    ax.set_ylabel("x(t)")
    ax.set_title(f"Mackey-Glass (tau = 17): {horizon}-step closed-loop forecast, NRMSE {error:.2e}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = args.out / "esn_forecast.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def force_example(seed: int) -> None:
    """FORCE: a chaotic reservoir learns a periodic pattern from its own feedback."""
    units, train, closed = 200, 2000, 300
    t = jnp.arange(train + closed, dtype=jnp.float32)
    target = (jnp.sin(2 * jnp.pi * t / 50) + 0.5 * jnp.sin(2 * jnp.pi * t / 25))[:, None]
    # rho 1.8: chaotic on its own; the trained feedback loop tames it (Sussillo & Abbott).
    cell = EchoStateCell(1, units, spectral_radius=1.8, leak_rate=0.5, bias_scaling=0.2)
    params = cell.init(jax.random.key(seed))
    w_fb = feedback_weights(jax.random.key(seed + 1), 1, units)
    state, carry, online = force_train(cell, params, w_fb, target[:train])
    _, generated = force_run(cell, params, w_fb, state.readout, carry, closed)
    print(f"FORCE: {units} units, no input, output fed back; RLS at each of {train} steps")
    online_error = float(nrmse(online[-500:], target[train - 500 : train]))
    closed_error = float(nrmse(generated, target[train:]))
    print(f"FORCE online NRMSE (last 500 training steps) {online_error:.2e}")
    print(f"FORCE closed-loop NRMSE ({closed} steps, learning off) {closed_error:.2e}")


if __name__ == "__main__":
    main()

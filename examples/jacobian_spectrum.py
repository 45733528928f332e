"""The recurrent Jacobian along a trajectory: why gradients vanish in some recurrences, not others.

For each recurrence (Elman with tanh, sigmoid and ReLU; LSTM; GRU) this script computes the
one-step Jacobians ``J_t = dh_t / dh_{t-1}`` (the whole state: ``(h, c)`` for an LSTM) along
one adding-problem sequence, at initialisation and after training on the adding problem, and
plots their spectral radii, singular values and the norm of the backpropagated products
``dh_T / dh_t`` (seqjax.diagnostics.state_jacobians / jacobian_summary,
seqjax.apps.plots.plot_jacobian_spectrum). ``examples/gradient_flow.py`` shows the same story
through ``dL/dh_t``.

    python examples/jacobian_spectrum.py --quick     # seconds; what the test suite runs
    python examples/jacobian_spectrum.py             # T = 100, 2000 updates per model
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import Dense, ElmanCell, GRUCell, LSTMCell, bptt_step, default_optimizer, unroll
from seqjax.apps.data import adding_problem
from seqjax.diagnostics import jacobian_summary, state_jacobians


def make_cells(hidden: int) -> dict:
    return {
        "Elman tanh": ElmanCell(2, hidden),
        "Elman sigmoid": ElmanCell(2, hidden, activation=jax.nn.sigmoid),
        "Elman ReLU": ElmanCell(2, hidden, activation=jax.nn.relu),
        "LSTM": LSTMCell(2, hidden),
        "GRU": GRUCell(2, hidden),
    }


def loss_fn(cell, head, params, batch):
    xs, targets = batch
    _, ys = unroll(cell, params[0], xs)
    return jnp.mean((head(params[1], ys[-1])[..., 0] - targets) ** 2)


@functools.partial(jax.jit, static_argnums=0)
def spectrum(cell, params, xs):
    return jacobian_summary(state_jacobians(cell, params, xs))


def run(cell, hidden, args, key):
    """Train as examples/gradient_flow.py does (same keys, data, optimizer: the same models)."""
    head = Dense(hidden, 1)
    k_init, k_head, k_test, k_train = jax.random.split(key, 4)
    params = (cell.init(k_init), head.init(k_head))
    test = adding_problem(k_test, args.length, 1000)
    probe = test[0][:, 0]  # [T, 2]: the first test sequence
    before = spectrum(cell, params[0], probe)
    optimizer = default_optimizer(args.learning_rate, max_norm=1.0)
    opt_state = optimizer.init(params)
    step = jax.jit(bptt_step(functools.partial(loss_fn, cell, head), optimizer))
    for i in range(args.steps):
        batch = adding_problem(jax.random.fold_in(k_train, i), args.length, args.batch_size)
        params, opt_state, _ = step(params, opt_state, batch)
    if not args.steps:
        return before, before, float("nan")
    return before, spectrum(cell, params[0], probe), float(loss_fn(cell, head, params, test))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=20, H=16, untrained: a smoke run")
    parser.add_argument("--length", type=int, default=100, help="sequence length T")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000, help="updates per model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/jacobian_spectrum", help="folder for the PNGs")
    args = parser.parse_args(argv)
    if args.quick:
        args.length, args.hidden, args.steps = 20, 16, 0
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.key(args.seed)
    results = {
        name: run(cell, args.hidden, args, key) for name, cell in make_cells(args.hidden).items()
    }

    print(f"adding problem, T = {args.length}, H = {args.hidden}, {args.steps} updates")
    print(
        f"{'model':<14} {'when':<8} {'mean rho(J_t)':>14} {'mean sigma_max':>15} "
        f"{'||dh_T/dh_0||':>14} {'test MSE':>10}"
    )
    phases = (("init", 0), ("trained", 1)) if args.steps else (("init", 0),)
    for name, result in results.items():
        loss = result[2]
        for when, index in phases:
            s = result[index]
            rho = float(np.mean(s["spectral_radius"]))
            top = float(np.mean(s["singular_values"][:, 0]))
            product = float(s["product_norm"][0])
            shown = f"{loss:>10.4f}" if when == "trained" else f"{'':>10}"
            print(f"{name:<14} {when:<8} {rho:>14.3f} {top:>15.3f} {product:>14.3g} {shown}")
    if importlib.util.find_spec("matplotlib") is None:
        print('(matplotlib is not installed, so no plots: pip install "seqjax[plot]")')
        return 0
    from seqjax.apps.plots import plot_jacobian_spectrum

    for tag, index in phases:
        when = {"init": "initialisation", "trained": "training"}[tag]
        path = os.path.join(args.out, f"jacobian_spectrum_{tag}.png")
        title = (
            f"Adding problem, T = {args.length}, H = {args.hidden}: recurrent Jacobian after {when}"
        )
        plot_jacobian_spectrum({n: r[index] for n, r in results.items()}, path, title=title)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

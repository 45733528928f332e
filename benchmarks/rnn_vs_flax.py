"""Is a seqjax LSTM/GRU layer as fast as Flax linen's on this backend?

Question: ``seqjax.unroll(LSTMCell | GRUCell, ...)`` against Flax linen
``nn.RNN(nn.OptimizedLSTMCell(H))`` and ``nn.RNN(nn.GRUCell(H))`` on the same shapes, forward
(outputs ``ys``) and forward+backward (loss ``mean(ys**2)``, gradients w.r.t. every parameter
and the input), float32. Both sides use their defaults (seqjax's per-backend projection
placement, Flax's ``unroll=1``), as a user would call them.

Same computation: Flax's parameters are built from seqjax's (same values, Flax's per-gate
layout), and the script checks that the timed executables' outputs, loss and every gradient
agree (``max_rel_diff`` in each row); it fails rather than report a ratio of different work.
Same layout: each pair is timed in both layouts, each library given the same one:
``time_major`` (``xs [T, B, I]``: seqjax's default, Flax ``time_major=True``) and
``batch_major`` (``xs [B, T, I]``: Flax's default, seqjax ``time_axis=1``), so a transpose
that one library pays is paid by the other too.

The figure to read is the ratio seqjax / Flax of the two medians, from interleaved repeats.

Usage::

    python benchmarks/rnn_vs_flax.py                  # full sizes -> benchmarks/results/
    python benchmarks/rnn_vs_flax.py --quick --out /tmp/bench
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness as h
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax.interop.flax_linen import params_from_linen, params_to_linen

SCRIPT = "rnn_vs_flax"
TITLE = "seqjax.unroll vs Flax linen nn.RNN (LSTM, GRU)"

# (B, T, I, H), float32.
FULL_CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128)]
QUICK_CONFIGS = [(2, 5, 3, 4)]
CELLS = ("lstm", "gru")
MODES = ("fwd", "fwd+bwd")
LAYOUTS = ("time_major", "batch_major")
DTYPE = jnp.float32
# Largest |seqjax - flax| / max|flax| accepted per leaf before the timings are believed.
REL_TOL = 1e-3


def config_name(b: int, t: int, i: int, hid: int) -> str:
    return f"B{b} T{t} I{i} H{hid}"


# --------------------------------------------------------------------------- the two sides


def seqjax_cell(name: str, input_size: int, hidden_size: int):
    cls = {"lstm": seqjax.LSTMCell, "gru": seqjax.GRUCell}[name]
    return cls(input_size=input_size, hidden_size=hidden_size)


def flax_model(name: str, hidden_size: int, layout: str) -> nn.RNN:
    cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[name](hidden_size)
    return nn.RNN(cell, time_major=layout == "time_major")


def flax_variables(cell, params) -> dict:
    """Flax linen ``nn.RNN`` variables holding the same function as seqjax ``params``."""
    return {"params": {"cell": params_to_linen(cell, params)["params"]}}


def seqjax_grads_from_flax(cell, grads: dict):
    """Flax parameter gradients rearranged as seqjax's (for the equivalence check)."""
    converted = params_from_linen(cell, grads["params"]["cell"])
    if isinstance(cell, seqjax.GRUCell):
        # Flax has no recurrent r/z biases; seqjax's enter only through their sum with the
        # input biases, so their gradients are the input biases' gradients.
        hidden = cell.hidden_size
        converted = converted._replace(
            b_h=converted.b_h.at[: 2 * hidden].set(converted.b_x[: 2 * hidden])
        )
    return converted


def make_fns(name: str, cell, model: nn.RNN, mode: str, layout: str):
    """``(seqjax_fn, flax_fn)``, each ``(params, xs) -> ys`` or ``-> (loss, grads)``."""
    time_axis = 0 if layout == "time_major" else 1

    def seqjax_forward(params, xs):
        return seqjax.unroll(cell, params, xs, time_axis=time_axis)[1]

    def flax_forward(variables, xs):
        return model.apply(variables, xs)

    if mode == "fwd":
        return seqjax_forward, flax_forward

    def with_grad(forward):
        return jax.value_and_grad(lambda p, x: jnp.mean(forward(p, x) ** 2), argnums=(0, 1))

    return with_grad(seqjax_forward), with_grad(flax_forward)


def relative_difference(cell, mode: str, seqjax_out, flax_out) -> float:
    """Largest ``|seqjax - flax| / max|flax|`` over ys, or over the loss and every gradient."""
    if mode == "fwd+bwd":
        loss, (grads, grad_xs) = flax_out
        flax_out = (loss, (seqjax_grads_from_flax(cell, grads), grad_xs))
    worst = 0.0
    for a, b in zip(jax.tree.leaves(seqjax_out), jax.tree.leaves(flax_out), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b))), 1e-30)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


# --------------------------------------------------------------------------- the run


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    key = jax.random.key(0)
    for b, t, i, hid in configs:
        cfg = config_name(b, t, i, hid)
        xs_tm = jax.random.normal(jax.random.fold_in(key, 1), (t, b, i), DTYPE)
        for name in CELLS:
            cell = seqjax_cell(name, i, hid)
            params = cell.init(jax.random.fold_in(key, 2), DTYPE)
            variables = flax_variables(cell, params)
            for layout in LAYOUTS:
                xs = xs_tm if layout == "time_major" else jnp.swapaxes(xs_tm, 0, 1)
                model = flax_model(name, hid, layout)
                for mode in MODES:
                    print(f"[{cfg}] {name} {mode} {layout}")
                    sj, fx = make_fns(name, cell, model, mode, layout)
                    group = [
                        h.Contender("seqjax", sj, (params, xs), {"library": "seqjax"}),
                        h.Contender("flax", fx, (variables, xs), {"library": "flax"}),
                    ]
                    outs: list = []
                    rows = h.measure_group(group, **timing, outputs=outs)
                    # What was timed must be the same computation, or the ratio means nothing.
                    diff = relative_difference(cell, mode, *outs)
                    if diff > REL_TOL:
                        raise AssertionError(
                            f"seqjax and Flax {name} {mode} ({layout}) disagree: "
                            f"relative difference {diff:.2e} > {REL_TOL:g}"
                        )
                    rec.add(
                        rows,
                        config=cfg, B=b, T=t, I=i, H=hid, dtype="float32",
                        cell=name, mode=mode, layout=layout, max_rel_diff=diff,
                        flax_cell={"lstm": "OptimizedLSTMCell", "gru": "GRUCell"}[name],
                    )  # fmt: skip
    return rec


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.3f} ({row['q1_ms']:.3f}-{row['q3_ms']:.3f})"


def summarize(rows: Sequence[dict]) -> str:
    pairs = {}
    for r in rows:
        pairs.setdefault((r["config"], r["cell"], r["mode"], r["layout"]), {})[r["library"]] = r
    table = []
    for (cfg, cell, mode, layout), p in pairs.items():
        s, f = p["seqjax"], p["flax"]
        ratio = s["median_ms"] / f["median_ms"]
        verdict = h.verdict(s, f)
        table.append(
            {
                "config": cfg,
                "cell": cell,
                "mode": mode,
                "layout": layout,
                "seqjax": _ms(s),
                "flax": _ms(f),
                "ratio": ratio,
                "verdict": verdict,
                "compile": f"{s['compile_s']:.2f} / {f['compile_s']:.2f}",
            }
        )
    slower = [r for r in table if r["verdict"] == "seqjax SLOWER"]
    worst = max(table, key=lambda r: r["ratio"])
    parts = [
        "## seqjax / Flax",
        "",
        "`ratio` = seqjax median / Flax median (< 1: seqjax faster). `verdict` is `tie` when "
        "the two interquartile ranges overlap. Times in ms: median (q1-q3). Compile in s: "
        "seqjax / Flax. Both libraries get the same layout in each row; outputs, loss and "
        f"gradients of the timed executables agree (relative difference <= {REL_TOL:g}).",
        "",
        f"seqjax clearly slower in {len(slower)} of {len(table)} rows; highest ratio "
        f"{worst['ratio']:.3f} ({worst['config']}, {worst['cell']}, {worst['mode']}, "
        f"{worst['layout']}).",
        "",
        h.markdown_table(
            table,
            [
                ("config", "config"),
                ("cell", "cell"),
                ("mode", "mode"),
                ("layout", "layout"),
                ("seqjax ms", "seqjax"),
                ("flax ms", "flax"),
                ("ratio", "ratio"),
                ("verdict", "verdict"),
                ("compile s", "compile"),
            ],
        ),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv)
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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


def _blocks(a, n: int) -> list:
    return jnp.split(a, n, axis=-1)


def flax_variables(name: str, params) -> dict:
    """Flax linen variables holding the same values as seqjax ``params``."""
    if name == "lstm":  # gate order i, f, g, o in both
        wx, wh, b = _blocks(params.w_x, 4), _blocks(params.w_h, 4), _blocks(params.b, 4)
        cell = {}
        for j, g in enumerate("ifgo"):
            cell[f"i{g}"] = {"kernel": wx[j]}
            cell[f"h{g}"] = {"kernel": wh[j], "bias": b[j]}
    else:  # gate order r, z, n in both; Flax has no recurrent bias for r and z
        wx, wh = _blocks(params.w_x, 3), _blocks(params.w_h, 3)
        bx, bh = _blocks(params.b_x, 3), _blocks(params.b_h, 3)
        cell = {
            "ir": {"kernel": wx[0], "bias": bx[0] + bh[0]},
            "iz": {"kernel": wx[1], "bias": bx[1] + bh[1]},
            "in": {"kernel": wx[2], "bias": bx[2]},
            "hr": {"kernel": wh[0]},
            "hz": {"kernel": wh[1]},
            "hn": {"kernel": wh[2], "bias": bh[2]},
        }
    return {"params": {"cell": cell}}


def seqjax_grads_from_flax(name: str, grads: dict, like):
    """Flax parameter gradients rearranged as seqjax's (for the equivalence check)."""
    c = grads["params"]["cell"]
    cat = jnp.concatenate
    if name == "lstm":
        return type(like)(
            w_x=cat([c[f"i{g}"]["kernel"] for g in "ifgo"], axis=-1),
            w_h=cat([c[f"h{g}"]["kernel"] for g in "ifgo"], axis=-1),
            b=cat([c[f"h{g}"]["bias"] for g in "ifgo"], axis=-1),
        )
    # d/d b_h[r, z] equals d/d b_x[r, z]: the two biases enter only as their sum.
    return type(like)(
        w_x=cat([c["ir"]["kernel"], c["iz"]["kernel"], c["in"]["kernel"]], axis=-1),
        w_h=cat([c["hr"]["kernel"], c["hz"]["kernel"], c["hn"]["kernel"]], axis=-1),
        b_x=cat([c["ir"]["bias"], c["iz"]["bias"], c["in"]["bias"]], axis=-1),
        b_h=cat([c["ir"]["bias"], c["iz"]["bias"], c["hn"]["bias"]], axis=-1),
    )


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


def relative_difference(name: str, mode: str, seqjax_out, flax_out, params) -> float:
    """Largest ``|seqjax - flax| / max|flax|`` over ys, or over the loss and every gradient."""
    if mode == "fwd+bwd":
        loss, (grads, grad_xs) = flax_out
        flax_out = (loss, (seqjax_grads_from_flax(name, grads, params), grad_xs))
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
            variables = flax_variables(name, params)
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
                    diff = relative_difference(name, mode, *outs, params)
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
        overlap = s["q1_ms"] <= f["q3_ms"] and f["q1_ms"] <= s["q3_ms"]
        verdict = "tie" if overlap else ("seqjax faster" if ratio < 1 else "seqjax SLOWER")
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

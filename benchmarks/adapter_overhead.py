"""Do the Flax adapters cost anything over the raw cell under jit?

Question: a seqjax LSTM/GRU run through :class:`seqjax.interop.flax_nnx.Recurrent` (NNX,
functional form: ``nnx.merge(graphdef, state)(xs)`` inside ``jax.jit``, as ``nnx.jit`` does)
and through :class:`seqjax.interop.flax_linen.Recurrent` (``module.apply(variables, xs)``),
against ``seqjax.unroll(cell, params, xs)`` on the same parameters, forward (outputs ``ys``)
and forward+backward (loss ``mean(ys**2)``, gradients w.r.t. every parameter and the input),
float32, time-major ``[T, B, I]``.

The adapters rebuild the params NamedTuple around their variables at trace time and call
the same code, so the expected answer is a ratio of 1 within noise. The script checks that
every adapter's outputs, loss and gradients equal the raw cell's bit for bit before it
believes a timing (``max_abs_diff`` in each row).

The figure to read is the ratio adapter / raw of the medians, from interleaved repeats.
``nnx.jit`` itself also walks the module graph in Python on every call, a fixed per-call
cost outside the compiled program, not measured here.

Usage::

    python benchmarks/adapter_overhead.py                  # full sizes -> benchmarks/results/
    python benchmarks/adapter_overhead.py --quick --out /tmp/bench
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import seqjax
from seqjax.interop import flax_linen, flax_nnx

SCRIPT = "adapter_overhead"
TITLE = "Flax NNX / linen adapters vs the raw seqjax cell under jit"

# (B, T, I, H), float32.
FULL_CONFIGS = [(32, 128, 64, 256), (8, 512, 32, 64)]
QUICK_CONFIGS = [(2, 5, 3, 4)]
CELLS = {"lstm": seqjax.LSTMCell, "gru": seqjax.GRUCell}
MODES = ("fwd", "fwd+bwd")
DTYPE = jnp.float32


def config_name(b: int, t: int, i: int, hid: int) -> str:
    return f"B{b} T{t} I{i} H{hid}"


def forwards(cell, params):
    """``{label: (forward(weights, xs) -> ys, weights)}`` for the raw cell and both adapters."""
    graphdef, state = nnx.split(flax_nnx.Recurrent(cell, params=params))
    linen_module = flax_linen.Recurrent(cell)
    return {
        "raw": (lambda p, xs: seqjax.unroll(cell, p, xs)[1], params),
        "nnx": (lambda s, xs: nnx.merge(graphdef, s)(xs)[1], state),
        "linen": (
            lambda v, xs: linen_module.apply(v, xs)[1],
            {"params": flax_linen.wrap_params(cell, params)},
        ),
    }


def as_raw(cell, label: str, out):
    """An adapter's result with its parameter gradients rearranged as the raw params."""
    if not isinstance(out, tuple) or label == "raw":
        return out
    loss, (grads, grad_xs) = out
    if label == "nnx":
        leaves = {k: v.get_value() for k, v in grads["params"].items()}
        grads = type(cell.init(jax.random.key(0)))(**leaves)
    else:
        grads = flax_linen.unwrap_params(cell, grads["params"])
    return loss, (grads, grad_xs)


def max_abs_difference(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        worst = max(worst, float(np.max(np.abs(np.asarray(x) - np.asarray(y)))))
    return worst


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    key = jax.random.key(0)
    for b, t, i, hid in configs:
        cfg = config_name(b, t, i, hid)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (t, b, i), DTYPE)
        for name, cls in CELLS.items():
            cell = cls(input_size=i, hidden_size=hid)
            params = cell.init(jax.random.fold_in(key, 2), DTYPE)
            fns = forwards(cell, params)
            for mode in MODES:
                print(f"[{cfg}] {name} {mode}")
                group = []
                for label, (forward, weights) in fns.items():
                    fn = forward
                    if mode == "fwd+bwd":
                        fn = jax.value_and_grad(
                            lambda w, x, forward=forward: jnp.mean(forward(w, x) ** 2),
                            argnums=(0, 1),
                        )
                    group.append(h.Contender(label, fn, (weights, xs), {"variant": label}))
                outs: list = []
                rows = h.measure_group(group, **timing, outputs=outs)
                # What was timed must be the same computation, or the ratio means nothing.
                raw_out = outs[0]
                diffs = [
                    max_abs_difference(as_raw(cell, c.label, out), raw_out)
                    for c, out in zip(group, outs, strict=True)
                ]
                if max(diffs) > 0:
                    raise AssertionError(
                        f"{name} {mode}: an adapter differs from the raw cell by {max(diffs):.2e}"
                    )
                for row, diff in zip(rows, diffs, strict=True):
                    row["max_abs_diff"] = diff
                rec.add(
                    rows,
                    config=cfg, B=b, T=t, I=i, H=hid, dtype="float32", cell=name, mode=mode,
                )  # fmt: skip
    return rec


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.3f} ({row['q1_ms']:.3f}-{row['q3_ms']:.3f})"


def summarize(rows: Sequence[dict]) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["cell"], r["mode"]), {})[r["variant"]] = r
    table = []
    for (cfg, cell, mode), g in groups.items():
        raw = g["raw"]
        entry = {"config": cfg, "cell": cell, "mode": mode, "raw": _ms(raw)}
        for label in ("nnx", "linen"):
            a = g[label]
            entry[label] = _ms(a)
            entry[f"{label}_ratio"] = a["median_ms"] / raw["median_ms"]
            entry[f"{label}_verdict"] = "tie" if h.iqr_overlap(a, raw) else "differs"
        table.append(entry)
    ratios = [e[f"{label}_ratio"] for e in table for label in ("nnx", "linen")]
    parts = [
        "## adapter / raw",
        "",
        "`ratio` = adapter median / raw `unroll` median (1: no overhead). `tie` when the two "
        "interquartile ranges overlap. Times in ms: median (q1-q3). Every adapter's outputs, "
        "loss and gradients equal the raw cell's bit for bit.",
        "",
        f"Ratios range from {min(ratios):.3f} to {max(ratios):.3f}.",
        "",
        h.markdown_table(
            table,
            [
                ("config", "config"),
                ("cell", "cell"),
                ("mode", "mode"),
                ("raw ms", "raw"),
                ("nnx ms", "nnx"),
                ("nnx ratio", "nnx_ratio"),
                ("nnx", "nnx_verdict"),
                ("linen ms", "linen"),
                ("linen ratio", "linen_ratio"),
                ("linen", "linen_verdict"),
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

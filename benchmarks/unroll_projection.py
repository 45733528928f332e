"""Where should ``seqjax.unroll`` compute the input projection on this backend, and what unroll?

Question: ``unroll(..., method=Scan(hoist_projection=True))`` computes ``cell.project``
(``x W_x + b``) for all steps as one large matmul before ``lax.scan``;
``hoist_projection=False`` computes it per step inside the scan body. Which is faster here,
for the LSTM, GRU and Elman cells, forward and forward+backward (loss ``mean(ys**2)``,
gradients w.r.t. params and ``xs``)? Then, with the faster placement, does
``lax.scan(unroll=k)`` for k in 1, 2, 4, 8 help?

The contenders of each question are timed interleaved in one run (see ``_harness.py``); the
figure to read is the ratio hoisted / per-step within a row. ``seqjax.tuning.TABLE``
holds the per-backend default this script is meant to justify.

Usage::

    python benchmarks/unroll_projection.py            # full sizes -> benchmarks/results/
    python benchmarks/unroll_projection.py --quick --out /tmp/bench
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp

import seqjax

SCRIPT = "unroll_projection"
TITLE = "unroll: input projection before the scan (hoisted) or per step, and scan unroll"

# (B, T, I, H), time-major float32 inputs [T, B, I].
FULL_CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128)]
QUICK_CONFIGS = [(2, 5, 3, 4)]
UNROLLS = (1, 2, 4, 8)
QUICK_UNROLLS = (1, 2)
CELLS = {"lstm": seqjax.LSTMCell, "gru": seqjax.GRUCell, "elman": seqjax.ElmanCell}
MODES = ("fwd", "fwd+bwd")
DTYPE = jnp.float32


def default_hoist() -> bool | None:
    """The placement ``unroll`` picks when ``hoist_projection`` is None, on this backend."""
    # `seqjax.unroll` is the function; the module that holds the per-backend table is private.
    module = importlib.import_module("seqjax.unroll")
    pick = getattr(module, "_hoist_default", None)
    return pick() if pick is not None else None


def config_name(b: int, t: int, i: int, hid: int) -> str:
    return f"B{b} T{t} I{i} H{hid}"


@functools.cache  # one function object per variant, so the harness compiles each once
def make_fn(cell, mode: str, *, hoist: bool, unroll: int):
    """``(params, xs) -> ys`` or ``-> (loss, (grad params, grad xs))``."""

    def forward(params, xs):
        method = seqjax.Scan(hoist_projection=hoist, unroll=unroll)
        _, ys = seqjax.unroll(cell, params, xs, method=method)
        return ys

    if mode == "fwd":
        return forward

    def loss(params, xs):
        return jnp.mean(forward(params, xs) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    hoist_default = default_hoist()
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    key = jax.random.key(0)
    for b, t, i, hid in configs:
        cfg = config_name(b, t, i, hid)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (t, b, i), DTYPE)
        for cell_name, cell_cls in CELLS.items():
            cell = cell_cls(input_size=i, hidden_size=hid)
            params = cell.init(jax.random.fold_in(key, 2), DTYPE)
            for mode in MODES:
                common = dict(
                    config=cfg, B=b, T=t, I=i, H=hid, dtype="float32", layout="time_major",
                    cell=cell_name, mode=mode, default_hoist=hoist_default,
                )  # fmt: skip
                print(f"[{cfg}] {cell_name} {mode}: placement")
                placement = [
                    h.Contender(
                        label=label,
                        fn=make_fn(cell, mode, hoist=hoist, unroll=1),
                        args=(params, xs),
                        meta=dict(hoist_projection=hoist, unroll=1),
                    )
                    for label, hoist in (("hoisted", True), ("per_step", False))
                ]
                rows = h.measure_group(placement, **timing)
                rec.add(rows, experiment="placement", **common)
                best = min(rows, key=lambda r: r["median_ms"])["hoist_projection"]

                print(f"[{cfg}] {cell_name} {mode}: unroll, hoist_projection={best}")
                unrolls = [
                    h.Contender(
                        label=f"unroll={k}",
                        fn=make_fn(cell, mode, hoist=best, unroll=k),
                        args=(params, xs),
                        meta=dict(hoist_projection=best, unroll=k),
                    )
                    for k in (QUICK_UNROLLS if args.quick else UNROLLS)
                ]
                rec.add(h.measure_group(unrolls, **timing), experiment="unroll", **common)
    return rec


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.3f} ({row['q1_ms']:.3f}-{row['q3_ms']:.3f})"


def summarize(rows: Sequence[dict], hoist_default: bool | None) -> str:
    by = {}
    for r in rows:
        by.setdefault((r["config"], r["cell"], r["mode"], r["experiment"]), []).append(r)
    keys = sorted({k[:3] for k in by}, key=lambda k: (k[0], list(CELLS).index(k[1]), k[2]))

    placement_rows, unroll_rows = [], []
    for cfg, cell, mode in keys:
        pr = {r["label"]: r for r in by[(cfg, cell, mode, "placement")]}
        hoisted, per_step = pr["hoisted"], pr["per_step"]
        ratio = hoisted["median_ms"] / per_step["median_ms"]
        placement_rows.append(
            {
                "config": cfg,
                "cell": cell,
                "mode": mode,
                "hoisted": _ms(hoisted),
                "per_step": _ms(per_step),
                "ratio": ratio,
                "faster": "hoisted" if ratio < 1 else "per-step",
                "compile": f"{hoisted['compile_s']:.2f} / {per_step['compile_s']:.2f}",
            }
        )
        ur = sorted(by[(cfg, cell, mode, "unroll")], key=lambda r: r["unroll"])
        best = min(ur, key=lambda r: r["median_ms"])
        k1 = next(r for r in ur if r["unroll"] == 1)
        row = {
            "config": cfg,
            "cell": cell,
            "mode": mode,
            "placement": "hoisted" if ur[0]["hoist_projection"] else "per-step",
            "best": best["unroll"],
            "speedup": k1["median_ms"] / best["median_ms"],
        }
        row.update({f"k{k}": "" for k in UNROLLS})
        row.update({f"k{r['unroll']}": _ms(r) for r in ur})
        unroll_rows.append(row)

    default = {True: "hoisted (True)", False: "per-step (False)", None: "unknown"}[hoist_default]
    votes = sum(r["ratio"] < 1 for r in placement_rows)
    parts = [
        "## Placement (unroll=1)",
        "",
        f"Current default on this backend: {default}. Hoisted is faster in {votes} of "
        f"{len(placement_rows)} rows. `ratio` = hoisted / per-step median (< 1: hoisting "
        "wins). Times in ms: median (q1-q3). Compile in s: hoisted / per-step.",
        "",
        h.markdown_table(
            placement_rows,
            [
                ("config", "config"),
                ("cell", "cell"),
                ("mode", "mode"),
                ("hoisted ms", "hoisted"),
                ("per-step ms", "per_step"),
                ("ratio", "ratio"),
                ("faster", "faster"),
                ("compile s", "compile"),
            ],
        ),
        "",
        "## Scan unroll, with the faster placement of each row",
        "",
        "`speedup` = unroll=1 median / best median. Times in ms: median (q1-q3).",
        "",
        h.markdown_table(
            unroll_rows,
            [
                ("config", "config"),
                ("cell", "cell"),
                ("mode", "mode"),
                ("placement", "placement"),
                *[(f"unroll={k} ms", f"k{k}") for k in UNROLLS],
                ("best k", "best"),
                ("speedup", "speedup"),
            ],
        ),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv)
    rec = run(args)
    body = summarize(rec.rows, default_hoist())
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

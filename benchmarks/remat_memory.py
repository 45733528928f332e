"""What does rematerialisation over time (``unroll(..., method=Remat(k))``) save, and at what cost?

Question: for an LSTM (and a GRU) trained by full BPTT over T steps, how much memory does the
backward pass need with and without ``remat``, and how much slower is it? The issue's goal:
at T = 10^4, peak training memory with remat at most a quarter of the plain one, at most 1.4x
the time.

Each group times, interleaved, the gradient of ``mean(ys**2)`` w.r.t. the params and ``xs``
for ``remat=None`` (plain BPTT), ``remat=k`` with ``k = round(sqrt(T))`` (memory ~ sqrt(T))
and a two-level schedule ``(k1, k2)`` (``k1 ~ T**(2/3)``, ``k2 ~ T**(1/3)``). Every
contender's gradients are checked against the plain ones (the script fails otherwise).

Memory, two ways:
* ``temp MB``: XLA's buffer assignment for the compiled program (``memory_analysis``:
  temporaries, i.e. everything but the arguments and outputs). Exact for what XLA allocates.
* ``RSS MB`` (not in ``--quick``; Linux): each contender run alone in a fresh subprocess;
  the peak resident set during one call (``VmHWM``, reset just before it) minus the
  resident set just before it (after compiling and placing the inputs). What the operating
  system saw.

Usage::

    python benchmarks/remat_memory.py                 # T = 1e3, 1e4 (about 2 min on 2 cores)
    python benchmarks/remat_memory.py --quick --out /tmp/bench
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

import seqjax

SCRIPT = "remat_memory"
TITLE = "Rematerialisation over time: BPTT memory and time with and without Remat"
DTYPE = jnp.float32
FULL = dict(B=16, I=32, H=128, Ts=(1_000, 10_000))
QUICK = dict(B=2, I=3, H=8, Ts=(50,))
CELLS = {"lstm": seqjax.LSTMCell, "gru": seqjax.GRUCell}


def schedules(t: int) -> dict:
    """Label -> ``remat`` value for sequence length ``t``."""
    return {
        "plain": None,
        "sqrt": max(1, round(t**0.5)),
        "nested": (max(1, round(t ** (2 / 3))), max(1, round(t ** (1 / 3)))),
    }


@functools.cache  # one function object per variant, so the harness compiles each once
def make_grad(cell, remat):
    def loss(params, xs):
        method = None if remat is None else seqjax.Remat(remat)
        return jnp.mean(seqjax.unroll(cell, params, xs, method=method)[1] ** 2)

    return jax.grad(loss, argnums=(0, 1))


def inputs(cell_name: str, t: int, size: dict):
    cell = CELLS[cell_name](size["I"], size["H"])
    key = jax.random.key(0)
    params = cell.init(key, DTYPE)
    xs = jax.random.normal(jax.random.fold_in(key, t), (t, size["B"], size["I"]), DTYPE)
    return cell, params, xs


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1e3  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(cell_name: str, t: int, label: str, size: dict) -> None:
    """Run one contender once in this fresh process; print its memory as JSON.

    The peak is this process's own high-water mark (``VmHWM``), reset just before the call
    (``/proc/self/clear_refs``), not ``ru_maxrss``, which a child inherits from the parent
    that forked it.
    """
    cell, params, xs = inputs(cell_name, t, size)
    compiled = jax.jit(make_grad(cell, schedules(t)[label])).lower(params, xs).compile()
    jax.block_until_ready((params, xs))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = _status_mb("VmRSS")
    jax.block_until_ready(compiled(params, xs))
    print(json.dumps({"rss_before_mb": before, "rss_peak_mb": _status_mb("VmHWM")}))


def rss_above_baseline(cell_name: str, t: int, label: str, size: dict) -> float | None:
    cmd = [sys.executable, __file__, "--child", json.dumps([cell_name, t, label, size])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        print(out.stderr[-2000:])
        return None
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["rss_peak_mb"] - got["rss_before_mb"]


def _max_rel_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) / (float(np.max(np.abs(y))) + 1e-30)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def run(args, rec: h.Recorder) -> None:
    size = QUICK if args.quick else FULL
    for t in size["Ts"]:
        for cell_name in CELLS:
            cell, params, xs = inputs(cell_name, t, size)
            contenders = [
                h.Contender(label, make_grad(cell, remat), (params, xs), {"remat": str(remat)})
                for label, remat in schedules(t).items()
            ]
            print(f"[T={t}] {cell_name}")
            outputs: list = []
            long = t >= 10_000  # one call takes a second or more: fewer, single-call samples
            rows = h.measure_group(
                contenders,
                repeats=min(args.repeats, 7) if long else args.repeats,
                warmup=1 if long else args.warmup,
                min_sample_s=0.0 if long else args.min_sample_ms / 1e3,
                outputs=outputs,
            )
            for row, out in zip(rows, outputs, strict=True):
                # float32 sums over 10^4 steps in a different order: ~1e-5 relative.
                row["max_rel_diff"] = _max_rel_diff(out, outputs[0])
                if row["max_rel_diff"] > 1e-4:
                    sys.exit(f"{cell_name} T={t} {row['label']}: gradients differ from plain")
                if not args.quick:
                    row["rss_mb"] = rss_above_baseline(cell_name, t, row["label"], size)
            rec.add(
                rows, config=f"B{size['B']} T{t} I{size['I']} H{size['H']}", T=t,
                cell=cell_name, dtype="float32",
            )  # fmt: skip
            rec.write(summarize(rec.rows), TITLE)  # partial results survive a time limit


def summarize(rows: Sequence[dict]) -> str:
    table = []
    plain = {(r["cell"], r["T"]): r for r in rows if r["label"] == "plain"}
    for r in rows:
        base = plain[(r["cell"], r["T"])]
        temp, base_temp = r.get("temp_bytes"), base.get("temp_bytes")
        rss, base_rss = r.get("rss_mb"), base.get("rss_mb")
        table.append(
            {
                **r,
                "temp_mb": temp / 1e6 if temp is not None else None,
                "temp_ratio": temp / base_temp if temp and base_temp else None,
                "rss_ratio": rss / base_rss if rss and base_rss else None,
                "time_ratio": r["median_ms"] / base["median_ms"],
            }
        )
    columns = [
        ("config", "config"),
        ("cell", "cell"),
        ("remat", "remat"),
        ("median ms", "median_ms"),
        ("time / plain", "time_ratio"),
        ("temp MB", "temp_mb"),
        ("temp / plain", "temp_ratio"),
        ("RSS MB", "rss_mb"),
        ("RSS / plain", "rss_ratio"),
        ("max rel diff", "max_rel_diff"),
    ]
    return (
        "## Gradient of mean(ys**2) w.r.t. params and xs, float32\n\n"
        "`sqrt`: remat=round(sqrt(T)); `nested`: remat=(round(T**(2/3)), round(T**(1/3))). "
        "Ratios < 1: less than plain BPTT. The arguments (params, xs) and outputs (the "
        "gradients) are not in `temp MB`; the remaining temporaries with remat are mostly "
        "`ys` and its cotangent ([T, B, H] each), which every schedule keeps.\n\n"
        + h.markdown_table(table, columns)
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        cell_name, t, label, size = json.loads(argv[1])
        child(cell_name, t, label, size)
        return
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=10)
    rec = h.Recorder(SCRIPT, args)
    run(args, rec)
    rec.write(summarize(rec.rows), TITLE)


if __name__ == "__main__":
    main()

"""How long a sequence trains at a fixed memory per device, with time split over 1, 2, 4 devices?

Question: ``seqjax.SequenceParallel`` cuts one sequence's time axis into a chunk per device.
At a fixed memory budget per device, how long a sequence can one training step
(forward and backward, ``value_and_grad`` of ``mean(ys**2)`` for the parameters) handle on
1, 2 and 4 devices, and what does one step cost against one device?

* Models: a minGRU (``I = H = 32``, log space) whose chunks run one ``lax.scan`` each
  (``SequenceParallel``'s default for linear cells) or the associative scan, and a GRU
  (``I = H = 8``) whose chunks run DEER (dense ``[H, H]`` Jacobians), one sequence
  (``B = 1``), float32. Baselines on one device: ``lax.scan`` BPTT (``Scan``), and the
  parallel method run without sharding (``Associative`` / ``DEER``).
* Memory per device: what XLA reports for the compiled step (``memory_analysis``: arguments,
  outputs and temporaries of one device's program), compiled from shapes only. The largest
  ``T`` within the budget is found from two compiles (the bytes grow linearly in ``T``), then
  checked by compiling at that ``T`` (a multiple of 4 x 64 steps, stepped down until it fits).
* Time: one step at a common ``T`` (the 1-device maximum of the split method), median of
  interleaved rounds; ``vs 1 device`` is the ratio to ``SequenceParallel`` on 1 device.

Each device count runs in a process of its own (``--devices`` host devices must exist before
JAX initialises); the parent merges their rows. On a CPU the host devices share the
machine's cores and memory: the memory column is what each device's program needs, the time
column shows the cost of splitting, not a speedup (2 cores cannot run 4 devices at once).

Usage::

    python benchmarks/sequence_parallel.py                  # -> benchmarks/results/
    python benchmarks/sequence_parallel.py --quick --out /tmp/bench
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import _harness as h
import jax

if __name__ == "__main__":  # host devices must exist before JAX initialises
    jax.config.update("jax_num_cpu_devices", int(h.early_option("--devices", "1")))

import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import seqjax as sj  # noqa: E402
from seqjax import sharding  # noqa: E402

SCRIPT = "sequence_parallel"
TITLE = "Sequence parallelism: the longest trainable sequence per device, and its cost"
DEVICES = (1, 2, 4)
MIB = 2**20
FULL = {"budget_mib": 128, "min_gru": 32, "gru": 8, "probe": 4096, "baselines": True}
QUICK = {"budget_mib": 1, "min_gru": 8, "gru": 4, "probe": 256, "baselines": False}
ALIGN = 4 * 64  # every T is a multiple of this: divisible by every device count


def parse(argv):
    args = h.parse_args(__doc__.splitlines()[0], argv, repeats=10, devices=0)
    return args


def models(sizes) -> dict:
    """name -> (cell, {label: chunk solver}, the same solver unsplit on one device)."""
    n, g = sizes["min_gru"], sizes["gru"]
    minimal = {"SequenceParallel": None}
    if sizes["baselines"]:  # the quick run measures each code path once
        minimal["SequenceParallel, Associative chunks"] = sj.Associative()
    return {
        "minGRU": (sj.MinGRUCell(n, n), minimal, sj.Associative()),
        "GRU": (sj.GRUCell(g, g), {"SequenceParallel": sj.DEER()}, sj.DEER()),
    }


def step_fn(cell, method):
    def loss(params, xs):
        return jnp.mean(sj.unroll(cell, params, xs, method=method)[1] ** 2)

    return jax.value_and_grad(loss)


def contenders(solvers: dict, unsplit, devices: int, baselines: bool) -> dict:
    """The methods measured in this process: label -> (method, mesh or None)."""
    mesh = sharding.grid_mesh(time=devices)
    out = {label: (sj.SequenceParallel(mesh, solver=s), mesh) for label, s in solvers.items()}
    if devices == 1 and baselines:
        out |= {"Scan (lax.scan)": (sj.Scan(), None), type(unsplit).__name__: (unsplit, None)}
    return out


def per_device_bytes(cell, method, mesh, num_steps: int) -> int:
    """Arguments + outputs + temporaries of one device's compiled step, from shapes only."""
    params = jax.eval_shape(cell.init, jax.random.key(0))
    where = {} if mesh is None else {"sharding": NamedSharding(mesh, PartitionSpec("time"))}
    xs = jax.ShapeDtypeStruct((num_steps, 1, cell.input_size), jnp.float32, **where)
    compiled = jax.jit(step_fn(cell, method)).lower(params, xs).compile()
    mem = h.memory_analysis(compiled)
    return int(mem["temp_bytes"] + mem["argument_bytes"] + mem["output_bytes"])


def longest(cell, method, mesh, budget: int, probe: int) -> tuple[int, int]:
    """The largest T (a multiple of ALIGN) whose step fits ``budget`` bytes per device."""
    a, b = probe, 2 * probe
    bytes_a, bytes_b = (per_device_bytes(cell, method, mesh, t) for t in (a, b))
    per_step = (bytes_b - bytes_a) / (b - a)
    guess = int((budget - (bytes_a - per_step * a)) / per_step) // ALIGN * ALIGN
    while guess > ALIGN:
        used = per_device_bytes(cell, method, mesh, guess)
        if used <= budget:
            return guess, used
        guess = int(guess * 0.9) // ALIGN * ALIGN
    return ALIGN, per_device_bytes(cell, method, mesh, ALIGN)


def child(args) -> list[dict]:
    """Rows for the device count this process holds."""
    sizes, devices = (QUICK if args.quick else FULL), len(jax.devices())
    budget = sizes["budget_mib"] * MIB
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    rows = []
    for name, (cell, solvers, unsplit) in models(sizes).items():
        found = {}
        measured = contenders(solvers, unsplit, devices, sizes["baselines"])
        for label, (method, mesh) in measured.items():
            t_max, used = longest(cell, method, mesh, budget, sizes["probe"])
            found[label] = (method, mesh)
            rows.append({"model": name, "label": label, "devices": devices, "kind": "memory",
                         "T_max": t_max, "bytes_at_T_max": used,
                         "budget_mib": sizes["budget_mib"]})  # fmt: skip
            print(f"[{devices} device(s)] {name} {label}: T_max {t_max} ({used / MIB:.1f} MiB)")
        # The parent passes the 1-device maximum on; the 1-device child uses its own.
        t_time = (args.time_steps or {}).get(name) or next(
            r["T_max"] for r in rows if r["model"] == name and r["label"] == "SequenceParallel"
        )
        params = cell.init(jax.random.key(0))
        xs = jax.random.normal(jax.random.key(1), (t_time, 1, cell.input_size), jnp.float32)
        group = []
        for label, (method, mesh) in found.items():
            placed = xs
            if mesh is not None:
                placed = jax.device_put(xs, NamedSharding(mesh, PartitionSpec("time")))
            group.append(h.Contender(label, step_fn(cell, method), (params, placed)))
        outputs = []
        timed = h.measure_group(group, outputs=outputs, **timing)
        reference = outputs[0]
        for row, out in zip(timed, outputs, strict=True):
            diff = max(
                float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
                for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(reference), strict=True)
            )
            rows.append({**row, "model": name, "devices": devices, "kind": "time",
                         "config": f"B1 T{t_time} I{cell.input_size} H{cell.hidden_size}",
                         "B": 1, "T": t_time, "I": cell.input_size, "H": cell.hidden_size,
                         "dtype": "float32", "max_abs_diff_vs_first": diff})  # fmt: skip
    return rows


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    sizes = QUICK if args.quick else FULL
    # The quick run checks the split code path once: 2 devices, no 1-device reference.
    counts = DEVICES[1:2] if args.quick else DEVICES
    with tempfile.TemporaryDirectory() as tmp:
        for devices in counts:
            out = Path(tmp) / f"rows-{devices}.json"
            cmd = [sys.executable, __file__, "--devices", str(devices), "--child", str(out),
                   "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                   "--min-sample-ms", str(args.min_sample_ms), "--out", str(args.out)]  # fmt: skip
            if args.time_t:
                cmd += ["--time-t", json.dumps(args.time_t)]
            if args.quick:
                cmd.append("--quick")
            print(f"--- {devices} device(s)")
            subprocess.run(cmd, check=True)
            rows = json.loads(out.read_text())
            if devices == 1 and not args.time_t:  # time every count at the 1-device maximum
                args.time_t = {
                    r["model"]: r["T_max"]
                    for r in rows
                    if r["kind"] == "memory" and r["label"] == "SequenceParallel"
                }
            rec.add(rows, budget_mib=sizes["budget_mib"])
    return rec


def summarize(rows: Sequence[dict]) -> str:
    memory = [r for r in rows if r["kind"] == "memory"]
    fewest = min(r["devices"] for r in rows)  # 1, except in the quick run
    base = {r["model"]: r["T_max"] for r in memory if r["label"] == "SequenceParallel"
            and r["devices"] == fewest}  # fmt: skip
    for r in memory:
        r["vs_1"] = r["T_max"] / base[r["model"]]
    timed = [r for r in rows if r["kind"] == "time"]
    one = {r["model"]: r["median_ms"] for r in timed if r["label"] == "SequenceParallel"
           and r["devices"] == fewest}  # fmt: skip
    for r in timed:
        r["vs_1"] = r["median_ms"] / one[r["model"]]
    budget = memory[0]["budget_mib"]
    vs = f"`vs {fewest}`"
    return "\n".join([
        f"## Longest trainable T at {budget} MiB per device",
        "",
        "Per device: arguments + outputs + temporaries of the compiled training step "
        f"(XLA's memory_analysis), one sequence, float32. {vs} = T_max / T_max of "
        f"SequenceParallel on {fewest} device(s).",
        "",
        h.markdown_table(memory, [
            ("model", "model"), ("method", "label"), ("devices", "devices"),
            ("T_max", "T_max"), ("MiB at T_max", lambda r: f"{r['bytes_at_T_max'] / MIB:.1f}"),
            (f"vs {fewest}", "vs_1"),
        ]),
        "",
        "## Time per training step at one T",
        "",
        f"Median (q1-q3) over interleaved rounds; {vs} = median / SequenceParallel's on "
        f"{fewest} device(s). The host devices share the machine's cores.",
        "",
        h.markdown_table(timed, [
            ("model", "model"), ("config", "config"), ("method", "label"),
            ("devices", "devices"),
            ("ms median (q1-q3)",
             lambda r: f"{r['median_ms']:.2f} ({r['q1_ms']:.2f}-{r['q3_ms']:.2f})"),
            (f"vs {fewest}", "vs_1"), ("max |diff|", "max_abs_diff_vs_first"),
            ("compile s", "compile_s"),
        ]),
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    child_out = h.early_option("--child", "", argv)
    time_t = h.early_option("--time-t", "", argv)
    argv = [a for i, a in enumerate(argv) if not _is_extra(argv, i)]
    args = parse(argv)
    args.time_t = json.loads(time_t) if time_t else None
    if child_out:
        args.time_steps = args.time_t
        Path(child_out).write_text(json.dumps(child(args), default=float))
        return 0
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


def _is_extra(argv: list[str], i: int) -> bool:
    """``--child PATH`` and ``--time-t JSON``: the parent's instructions to a child."""
    extra = ("--child", "--time-t")
    return argv[i] in extra or (i > 0 and argv[i - 1] in extra)


if __name__ == "__main__":
    raise SystemExit(main())

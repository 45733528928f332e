"""The benchmark harness: compile apart from steady state, interleave repeats, JSONL + markdown.

The one harness of the project: the scripts under ``benchmarks/`` and ``seqjax bench`` both
time with it. Every benchmark script builds groups of :class:`Contender` (the functions one
question compares, on the same inputs) and hands each group to :func:`measure_group`, which

1. lowers and compiles each contender with ``jax.jit`` and times the two apart (plus the first
   call of the compiled executable), so compile time never leaks into steady state;
2. warms each up, then picks an inner loop count per contender so one sample lasts at least
   ``min_sample_s`` (short calls are otherwise dominated by timer and dispatch noise);
3. runs ``repeats`` rounds, each timing every contender once, starting each round at the next
   contender (round-robin), so a burst of machine noise lands on all contenders alike rather
   than on whichever happened to run during it;
4. blocks on every result with ``jax.block_until_ready`` and reports per-call median, quartiles,
   min and max in milliseconds.

Rows are plain dicts; :class:`Recorder` stamps them with the environment (device, versions,
git commit, machine load) and writes ``<device>-<script>.jsonl`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

__all__ = [
    "Contender",
    "REPO_ROOT",
    "Recorder",
    "device_tag",
    "environment",
    "fmt",
    "interleave",
    "iqr_overlap",
    "markdown_table",
    "measure_group",
    "memory_analysis",
    "package_version",
    "stats_ms",
    "time_calls",
    "verdict",
]

#: The checkout this module lives in (for the commit stamped on results; none when installed).
REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- measuring


@dataclass
class Contender:
    """One function to time on fixed inputs.

    Attributes:
        label: short name, unique within its group.
        fn: a JAX-traceable function of ``args``; the harness jits it.
        args: the inputs, already on the device.
        meta: fields copied into the result row (library, cell, options, ...).
    """

    label: str
    fn: Callable[..., Any]
    args: tuple
    meta: dict = field(default_factory=dict)


def stats_ms(samples_s: Sequence[float]) -> dict:
    """Median, quartiles, extremes and mean in milliseconds of samples in seconds."""
    ms = sorted(1e3 * s for s in samples_s)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
        "n_samples": len(ms),
    }


def memory_analysis(compiled) -> dict:
    """What the compiled executable says about its buffers (bytes), where the backend says."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend / version implements it
        return {}
    if mem is None:
        return {}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return {k.replace("_size_in", ""): getattr(mem, k, None) for k in keys}


# The same function object on inputs of the same shapes is compiled once per process; a group
# that re-times it (e.g. unroll=1 among other unrolls) reuses the executable and reports the
# compile time measured the first time, flagged with ``compile_reused``.
_COMPILED: dict = {}


def _signature(args: tuple):
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(
        (getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves
    )


def _compile(c: Contender):
    """``(compiled, info)``: lower and compile ``c.fn`` with ``jax.jit``, timing the two."""
    key = (c.fn, _signature(c.args))
    if key in _COMPILED:
        compiled, info = _COMPILED[key]
        return compiled, {**info, "compile_reused": True}
    t0 = time.perf_counter()
    lowered = jax.jit(c.fn).lower(*c.args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    info = {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "compile_reused": False,
        **memory_analysis(compiled),
    }
    _COMPILED[key] = (compiled, info)
    return compiled, info


def time_calls(call: Callable[[], Any], number: int) -> float:
    """Seconds per call, averaged over ``number`` calls, each blocked until ready."""
    start = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(call())
    return (time.perf_counter() - start) / number


def interleave(
    calls: Sequence[Callable[[], Any]], *, repeats: int, warmup: int, min_sample_s: float
) -> tuple[list[int], list[list[float]]]:
    """Time ``calls`` in ``repeats`` round-robin rounds: ``(numbers, samples)``.

    Each call is warmed up, then given an inner loop count (``numbers``) so that one sample
    lasts at least ``min_sample_s``; round ``r`` starts at call ``r``, so a burst of machine
    noise lands on every call alike. ``samples[i]`` holds call ``i``'s seconds per call.
    """
    numbers = []
    for call in calls:
        per_call = min(time_calls(call, 1) for _ in range(max(warmup, 1)))
        numbers.append(max(1, math.ceil(min_sample_s / per_call)) if per_call > 0 else 1)
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(repeats):
        for j in range(len(calls)):
            i = (r + j) % len(calls)
            samples[i].append(time_calls(calls[i], numbers[i]))
    return numbers, samples


def measure_group(
    contenders: Sequence[Contender],
    *,
    repeats: int,
    warmup: int,
    min_sample_s: float,
    log: Callable[[str], None] | None = print,
    outputs: list | None = None,
) -> list[dict]:
    """Compile, warm up and time ``contenders`` interleaved; one result row per contender.

    When ``outputs`` is a list, the first call's result of each contender is appended to it,
    so a script can check that what it timed computes what it should.
    """
    labels = [c.label for c in contenders]
    if len(set(labels)) != len(labels):
        raise ValueError(f"contender labels must be unique, got {labels}")
    rows, calls = [], []
    for c in contenders:
        compiled, info = _compile(c)
        t0 = time.perf_counter()
        first = jax.block_until_ready(compiled(*c.args))
        if outputs is not None:
            outputs.append(first)
        rows.append({**c.meta, "label": c.label, **info, "first_call_s": time.perf_counter() - t0})
        calls.append(lambda compiled=compiled, args=c.args: compiled(*args))

    numbers, samples = interleave(calls, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
    for row, number, s in zip(rows, numbers, samples, strict=True):
        row.update(stats_ms(s), number=number)
        if log is not None:
            log(
                f"  {row['label']:<28} median {row['median_ms']:9.3f} ms  "
                f"IQR {row['iqr_ms']:7.3f}  compile {row['compile_s']:6.2f} s"
            )
    return rows


# --------------------------------------------------------------------------- environment


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict:
    """Device, versions, commit and load: the fields stamped on every row."""
    dev = jax.devices()[0]
    versions = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": package_version("jaxlib"),
        "flax": package_version("flax"),
        "numpy": package_version("numpy"),
        "seqjax": package_version("seqjax"),
    }
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "seqjax")
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "versions": versions,
        "git_commit": commit,
        # Tracked files under seqjax/ modified: the commit alone does not pin the code timed.
        "git_dirty": bool(dirty) if dirty is not None else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def device_tag() -> str:
    """``cpu``, or platform plus device kind for accelerators (``gpu-nvidia-h100-80gb-hbm3``)."""
    dev = jax.devices()[0]
    kind = re.sub(r"[^a-z0-9]+", "-", dev.device_kind.lower()).strip("-")
    return dev.platform if kind in ("", dev.platform) else f"{dev.platform}-{kind}"


# --------------------------------------------------------------------------- results


def iqr_overlap(a: dict, b: dict) -> bool:
    """Whether two result rows' interquartile ranges (``q1_ms``-``q3_ms``) overlap."""
    return a["q1_ms"] <= b["q3_ms"] and b["q1_ms"] <= a["q3_ms"]


def verdict(seqjax_row: dict, peer_row: dict) -> str:
    """``tie`` where the interquartile ranges overlap, else which side is faster."""
    if iqr_overlap(seqjax_row, peer_row):
        return "tie"
    return "seqjax faster" if seqjax_row["median_ms"] < peer_row["median_ms"] else "seqjax SLOWER"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, booleans as yes/no, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A pipe table; ``columns`` are ``(header, key)``, ``key`` may be a callable of the row."""
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for row in rows:
        cells = [fmt(key(row) if callable(key) else row.get(key)) for _, key in columns]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


class Recorder:
    """Collects rows for one script run and writes ``<device>-<script>.jsonl`` and ``.md``."""

    def __init__(self, script: str, args: argparse.Namespace):
        self.script = script
        self.args = args
        self.env = environment()
        self.started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.load_start = os.getloadavg()
        self.rows: list[dict] = []
        self.tag = device_tag()

    def add(self, rows: Sequence[dict], **common) -> list[dict]:
        stamped = [
            {
                "script": self.script,
                "quick": self.args.quick,
                "started": self.started,
                **common,
                **row,
            }
            for row in rows
        ]
        self.rows.extend(stamped)
        return stamped

    @property
    def jsonl_path(self) -> Path:
        return Path(self.args.out) / f"{self.tag}-{self.script}.jsonl"

    @property
    def md_path(self) -> Path:
        return Path(self.args.out) / f"{self.tag}-{self.script}.md"

    def header_markdown(self, title: str) -> str:
        env, v = self.env, self.env["versions"]
        load_end = os.getloadavg()
        lines = [
            f"# {title}",
            "",
            f"- Device: {env['platform']} / {env['device_kind']} ({env['device_count']} device(s)),"
            f" {env['cpu_count']} CPU(s) ({env['cpu_model']})",
            "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
            f"- Commit: `{env['git_commit']}`"
            + (
                " (with uncommitted changes to tracked files under seqjax/)"
                if env["git_dirty"]
                else ""
            ),
            f"- Run: {self.started}, {'--quick, ' if self.args.quick else ''}"
            f"{self.args.repeats} interleaved rounds, {self.args.warmup} warm-up call(s), "
            f"samples of >= {self.args.min_sample_ms:g} ms",
            f"- Load average (1 min) at start / end: {self.load_start[0]:.2f} / {load_end[0]:.2f}",
            "- Times are per call, median over rounds; spread is the interquartile range "
            "(q1-q3). Compile time (lower + XLA compile) is separate and not in the medians.",
        ]
        return "\n".join(lines)

    def write(self, markdown_body: str, title: str) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        load_end = os.getloadavg()
        with open(self.jsonl_path, "w") as f:
            for row in self.rows:
                full = {
                    **row,
                    **self.env,
                    "loadavg_start": self.load_start[0],
                    "loadavg_end": load_end[0],
                }
                f.write(json.dumps(full, sort_keys=True, default=str) + "\n")
        self.md_path.write_text(self.header_markdown(title) + "\n\n" + markdown_body + "\n")
        print(f"wrote {self.jsonl_path} and {self.md_path}")

"""Shared benchmark harness: compile apart from steady state, interleaved repeats, JSONL + markdown.

Every benchmark script builds groups of :class:`Contender` (the functions one question compares,
on the same inputs) and hands each group to :func:`measure_group`, which

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

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- command line


def early_option(flag: str, default: str, argv: Sequence[str] | None = None) -> str:
    """``flag``'s value in ``argv`` (default: the command line) before argparse runs.

    For settings that must be made before JAX initialises its backends, such as the number
    of host CPU devices (``jax_num_cpu_devices``); :func:`parse_args` parses the flag again.
    """
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def parse_args(
    description: str,
    argv: Sequence[str] | None,
    *,
    repeats: int = 30,
    devices: int | None = None,
) -> argparse.Namespace:
    """The flags every benchmark script shares (and ``--devices`` when ``devices`` is given)."""
    parser = argparse.ArgumentParser(description=description)
    if devices is not None:
        parser.add_argument(
            "--devices", type=int, default=devices,
            help="host CPU devices, set before JAX initialises (default %(default)s)",
        )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="toy sizes and few repeats (smoke test)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed rounds per group (default {repeats})"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per contender")
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=None,
        help="inner loop so that one timed sample lasts at least this long (default 50)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else repeats
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.min_sample_ms is None:
        args.min_sample_ms = 0.0 if args.quick else 50.0
    return args


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


def _stats_ms(samples_s: Sequence[float]) -> dict:
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


def _memory(compiled) -> dict:
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
        **_memory(compiled),
    }
    _COMPILED[key] = (compiled, info)
    return compiled, info


def _time_calls(call: Callable[[], Any], number: int) -> float:
    """Seconds per call, averaged over ``number`` calls, each blocked until ready."""
    start = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(call())
    return (time.perf_counter() - start) / number


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

    numbers = []
    for call in calls:
        warm = [_time_calls(call, 1) for _ in range(max(warmup, 1))]
        per_call = min(warm)
        numbers.append(max(1, math.ceil(min_sample_s / per_call)) if per_call > 0 else 1)

    samples: list[list[float]] = [[] for _ in contenders]
    for r in range(repeats):
        for j in range(len(contenders)):
            i = (r + j) % len(contenders)
            samples[i].append(_time_calls(calls[i], numbers[i]))

    for row, number, s in zip(rows, numbers, samples, strict=True):
        row.update(_stats_ms(s), number=number)
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


def _version(dist: str) -> str | None:
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
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "numpy": _version("numpy"),
        "seqjax": _version("seqjax"),
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

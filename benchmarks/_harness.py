"""The benchmark scripts' command line, over the one harness in :mod:`seqjax.apps.harness`.

Every script here does ``import _harness as h``: the measuring, the environment stamped on
each row and the result files come from :mod:`seqjax.apps.harness` (which ``seqjax bench``
uses too); this module adds only what is particular to scripts run from ``benchmarks/``: the
shared flags and where results go.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from seqjax.apps.harness import (  # noqa: F401 (the scripts' namespace)
    Contender,
    Recorder,
    device_tag,
    environment,
    fmt,
    interleave,
    iqr_overlap,
    markdown_table,
    measure_group,
    memory_analysis,
    package_version,
    stats_ms,
    time_calls,
    verdict,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"


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

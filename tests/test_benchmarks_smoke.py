"""Every benchmark script runs at toy sizes (``--quick``) and writes the rows it promises.

Each script (every ``benchmarks/*.py`` not starting with ``_``) runs once, in a subprocess, as
a user runs it: the strict numerics of ``conftest.py`` stay out of it, and a crash shows its own
traceback. Timings are not checked, only that the results are complete and well formed.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

# Every row of every script: what the harness's Recorder stamps.
ROW_KEYS = {
    "script",
    "quick",
    "platform",
    "device_kind",
    "cpu_count",
    "versions",
    "git_commit",
}
# Rows timed by `_harness.measure_group`, checked for the scripts below.
TIMING_KEYS = {"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "n_samples", "compile_s"}
SHAPE_KEYS = {"dtype", "config", "B", "T", "I", "H"}

SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("[!_]*.py"))
# Scripts that compare against an optional peer library skip cleanly without it.
NEEDS = {"char_lm_vs_torch": "torch", "esn_vs_reservoirpy": "reservoirpy"}


def run_quick(script: str, out: Path) -> tuple[list[dict], str]:
    """Run ``script --quick``; its JSONL rows and markdown, after the checks every script passes."""
    cmd = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [jsonl] = out.glob(f"*-{script}.jsonl")
    [md] = out.glob(f"*-{script}.md")
    assert jsonl.name.removesuffix(f"-{script}.jsonl") == md.name.removesuffix(f"-{script}.md")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rows
    for row in rows:
        assert ROW_KEYS <= row.keys(), sorted(ROW_KEYS - row.keys())
        assert row["quick"] is True and row["script"] == script
        assert row["versions"]["jax"] and row["git_commit"]
    return rows, md.read_text()


def check_timed(rows: list[dict]) -> None:
    for row in rows:
        keys = TIMING_KEYS | SHAPE_KEYS
        assert keys <= row.keys(), sorted(keys - row.keys())
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["n_samples"] >= 1 and row["compile_s"] > 0


def check_unroll_projection(rows: list[dict], md: str) -> None:
    check_timed(rows)
    assert "| ratio |" in md
    placement = {
        (r["cell"], r["mode"], r["hoist_projection"])
        for r in rows
        if r["experiment"] == "placement" and r["unroll"] == 1
    }
    cells, modes = ("lstm", "gru", "elman"), ("fwd", "fwd+bwd")
    assert placement == set(itertools.product(cells, modes, (True, False)))
    unrolled = [r for r in rows if r["experiment"] == "unroll"]
    assert {(r["cell"], r["mode"], r["unroll"]) for r in unrolled} == set(
        itertools.product(cells, modes, (1, 2))
    )
    # The unroll sweep uses the placement that won its row.
    for r in unrolled:
        pair = [
            p
            for p in rows
            if p["experiment"] == "placement" and (p["cell"], p["mode"]) == (r["cell"], r["mode"])
        ]
        assert r["hoist_projection"] == min(pair, key=lambda p: p["median_ms"])["hoist_projection"]
    assert len(rows) == len(placement) + len(unrolled)


def check_rnn_vs_flax(rows: list[dict], md: str) -> None:
    check_timed(rows)
    assert "| ratio |" in md
    got = sorted((r["cell"], r["mode"], r["layout"], r["library"]) for r in rows)
    expected = sorted(
        itertools.product(
            ("lstm", "gru"), ("fwd", "fwd+bwd"), ("time_major", "batch_major"), ("seqjax", "flax")
        )
    )
    assert got == expected
    assert all(r["max_rel_diff"] <= 1e-3 for r in rows)


def check_hlo_fingerprint(rows: list[dict], md: str) -> None:
    programs = [r["program"] for r in rows]
    assert len(programs) == len(set(programs)) == 17  # 2 cells x 2 shapes x 4 variants + LM
    assert all(len(r["hlo_sha1"]) == 16 and r["hlo_lines"] > 10 for r in rows)
    assert len({r["hlo_sha1"] for r in rows}) == len(rows)  # different programs, different hashes


# Script-specific checks; a script without one gets the checks of `run_quick` only.
CHECKS = {
    "unroll_projection": check_unroll_projection,
    "rnn_vs_flax": check_rnn_vs_flax,
    "hlo_fingerprint": check_hlo_fingerprint,
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run(script, tmp_path):
    if script in NEEDS and importlib.util.find_spec(NEEDS[script]) is None:
        pytest.skip(f"{script} compares against {NEEDS[script]}, which is not installed")
    rows, md = run_quick(script, tmp_path)
    if script in CHECKS:
        CHECKS[script](rows, md)

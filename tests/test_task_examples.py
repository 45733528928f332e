"""The task-shape examples run in their --quick mode, as a user runs them (a subprocess)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str) -> str:
    cmd = [sys.executable, f"examples/{script}", "--quick"]
    # XLA_FLAGS (a cheap compile, set in conftest.py) passes on to the example's process.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return float(match.group(1))


def test_digits_quick():
    out = _run("digits.py")
    if importlib.util.find_spec("sklearn") is None:
        assert out.startswith("skipped")
        return
    assert 0.0 <= _number(r"test accuracy ([0-9.]+)", out) <= 1.0


def test_tagging_quick():
    out = _run("tagging.py")
    assert 0.0 <= _number(r"per-token accuracy ([0-9.]+)", out) <= 1.0


def test_captions_quick():
    out = _run("captions.py")
    assert 0.0 <= _number(r"greedy ([0-9.]+)", out) <= 1.0
    assert "sampled (T=1, top-3)" in out


def test_seq2seq_quick():
    out = _run("seq2seq.py")
    assert 0.0 <= _number(r"beam \(K=4\) ([0-9.]+)", out) <= 1.0


def test_task_data_have_the_stated_answers(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from captions import WORDS, ceiling, scenes
    from seq2seq import END, digit_pairs
    from tagging import repeated_tokens

    ids, tags, lengths = repeated_tokens(np.random.default_rng(0), 50, 12, 6)
    for b, n in enumerate(lengths):
        seq = ids[:n, b].tolist()
        assert tags[:n, b].tolist() == [int(seq.count(x) > 1) for x in seq]
        assert not tags[n:, b].any()
    source, source_lengths, targets, target_lengths = digit_pairs(
        np.random.default_rng(0), 20, 6, "sort"
    )
    for b, n in enumerate(source_lengths):
        assert targets[:n, b].tolist() == sorted(source[:n, b].tolist())
        assert targets[n, b] == END and target_lengths[b] == n + 1
    features, captions, lengths = scenes(np.random.default_rng(0), 200, 0.0)
    first = [WORDS[t] for t in captions[: lengths[0] - 1, 0]]
    assert first[0] in ("one", "two", "three") and first[-1].startswith(
        ("circle", "square", "tri", "star")
    )
    assert ceiling(features, captions, lengths) == 1.0  # without noise, every scene is readable


def test_digits_rows_are_the_images(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from digits import load_rows
    from sklearn.datasets import load_digits

    (train_xs, train_labels), (test_xs, _) = load_rows(0)
    assert train_xs.shape[0] == 8 and train_xs.shape[2] == 8
    assert train_xs.shape[1] + test_xs.shape[1] == 1797
    images = load_digits().images / 16.0
    first = np.asarray(train_xs[:, 0])  # [rows, pixels] of the first training image
    matches = np.flatnonzero(np.all(np.abs(images - first[None]) < 1e-6, axis=(1, 2)))
    assert matches.size >= 1 and int(load_digits().target[matches[0]]) == int(train_labels[0])

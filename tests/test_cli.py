"""The first hour with the ``seqjax`` command (issue 23): one test or more per friction.

Tiny models (H = 16, 4 streams of 8 steps) on 40 KB of the default corpus, so that each
training run is a few seconds; the signal tests run the command in a subprocess, as a
user's shell does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import seqjax_cli
from seqjax import checkpoint
from seqjax.apps import bench, char_lm, cli, data
from seqjax.cells import BY_NAME

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden-size", "16", "--embed-size", "8", "--batch-size", "4", "--window", "8"]
TINY += ["--length", "20", "--devices", "1"]


@pytest.fixture(autouse=True)
def strict_numerics():
    """optax's Adam mixes an int32 count with Python floats: standard promotion here."""
    yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(data.python_stdlib_text(40_000))
    return str(path)


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


# --------------------------------------------------------------------------- 1. checks first


@pytest.mark.parametrize(
    "options, words",
    [
        (["--temperature", "-1"], "--temperature: must be >= 0"),
        (["--temperature", "nan"], "--temperature: must be a finite number"),
        (["--top-k", "0"], "--top-k: must lie in [1, 256]"),
        (["--top-k", "300"], "--top-k: must lie in [1, 256]"),
        (["--length", "-1"], "--length: must be a non-negative integer"),
        (["--learning-rate", "nan"], "--learning-rate: must be a finite number"),
        (["--learning-rate", "-0.1"], "--learning-rate: must be a positive number"),
        (["--max-norm", "0"], "--max-norm: must be a positive number"),
        (["--seed", str(2**70)], "--seed: must lie in [0, 2**32 - 1]"),
        (["--devices", "two"], "--devices: must be 'auto' or a positive integer"),
        (["--corpus", "MISSING"], "--corpus: no such file"),
        (["--checkpoint-dir", "FILE"], "--checkpoint-dir: exists and is not a directory"),
        (["--resume"], "--resume needs --checkpoint-dir"),
    ],
)
def test_every_option_is_checked_before_any_work(
    tmp_path, capsys, monkeypatch, corpus, options, words
):
    monkeypatch.setattr(char_lm, "train_char_lm", _must_not_run)
    (tmp_path / "file").write_text("not a directory")
    swap = {"MISSING": str(tmp_path / "missing.txt"), "FILE": str(tmp_path / "file")}
    argv = ["train-charlm", "--corpus", corpus, *TINY, *(swap.get(o, o) for o in options)]
    if "--checkpoint-dir" not in options and "--resume" not in options:
        argv += ["--checkpoint-dir", str(tmp_path / "ck")]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("training started before the options were checked")


def test_options_that_conflict_are_refused_before_any_work(tmp_path, capsys, monkeypatch, corpus):
    monkeypatch.setattr(char_lm, "train_char_lm", _must_not_run)
    directory = tmp_path / "ck"
    argv = ["train-charlm", "--corpus", corpus, *TINY, "--backprop", "4"]
    assert cli.main([*argv, "--checkpoint-dir", str(directory)]) == 2
    assert "--backprop (k2 = 4) must be >= --window (k1 = 8)" in capsys.readouterr().err
    assert not directory.exists()
    values = dict(backprop=None, window=8, devices=3, batch_size=4)
    assert "must be divisible by --devices (3)" in seqjax_cli.check_combination(values)
    with pytest.raises(SystemExit):
        cli.main(["sample", "--checkpoint-dir", str(directory), "--top-k", "0"])
    assert "--top-k: must lie in [1, 256]" in capsys.readouterr().err


# --------------------------------------------------------------------------- 6. help, version


def test_help_and_version_answer_without_importing_jax():
    script = (
        "import sys, time, seqjax_cli\n"
        "for argv in (['--help'], ['train-charlm', '--help'], ['sample', '--help'], "
        "['--version']):\n"
        "    try:\n"
        "        seqjax_cli.parse(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0\n"
        "heavy = sorted(m for m in ('jax', 'numpy', 'seqjax', 'orbax', 'optax') if m in "
        "sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - began
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout  # what made --help take ~4 s: JAX and the package
    assert "usage: seqjax" in proc.stdout and "seqjax " + seqjax_cli.version() in proc.stdout
    assert elapsed < 5  # typically 0.2 s; loose, for a loaded machine


def test_every_option_has_help_with_its_default_and_no_markup():
    parser = seqjax_cli._parser(bench_options=True)
    for name, sub in parser.commands.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
        assert not re.search(r"``|:func:|:class:|:mod:|:data:", text), name
    lm = " ".join(parser.commands["train-charlm"].format_help().split())
    for expected in ("(default: 500)", "(default: 0.003)", "(default: 0)", "(default: 1)"):
        assert expected in lm  # --checkpoint-every, --learning-rate, --seed, --num-layers
    assert "default 3000; --quick: 1200" in lm and "(default: auto)" in lm
    assert set(seqjax_cli.CELLS) == set(BY_NAME)


# --------------------------------------------------------------------------- 2. signals


def _start(argv, cwd=ROOT):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "seqjax_cli", *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(proc, pattern: str, timeout: float = 240) -> list[str]:
    """Lines of ``proc``'s stdout up to the first that contains ``pattern``."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if pattern in line:
            return lines
    proc.kill()
    raise AssertionError(f"no {pattern!r} in {lines} / {proc.stderr.read()[-2000:]}")


def test_ctrl_c_saves_prints_the_resume_command_and_the_resume_is_bit_exact(tmp_path, corpus):
    directory = tmp_path / "ck"
    argv = ["train-charlm", "--corpus", corpus, *TINY, "--steps", "100000"]
    argv += ["--checkpoint-every", "20", "--checkpoint-dir", str(directory)]
    proc = _start(argv)
    _wait_for(proc, "saved checkpoint step 20 ")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = out.strip().splitlines()[-1]
    found = re.fullmatch(
        r"SIGINT: stopped at update (\d+) of 100000; checkpoint step (\d+) is saved in (.+); "
        r"resume with: seqjax train-charlm --checkpoint-dir (\S+) --resume",
        last,
    )
    assert found, last
    stopped = int(found[1])
    assert int(found[2]) == stopped and stopped >= 20 and stopped % 20 == 0  # a call boundary
    assert checkpoint.latest_step(directory) == stopped
    # The printed command (with more steps than the stop) continues the saved run exactly as
    # a run that was never interrupted; both in processes like the first (the tests' own
    # process runs JAX with other settings: float64 on, another XLA optimisation level).
    total = stopped + 30
    resume = _start(
        ["train-charlm", "--checkpoint-dir", found[4], "--resume", "--steps", str(total)]
    )
    whole_dir = tmp_path / "whole"
    argv = ["train-charlm", "--corpus", corpus, *TINY, "--steps", str(total)]
    whole = _start([*argv, "--checkpoint-every", "20", "--checkpoint-dir", str(whole_dir)])
    outputs = []
    for proc in (resume, whole):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out)
    assert f"loaded checkpoint step {stopped} from {directory}" in outputs[0]
    _, resumed = char_lm.load_trained(str(directory))
    _, uninterrupted = char_lm.load_trained(str(whole_dir))
    assert int(resumed.step) == int(uninterrupted.step) == total
    assert _same(resumed, uninterrupted)


def test_sigterm_exits_143_and_the_default_devices_follow_the_cores(tmp_path, corpus):
    argv = ["train-charlm", "--corpus", corpus, *TINY[:-2], "--steps", "100000"]
    proc = _start(argv)
    banner = _wait_for(proc, "seqjax char-LM:")[-1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM: stopped at update" in out and "nothing was saved" in out
    cores = min(char_lm.usable_cores(), char_lm.MAX_HOST_DEVICES)
    expected = char_lm.auto_devices(4, cores=cores)
    assert f"({expected} device" in banner, banner


def test_a_second_signal_exits_at_once():
    said, exits = [], []
    stop = cli._StopRequests(said.append, exit_now=exits.append)
    stop.handle(signal.SIGINT)
    assert stop.requested() and not exits and "Ctrl-C again quits at once" in said[-1]
    stop.handle(signal.SIGINT)
    assert exits == [130] and "exiting at once" in said[-1]
    term = cli._StopRequests(said.append, exit_now=exits.append)
    term.handle(signal.SIGTERM)
    term.handle(signal.SIGTERM)
    assert exits == [130, 143]


# --------------------------------------------------------------------------- 3. resume


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, corpus):
    """A --quick run (with tiny sizes given explicitly) of 10 updates, saved at 5 and 10."""
    directory = tmp_path_factory.mktemp("quick") / "ck"
    argv = ["train-charlm", "--quick", "--corpus", corpus, *TINY, "--steps", "10"]
    assert cli.main([*argv, "--checkpoint-every", "5", "--checkpoint-dir", str(directory)]) == 0
    return directory


def test_resume_continues_the_saved_run_and_says_what_it_changed(
    tmp_path, capsys, corpus, quick_run
):
    directory = tmp_path / "ck"
    _copy(quick_run, directory)
    # No --quick, no sizes: the saved run's (max_bytes 2,000,000 from --quick included).
    argv = ["train-charlm", "--checkpoint-dir", str(directory), "--steps", "15"]
    argv += ["--temperature", "0.5", "--learning-rate", "0.001"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"resuming the run in {directory} from step 10: LSTM 1x16" in out
    assert "overriding the saved run's --steps 10 -> 15, --temperature 0.8 -> 0.5" in out
    assert "loaded checkpoint step 10 from" in out
    assert "learning rate 0.003 -> 0.001 from step 10 on" in out
    assert "saved checkpoint step 15 in" in out and "--- sample (temperature 0.5)" in out
    model, state = char_lm.load_trained(str(directory))
    assert model.config.max_bytes == 2_000_000 and model.config.hidden_size == 16
    assert model.config.learning_rate == 0.001 and int(state.step) == 15
    # The plain lines of a log: rate, ETA and the running held-out figure.
    assert re.search(r"step 15/15 \(100%\): loss .* held-out \(all\) \d\.\d+ bpc", out)
    assert re.search(r"updates/s \([\d,]+ chars/s\), ETA \d+:\d\d", out) or "compiling" in out
    # --resume alone continues with everything saved, here with nothing left to do.
    assert cli.main(["train-charlm", "--checkpoint-dir", str(directory), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "the run is at step 15, >= --steps 15: nothing to train" in out
    assert "--- sample (temperature 0.5)" in out


def test_a_model_option_changed_on_resume_is_refused_with_the_difference(
    tmp_path, capsys, quick_run
):
    directory = tmp_path / "ck"
    _copy(quick_run, directory)
    before = _files(directory)
    argv = ["train-charlm", "--checkpoint-dir", str(directory), "--hidden-size", "32"]
    assert cli.main([*argv, "--cell", "gru"]) == 2
    err = capsys.readouterr().err
    assert "--cell, --hidden-size: the run in" in err
    assert "{'cell': ('lstm', 'gru'), 'hidden_size': (16, 32)}" in err
    assert len(err.strip().splitlines()) == 1 and _files(directory) == before
    assert cli.main(["train-charlm", "--checkpoint-dir", str(tmp_path / "new"), "--resume"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def _copy(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)


def _files(directory):
    return sorted(
        (os.path.relpath(os.path.join(root, f), directory), os.path.getmtime(os.path.join(root, f)))
        for root, _, files in os.walk(directory)
        for f in files
    )


# --------------------------------------------------------------------------- 4. any period


def test_checkpoint_every_takes_any_period_and_the_updates_stay_bit_exact(tmp_path, corpus):
    config = char_lm.CharLMConfig(
        hidden_size=16, embed_size=8, batch_size=4, window=8, corpus=corpus, seed=7
    )
    quiet = dict(progress=False, log=lambda _: None)
    directory = tmp_path / "ck"
    _, saved, _ = char_lm.train_char_lm(
        config, 45, checkpoint_dir=directory, checkpoint_every=20, **quiet
    )  # calls of 20, 20, 5: saved at 20, 40 and 45
    assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [20, 40, 45]
    _, plain, _ = char_lm.train_char_lm(config, 45, **quiet)  # calls of 25 and 20
    assert _same(saved, plain)
    # Each call length compiled once: 20, 5 and 25.
    run = char_lm.make_chunk_fn(char_lm.CharLM(config), None)
    assert run._cache_size() == 3
    assert list(char_lm.call_sizes(0, 1000, 25, every=500)) == [25] * 40


# --------------------------------------------------------------------------- 7. binary corpus


def test_a_binary_corpus_trains_and_its_samples_print_escaped(tmp_path, capsys):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 40_000, np.uint8).tobytes())
    argv = ["train-charlm", "--corpus", str(path), *TINY, "--steps", "5"]
    argv += ["--temperature", "2", "--length", "300", "--prompt", "\x1b[2J"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    sample = out.split("--- sample (temperature 2.0) ---\n")[1].rsplit("\n---", 1)[0]
    assert sample.startswith("\\x1b[2J")  # the prompt's escape sequence, shown, not obeyed
    assert all(c.isprintable() or c in "\n\t" for c in sample)
    assert "\\x" in sample[8:]  # random bytes: some are not printable


# --------------------------------------------------------------------------- 8. bench ratio


def test_bench_ratios_are_seqjax_over_peer_and_labelled(capsys):
    rows = bench.run_bench(
        cells=("elman",), modes=("fwd",), batch_size=2, num_steps=3, input_size=2,
        hidden_size=3, repeats=1, peers=("flax.linen",),
    )  # fmt: skip
    ours = next(r for r in rows if r["library"] == "seqjax")
    peer = next(r for r in rows if r["library"] == "flax.linen")
    assert peer["ratio"] == pytest.approx(ours["median_ms"] / peer["median_ms"])
    assert "| seqjax / peer |" in bench.format_table(rows).splitlines()[0]
    argv = ["bench", "--cells", "elman", "--modes", "fwd", "--peers", "flax.linen"]
    assert cli.main([*argv, "-B", "2", "-T", "3", "-I", "2", "-H", "3", "--repeats", "1"]) == 0
    assert "seqjax / peer = seqjax median / peer median (below 1: seqjax is faster" in (
        capsys.readouterr().out
    )


# --------------------------------------------------------------------------- checkpoints


def test_a_second_writer_is_refused_in_one_line(tmp_path, capsys, monkeypatch, corpus):
    monkeypatch.setattr(char_lm, "make_chunk_fn", _must_not_run)  # refused before training
    directory = tmp_path / "ck"
    directory.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(directory / checkpoint.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["train-charlm", "--corpus", corpus, *TINY, "--checkpoint-dir", str(directory)]
        assert cli.main(argv) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is locked by another writer" in err
    assert [p.name for p in directory.iterdir()] == [checkpoint.LOCK_FILE]


def test_a_corrupt_newest_step_is_skipped_and_named(tmp_path, capsys, quick_run):
    directory = tmp_path / "ck"
    _copy(quick_run, directory)
    files = [p for p in (directory / "10").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    assert cli.main(["sample", "--checkpoint-dir", str(directory), "--length", "5"]) == 0
    out = capsys.readouterr().out
    assert "skipped checkpoint step 10, which fails verification" in out
    assert "loaded checkpoint step 5 from" in out and (directory / "10").exists()


def test_divergence_stops_with_one_line_and_keeps_every_good_checkpoint(
    tmp_path, capsys, quick_run
):
    directory = tmp_path / "ck"
    _copy(quick_run, directory)
    good = sorted(p.name for p in directory.iterdir() if p.name.isdigit())
    argv = ["train-charlm", "--checkpoint-dir", str(directory), "--learning-rate", "1e38"]
    assert cli.main([*argv, "--steps", "30"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "stopped: training diverged at update 1" in err
    assert "the newest checkpoint, step 10, is kept in" in err
    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == good
    assert int(char_lm.load_trained(str(directory))[1].step) == 10


def test_an_unexpected_error_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch, corpus):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\ninside")

    monkeypatch.setattr(char_lm, "train_char_lm", broken)
    argv = ["train-charlm", "--corpus", corpus, *TINY]
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "seqjax train-charlm: internal error: RuntimeError: boom inside (run again with "
        "SEQJAX_DEBUG=1 for the traceback)"
    )
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(argv)


def test_an_unwritable_checkpoint_dir_fails_before_training(tmp_path, capsys, corpus, monkeypatch):
    monkeypatch.setattr(char_lm, "train_loop", _must_not_run)
    (tmp_path / "file").write_text("a file where a folder would be")
    argv = ["train-charlm", "--corpus", corpus, *TINY]
    assert cli.main([*argv, "--checkpoint-dir", str(tmp_path / "file" / "ck")]) == 2
    assert "cannot be written" in capsys.readouterr().err


# --------------------------------------------------------------------------- 6. progress


def test_progress_on_a_terminal_is_a_bar_with_rate_eta_and_held_out(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "120")  # a terminal that reports its size
    monkeypatch.setenv("LINES", "40")
    stream = Terminal()
    bar = char_lm.Progress(100, 0, chars_per_update=256, stream=stream)
    for step in range(10, 101, 10):
        if bar.due(step):
            bar.held_out(2.5, "first 8 KiB")
        bar.update(step, 1.5, 0.3)
    bar.write("saved checkpoint step 100")
    bar.close()
    text = stream.getvalue()
    assert "100/100" in text and "upd/s" in text and "held-out (first 8 KiB) 2.500 bpc" in text
    assert "saved checkpoint step 100" in text
    assert re.search(r"<\d\d:\d\d", text)  # tqdm's ETA


# --------------------------------------------------------------------------- 10. devices


def test_auto_devices_uses_the_cores_that_divide_the_streams():
    assert char_lm.auto_devices(32, cores=2) == 2
    assert char_lm.auto_devices(5, cores=2) == 1
    assert char_lm.auto_devices(6, cores=4) == 3
    assert char_lm.auto_devices(32, cores=64) == char_lm.MAX_HOST_DEVICES == 8
    assert char_lm.auto_devices(32, "gpu", cores=16) == 1


def test_settings_are_recorded_beside_the_checkpoints(quick_run):
    settings = json.loads((quick_run / char_lm.SETTINGS_FILE).read_text())
    assert settings["steps"] == 10 and settings["checkpoint_every"] == 5
    assert settings["command"][:3] == ["seqjax", "train-charlm", "--quick"]

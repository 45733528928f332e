"""The main job: char-LM training, checkpoint/resume, refusal of bad input, sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import checkpoint, generate
from seqjax.apps import char_lm, cli, data
from tests.conftest import random_like, tree_allclose


@pytest.fixture(autouse=True)
def strict_numerics():
    """optax's Adam mixes an int32 count with Python floats: standard promotion here."""
    yield


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(data.python_stdlib_text(40_000))
    return str(path)


def _config(corpus, **changes):
    base = dict(
        hidden_size=16, embed_size=8, batch_size=4, window=8, corpus=corpus, eval_bytes=2000
    )
    return char_lm.CharLMConfig(**(base | changes))


def _files(directory):
    return sorted(
        (os.path.relpath(os.path.join(root, f), directory), os.path.getmtime(os.path.join(root, f)))
        for root, _, files in os.walk(directory)
        for f in files
    )


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, corpus):
    config = _config(corpus, backprop=12)
    quiet = dict(chunk=25, checkpoint_every=50, progress=False, log=lambda _: None)
    _, whole, history = char_lm.train_char_lm(config, 300, **quiet)
    directory = str(tmp_path / "ck")
    char_lm.train_char_lm(config, 150, checkpoint_dir=directory, **quiet)
    assert checkpoint.latest_step(directory) == 150
    char_lm.train_char_lm(config, 160, checkpoint_dir=directory, **quiet)  # ends mid-chunk
    assert checkpoint.latest_step(directory) == 160
    _, resumed, _ = char_lm.train_char_lm(config, 300, checkpoint_dir=directory, **quiet)
    tree_allclose(resumed, whole, rtol=0, atol=0)
    assert int(resumed.step) == 300
    assert history[-1]["loss"] < history[0]["loss"]  # and it learns


def test_incompatible_checkpoint_is_refused_and_left_untouched(tmp_path, corpus):
    directory = str(tmp_path / "ck")
    quiet = dict(chunk=5, checkpoint_every=5, progress=False, log=lambda _: None)
    char_lm.train_char_lm(_config(corpus), 10, checkpoint_dir=directory, **quiet)
    before = _files(directory)
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="hidden_size.*16, 32"):
        char_lm.train_char_lm(
            _config(corpus, hidden_size=32), 20, checkpoint_dir=directory, **quiet
        )
    assert _files(directory) == before
    model, state = char_lm.load_trained(directory)
    assert model.config == _config(corpus) and int(state.step) == 10


@pytest.mark.parametrize(
    "args, words, usage",
    [
        (["--corpus", "EMPTY"], "is empty", False),
        (["--corpus", "SMALL"], "fewer than one window of 64 steps", False),
        (["--corpus", "SMALL", "--window", "0"], "must be a positive integer", True),
        (["--corpus", "MISSING"], "no such file", True),
    ],
)
def test_cli_reports_bad_input_clearly(tmp_path, capsys, args, words, usage):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "small.txt").write_bytes(b"hello world\n" * 20)
    paths = {"EMPTY": "empty.txt", "SMALL": "small.txt", "MISSING": "missing.txt"}
    args = [str(tmp_path / paths[a]) if a in paths else a for a in args]
    directory = tmp_path / "ck"
    argv = ["train-charlm", "--checkpoint-dir", str(directory), *args]
    if usage:  # an option argparse refuses: usage and the reason, status 2
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2 and words in capsys.readouterr().err
        assert not directory.exists()
        return
    assert cli.main(argv) == 2
    assert words in capsys.readouterr().err
    assert not directory.exists() or not os.listdir(directory)


def test_a_held_out_part_too_small_to_evaluate_is_refused_before_training(tmp_path, capsys):
    # 5 % of 27 bytes is 1 byte: once the run had trained and saved, evaluate() failed on it.
    (tmp_path / "tiny.txt").write_bytes(b"hello world, this is tiny.\n")
    directory = tmp_path / "ck"
    argv = ["train-charlm", "--corpus", str(tmp_path / "tiny.txt"), "--batch-size", "1"]
    argv += ["--window", "4", "--steps", "2", "--checkpoint-dir", str(directory)]
    assert cli.main(argv) == 2
    assert "held-out tail" in capsys.readouterr().err
    assert not directory.exists() or not os.listdir(directory)


def test_quick_sets_defaults_and_explicit_options_win(tmp_path, capsys, corpus):
    argv = ["train-charlm", "--quick", "--corpus", corpus, "--steps", "0", "--hidden-size"]
    argv += ["8", "--embed-size", "4", "--batch-size", "4", "--window", "8", "--length", "5"]
    assert cli.main(argv) == 0
    banner = capsys.readouterr().out.splitlines()[0]
    assert "LSTM 1x8 on" in banner and ", 0 updates of 4 streams" in banner  # not 1x128, 1200


def test_checkpoint_meta_compares_as_it_reads_back_from_json(tmp_path):
    like = {"w": jnp.zeros(2, jnp.float32)}
    meta = {"sizes": (64, 64), "nested": {"k": [1, (2, 3)]}}
    checkpoint.save(tmp_path, 1, like, meta)
    checkpoint.save(tmp_path, 2, like, meta)  # tuples were lists once saved, and refused
    assert checkpoint.restore(tmp_path, like, meta)[0] == 2
    with pytest.raises(TypeError, match="meta must hold JSON values only.*float32"):
        checkpoint.save(tmp_path, 3, like, {"rate": np.float32(0.5)})
    assert checkpoint.latest_step(tmp_path) == 2


def test_a_directory_that_is_not_a_char_lm_checkpoint_is_named(tmp_path, capsys):
    checkpoint.save(tmp_path / "other", 1, {"w": jnp.zeros(2)}, {"program": "not a char-LM"})
    assert cli.main(["sample", "--checkpoint-dir", str(tmp_path / "other")]) == 2
    assert "not a seqjax char-LM's" in capsys.readouterr().err
    (tmp_path / "numbered" / "7").mkdir(parents=True)  # a folder orbax counts as a step
    assert cli.main(["sample", "--checkpoint-dir", str(tmp_path / "numbered")]) == 2
    assert "is not a seqjax checkpoint" in capsys.readouterr().err


def test_data_helpers_name_bad_arguments():
    text = np.arange(10, dtype=np.uint8)
    with pytest.raises(ValueError, match="to_streams: num_streams must be a positive int; got 0"):
        data.to_streams(text, 0)
    with pytest.raises(ValueError, match="load_corpus: max_bytes must be a positive int"):
        data.load_corpus(None, -5)
    with pytest.raises(ValueError, match=r"decode: ids must be bytes.*300"):
        data.decode(np.array([104, 300]))
    assert data.decode(np.array([104, 105], np.int32)) == "hi"


def test_cli_trains_saves_and_samples(tmp_path, capsys, corpus):
    directory = str(tmp_path / "ck")
    argv = [
        "train-charlm",
        "--corpus",
        corpus,
        "--steps",
        "20",
        "--hidden-size",
        "16",
        "--embed-size",
        "8",
        "--batch-size",
        "4",
        "--window",
        "8",
        "--checkpoint-dir",
        directory,
        "--checkpoint-every",
        "25",
        "--length",
        "30",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out bits per character" in out and "--- sample" in out
    assert cli.main(["sample", "--checkpoint-dir", directory, "--length", "50"]) == 0
    assert "--- sample" in capsys.readouterr().out


def test_greedy_sampling_equals_a_step_by_step_loop(corpus):
    model = char_lm.CharLM(_config(corpus))
    params = model.init(jax.random.key(0))
    params = params._replace(
        head=params.head._replace(b=jax.random.normal(jax.random.key(1), (256,), jnp.float32))
    )
    carry, token = model.init_carry((2,)), jnp.array([100, 32], jnp.int32)
    _, tokens = generate.sample(
        model.step, params, carry, token, jax.random.key(0), 12, temperature=0.0
    )
    expected = []
    for _ in range(12):
        carry, logits = model.step(params, carry, token)
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        expected.append(np.asarray(token))
    np.testing.assert_array_equal(tokens, np.stack(expected))
    # top_k=1 sampling is greedy too, whatever the temperature.
    _, top1 = generate.sample(
        model.step,
        params,
        model.init_carry((2,)),
        jnp.array([100, 32], jnp.int32),
        jax.random.key(5),
        12,
        temperature=1.5,
        top_k=1,
    )
    np.testing.assert_array_equal(top1, tokens)


def test_sampling_follows_the_temperature():
    logits = jnp.log(jnp.array([0.6, 0.3, 0.1], jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.vmap(lambda k: generate.pick_token(k, logits, temperature=1.0))(keys)
    freq = np.bincount(np.asarray(draw), minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)  # 4000 draws: sd < 0.008
    cold = jax.vmap(lambda k: generate.pick_token(k, logits, temperature=0.25))(keys)
    assert np.mean(np.asarray(cold) == 0) > 0.85
    top2 = jax.vmap(lambda k: generate.pick_token(k, logits, top_k=2))(keys)
    assert not np.any(np.asarray(top2) == 2)
    with pytest.raises(ValueError, match="top_k must lie in"):
        generate.pick_token(keys[0], logits, top_k=4)


# Training on 2 host devices needs them before JAX initialises: a subprocess asks for them
# through the CLI (`--devices 2`), trains 10 updates, resumes to 20, then compares with the
# uninterrupted 2-device run and with one device.
TWO_DEVICES = textwrap.dedent(
    """
    import json, sys
    from seqjax.apps import cli
    corpus, root = sys.argv[1], sys.argv[2]
    common = ["train-charlm", "--devices", "2", "--corpus", corpus, "--hidden-size", "16",
              "--embed-size", "8", "--batch-size", "4", "--window", "8", "--length", "20",
              "--checkpoint-every", "25", "--checkpoint-dir", root + "/ck"]
    codes = [cli.main([*common, "--steps", "10"]), cli.main([*common, "--steps", "20"])]
    import jax
    import numpy as np
    from seqjax.apps import char_lm
    model, resumed = char_lm.load_trained(root + "/ck")
    quiet = dict(progress=False, log=lambda _: None)
    _, whole, _ = char_lm.train_char_lm(model.config, 20, devices=2, **quiet)
    _, single, _ = char_lm.train_char_lm(model.config, 20, devices=1, **quiet)
    first = char_lm.new_state(model)
    leaves = lambda t: [np.asarray(a) for a in jax.tree.leaves(t)]
    diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b)))
    errors = []
    for call in (lambda: char_lm.device_mesh(2, 5), lambda: char_lm.device_mesh(3, 6)):
        try:
            call()
        except ValueError as err:
            errors.append(str(err))
    print(json.dumps({
        "codes": codes,
        "devices": jax.device_count(),
        "carry_shards": len(whole.carry[0].h.addressable_shards),
        "resume_exact": all(np.array_equal(x, y) for x, y in zip(leaves(resumed), leaves(whole))),
        "single_vs_two": diff((single.params, single.carry), (whole.params, whole.carry)),
        "moved": diff(single.params, first.params),
        "step": int(whole.step),
        "errors": errors,
    }))
    """
)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_devices")
    corpus = root / "corpus.txt"
    corpus.write_bytes(data.python_stdlib_text(40_000))
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, str(corpus), str(root)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 devices)" in proc.stdout and "held-out bits per character" in proc.stdout
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_devices_flag_trains_on_two_host_devices(two_devices):
    assert two_devices["codes"] == [0, 0]
    assert two_devices["devices"] == 2 and two_devices["carry_shards"] == 2
    assert two_devices["step"] == 20


def test_two_device_run_resumes_bit_for_bit(two_devices):
    assert two_devices["resume_exact"]


def test_two_devices_equal_one_device(two_devices):
    assert two_devices["moved"] > 1e-2  # 20 updates moved the parameters: the check can fail
    # float32 sums over the streams run in another order once split; Adam's normalisation
    # carries those roundings (1e-7 per update) into the parameters: agreement to 1e-5.
    assert two_devices["single_vs_two"] < 1e-5, two_devices


def test_devices_errors_are_clear(two_devices):
    assert "divisible by devices (2)" in two_devices["errors"][0]
    assert "JAX sees 2 cpu device(s)" in two_devices["errors"][1]


def test_cli_devices_flag_too_late_is_an_error(tmp_path, capsys, corpus):
    # In this process JAX has initialised with its CPU device count: asking for more fails.
    many = str(len(jax.devices("cpu")) + 1)
    argv = ["train-charlm", "--corpus", corpus, "--devices", many, "--batch-size", "4"]
    assert cli.main([*argv, "--checkpoint-dir", str(tmp_path / "ck")]) == 2
    assert "already initialised" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_folded_model_equals_embedding_then_the_stack(cell):
    """CharLM folds its embedding into the first layer (V = 256 <= T * B tokens here); the
    logits and carries are those of embedding the ids and running the whole stack."""
    model = char_lm.CharLM(
        char_lm.CharLMConfig(hidden_size=16, embed_size=8, num_layers=2, cell=cell)
    )
    params = model.init(jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (100, 3), 0, 256)
    resets = jnp.zeros((100, 3), bool).at[10, 1].set(True)
    start = random_like(model.init_carry((3,)), jax.random.key(2))
    carry, logits = model(params, start, ids, resets)
    expected_carry, ys = model.rnn(params.rnn, model.embed(params.embed, ids), start, resets=resets)
    # float32 sums in another order (the GRU's projection rows differ in the last bit)
    tree_allclose(
        (carry, logits), (expected_carry, model.head(params.head, ys)), rtol=1e-5, atol=1e-6
    )

"""The ``seqjax`` command line: its options, their help and every check that needs no JAX.

This module sits outside the ``seqjax`` package on purpose. Importing any module of the
package runs ``seqjax/__init__.py``, which imports JAX, Flax, optax and orbax (about two
seconds on a laptop CPU); here ``seqjax --help``, ``seqjax --version`` and every refused
argument answer in a few milliseconds, and the commands themselves
(:mod:`seqjax.apps.cli`) are imported only once the arguments are known to be good.

Every option of ``seqjax train-charlm`` is one of two kinds (:data:`MODEL_OPTIONS` and
:data:`RUN_OPTIONS`): the options that define the model and its data are saved with each
checkpoint and are fixed for the life of a run; the others may change when a run is
resumed. The process options (``--coordinator``, ``--num-processes``, ``--process-id``,
``--distributed``) belong to one invocation of one process and are not recorded.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = [
    "MODEL_OPTIONS",
    "RUN_OPTIONS",
    "main",
    "parse",
]

PROG = "seqjax"
# The cells of ``seqjax.cells.BY_NAME`` (a test checks that the two agree).
CELLS = ("lstm", "gru", "elman")
# Bytes: the model's vocabulary, the largest useful --top-k.
VOCAB_SIZE = 256
# jax.random.key folds a seed into 32 bits without x64: larger seeds would repeat smaller ones.
SEED_LIMIT = 2**32

# Defaults of the options --quick changes (for a new run); an option given explicitly wins.
DEFAULTS = dict(steps=3000, hidden_size=256, embed_size=64, max_bytes=None)
QUICK = dict(steps=1200, hidden_size=128, embed_size=32, max_bytes=2_000_000)

# What a resumed run keeps (saved with every checkpoint: the model, its data and its seed)...
MODEL_OPTIONS = (
    "cell",
    "hidden_size",
    "num_layers",
    "embed_size",
    "batch_size",
    "window",
    "backprop",
    "max_norm",
    "corpus",
    "max_bytes",
    "seed",
)
# ... and what it may change (the number of updates, the step size, the devices, how often
# to save, what to print): given explicitly on resume, these override the saved run's.
RUN_OPTIONS = (
    "steps",
    "learning_rate",
    "checkpoint_every",
    "devices",
    "prompt",
    "length",
    "temperature",
    "top_k",
)


def version() -> str:
    """The installed distribution's version, read without importing the package."""
    from importlib import metadata

    try:
        return metadata.version("seqjax")
    except metadata.PackageNotFoundError:
        return "unknown (the seqjax distribution is not installed; running from a source tree)"


# --------------------------------------------------------------------------- option types


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def _count(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def _temperature(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 picks the likeliest byte); got {text}")
    return value


def _top_k(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= VOCAB_SIZE:
        raise argparse.ArgumentTypeError(
            f"must lie in [1, {VOCAB_SIZE}] (the model predicts one of 256 bytes); got {value}"
        )
    return value


def _seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32 - 1]; got {value}")
    return value


def _devices(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a positive integer; got {text!r}"
        ) from None


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT, a host name or address and a port in [1, 65535]; got {text!r}"
        )
    return text


def _prompt(text: str) -> bytes:
    # The shell hands over bytes; Python decodes them with surrogateescape, which gives back
    # exactly those bytes (a non-UTF-8 prompt included: the model reads bytes).
    try:
        return os.fsencode(text)
    except UnicodeEncodeError as err:
        raise argparse.ArgumentTypeError(f"cannot be turned into bytes: {err}") from None


def _file(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory, not a file: {text!r}")
    return os.path.abspath(text)  # saved with the run: it must mean the same from any folder


def _directory(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"exists and is not a directory: {text!r}")
    return os.path.abspath(text)


# --------------------------------------------------------------------------- the parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default after its help (unless it has none to show, or says it);
    descriptions wrapped paragraph by paragraph."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        paragraphs = text.split("\n\n")
        return "\n\n".join(super(_Formatter, self)._fill_text(p, width, indent) for p in paragraphs)


class _Parser(argparse.ArgumentParser):
    """The top-level parser, which also keeps its subcommands' parsers by name."""

    commands: dict[str, argparse.ArgumentParser]


def _parser(bench_options: bool = False) -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Recurrent sequence models in JAX: train and sample a byte-level language "
        "model, or time seqjax's layers against other libraries.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lm = commands.add_parser(
        "train-charlm",
        help="train a byte-level language model (streamed truncated BPTT) and sample from it",
        description="Train a byte-level recurrent language model on a file (default: the "
        "Python standard library's source), report held-out bits per character and print a "
        "sample.\n\n"
        "With --checkpoint-dir the run is saved there every --checkpoint-every updates and at "
        "the end. If the directory already holds a run, that run is resumed with its saved "
        "configuration: the options that define the model and its data (cell, sizes, "
        "streams, window, backprop, max-norm, corpus, max-bytes, seed) come from the "
        "checkpoint, and giving one of them with another value is refused; --steps, "
        "--learning-rate, --checkpoint-every, --devices and the sampling options may be "
        "changed, and the run says what it changed. --resume insists on a run to resume.\n\n"
        "Ctrl-C (or SIGTERM) stops after the current compiled call (at most 25 updates), "
        "saves a checkpoint when a directory is set and prints the command that resumes; "
        "a second Ctrl-C quits at once.",
        formatter_class=_Formatter,
    )
    data = lm.add_argument_group("data")
    data.add_argument(
        "--corpus",
        type=_file,
        help="file to model, read as bytes, any content (default: the Python standard "
        "library's source)",
    )
    data.add_argument(
        "--max-bytes",
        type=_positive,
        help="read at most this many bytes of the corpus (default: all; --quick: 2,000,000)",
    )
    model = lm.add_argument_group("model")
    model.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell")
    model.add_argument(
        "--hidden-size", type=_positive, help="units per layer (default 256; --quick: 128)"
    )
    model.add_argument("--num-layers", type=_positive, default=1, help="stacked layers")
    model.add_argument(
        "--embed-size", type=_positive, help="byte embedding size (default 64; --quick: 32)"
    )
    model.add_argument("--seed", type=_seed, default=0, help="seed of the initial parameters")
    training = lm.add_argument_group("training")
    training.add_argument(
        "--steps", type=_count, help="total updates of the run (default 3000; --quick: 1200)"
    )
    training.add_argument(
        "--quick",
        action="store_true",
        help="a new run of about a minute on a laptop CPU: 1200 updates, hidden size 128, "
        "embedding 32, the first 2 MB of the corpus (options given explicitly still apply; "
        "a resumed run keeps its own sizes)",
    )
    training.add_argument(
        "--batch-size", type=_positive, default=32, help="parallel streams the corpus is cut into"
    )
    training.add_argument("--window", type=_positive, default=64, help="k1: time steps per update")
    training.add_argument(
        "--backprop",
        type=_positive,
        help="k2 >= k1: time steps backpropagated per update (default: k1)",
    )
    training.add_argument(
        "--learning-rate", type=_positive_float, default=3e-3, help="Adam's step size"
    )
    training.add_argument(
        "--max-norm", type=_positive_float, default=1.0, help="clip gradients to this global norm"
    )
    training.add_argument(
        "--devices",
        type=_devices,
        default="auto",
        help="split the streams over this many devices (in a run of several processes: "
        "this many in each process); auto: on CPU as many host devices as there are cores, "
        "up to 8, that divide --batch-size (on 2 cores that is 1.3x the updates/s of one "
        "device), on a GPU or TPU one; in a run of several processes, 1 per process (start "
        "one process per core, or per GPU)",
    )
    saving = lm.add_argument_group("checkpoints")
    saving.add_argument(
        "--checkpoint-dir",
        type=_directory,
        help="save the run here (resuming the run it holds); default: nothing is saved",
    )
    saving.add_argument(
        "--checkpoint-every", type=_positive, default=500, help="save every this many updates"
    )
    saving.add_argument(
        "--resume",
        action="store_true",
        help="fail unless --checkpoint-dir holds a run to resume (a directory holding one "
        "is resumed either way)",
    )
    _process_options(lm)
    _sampling_options(lm, default_length=400)

    sample = commands.add_parser(
        "sample",
        help="sample text from a trained char-LM checkpoint",
        description="Load the newest good checkpoint of a train-charlm run and print text "
        "sampled from it.",
        formatter_class=_Formatter,
    )
    sample.add_argument(
        "--checkpoint-dir",
        type=_directory,
        required=True,
        help="a directory written by seqjax train-charlm",
    )
    sample.add_argument("--seed", type=_seed, default=0, help="seed of the sampling")
    _sampling_options(sample, default_length=600)

    bench = commands.add_parser(
        "bench",
        help="time seqjax's LSTM/GRU/Elman layers against the installed peer libraries",
        description="A quick benchmark on whatever backend JAX finds: seqjax.unroll against "
        "Flax linen nn.RNN and PyTorch (when installed), forward and forward+backward, on "
        "the same weights (checked before timing); prints median times and the ratio "
        "seqjax / peer (below 1: seqjax is faster).",
        formatter_class=_Formatter,
    )
    if bench_options:  # they live with the benchmark, which imports JAX
        from seqjax.apps import bench as _bench

        _bench.add_arguments(bench)
        helps = {
            "cells": "cells to time",
            "modes": "forward only, and/or forward and backward",
            "batch_size": "sequences per batch",
            "num_steps": "time steps",
            "input_size": "input features",
            "hidden_size": "units",
        }
        for action in bench._actions:  # noqa: SLF001
            if action.help is None and action.dest in helps:
                action.help = helps[action.dest]
    parser.commands = {"train-charlm": lm, "sample": sample, "bench": bench}
    return parser


def _process_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "processes",
        "Train as one of several processes (jax.distributed), each with its own devices, on "
        "one machine or many: every process runs the same command, with its own "
        "--process-id, and the same --checkpoint-dir on a shared file system. Each process "
        "keeps only its own streams; process 0 alone prints.",
    )
    group.add_argument(
        "--coordinator",
        type=_address,
        metavar="HOST:PORT",
        help="address of process 0's coordinator, the same in every process (with "
        "--num-processes and --process-id)",
    )
    group.add_argument(
        "--num-processes", type=_positive, metavar="N", help="how many processes take part"
    )
    group.add_argument(
        "--process-id", type=_count, metavar="I", help="this process's index, in [0, N)"
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="join a run of several processes whose coordinator, count and index JAX "
        "detects from the cluster (Slurm, Open MPI, Kubernetes)",
    )


def _check_processes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The process options: the explicit three together (or none), or --distributed alone."""
    names = ("coordinator", "num_processes", "process_id")
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    if args.distributed and given:
        parser.error(
            f"--distributed (JAX detects the cluster) cannot be combined with {', '.join(given)}"
            "; give either --distributed or all of --coordinator, --num-processes, --process-id"
        )
    if given and len(given) < len(names):
        parser.error(
            "--coordinator, --num-processes and --process-id go together; got only "
            + ", ".join(given)
        )
    if given and args.process_id >= args.num_processes:
        parser.error(
            f"--process-id must lie in [0, --num-processes = {args.num_processes}); got "
            f"{args.process_id}"
        )


def _sampling_options(parser: argparse.ArgumentParser, default_length: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--prompt", type=_prompt, default="def ", help="text to continue (default: 'def ')"
    )
    group.add_argument(
        "--length", type=_count, default=default_length, help="bytes to sample after the prompt"
    )
    group.add_argument(
        "--temperature",
        type=_temperature,
        default=0.8,
        help="divide the logits by this (0: always the likeliest byte)",
    )
    group.add_argument(
        "--top-k",
        type=_top_k,
        help="sample among the k likeliest bytes only (default: all 256)",
    )


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, frozenset[str]]:
    """Parse and check ``argv`` without importing JAX; return the options and the names of
    those given explicitly (a resumed run keeps its saved values for the others).

    Exits with status 2 and a usage message for a bad option, as argparse does, and with
    status 0 after ``--help`` or ``--version``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    bench_options = "bench" in argv
    parser = _parser(bench_options)
    args = parser.parse_args(argv)
    # The same parser with every default suppressed tells which options were given.
    bare = _parser(bench_options)
    for action in _all_actions(bare):
        action.default = argparse.SUPPRESS
    given = vars(bare.parse_args(argv))
    explicit = frozenset(k for k in given if k != "command")
    args.argv = argv  # recorded with a run, as the command that started it
    if args.command == "train-charlm":
        _quick_defaults(args, explicit)
        if args.resume and args.checkpoint_dir is None:
            parser.commands["train-charlm"].error("--resume needs --checkpoint-dir")
        _check_processes(args, parser.commands["train-charlm"])
        if args.num_processes is not None and (
            "batch_size" in explicit or args.checkpoint_dir is None
        ):  # a new run's streams; a resumed run's saved ones are checked once JAX has started
            problem = check_combination(vars(args), args.num_processes)
            if problem is not None:
                parser.commands["train-charlm"].error(problem)
    return args, explicit


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:  # noqa: SLF001
        yield action
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                yield from _all_actions(sub)


def _quick_defaults(args, explicit) -> None:
    """Fill in the options whose defaults --quick changes (for a new run)."""
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if name not in explicit:
            setattr(args, name, value)


def check_combination(values: dict, processes: int | None = None) -> str | None:
    """What is wrong with a train-charlm run's options taken together (None: nothing).

    Called once a resumed run's saved options are merged with the ones given, before any
    work. ``processes``: --num-processes when given (the streams are split over the
    devices of every process).
    """
    if values["backprop"] is not None and values["backprop"] < values["window"]:
        return (
            f"--backprop (k2 = {values['backprop']}) must be >= --window (k1 = {values['window']})"
        )
    devices = values["devices"]
    if processes is not None and processes > 1:
        per_process = 1 if devices == "auto" else devices
        if values["batch_size"] % (per_process * processes):
            return (
                f"--batch-size ({values['batch_size']} streams) must be divisible by the "
                f"{per_process * processes} devices of --num-processes {processes} x "
                f"--devices {devices}" + (" (1 per process)" if devices == "auto" else "")
            )
    elif devices != "auto" and values["batch_size"] % devices:
        return (
            f"--batch-size ({values['batch_size']} streams) must be divisible by --devices "
            f"({devices})"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """The ``seqjax`` console command: parse, then run (:func:`seqjax.apps.cli.run`)."""
    args, explicit = parse(argv)
    from seqjax.apps import cli

    return cli.run(args, explicit)


if __name__ == "__main__":
    sys.exit(main())

"""The ``seqjax`` command: ``seqjax train-charlm``, ``seqjax sample`` and ``seqjax bench``."""

from __future__ import annotations

import argparse
import sys

import seqjax

__all__ = [
    "main",
]

# Defaults of the options --quick changes; an option given explicitly wins over both.
DEFAULTS = dict(steps=3000, hidden_size=256, embed_size=64, max_bytes=None)
QUICK = dict(steps=1200, hidden_size=128, embed_size=32, max_bytes=2_000_000)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqjax", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {seqjax.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    lm = commands.add_parser(
        "train-charlm",
        help="train a character-level language model (streamed truncated BPTT)",
        description="Train a byte-level recurrent language model on a text file (default: "
        "the Python standard library's source), report held-out bits per character, "
        "save checkpoints (resuming from the newest) and print a sample.",
    )
    lm.add_argument("--corpus", help="text file to model (default: Python's stdlib source)")
    lm.add_argument("--max-bytes", type=_positive, help="read at most this many bytes")
    lm.add_argument("--steps", type=_count, help="total updates (default 3000; --quick 1200)")
    lm.add_argument(
        "--quick",
        action="store_true",
        help="a one-minute run on a laptop CPU: by default 1200 updates, hidden size 128, "
        "embedding 32, the first 2 MB of the corpus (options given explicitly still apply)",
    )
    lm.add_argument("--checkpoint-dir", help="save here; resume from the newest checkpoint")
    lm.add_argument("--checkpoint-every", type=_positive, default=500)
    lm.add_argument("--cell", choices=["lstm", "gru", "elman"], default="lstm")  # BY_NAME's keys
    lm.add_argument("--hidden-size", type=_positive, help="default 256; --quick 128")
    lm.add_argument("--num-layers", type=_positive, default=1)
    lm.add_argument("--embed-size", type=_positive, help="default 64; --quick 32")
    lm.add_argument("--batch-size", type=_positive, default=32, help="parallel streams")
    lm.add_argument("--window", type=_positive, default=64, help="k1: steps per update")
    lm.add_argument("--backprop", type=_positive, help="k2 >= k1: steps backpropagated")
    lm.add_argument("--learning-rate", type=float, default=3e-3)
    lm.add_argument("--max-norm", type=float, default=1.0, help="gradient clipping norm (> 0)")
    lm.add_argument("--seed", type=int, default=0)
    lm.add_argument(
        "--devices",
        type=_positive,
        default=1,
        help="split the streams over this many devices (on CPU: host devices, one per core "
        "used; --batch-size must be divisible by it; default 1)",
    )
    _sampling_options(lm, default_length=400)

    sample = commands.add_parser("sample", help="sample text from a trained char-LM checkpoint")
    sample.add_argument("--checkpoint-dir", required=True)
    sample.add_argument("--seed", type=int, default=0)
    _sampling_options(sample, default_length=600)

    bench = commands.add_parser(
        "bench",
        help="time seqjax's LSTM/GRU/Elman layers against the installed peer libraries",
        description="A quick benchmark on whatever backend JAX finds: seqjax.unroll against "
        "Flax linen nn.RNN and PyTorch (when installed), forward and forward+backward, on "
        "the same weights (checked before timing); prints median times and ratios.",
    )
    from seqjax.apps import bench as _bench

    _bench.add_arguments(bench)
    return parser


def _sampling_options(parser: argparse.ArgumentParser, default_length: int) -> None:
    parser.add_argument("--prompt", default="def ", help="text to continue")
    parser.add_argument("--length", type=_count, default=default_length, help="bytes to sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=_positive, help="sample among the k likeliest bytes")


def _train(args) -> None:
    if args.devices > 1:  # host CPU devices must exist before JAX initialises
        from seqjax import sharding

        try:
            sharding.use_cpu_devices(args.devices)
        except RuntimeError as err:
            raise ValueError(str(err)) from err
    import jax

    from seqjax.apps import char_lm

    chosen = {k: getattr(args, k) for k in DEFAULTS}
    fallback = QUICK if args.quick else DEFAULTS
    sizes = {k: fallback[k] if v is None else v for k, v in chosen.items()}
    steps = sizes.pop("steps")
    config = char_lm.CharLMConfig(
        cell=args.cell,
        num_layers=args.num_layers,
        batch_size=args.batch_size,
        window=args.window,
        backprop=args.backprop,
        learning_rate=args.learning_rate,
        max_norm=args.max_norm,
        corpus=args.corpus,
        seed=args.seed,
        **sizes,
    )
    print(
        f"seqjax char-LM: {config.cell.upper()} {config.num_layers}x{config.hidden_size} on "
        f"{config.corpus or 'the Python standard library source'}, {steps} updates of "
        f"{config.batch_size} streams x {config.window} steps, on {jax.default_backend()}"
        + (f" ({args.devices} devices)" if args.devices > 1 else "")
    )
    model, state, _ = char_lm.train_char_lm(
        config,
        steps,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        devices=args.devices,
    )
    bpc = char_lm.evaluate(model, state.params, char_lm.load(config).held_out)
    print(f"held-out bits per character: {bpc:.3f}")
    _print_sample(model, state, args)


def _print_sample(model, state, args) -> None:
    import jax

    from seqjax.apps import char_lm

    text = char_lm.generate_text(
        model,
        state.params,
        args.prompt,
        args.length,
        jax.random.key(args.seed),
        temperature=args.temperature,
        top_k=args.top_k,
    )
    print(f"--- sample (temperature {args.temperature}) ---\n{args.prompt}{text}\n---")


def _sample(args) -> None:
    from seqjax.apps import char_lm

    model, state = char_lm.load_trained(args.checkpoint_dir)
    _print_sample(model, state, args)


def _run_bench(args) -> None:
    from seqjax.apps import bench

    bench.main(args)


def main(argv: list[str] | None = None) -> int:
    """Run the ``seqjax`` command with ``argv`` (the process's arguments when None); the
    exit status: 0, or 2 for a bad argument or a failure reported as one line."""
    args = _parser().parse_args(argv)
    try:
        {"train-charlm": _train, "sample": _sample, "bench": _run_bench}[args.command](args)
    except (ValueError, OSError) as err:
        print(f"seqjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

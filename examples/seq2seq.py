"""Many-to-many: an encoder-decoder that reverses (or sorts) sequences of digits.

Sources are 1 to 8 random digits (padded with random digits that must be ignored); the
target is the same digits reversed (`--task reverse`) or sorted (`--task sort`), then an end
token. A bidirectional GRU encodes the source, its final states set the initial state of
a GRU decoder (seqjax.Seq2Seq, no attention), trained with teacher forcing. Prints the
exact-match accuracy on unseen sources with greedy decoding and with beam search.

    python examples/seq2seq.py --quick       # a few seconds; what the test suite runs
    python examples/seq2seq.py               # reverse, H = 128, 3000 updates of batch 64
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from seqjax import (
    ConditionedGenerator,
    Embedding,
    GRUCell,
    Seq2Seq,
    Stack,
    bptt_step,
    default_optimizer,
)

START, END = 10, 11  # after the digits 0..9


def digit_pairs(rng, num: int, max_length: int, task: str):
    """``(source [S, N], source_lengths [N], targets [S + 1, N], target_lengths [N])``."""
    lengths = rng.integers(1, max_length + 1, num).astype(np.int32)
    source = rng.integers(0, 10, (max_length, num)).astype(np.int32)
    targets = np.full((max_length + 1, num), END, np.int32)
    for i, n in enumerate(lengths):
        digits = source[:n, i]
        targets[:n, i] = digits[::-1] if task == "reverse" else np.sort(digits)
    return source, lengths, targets, lengths + 1


def exact(tokens, targets, lengths) -> float:
    """Fraction of outputs equal to the target up to and including its end token."""
    valid = np.arange(targets.shape[0])[:, None] < np.asarray(lengths)[None, :]
    return float(np.mean(np.all((np.asarray(tokens) == targets) | ~valid, axis=0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H=16, 40 updates: a smoke run")
    parser.add_argument("--task", choices=("reverse", "sort"), default="reverse")
    parser.add_argument("--max-length", type=int, default=8, help="longest source")
    parser.add_argument("--hidden-size", type=int, default=128, help="decoder H (encoder H/2)")
    parser.add_argument("--steps", type=int, default=3000, help="updates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size, args.steps, args.max_length = 16, 40, 5

    hidden = args.hidden_size
    encoder = Stack.build(GRUCell, 32, (hidden // 2,), bidirectional=True)
    decoder = ConditionedGenerator(
        2 * (hidden // 2), GRUCell(32, hidden), 12, 32, start_token=START, end_token=END
    )
    model = Seq2Seq(Embedding(10, 32), encoder, decoder)
    key = jax.random.key(args.seed)
    params = model.init(key)
    optimizer = default_optimizer(args.learning_rate, max_norm=1.0)
    opt_state = optimizer.init(params)
    step = jax.jit(bptt_step(lambda p, batch: model.loss(p, *batch), optimizer))

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for i in range(args.steps):
        batch = digit_pairs(rng, args.batch_size, args.max_length, args.task)
        params, opt_state, metrics = step(params, opt_state, batch)
        if (i + 1) % max(1, args.steps // 5) == 0:
            print(f"update {i + 1:>5}  loss {float(metrics.loss):.4f}")
    seconds = time.perf_counter() - start

    source, lengths, targets, target_lengths = digit_pairs(
        np.random.default_rng(args.seed + 1), 1000, args.max_length, args.task
    )
    out_length = args.max_length + 1
    greedy = jax.jit(lambda p, s, n: model.decode(p, s, n, key, out_length))(
        params, source, lengths
    )
    beams = jax.jit(lambda p, s, n: model.beam_search(p, s, n, args.beam_width, out_length))(
        params, source, lengths
    )
    print(
        f"{args.task} 1-{args.max_length} digits, biGRU encoder {hidden // 2}+{hidden // 2} -> "
        f"GRU decoder {hidden}, {args.steps} updates in {seconds:.1f} s"
    )
    print(
        f"exact-match accuracy on 1000 unseen sources: "
        f"greedy {exact(greedy.tokens, targets, target_lengths):.4f}   "
        f"beam (K={args.beam_width}) {exact(beams.tokens[..., 0], targets, target_lengths):.4f}"
    )
    for i in range(3):
        n = int(lengths[i])
        got = np.asarray(beams.tokens[: int(beams.lengths[i, 0]) - 1, i, 0]).tolist()
        print(f"  {source[:n, i].tolist()} -> {got}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

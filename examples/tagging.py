"""Synced many-to-many: tag every token of variable-length sequences, with known answers.

The task: in a sequence of random tokens (vocabulary 20, lengths 4 to 20, padded to 20
with random tokens that must be ignored), tag each valid token 1 if the same token occurs
anywhere else in the sequence (before *or after* it), else 0. A bidirectional GRU sees both
sides of every step. Prints the per-token accuracy over valid steps, the fraction of
sequences tagged entirely right, and the majority-class baseline.

    python examples/tagging.py --quick       # a few seconds; what the test suite runs
    python examples/tagging.py               # H = 64, 2500 updates of batch 64
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import (
    Embedding,
    GRUCell,
    SequenceTagger,
    Stack,
    bptt_step,
    default_optimizer,
    sequence_mask,
)


def repeated_tokens(rng, batch_size: int, max_length: int, vocab_size: int, min_length: int = 4):
    """``(ids [T, B], tags [T, B], lengths [B])``: tag 1 where a token recurs in its sequence.

    Padded steps hold random tokens too (they must not count as occurrences) and tag 0.
    """
    lengths = rng.integers(min_length, max_length + 1, batch_size)
    ids = rng.integers(0, vocab_size, (max_length, batch_size))
    valid = np.arange(max_length)[:, None] < lengths[None, :]
    counts = np.zeros((batch_size, vocab_size), np.int64)
    for t in range(max_length):
        np.add.at(counts, (np.arange(batch_size), ids[t]), valid[t])
    tags = (counts[np.arange(batch_size)[None, :], ids] > 1) & valid
    return ids.astype(np.int32), tags.astype(np.int32), lengths.astype(np.int32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H=16, 40 updates: a smoke run")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2500, help="updates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--vocab-size", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size, args.steps = 16, 40

    embed = Embedding(args.vocab_size, 16)
    encoder = Stack.build(GRUCell, 16, (args.hidden_size,), bidirectional=True)
    model = SequenceTagger(encoder, num_tags=2, embed=embed)
    params = model.init(jax.random.key(args.seed))
    optimizer = default_optimizer(args.learning_rate, max_norm=1.0)
    opt_state = optimizer.init(params)
    step = jax.jit(bptt_step(lambda p, batch: model.loss(p, *batch), optimizer))

    @jax.jit
    def evaluate(params, ids, tags, lengths):
        mask = sequence_mask(lengths, ids.shape[0])
        right = (jnp.argmax(model(params, ids, lengths), -1) == tags) | ~mask
        return right.sum() - (~mask).sum(), mask.sum(), right.all(axis=0).mean()

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for i in range(args.steps):
        batch = repeated_tokens(rng, args.batch_size, args.max_length, args.vocab_size)
        params, opt_state, metrics = step(params, opt_state, batch)
        if (i + 1) % max(1, args.steps // 5) == 0:
            print(f"update {i + 1:>5}  loss {float(metrics.loss):.4f}")
    seconds = time.perf_counter() - start

    test_rng = np.random.default_rng(args.seed + 1)
    ids, tags, lengths = repeated_tokens(test_rng, 2000, args.max_length, args.vocab_size)
    right, total, whole = (float(a) for a in evaluate(params, ids, tags, lengths))
    valid = np.arange(args.max_length)[:, None] < lengths[None, :]
    ones = tags[valid].mean()
    print(
        f"repeated-token tagging, vocabulary {args.vocab_size}, lengths 4-{args.max_length}, "
        f"biGRU H={args.hidden_size}, {args.steps} updates in {seconds:.1f} s"
    )
    print(
        f"per-token accuracy {right / total:.4f} (majority baseline {max(ones, 1 - ones):.4f})"
        f"   sequences all right {whole:.4f}   (2000 test sequences)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

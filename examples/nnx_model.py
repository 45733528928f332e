"""A Flax NNX character model built around a seqjax LSTM, trained with nnx.Optimizer + optax.

    python examples/nnx_model.py --quick                       # seconds: a smoke test
    python examples/nnx_model.py --checkpoint-dir runs/nnx     # the full run (resumes)

The model is an ordinary ``nnx.Module``: ``nnx.Embed`` -> a two-layer seqjax LSTM with
variational dropout (:class:`seqjax.VariationalDropoutCell`: one mask per sequence on each
layer's inputs and recurrent state, the same at every step) wrapped by
:class:`seqjax.interop.flax_nnx.Recurrent` -> ``nnx.Linear`` logits over 256 byte values.
It trains on the char-LM corpus (the Python standard library's source, ``seqjax.apps.data``) on
random windows, with ``nnx.jit``, ``nnx.value_and_grad`` and ``nnx.Optimizer`` over the
default recipe (global-norm clipping, then Adam). ``model.train()`` / ``model.eval()``
switch dropout on and off, as for ``nnx.Dropout``.

Checkpoints (orbax, through :mod:`seqjax.checkpoint`) hold the parameters, the optimizer
state and the dropout stream's counter; a run given an existing ``--checkpoint-dir``
resumes from its newest checkpoint and continues as the uninterrupted run would.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqjax import LSTMCell, Stack, VariationalDropoutCell, checkpoint
from seqjax.apps import data
from seqjax.interop.flax_nnx import Recurrent
from seqjax.train import default_optimizer


class CharModel(nnx.Module):
    """``ids [B, T] -> logits [B, T, 256]``: embedding, 2-layer LSTM with dropout, dense head."""

    def __init__(self, embed: int, hidden: int, dropout: float, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(data.VOCAB_SIZE, embed, rngs=rngs)

        def layer(input_size: int, hidden_size: int) -> VariationalDropoutCell:
            cell = LSTMCell(input_size, hidden_size)
            return VariationalDropoutCell(cell, input_rate=dropout, recurrent_rate=dropout)

        self.rnn = Recurrent(Stack.build(layer, embed, (hidden, hidden)), rngs=rngs)
        self.head = nnx.Linear(hidden, data.VOCAB_SIZE, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        _, ys = self.rnn(self.embed(ids), time_axis=1)
        return self.head(ys)


def loss_fn(model: CharModel, ids: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy in nats over ``ids [B, T + 1]``."""
    logits = model(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


@nnx.jit
def train_step(model: CharModel, optimizer: nnx.Optimizer, ids: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_loss(model: CharModel, ids: jax.Array) -> jax.Array:
    return loss_fn(model, ids)


def batch(text: np.ndarray, step: int, args) -> jax.Array:
    """Random windows ``[B, T + 1]``, a function of the step (so a resumed run sees the same)."""
    rng = np.random.default_rng([args.seed, step])
    starts = rng.integers(0, len(text) - args.window - 1, args.batch_size)
    return jnp.asarray(text[starts[:, None] + np.arange(args.window + 1)], jnp.int32)


def held_out_bpc(model: CharModel, held_out: np.ndarray, window: int) -> float:
    """Bits per character on held-out text, in non-overlapping windows, dropout off."""
    count = (len(held_out) - 1) // window
    starts = np.arange(count) * window
    ids = jnp.asarray(held_out[starts[:, None] + np.arange(window + 1)], jnp.int32)
    model.eval()
    loss = float(eval_loss(model, ids))
    model.train()
    return loss / math.log(2.0)


def checkpointed_state(model: CharModel, optimizer: nnx.Optimizer) -> dict:
    """What a checkpoint holds: parameters, optimizer state, the dropout stream's counter.

    The streams' keys come from the seed and never change, so only their counters are saved.
    """
    return {
        "params": nnx.state(model, nnx.Param),
        "rng_counts": nnx.state(model, nnx.RngCount),
        "optimizer": nnx.state(optimizer, nnx.optimizer.OptState),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps")
    parser.add_argument("--steps", type=int, default=None, help="updates (2000; 20 with --quick)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1, help="variational dropout rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--max-bytes", type=int, default=None, help="corpus bytes (all: None)")
    parser.add_argument("--eval-bytes", type=int, default=65536)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 20 if args.quick else 2000
    if args.quick:
        args.hidden, args.embed = 32, 16
        args.batch_size, args.window = 8, 16
        args.max_bytes, args.eval_bytes = 200_000, 4096
        args.checkpoint_every = 20
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    text = data.load_corpus(max_bytes=args.max_bytes)
    train_text, held_out = data.split_held_out(text, 0.05)
    held_out = held_out[: args.eval_bytes]

    model = CharModel(args.embed, args.hidden, args.dropout, rngs=nnx.Rngs(args.seed))
    tx = default_optimizer(args.learning_rate, max_norm=1.0)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    meta = {k: v for k, v in vars(args).items() if k not in ("checkpoint_dir", "steps")}

    start = 0
    if args.checkpoint_dir and checkpoint.latest_step(args.checkpoint_dir) is not None:
        like = checkpointed_state(model, optimizer)
        start, saved = checkpoint.restore(args.checkpoint_dir, like, meta)
        nnx.update(model, saved["params"], saved["rng_counts"])
        nnx.update(optimizer, saved["optimizer"])
        print(f"resumed from step {start}")

    sizes = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"CharModel: {sizes} parameters; training steps {start}..{args.steps}")
    losses, first_s, began = [], None, time.perf_counter()
    for step in range(start, args.steps):
        losses.append(float(train_step(model, optimizer, batch(train_text, step, args))))
        if first_s is None:  # the first step compiles: timed apart from the throughput
            first_s, began = time.perf_counter() - began, time.perf_counter()
        done = step + 1
        if done % max(1, args.steps // 10) == 0 or done == args.steps:
            recent = np.mean(losses[-50:])
            print(f"step {done}: train loss {recent:.3f} nats ({recent / math.log(2):.3f} bpc)")
        if args.checkpoint_dir and (done % args.checkpoint_every == 0 or done == args.steps):
            checkpoint.save(args.checkpoint_dir, done, checkpointed_state(model, optimizer), meta)
    elapsed = time.perf_counter() - began  # after the first step (checkpoint saves included)
    bpc = held_out_bpc(model, held_out, args.window)
    print(f"held-out bits per character: {bpc:.3f}")
    if len(losses) > 1:
        rate = (len(losses) - 1) * args.batch_size * args.window / elapsed
        print(
            f"{len(losses)} steps: the first {first_s:.1f} s (compiling included), then "
            f"{len(losses) - 1} in {elapsed:.1f} s ({rate:.0f} chars/s)"
        )
    elif losses:
        print(f"1 step in {first_s:.1f} s, compiling included (no throughput from one step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

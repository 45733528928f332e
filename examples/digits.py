"""Many-to-one: classify handwritten digits read row by row, one 8-pixel row per time step.

scikit-learn's digits (1797 real 8x8 images, 10 classes) are split 80/20 with a fixed
seed; a GRU reads each image as a sequence of 8 rows (8 features each) and a dense head
classifies its last state. Prints the test accuracy. Needs scikit-learn
(`pip install "seqjax[datasets]"`); without it the script says so and exits cleanly.

    python examples/digits.py --quick        # a few seconds; what the test suite runs
    python examples/digits.py                # H = 64, 1500 updates of batch 64
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import (
    GRUCell,
    LSTMCell,
    SequenceClassifier,
    Stack,
    bptt_step,
    default_optimizer,
)


def load_rows(seed: int, test_fraction: float = 0.2):
    """Digits as row sequences: train and test ``(xs [T=8, N, 8] in [0, 1], labels [N])``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # [N, 8, 8], pixel values 0..16
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * (1.0 - test_fraction))

    def part(index):
        return jnp.asarray(images[index].transpose(1, 0, 2)), jnp.asarray(
            digits.target[index].astype(np.int32)
        )

    return part(order[:cut]), part(order[cut:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H=16, 40 updates: a smoke run")
    parser.add_argument("--cell", choices=("gru", "lstm"), default="gru")
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500, help="updates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size, args.steps = 16, 40
    if importlib.util.find_spec("sklearn") is None:
        print('skipped: the digits need scikit-learn (pip install "seqjax[datasets]")')
        return 0

    (train_xs, train_labels), (test_xs, test_labels) = load_rows(args.seed)
    make_cell = {"gru": GRUCell, "lstm": LSTMCell}[args.cell]
    encoder = Stack.build(make_cell, 8, (args.hidden_size,), bidirectional=args.bidirectional)
    model = SequenceClassifier(encoder, num_classes=10)
    key = jax.random.key(args.seed)
    params = model.init(key)
    optimizer = default_optimizer(args.learning_rate, max_norm=1.0)
    opt_state = optimizer.init(params)
    step = jax.jit(bptt_step(lambda p, batch: model.loss(p, *batch), optimizer))
    accuracy = jax.jit(lambda p, xs, labels: jnp.mean(jnp.argmax(model(p, xs), -1) == labels))

    rng = np.random.default_rng(args.seed)
    num_train = train_labels.shape[0]
    start = time.perf_counter()
    for i in range(args.steps):
        index = rng.choice(num_train, args.batch_size, replace=False)
        params, opt_state, metrics = step(
            params, opt_state, (train_xs[:, index], train_labels[index])
        )
        if (i + 1) % max(1, args.steps // 5) == 0:
            print(f"update {i + 1:>5}  loss {float(metrics.loss):.4f}")
    seconds = time.perf_counter() - start
    train_acc = float(accuracy(params, train_xs, train_labels))
    test_acc = float(accuracy(params, test_xs, test_labels))
    name = f"{'bi' if args.bidirectional else ''}{args.cell.upper()} H={args.hidden_size}"
    print(
        f"digits row by row ({num_train} train / {test_labels.shape[0]} test images), {name}, "
        f"{args.steps} updates in {seconds:.1f} s"
    )
    print(f"train accuracy {train_acc:.4f}   test accuracy {test_acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One-to-many: describe a scene from one feature vector, a captioning-shaped toy.

Each scene has a count (1-3), a size (small, plain or big), a colour (4) and a shape (4);
its "image features" are those attributes mixed by a fixed random 32 x 14 matrix plus
Gaussian noise, the stand-in for a CNN's image embedding. The caption is
`[count] [size]? colour shape(s) <end>`, e.g. "two big red squares", 4 or 5 tokens. A GRU
decoder starts from a state computed from the features (seqjax.ConditionedGenerator) and is
trained with teacher forcing; captions are decoded greedily, by beam search and by
sampling, all under lax.scan. Prints the exact-match caption accuracy on unseen scenes.

    python examples/captions.py --quick      # a few seconds; what the test suite runs
    python examples/captions.py              # H = 64, 2000 updates of batch 64
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from seqjax import ConditionedGenerator, GRUCell, bptt_step, default_optimizer

COUNTS = ("one", "two", "three")
SIZES = ("small", None, "big")
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "star")
WORDS = ("<start>", "<end>", *COUNTS, "small", "big", *COLOURS) + tuple(
    w for s in SHAPES for w in (s, s + "s")
)
START, END = 0, 1
MAX_LENGTH = 5  # count, size, colour, shape, <end>
FEATURES = 32


VALUES = (3, 3, 4, 4)  # values per attribute: count, size, colour, shape


def render(attributes) -> np.ndarray:
    """Noiseless features ``[N, 32]``: the attributes' one-hots through a fixed "camera"."""
    onehot = np.concatenate([np.eye(n)[a] for n, a in zip(VALUES, attributes, strict=True)], 1)
    return onehot @ np.random.default_rng(1234).standard_normal((onehot.shape[1], FEATURES))


def caption_ids(count, size, colour, shape) -> list[int]:
    words = [COUNTS[count], SIZES[size], COLOURS[colour], SHAPES[shape] + ("s" if count else "")]
    return [WORDS.index(w) for w in words if w is not None] + [END]


def captions_of(attributes):
    """``(captions [5, N], lengths [N])`` for attribute arrays ``[N]`` each."""
    num = len(attributes[0])
    captions = np.full((MAX_LENGTH, num), END, np.int32)
    lengths = np.zeros(num, np.int32)
    for i, values in enumerate(zip(*attributes, strict=True)):
        ids = caption_ids(*values)
        captions[: len(ids), i], lengths[i] = ids, len(ids)
    return captions, lengths


def scenes(rng, num: int, noise: float):
    """``(features [N, 32], captions [5, N], lengths [N])`` for ``num`` random scenes."""
    attributes = [rng.integers(0, n, num) for n in VALUES]
    features = render(attributes) + noise * rng.standard_normal((num, FEATURES))
    return (features.astype(np.float32), *captions_of(attributes))


def ceiling(features, captions, lengths) -> float:
    """Exact-match accuracy of the Bayes-optimal captioner: the nearest noiseless scene.

    The 144 scenes are equally likely and the noise is isotropic Gaussian, so the most
    probable scene is the one whose noiseless features lie nearest; no model does better.
    """
    grid = [a.ravel() for a in np.meshgrid(*[np.arange(n) for n in VALUES], indexing="ij")]
    distances = ((features[:, None, :] - render(grid)[None]) ** 2).sum(-1)  # [N, 144]
    nearest = np.argmin(distances, axis=1)
    best, _ = captions_of([g[nearest] for g in grid])
    return exact(best, captions, lengths)


def text(tokens) -> str:
    words = []
    for t in np.asarray(tokens).tolist():
        if t == END:
            break
        words.append(WORDS[t])
    return " ".join(words)


def exact(tokens, captions, lengths) -> float:
    """Fraction of decoded captions equal to the truth, end token included."""
    tokens, captions = np.asarray(tokens), np.asarray(captions)
    valid = np.arange(MAX_LENGTH)[:, None] < np.asarray(lengths)[None, :]
    return float(np.mean(np.all((tokens == captions) | ~valid, axis=0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H=16, 40 updates: a smoke run")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000, help="updates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--noise", type=float, default=1.5, help="feature noise std")
    parser.add_argument("--beam-width", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size, args.steps = 16, 40

    model = ConditionedGenerator(
        FEATURES, GRUCell(16, args.hidden_size), len(WORDS), 16, start_token=START, end_token=END
    )
    key = jax.random.key(args.seed)
    params = model.init(key)
    optimizer = default_optimizer(args.learning_rate, max_norm=1.0)
    opt_state = optimizer.init(params)
    step = jax.jit(bptt_step(lambda p, batch: model.loss(p, *batch), optimizer))

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for i in range(args.steps):
        params, opt_state, metrics = step(
            params, opt_state, scenes(rng, args.batch_size, args.noise)
        )
        if (i + 1) % max(1, args.steps // 5) == 0:
            print(f"update {i + 1:>5}  loss {float(metrics.loss):.4f}")
    seconds = time.perf_counter() - start

    features, captions, lengths = scenes(np.random.default_rng(args.seed + 1), 1000, args.noise)
    greedy = jax.jit(lambda p, f: model.generate(p, f, key, MAX_LENGTH))(params, features)
    beams = jax.jit(lambda p, f: model.beam_search(p, f, args.beam_width, MAX_LENGTH))(
        params, features
    )
    sampled = jax.jit(
        lambda p, f, k: model.generate(p, f, k, MAX_LENGTH, temperature=1.0, top_k=3)
    )(params, features[:4], jax.random.fold_in(key, 1))
    print(
        f"scene captions, feature noise {args.noise}, GRU H={args.hidden_size}, "
        f"{args.steps} updates in {seconds:.1f} s"
    )
    greedy_acc = exact(greedy.tokens, captions, lengths)
    beam_acc = exact(beams.tokens[..., 0], captions, lengths)
    print(
        f"exact-match accuracy on 1000 unseen scenes: greedy {greedy_acc:.4f}   "
        f"beam (K={args.beam_width}) {beam_acc:.4f}   Bayes-optimal ceiling "
        f"{ceiling(features, captions, lengths):.4f}"
    )
    for i in range(4):
        print(
            f"  truth: {text(captions[:, i]):<26} greedy: {text(greedy.tokens[:, i]):<26} "
            f"sampled (T=1, top-3): {text(sampled.tokens[:, i])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

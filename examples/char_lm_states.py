"""What a char-LM's hidden units track: the classic char-RNN heatmap of units over characters.

Trains a byte-level char-LM on Python source (or loads one trained by ``examples/char_lm.py``
/ ``seqjax train-charlm --checkpoint-dir``), runs it over held-out text and, for properties a
reader of Python sees (inside a string literal, inside a comment, inside brackets, the column
in the line), finds the units whose activity correlates most with each over a long stretch
of held-out text. A heatmap of those units over a snippet, with the characters as column
labels, goes to a PNG, as in Karpathy, Johnson & Fei-Fei, "Visualizing and understanding
recurrent networks" (2015). For an LSTM the picture shows ``tanh(c)``, the cell state as the
output gate sees it (``--state h`` for the output instead).

    python examples/char_lm_states.py --quick                         # seconds: a smoke run
    python examples/char_lm_states.py --checkpoint-dir runs/charlm    # load, or train + save
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import checkpoint
from seqjax.apps import char_lm, data
from seqjax.cells import LSTMCarry
from seqjax.diagnostics import carry_trajectory, unit_correlations

FEATURES = ("in string", "in comment", "in brackets", "column")


def source_features(text: str) -> np.ndarray:
    """Per character of Python source: ``[N, 4]`` (in string, in comment, in brackets, column).

    A small scanner: string literals (single, double, triple quotes, with backslash escapes;
    delimiters count as inside), ``#`` comments to the end of the line, bracket depth outside
    both, and the character's column. It assumes the text starts outside any literal.
    """
    out = np.zeros((len(text), 4), np.float32)
    quote, comment, depth, column, i = None, False, 0, 0, 0
    while i < len(text):
        c = text[i]
        width = 1
        inside = quote is not None
        if comment:
            comment = c != "\n"
            inside_comment = True
        else:
            inside_comment = False
            if quote is not None:
                if c == "\\":
                    width = 2
                elif text.startswith(quote, i):
                    width, quote = len(quote), None
                elif c == "\n" and len(quote) == 1:
                    quote = None  # an unterminated one-line string ends with its line
            elif c == "#":
                comment = inside_comment = True
            elif text.startswith('"""', i) or text.startswith("'''", i):
                quote, width, inside = text[i : i + 3], 3, True
            elif c in "\"'":
                quote, inside = c, True
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth = max(0, depth - 1)
        for j in range(i, min(i + width, len(text))):
            out[j] = (inside, inside_comment, depth > 0 and not inside, column)
            column = 0 if text[j] == "\n" else column + 1
        i += width
    return out


def get_model(args):
    """Load from ``--checkpoint-dir`` when it holds a checkpoint; else train (and save there)."""
    if args.checkpoint_dir and checkpoint.latest_step(args.checkpoint_dir) is not None:
        model, state = char_lm.load_trained(args.checkpoint_dir)
        print(f"loaded {args.checkpoint_dir} at step {int(state.step)}")
        return model, state.params
    if args.quick:
        config = char_lm.CharLMConfig(
            hidden_size=32, embed_size=16, batch_size=8, window=32, max_bytes=400_000
        )
        steps = 20
    else:
        config = char_lm.CharLMConfig(cell=args.cell, hidden_size=args.hidden_size)
        steps = args.steps
    print(f"training a {config.cell.upper()} char-LM, H = {config.hidden_size}, {steps} updates")
    model, state, _ = char_lm.train_char_lm(
        config, steps, checkpoint_dir=args.checkpoint_dir, chunk=min(25, steps), progress=False
    )
    return model, state.params


@functools.partial(jax.jit, static_argnums=(0, 3))
def hidden_states(model, params, ids, which: str):
    """The top layer's state after each byte ``[T, H]``: ``h``, or ``tanh(c)`` for an LSTM."""
    trajectory = carry_trajectory(model.rnn, params.rnn, model.embed(params.embed, ids))
    top = trajectory[-1]
    if isinstance(top, LSTMCarry):
        return jnp.tanh(top.c) if which == "c" else top.h
    return top


def pick_snippet(text: str, features: np.ndarray, length: int) -> int:
    """A line start in code whose next ``length`` characters show the most of the properties.

    Scored by how many of strings, comments and brackets the snippet holds (each where the
    text has any), then by how balanced its string / code mix is; the first best wins.
    """
    present = features[:, :3].any(axis=0)
    best, best_score = 0, (-1, -1.0)
    for start in [0] + [i + 1 for i, c in enumerate(text[:-length]) if c == "\n"]:
        if features[start, 0] or features[start, 1]:
            continue  # begins inside a string or comment
        piece = features[start : start + length, :3]
        kinds = int((piece.any(axis=0) & present).sum())
        score = (kinds, -abs(float(piece[:, 0].mean()) - 0.3))
        if score > best_score:
            best, best_score = start, score
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model, 20 updates: a smoke run"
    )
    parser.add_argument("--checkpoint-dir", help="load the char-LM here; train and save if empty")
    parser.add_argument("--steps", type=int, default=3000, help="updates when training")
    parser.add_argument("--cell", choices=["lstm", "gru", "elman"], default="lstm")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--state", choices=["c", "h"], default="c", help="LSTM: tanh(c) or h")
    parser.add_argument("--analyse", type=int, default=20000, help="held-out bytes correlated")
    parser.add_argument("--snippet", type=int, default=240, help="characters in the picture")
    parser.add_argument("--per-feature", type=int, default=2, help="units shown per property")
    parser.add_argument("--out", default="runs/char_lm_states", help="folder for the PNG")
    args = parser.parse_args(argv)
    if args.quick:
        args.analyse, args.snippet = 4000, 120
    os.makedirs(args.out, exist_ok=True)

    model, params = get_model(args)
    held_out = char_lm.load(model.config).held_out
    text = data.decode(held_out).replace("\ufffd", "?")
    begin = text.find("\ndef ") + 1  # start at a top-level def: outside strings and brackets
    text = text[begin : begin + args.analyse]
    ids = jnp.asarray(data.encode(text).astype(np.int32))
    if len(ids) != len(text):  # non-ASCII: bytes and characters differ; keep ASCII only
        text = "".join(c if ord(c) < 128 else "?" for c in text)
        ids = jnp.asarray(data.encode(text).astype(np.int32))
    states = np.asarray(hidden_states(model, params, ids, args.state))
    features = source_features(text)
    correlations = np.asarray(unit_correlations(jnp.asarray(states), jnp.asarray(features)))

    chosen, labels = [], []
    print(f"units most correlated with each property over {len(text)} held-out characters:")
    for k, name in enumerate(FEATURES):
        if features[:, k].min() == features[:, k].max():
            print(f"  {name:<12} (never changes in this text: no unit to find)")
            continue
        order = [u for u in np.argsort(-np.abs(correlations[:, k])) if u not in chosen]
        for unit in order[: args.per_feature]:
            chosen.append(int(unit))
            labels.append(f"{name}: #{unit} (r = {correlations[unit, k]:+.2f})")
            print(f"  {name:<12} unit {unit:>4}  r = {correlations[unit, k]:+.3f}")
    if importlib.util.find_spec("matplotlib") is None:
        print('(matplotlib is not installed, so no plot: pip install "seqjax[plot]")')
        return 0
    from seqjax.apps.plots import plot_hidden_states

    start = pick_snippet(text, features, args.snippet)
    snippet = slice(start, start + args.snippet)
    kind = model.config.cell.upper()
    shown = "tanh(c)" if kind == "LSTM" and args.state == "c" else "h"
    path = plot_hidden_states(
        states[snippet],
        os.path.join(args.out, "char_lm_states.png"),
        labels=list(text[snippet]),
        units=chosen,
        unit_labels=labels,
        wrap=80,
        title=f"{kind} char-LM (H = {model.config.hidden_size}): {shown} of the units that "
        "track string, comment, bracket and column, over held-out Python source",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

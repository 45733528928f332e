"""Does seqjax's char-LM train as well and as fast as a PyTorch nn.LSTM char-LM?

Question: on the same data windows, model size, optimizer and number of updates, does
``seqjax.apps.char_lm`` (as a user gets it: ``CharLMConfig`` defaults, ``new_state``,
``make_chunk_fn``, ``evaluate``) reach a held-out loss no worse than a PyTorch char-LM
(``nn.Embedding(256, E) -> nn.LSTM(E, H) -> nn.Linear(H, 256)``), and which runs more updates
per second?

Same work on both sides:

- Data: ``char_lm.load(config)`` and ``char_lm._windows``: both sides read identical windows
  in identical order, ``chunk`` windows at a time; the carry is handed from window to window
  (``.detach()`` in PyTorch, ``stop_gradient`` in seqjax) and reset to zero at every pass
  over the streams, where ``_windows`` marks it.
- Loss: cross-entropy, mean over the window's ``window x batch`` positions; gradient clipped
  to global norm ``max_norm`` (``clip_grad_norm_``), then Adam (``lr``, betas 0.9/0.999, eps
  1e-8 on both sides: optax's defaults, set explicitly in PyTorch).
- Held-out bits per char: ``char_lm.evaluate`` for seqjax; for PyTorch the same held-out
  bytes cut into the same 16 streams, each read once from the zero state, mean cross-entropy
  / ln 2.
- Initialisation differs: each library uses its own defaults (seqjax: Glorot/orthogonal with
  forget bias 1; PyTorch: uniform(+-1/sqrt(H)) for the LSTM and Linear, N(0,1) embedding).
  Before training, the script checks that the two sides compute the same thing: a PyTorch
  copy loaded with seqjax's initial parameters (``seqjax.interop.torch.params_to_torch``)
  must give seqjax's held-out bpc, first-window loss and gradient norm (relative difference
  <= 1e-3), or the script fails.
- The same start: one more seqjax run per seed (on the largest device count) begins from
  the PyTorch side's initial parameters (``seqjax.interop.torch.params_from_torch``; checked
  to give PyTorch's held-out bpc before training), so that a bpc difference there belongs to
  the libraries, not to their initialisations. What remains is PyTorch's second LSTM bias:
  ``nn.LSTM`` adds ``bias_ih + bias_hh`` and Adam moves each, so the summed bias moves up to
  twice as fast (with the two folded into one, PyTorch's training equals seqjax's to float
  rounding: ``tests/test_torch_training.py``).

Timing: the two sides are trained in the same process, chunk by chunk, interleaved (which
side goes first alternates per chunk), so noise from other processes hits both alike. Each
chunk's time covers building its windows (numpy), the updates and waiting for the result
(``block_until_ready`` / PyTorch's synchronous CPU ops). seqjax's chunk function is lowered
and compiled ahead of time (``compile_s``, not in the timings). The first ``--warmup`` chunks
are trained but not timed, on both sides. ``--repeats`` and ``--min-sample-ms`` do not apply.

Devices: PyTorch runs its ops on every usable core (``torch.set_num_threads``); one XLA:CPU
device threads each step's matmul but runs the rest of the step on one thread.
``--devices 1,2`` (the default) trains seqjax twice per seed, on one device and with the
streams split over 2 host devices
(``train_char_lm(devices=2)``, i.e. ``seqjax train-charlm --devices 2``: ``shard_map``, a
gradient ``psum`` per update), interleaved with PyTorch in one process that holds the
largest count of host devices (set before JAX initialises).

PyTorch alone: before the seeds, the PyTorch side of seed 0 also trains for its warm-up
chunks plus up to 40 timed ones in a process of its own, where no JAX backend starts, and
the results give its ms per update there and seqjax's time relative to it (in the shared
process, threads XLA:CPU leaves spinning after a call can take cores from PyTorch's).

Script flags (besides the harness's ``--quick``, ``--out``, ``--warmup``): ``--steps N``
(updates per run, default 3000), ``--max-bytes N`` (corpus prefix; default: the whole
default corpus), ``--seeds N`` (runs per library, default 2), ``--chunk N`` (windows per
compiled call, default 25 as ``train_char_lm``), ``--devices LIST`` (seqjax device counts,
default ``1,2``).

Usage::

    python benchmarks/char_lm_vs_torch.py                  # -> benchmarks/results/
    python benchmarks/char_lm_vs_torch.py --steps 1000 --seeds 1 --devices 2
    python benchmarks/char_lm_vs_torch.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from torch import nn

from seqjax import DenseParams, EmbeddingParams, losses, train
from seqjax.apps import char_lm, data
from seqjax.interop.torch import params_from_torch, params_to_torch


def _device_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(v) for v in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise SystemExit(f"--devices: a comma-separated list of positive ints; got {text!r}")
    return counts


DEFAULT_DEVICES = "1,2"


# Importing JAX does not start its backends: the host device count can still be set here.
if __name__ == "__main__":  # host devices must exist before JAX initialises
    jax.config.update(
        "jax_num_cpu_devices", max(_device_counts(h.early_option("--devices", DEFAULT_DEVICES)))
    )

SCRIPT = "char_lm_vs_torch"
TORCH_ALONE = "--torch-alone"
ALONE_CHUNKS = 40
TITLE = "seqjax.apps.char_lm vs a PyTorch nn.LSTM char-LM (same data, size, optimizer, updates)"

# Largest relative difference accepted between seqjax and the PyTorch copy of its parameters.
REL_TOL = 1e-3
# Final training loss: mean over this many last updates (a single window is noisy).
LAST_UPDATES = 100
QUICK = dict(hidden_size=16, embed_size=8, batch_size=4, window=8, eval_bytes=2048)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None, check_devices: bool = True) -> argparse.Namespace:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--steps", type=int, default=None, help="updates per run (default 3000)")
    own.add_argument("--max-bytes", type=int, default=None, help="corpus prefix in bytes")
    own.add_argument("--seeds", type=int, default=None, help="runs per library (default 2)")
    own.add_argument("--chunk", type=int, default=None, help="windows per call (default 25)")
    own.add_argument("--devices", default=DEFAULT_DEVICES, help="seqjax device counts, e.g. 1,2")
    mine, rest = own.parse_known_args(argv)
    description = __doc__.splitlines()[0] + (
        " Also: --steps N, --max-bytes N, --seeds N, --chunk N, --devices LIST (see the "
        "module docstring)."
    )
    args = h.parse_args(description, rest)
    if args.quick:
        defaults = dict(steps=24, max_bytes=40_000, seeds=1, chunk=4)
    else:
        defaults = dict(steps=3000, max_bytes=None, seeds=2, chunk=25)
    for name, value in defaults.items():
        if getattr(mine, name) is None:
            setattr(mine, name, value)
    if mine.steps % mine.chunk:
        raise SystemExit(f"{SCRIPT}: --steps ({mine.steps}) must be a multiple of --chunk")
    if mine.steps < mine.chunk * (args.warmup + 1):
        raise SystemExit(
            f"{SCRIPT}: --steps ({mine.steps}) must cover the {args.warmup} warm-up chunk(s) "
            f"and at least one timed chunk of {mine.chunk}"
        )
    for name in ("steps", "max_bytes", "seeds", "chunk"):
        setattr(args, name, getattr(mine, name))
    args.devices = _device_counts(mine.devices)
    if check_devices and args.devices[-1] > jax.device_count():
        raise SystemExit(
            f"{SCRIPT}: --devices {mine.devices} needs {args.devices[-1]} devices; JAX has "
            f"{jax.device_count()} (the count is set only when run as a script)"
        )
    return args


def usable_cores() -> int:
    """Cores this process may run on (``taskset`` respected), PyTorch's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_config(args, seed: int) -> char_lm.CharLMConfig:
    extra = QUICK if args.quick else {}
    return char_lm.CharLMConfig(max_bytes=args.max_bytes, seed=seed, **extra)


# --------------------------------------------------------------------------- PyTorch side


class TorchCharLM(nn.Module):
    """``ids [T, B] -> logits [T, B, 256]``: embedding, stacked LSTM, linear head."""

    def __init__(self, config: char_lm.CharLMConfig):
        super().__init__()
        self.embed = nn.Embedding(data.VOCAB_SIZE, config.embed_size)
        self.rnn = nn.LSTM(config.embed_size, config.hidden_size, num_layers=config.num_layers)
        self.head = nn.Linear(config.hidden_size, data.VOCAB_SIZE)

    def forward(self, ids, state=None):
        ys, state = self.rnn(self.embed(ids), state)
        return self.head(ys), state


def torch_initial_model(config: char_lm.CharLMConfig) -> TorchCharLM:
    """The PyTorch char-LM with its default initialisation, drawn from ``config.seed``."""
    torch.manual_seed(config.seed)
    return TorchCharLM(config)


def torch_optimizer(model: nn.Module, config: char_lm.CharLMConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8
    )


def torch_window_step(model, optimizer, config, state, xs, ys, reset: bool):
    """One update on one window ``xs, ys [T, B]``; returns ``(state, loss, grad_norm)``."""
    if reset:
        state = None  # zero h_0, c_0: a new pass over the streams
    logits, state = model(xs, state)
    loss = F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), ys.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.max_norm)
    optimizer.step()
    return tuple(s.detach() for s in state), loss.detach(), grad_norm.detach()


def torch_windows(config, streams, first: int, count: int):
    """The same windows as seqjax's chunk, as int64 tensors, and one reset flag per window."""
    xs, ys, resets = char_lm._windows(config, streams, first, count)
    # _windows resets every stream at the first step of a window, or none anywhere.
    if resets[:, 1:].any() or not np.all(resets[:, 0].all(-1) == resets[:, 0].any(-1)):
        raise AssertionError("unexpected reset pattern from char_lm._windows")
    return torch.from_numpy(xs).long(), torch.from_numpy(ys).long(), resets[:, 0, 0].tolist()


@torch.no_grad()
def torch_evaluate(model: nn.Module, held_out: np.ndarray, streams: int = 16) -> float:
    """Held-out bpc exactly as ``char_lm.evaluate``: ``streams`` streams, each read once."""
    streams = min(streams, max(1, len(held_out) // 2))
    ids = torch.from_numpy(data.to_streams(held_out, streams).T.astype(np.int64))  # [L, S]
    logits, _ = model(ids[:-1])
    loss = F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), ids[1:].reshape(-1))
    return char_lm.bits_per_char(float(loss))


# --------------------------------------------------------------------------- same function?


def torch_copy_of(model: char_lm.CharLM, params) -> TorchCharLM:
    """A PyTorch char-LM holding seqjax ``params`` (for the equivalence check only)."""
    copy = TorchCharLM(model.config)
    state = {f"rnn.{k}": torch.from_numpy(np.array(v)) for k, v in params_to_torch(
        model.rnn, params.rnn
    ).items()}  # fmt: skip
    state["embed.weight"] = torch.from_numpy(np.array(params.embed.table))
    state["head.weight"] = torch.from_numpy(np.array(params.head.w).T.copy())
    state["head.bias"] = torch.from_numpy(np.array(params.head.b))
    copy.load_state_dict(state)
    return copy


def seqjax_params_of(model: char_lm.CharLM, torch_model: TorchCharLM) -> char_lm.CharLMParams:
    """PyTorch's initial parameters as seqjax params (the "same start" side)."""

    state = {k: jnp.asarray(v.numpy()) for k, v in torch_model.state_dict().items()}
    rnn = {k.removeprefix("rnn."): v for k, v in state.items() if k.startswith("rnn.")}
    return char_lm.CharLMParams(
        embed=EmbeddingParams(state["embed.weight"]),
        rnn=params_from_torch(model.rnn, rnn),
        head=DenseParams(state["head.weight"].T, state["head.bias"]),
    )


def torch_initial_state(model: char_lm.CharLM, corpus: char_lm.Corpus) -> char_lm.TrainState:
    """``new_state(model)`` starting from TorchRun's initial parameters, checked on held-out bpc."""
    torch_model = torch_initial_model(model.config)  # TorchRun's draw
    params = seqjax_params_of(model, torch_model)
    seqjax_bpc = char_lm.evaluate(model, params, corpus.held_out)
    torch_bpc = torch_evaluate(torch_model, corpus.held_out)
    if _rel(seqjax_bpc, torch_bpc) > REL_TOL:
        raise AssertionError(
            f"seqjax with PyTorch's initial parameters gives held-out bpc {seqjax_bpc:.6f}, "
            f"PyTorch {torch_bpc:.6f} (relative difference > {REL_TOL:g})"
        )
    optimizer = train.default_optimizer(model.config.learning_rate, max_norm=model.config.max_norm)
    return initial_state(model)._replace(params=params, opt_state=optimizer.init(params))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def check_same_function(model: char_lm.CharLM, corpus: char_lm.Corpus) -> dict:
    """seqjax vs PyTorch on seqjax's initial parameters: eval bpc, first loss, grad norm."""
    config = model.config
    params = initial_state(model).params
    copy = torch_copy_of(model, params)

    xs, ys, resets = char_lm._windows(config, corpus.streams, 0, 1)

    def loss_fn(p):
        _, logits = model(p, model.init_carry((config.batch_size,)), xs[0], resets[0])
        return losses.cross_entropy(logits, ys[0])

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    jax_norm = float(optax.global_norm(grads))
    # nn.LSTM has two bias vectors per layer (bias_ih, bias_hh) where seqjax has one ``b``;
    # both receive b's gradient, so PyTorch's global norm counts it twice.
    bias_sq = sum(float(jnp.sum(layer.b**2)) for layer in grads.rnn)
    jax_norm_torch_params = math.sqrt(jax_norm**2 + bias_sq)

    tx, ty, treset = torch_windows(config, corpus.streams, 0, 1)
    opt = torch.optim.SGD(copy.parameters(), lr=0.0)  # a step that changes nothing
    _, tloss, tnorm = torch_window_step(copy, opt, config, None, tx[0], ty[0], treset[0])

    sj_bpc = char_lm.evaluate(model, params, corpus.held_out)
    pt_bpc = torch_evaluate(copy, corpus.held_out)
    diffs = {
        "check_eval_rel_diff": _rel(pt_bpc, sj_bpc),
        "check_loss_rel_diff": _rel(float(tloss), float(loss)),
        "check_grad_norm_rel_diff": _rel(float(tnorm), jax_norm_torch_params),
        "grad_norm_bias_counted_once_rel_diff": _rel(float(tnorm), jax_norm),
    }
    worst = max(v for k, v in diffs.items() if k.startswith("check_"))
    if worst > REL_TOL:
        raise AssertionError(
            f"PyTorch with seqjax's parameters disagrees with seqjax: {diffs} (> {REL_TOL:g}); "
            "the two sides would not be measuring the same thing"
        )
    print(
        f"  same function: init bpc {sj_bpc:.4f} (seqjax) / {pt_bpc:.4f} (torch copy), "
        f"worst relative difference {worst:.1e}"
    )
    return diffs


# --------------------------------------------------------------------------- training


@functools.cache
def initial_state(model: char_lm.CharLM) -> char_lm.TrainState:
    """``char_lm.new_state(model)``, made once per model (the check and seed 0 share it)."""
    return char_lm.new_state(model)


class SeqjaxRun:
    """seqjax as a user trains it: ``new_state`` and ``make_chunk_fn``, compiled up front.

    With ``devices > 1``, as ``train_char_lm(devices=...)``: the state placed on the mesh
    (carries split by stream) and each chunk's windows split by stream. ``start="torch"``:
    from PyTorch's initial parameters (the torch side's, imported), instead of seqjax's.
    """

    library = "seqjax"

    def __init__(self, config, corpus, chunk: int, devices: int = 1, start: str = "own"):
        self.config, self.corpus, self.chunk = config, corpus, chunk
        self.devices, self.start = devices, start
        self.name = ("seqjax" if devices == 1 else f"seqjax x{devices}") + (
            " (torch init)" if start == "torch" else ""
        )
        self.mesh = char_lm.device_mesh(devices, config.batch_size)
        self.model = char_lm.CharLM(config)
        state = (
            torch_initial_state(self.model, corpus)
            if start == "torch"
            else initial_state(self.model)
        )
        self.state = char_lm.place_state(state, self.mesh)
        run = char_lm.make_chunk_fn(self.model, self.mesh)
        windows = self._windows(0)
        t0 = time.perf_counter()
        lowered = run.lower(self.state, windows)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.info = {"lower_s": t1 - t0, "compile_s": t2 - t1}
        self.losses: list[np.ndarray] = []
        self.norms: list[np.ndarray] = []

    def _windows(self, first: int):
        arrays = char_lm._windows(self.config, self.corpus.streams, first, self.chunk)
        return char_lm.place_windows(arrays, self.mesh)

    def train_chunk(self, first: int) -> None:
        self.state, metrics = self.compiled(self.state, self._windows(first))
        jax.block_until_ready((self.state, metrics))
        self.losses.append(np.asarray(metrics.loss))
        self.norms.append(np.asarray(metrics.grad_norm))

    def evaluate(self) -> float:
        return char_lm.evaluate(self.model, self.state.params, self.corpus.held_out)


class TorchRun:
    """The PyTorch char-LM on the same windows, with PyTorch's default initialisation."""

    library = "torch"
    name = "torch"
    devices = None
    start = "own"

    def __init__(self, config, corpus, chunk: int):
        self.config, self.corpus, self.chunk = config, corpus, chunk
        self.model = torch_initial_model(config)
        self.optimizer = torch_optimizer(self.model, config)
        self.state = None
        self.info = {"lower_s": None, "compile_s": None}
        self.losses: list[np.ndarray] = []
        self.norms: list[np.ndarray] = []

    def train_chunk(self, first: int) -> None:
        xs, ys, resets = torch_windows(self.config, self.corpus.streams, first, self.chunk)
        losses, norms = [], []
        for w in range(self.chunk):
            self.state, loss, norm = torch_window_step(
                self.model, self.optimizer, self.config, self.state, xs[w], ys[w], resets[w]
            )
            losses.append(loss)
            norms.append(norm)
        self.losses.append(torch.stack(losses).numpy())
        self.norms.append(torch.stack(norms).numpy())

    def evaluate(self) -> float:
        return torch_evaluate(self.model, self.corpus.held_out)


def _busy_s() -> float | None:
    """CPU seconds all processes have been busy since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


class OthersMeter:
    """How many cores' worth of CPU *other* processes used while a chunk ran.

    The machine is shared; a chunk during which another process was busy is slower on both
    sides, but not equally (PyTorch's OpenMP threads spin-wait for each other), so each
    chunk's time is stored with this figure and the summary also gives the quiet chunks.
    """

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_s(), _own_s()

    def stop(self) -> float | None:
        wall = time.perf_counter() - self.t0
        busy = _busy_s()
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy0) - (_own_s() - self.own0)) / wall


# A chunk counts as quiet when other processes used less than this many cores during it.
QUIET_CORES = 0.25


def _stats_ms(seconds: Sequence[float], per: int) -> dict:
    """Per-update ms: median, quartiles, min, max, mean over chunks of ``per`` updates."""
    return h.stats_ms([s / per for s in seconds])


def train_pair(args, seed: int, check: dict) -> list[dict]:
    config = make_config(args, seed)
    corpus = char_lm.load(config)
    sides = [SeqjaxRun(config, corpus, args.chunk, d) for d in args.devices]
    # The same start: seqjax on the most devices, from PyTorch's initial parameters.
    sides.append(SeqjaxRun(config, corpus, args.chunk, args.devices[-1], start="torch"))
    sides.append(TorchRun(config, corpus, args.chunk))
    chunks = args.steps // args.chunk
    times: list[list[float]] = [[] for _ in sides]
    others: list[list[float | None]] = [[] for _ in sides]
    first_chunk_s = [0.0 for _ in sides]
    meter = OthersMeter()
    t_start = time.perf_counter()
    for c in range(chunks):
        for j in range(len(sides)):
            i = (c + j) % len(sides)
            meter.start()
            t0 = time.perf_counter()
            sides[i].train_chunk(c * args.chunk)
            elapsed = time.perf_counter() - t0
            busy = meter.stop()
            if c == 0:
                first_chunk_s[i] = elapsed
            if c >= args.warmup:
                times[i].append(elapsed)
                others[i].append(busy)
        if (c + 1) % max(1, chunks // 10) == 0 or c + 1 == chunks:
            print(
                f"  seed {seed}: {(c + 1) * args.chunk}/{args.steps} updates, "
                + ", ".join(
                    f"{s.name} loss {float(s.losses[-1].mean()):.3f} "
                    f"{args.chunk * len(t) / max(sum(t), 1e-9):.1f} upd/s"
                    for s, t in zip(sides, times, strict=True)
                )
                + f"  ({time.perf_counter() - t_start:.0f} s)",
                flush=True,
            )
    rows = []
    per_window = config.window * config.batch_size
    for side, t, busy, first in zip(sides, times, others, first_chunk_s, strict=True):
        quiet = [x for x, b in zip(t, busy, strict=True) if b is not None and b < QUIET_CORES]
        quiet_stats = _stats_ms(quiet, args.chunk) if quiet else {}
        quiet_stats = {f"quiet_{k}": v for k, v in quiet_stats.items()}
        losses = np.concatenate(side.losses)
        norms = np.concatenate(side.norms)
        t_eval = time.perf_counter()
        bpc = side.evaluate()
        eval_s = time.perf_counter() - t_eval
        timed_updates = len(t) * args.chunk
        updates_per_s = timed_updates / sum(t)
        last = losses[-min(LAST_UPDATES, len(losses)) :]
        rows.append(
            {
                "library": side.library,
                "devices": side.devices,
                "label": f"{side.name} seed {seed}",
                "seed": seed,
                "steps": int(len(losses)),
                "chunk": args.chunk,
                "warmup_chunks": args.warmup,
                "timed_updates": timed_updates,
                "number": args.chunk,
                **_stats_ms(t, args.chunk),
                "updates_per_s": updates_per_s,
                "chars_per_s": updates_per_s * per_window,
                "train_s": sum(t),
                "chunk_s": [round(x, 6) for x in t],
                "chunk_others_cores": [None if b is None else round(b, 3) for b in busy],
                "quiet_cores_below": QUIET_CORES,
                "quiet_chunks": len(quiet),
                **quiet_stats,
                "quiet_updates_per_s": len(quiet) * args.chunk / sum(quiet) if quiet else None,
                "others_cores_median": statistics.median(b for b in busy if b is not None)
                if any(b is not None for b in busy)
                else None,
                "first_chunk_s": first,
                **side.info,
                "heldout_bpc": bpc,
                "eval_s": eval_s,
                "final_train_loss": float(last.mean()),
                "final_train_bpc": char_lm.bits_per_char(float(last.mean())),
                "final_train_last_updates": int(len(last)),
                "first_train_loss": float(losses[0]),
                "max_grad_norm": float(norms.max()),
                "finite": bool(np.isfinite(losses).all()),
                "train_bytes": int(corpus.streams.size),
                "heldout_bytes": int(len(corpus.held_out)),
                "windows_per_pass": int(
                    (corpus.streams.shape[1] - 1 - config.k2) // config.window + 1
                ),
                "char_lm_config": dataclasses.asdict(config),
                "torch_threads": torch.get_num_threads(),
                "init": "PyTorch defaults"
                if side.library == "torch" or side.start == "torch"
                else "seqjax defaults",
                "start": side.start,
                **check,
            }
        )
        print(
            f"  {side.name:<9} seed {seed}: held-out {bpc:.4f} bpc, final train loss "
            f"{float(last.mean()):.4f}, {updates_per_s:.2f} updates/s, "
            f"{updates_per_s * per_window:,.0f} chars/s"
        )
    return rows


def torch_alone(args) -> dict:
    """PyTorch's ms per update trained in a process of its own, where no JAX runs.

    In the shared process, threads XLA:CPU leaves spinning after each call can take cores
    from PyTorch's (unroll_backward measured its LSTM up to 2x slower there); this says how
    much that costs PyTorch here: seed 0's first chunks, the warm-up ones untimed.
    """
    chunks = min(args.steps // args.chunk, args.warmup + ALONE_CHUNKS)
    done = subprocess.run(
        [sys.executable, __file__, TORCH_ALONE, str(chunks), *args.argv],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])


def _torch_alone_worker(chunks: int, argv: Sequence[str]) -> dict:
    args = parse_args(argv, check_devices=False)  # no JAX backend starts in this process
    torch.set_num_threads(usable_cores())
    config = make_config(args, 0)
    side = TorchRun(config, char_lm.load(config), args.chunk)
    times = []
    for c in range(chunks):
        t0 = time.perf_counter()
        side.train_chunk(c * args.chunk)
        if c >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {
        "torch_alone_ms": 1e3 * statistics.median(times) / args.chunk,
        "torch_alone_updates_per_s": len(times) * args.chunk / sum(times),
        "torch_alone_timed_chunks": len(times),
    }


def run(args) -> h.Recorder:
    torch.set_num_threads(usable_cores())
    rec = ChunkRecorder(SCRIPT, args)
    base = make_config(args, 0)
    cfg = (
        f"{base.cell.upper()} B{base.batch_size} T{base.window} I{base.embed_size} "
        f"H{base.hidden_size} L{base.num_layers}"
    )
    common = dict(
        config=cfg,
        B=base.batch_size,
        T=base.window,
        I=base.embed_size,
        H=base.hidden_size,
        num_layers=base.num_layers,
        cell=base.cell,
        dtype="float32",
        learning_rate=base.learning_rate,
        max_norm=base.max_norm,
        max_bytes=args.max_bytes,
        usable_cores=usable_cores(),
    )
    common.update(torch_alone(args))
    print(
        f"[{cfg}] PyTorch alone in a process: {common['torch_alone_ms']:.2f} ms/update "
        f"({common['torch_alone_updates_per_s']:.2f} updates/s)"
    )
    print(f"[{cfg}] checking that both sides compute the same function")
    model = char_lm.CharLM(base)
    check = check_same_function(model, char_lm.load(base))
    for seed in range(args.seeds):
        print(f"[{cfg}] seed {seed}: {args.steps} updates per library, chunks of {args.chunk}")
        rec.add(train_pair(args, seed, check), **common)
    return rec


# --------------------------------------------------------------------------- results


class ChunkRecorder(h.Recorder):
    """The harness's recorder, with a header that says what the samples here are."""

    def header_markdown(self, title: str) -> str:
        lines = super().header_markdown(title).splitlines()
        a = self.args
        for k, line in enumerate(lines):
            if line.startswith("- Run:"):
                lines[k] = (
                    f"- Run: {self.started}, {'--quick, ' if a.quick else ''}{a.steps} updates "
                    f"per run in chunks of {a.chunk}, {a.seeds} seed(s) per library, the first "
                    f"{a.warmup} chunk(s) untimed, sides interleaved chunk by chunk; "
                    f"torch threads {torch.get_num_threads()}"
                )
            elif line.startswith("- Times are"):
                lines[k] = (
                    "- Times are ms per update: median over timed chunks (each chunk's time / "
                    "its updates, window building included), spread q1-q3. seqjax's compile "
                    "(lower + XLA compile, ahead of time) is separate and not in the timings."
                )
        return "\n".join(lines)


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.2f} ({row['q1_ms']:.2f}-{row['q3_ms']:.2f})"


def _devices_of(row: dict) -> int:
    return row.get("devices") or 1  # rows written before --devices existed: one device


def _side(row: dict) -> tuple[int, str]:
    """A seqjax row's side: its device count and its start (``own`` or ``torch`` init)."""
    return _devices_of(row), row.get("start", "own")


def _side_name(side: tuple[int, str]) -> str:
    devices, start = side
    return f"{devices} device(s)" + (", PyTorch's initial parameters" if start == "torch" else "")


def summarize(rows: Sequence[dict]) -> str:
    pairs: dict = {}
    for r in rows:
        key = "torch" if r["library"] == "torch" else _side(r)
        pairs.setdefault(r["seed"], {})[key] = r
    counts = sorted({_side(r) for r in rows if r["library"] == "seqjax"})
    table = []
    for seed, p in sorted(pairs.items()):
        t = p["torch"]
        for d in counts:
            s = p[d]
            ratio = s["median_ms"] / t["median_ms"]
            verdict = h.verdict(s, t)
            table.append(
                {
                    "seed": seed,
                    "devices": d[0],
                    "init": "torch" if d[1] == "torch" else "own",
                    "bpc": f"{s['heldout_bpc']:.4f} / {t['heldout_bpc']:.4f}",
                    "dbpc": s["heldout_bpc"] - t["heldout_bpc"],
                    "train": f"{s['final_train_loss']:.4f} / {t['final_train_loss']:.4f}",
                    "seqjax": _ms(s),
                    "torch": _ms(t),
                    "ups": f"{s['updates_per_s']:.2f} / {t['updates_per_s']:.2f}",
                    "cps": f"{s['chars_per_s']:,.0f} / {t['chars_per_s']:,.0f}",
                    "ratio": ratio,
                    "verdict": verdict,
                    "speedup": s["updates_per_s"] / t["updates_per_s"],
                    "others": f"{s['others_cores_median']:.2f} / {t['others_cores_median']:.2f}"
                    if s["others_cores_median"] is not None and t["others_cores_median"] is not None
                    else "",
                    "quiet": (
                        f"{s['quiet_median_ms']:.2f} / {t['quiet_median_ms']:.2f} "
                        f"({s['quiet_chunks']} / {t['quiet_chunks']})"
                    )
                    if s["quiet_chunks"] and t["quiet_chunks"]
                    else f"too few ({s['quiet_chunks']} / {t['quiet_chunks']})",
                    "quiet_ratio": s["quiet_median_ms"] / t["quiet_median_ms"]
                    if s["quiet_chunks"] and t["quiet_chunks"]
                    else None,
                }
            )
    first = rows[0]
    cfg = first["char_lm_config"]
    by_devices = {
        d: [r for r in rows if r["library"] == "seqjax" and _side(r) == d] for d in counts
    }
    pt = [r for r in rows if r["library"] == "torch"]

    def mean(key, rs):
        return statistics.fmean(r[key] for r in rs)

    prefix = "" if cfg["max_bytes"] is None else f" (first {cfg['max_bytes']:,} bytes)"
    worst_check = max(
        first[k] for k in ("check_eval_rel_diff", "check_loss_rel_diff", "check_grad_norm_rel_diff")
    )
    parts = [
        "## seqjax / PyTorch",
        "",
        f"Model {first['config']} ({cfg['cell']}, hidden {cfg['hidden_size']}, embed "
        f"{cfg['embed_size']}, {cfg['num_layers']} layer(s)), {cfg['batch_size']} streams x "
        f"window {cfg['window']} (k1 = k2), Adam lr "
        f"{cfg['learning_rate']:g} after clipping to global norm {cfg['max_norm']:g}; "
        f"{first['steps']} updates per run on {first['train_bytes']:,} training bytes "
        f"({first['windows_per_pass']} windows per pass over the streams), held-out "
        f"{first['heldout_bytes']:,} bytes in 16 streams. Corpus: "
        f"{cfg['corpus'] or 'the Python standard library source'}"
        f"{prefix}.",
        "",
        "Same windows in the same order, same loss, clipping and Adam settings. Each library "
        "initialises with its own defaults (`seqjax init` = own), and one more seqjax run per "
        "seed starts from the PyTorch side's initial parameters, imported with "
        "`seqjax.interop.torch` (`seqjax init` = torch: the same start, so that a bpc "
        "difference is the libraries' and not the initialisations'; that import reproduced "
        "PyTorch's held-out bpc before training). A PyTorch copy of seqjax's initial "
        "parameters matched seqjax on held-out bpc, first-window loss and gradient norm "
        f"(worst relative difference {worst_check:.1e}). One difference is PyTorch's own: "
        "`nn.LSTM` keeps two bias vectors (`bias_ih`, `bias_hh`) where seqjax keeps one sum, "
        "so the bias gradient counts twice in PyTorch's clipping norm and Adam moves the "
        "summed bias up to twice as far per update.",
        "",
        "`bpc` = held-out bits per char after training, seqjax / torch; `dbpc` = seqjax - "
        f"torch (< 0: seqjax better). `train loss` = mean loss (nats) over the last "
        f"{first['final_train_last_updates']} updates. Times: ms per update, median (q1-q3) "
        "over timed chunks. `ratio` = seqjax / torch median time per update (< 1: seqjax "
        "faster); `verdict` is `tie` when the interquartile ranges overlap; `speedup` = "
        "seqjax updates/s / torch updates/s over all timed chunks. The machine is shared: "
        "`others` = median cores' worth of CPU used by other processes during a chunk "
        "(seqjax / torch); `quiet ms` = median ms per update over the chunks where others "
        f"used < {QUIET_CORES:g} core (seqjax / torch, with the number of such chunks), and "
        "`quiet ratio` their ratio. `devices` = seqjax's device count: 1, or the streams "
        "split over that many host devices (`train_char_lm(devices=...)`, `seqjax "
        "train-charlm --devices N`); PyTorch uses "
        f"{first['torch_threads']} thread(s) throughout.",
        "",
        h.markdown_table(
            table,
            [
                ("seed", "seed"),
                ("devices", "devices"),
                ("seqjax init", "init"),
                ("bpc seqjax / torch", "bpc"),
                ("dbpc", "dbpc"),
                ("train loss seqjax / torch", "train"),
                ("seqjax ms", "seqjax"),
                ("torch ms", "torch"),
                ("updates/s seqjax / torch", "ups"),
                ("chars/s seqjax / torch", "cps"),
                ("ratio", "ratio"),
                ("verdict", "verdict"),
                ("speedup", "speedup"),
                ("others", "others"),
                ("quiet ms seqjax / torch (chunks)", "quiet"),
                ("quiet ratio", "quiet_ratio"),
            ],
        ),
        "",
        *[_mean_line(d, by_devices[d], pt, mean) for d in counts],
        *_alone_lines(rows, by_devices, counts, mean),
    ]
    return "\n".join(parts)


def _alone_lines(rows, by_devices, counts, mean) -> list[str]:
    alone = rows[0].get("torch_alone_ms")
    if alone is None:
        return []
    ratios = ", ".join(
        f"{_side_name(d)} {1e3 / mean('updates_per_s', by_devices[d]) / alone:.3f}" for d in counts
    )
    return [
        f"PyTorch alone, in a process where no JAX runs (seed 0, "
        f"{rows[0]['torch_alone_timed_chunks']} timed chunks): {alone:.2f} ms per update, "
        f"{rows[0]['torch_alone_updates_per_s']:.2f} updates/s. seqjax's mean time per update "
        f"over that: {ratios} (< 1: seqjax faster).\n"
    ]


def _mean_line(side: tuple[int, str], sj: list[dict], pt: list[dict], mean) -> str:
    return (
        f"Mean over seeds, seqjax on {_side_name(side)}: held-out bpc seqjax "
        f"{mean('heldout_bpc', sj):.4f}, torch {mean('heldout_bpc', pt):.4f}; updates/s seqjax "
        f"{mean('updates_per_s', sj):.2f}, torch {mean('updates_per_s', pt):.2f} (seqjax / "
        f"torch {mean('updates_per_s', sj) / mean('updates_per_s', pt):.3f}). seqjax compile "
        f"{mean('compile_s', sj):.2f} s (lower {mean('lower_s', sj):.2f} s), not timed; first "
        f"chunk incl. warm-up: seqjax {mean('first_chunk_s', sj):.2f} s, torch "
        f"{mean('first_chunk_s', pt):.2f} s.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [TORCH_ALONE]:  # torch_alone's process: one JSON line out
        print(json.dumps(_torch_alone_worker(int(sys.argv[2]), sys.argv[3:])))
        raise SystemExit(0)
    raise SystemExit(main())

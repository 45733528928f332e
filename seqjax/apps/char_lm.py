"""A character-level (byte-level) language model: seqjax's main job, end to end.

Embedding -> stacked recurrent cells -> dense logits over 256 byte values, trained with
streamed truncated BPTT (:func:`seqjax.train.tbptt_step`) and the default clipped Adam
recipe, evaluated in bits per character on held-out text, checkpointed with orbax, resumed
bit for bit, and sampled with temperature / top-k. The ``seqjax train-charlm`` and
``seqjax sample`` commands and ``examples/char_lm.py`` are thin shells around this module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import checkpoint, generate, losses, sharding, train
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.apps import data
from seqjax.cells import BY_NAME
from seqjax.embedded import embedded_unroll
from seqjax.layers import Dense, Embedding, Stack

__all__ = [
    "CELLS",
    "CharLM",
    "CharLMConfig",
    "CharLMParams",
    "Corpus",
    "Progress",
    "TrainState",
    "bits_per_char",
    "device_mesh",
    "evaluate",
    "generate_text",
    "load",
    "load_trained",
    "make_chunk_fn",
    "new_state",
    "place_state",
    "place_windows",
    "train_char_lm",
]

CELLS = BY_NAME  #: The cells ``--cell`` chooses from, :data:`seqjax.cells.BY_NAME`.


@dataclass(frozen=True)
class CharLMConfig:
    """Everything that defines a run; all of it is saved with each checkpoint.

    Attributes:
        cell: ``"lstm"``, ``"gru"`` or ``"elman"``.
        hidden_size: hidden units per layer.
        num_layers: recurrent layers.
        embed_size: byte embedding width.
        batch_size: parallel streams ``B`` the corpus is cut into.
        window: ``k1``, steps per update; ``backprop``: ``k2 >= k1`` steps backpropagated
            (None: ``k1``).
        learning_rate: the default optimizer's Adam step size.
        max_norm: the default optimizer's gradient clipping norm.
        held_out: fraction of the corpus kept for evaluation (its tail).
        eval_bytes: at most this many held-out bytes are evaluated.
        corpus: a text file, or None for the Python standard library's source.
        max_bytes: read at most this many bytes of the corpus (None: all).
        seed: the run's PRNG seed.
    """

    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 1
    embed_size: int = 64
    batch_size: int = 32
    window: int = 64
    backprop: int | None = None
    learning_rate: float = 3e-3
    max_norm: float = 1.0
    held_out: float = 0.05
    eval_bytes: int = 65536
    corpus: str | None = None
    max_bytes: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(
                f"CharLMConfig: cell must be one of {sorted(CELLS)}; got {self.cell!r}"
            )
        for name in ("hidden_size", "num_layers", "embed_size", "batch_size", "window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CharLMConfig: {name} must be a positive int; got {value!r}")
        if self.backprop is not None and self.backprop < self.window:
            raise ValueError(
                f"CharLMConfig: backprop (k2) must be >= window (k1) = {self.window}; "
                f"got {self.backprop}"
            )

    @property
    def k2(self) -> int:
        return self.window if self.backprop is None else self.backprop

    def meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CharLMParams(NamedTuple):
    embed: PyTree
    rnn: tuple
    head: PyTree


@dataclass(frozen=True)
class CharLM:
    """The model: ``ids [T, *B] -> logits [T, *B, 256]``, with a one-token ``step`` for sampling.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = CharLM(CharLMConfig(hidden_size=16, embed_size=8))
        >>> params = model.init(jax.random.key(0))
        >>> carry, logits = model(params, model.init_carry((2,)), jnp.zeros((5, 2), jnp.int32))
        >>> logits.shape
        (5, 2, 256)
    """

    config: CharLMConfig

    @property
    def embed(self) -> Embedding:
        return Embedding(data.VOCAB_SIZE, self.config.embed_size)

    @property
    def rnn(self) -> Stack:
        sizes = (self.config.hidden_size,) * self.config.num_layers
        return Stack.build(CELLS[self.config.cell], self.config.embed_size, sizes)

    @property
    def head(self) -> Dense:
        return Dense(self.config.hidden_size, data.VOCAB_SIZE)

    def init(self, key: PRNGKey) -> CharLMParams:
        ke, kr, kh = jax.random.split(key, 3)
        return CharLMParams(self.embed.init(ke), self.rnn.init(kr), self.head.init(kh))

    def init_carry(self, batch_shape=()) -> tuple:
        return self.rnn.init_carry(batch_shape)

    def __call__(self, params, carry, ids, resets=None) -> tuple[tuple, Array]:
        """Run over time-major ids ``[T, *B]``; returns ``(carry, logits [T, *B, 256])``.

        The embedding is folded into the first layer's input projection
        (:func:`seqjax.embedded_unroll`) when that has fewer rows to project.
        """
        first, *rest = self.rnn.layers
        carry = self.init_carry(ids.shape[1:]) if carry is None else tuple(carry)
        table = params.embed.table
        bottom, ys = embedded_unroll(first, params.rnn[0], table, ids, carry[0], resets=resets)
        upper = ()
        if rest:
            upper, ys = Stack(tuple(rest))(params.rnn[1:], ys, carry[1:], resets=resets)
        return (bottom, *upper), self.head(params.head, ys)

    def step(self, params, carry, token) -> tuple[tuple, Array]:
        """One token ``[*B]`` in, ``(carry, logits [*B, 256])`` out."""
        carry, y = self.rnn.apply(params.rnn, carry, self.embed(params.embed, token))
        return carry, self.head(params.head, y)


class TrainState(NamedTuple):
    """The whole state of a run; restoring it continues the run bit for bit."""

    params: CharLMParams
    opt_state: Any
    carry: tuple  # the streams' state after the last window
    step: Array  # [] int32: updates done, which is also the position in the data
    key: Array  # [2] uint32: the run's PRNG key data (dropout, sampling)


def bits_per_char(loss_nats: float) -> float:
    """A mean cross-entropy in nats per byte, in bits per character (byte)."""
    return loss_nats / math.log(2.0)


class Corpus(NamedTuple):
    streams: np.ndarray  # [B, L] training streams
    held_out: np.ndarray  # [N] held-out bytes


def load(config: CharLMConfig) -> Corpus:
    """Read and split the corpus; check it holds at least one window per stream and a
    held-out part that can be evaluated, before any training."""
    text = data.load_corpus(config.corpus, config.max_bytes)
    train_text, held_out = data.split_held_out(text, config.held_out)
    if len(held_out) < 2:
        raise ValueError(
            f"train-charlm: the held-out tail ({config.held_out:.0%} of {len(text)} bytes) has "
            f"{len(held_out)} byte(s), fewer than the 2 (an input and its target) an evaluation "
            "needs; use a longer corpus or a larger held-out fraction"
        )
    per_stream = len(train_text) // config.batch_size
    if per_stream < config.k2 + 1:
        raise ValueError(
            f"train-charlm: the training text ({len(train_text)} bytes) cut into "
            f"{config.batch_size} streams gives {per_stream} bytes each, fewer than one "
            f"window of {config.k2} steps plus its target; use a longer corpus, fewer "
            "streams (batch_size) or a shorter window"
        )
    streams = data.to_streams(train_text, config.batch_size)
    return Corpus(streams, held_out[: config.eval_bytes])


def _windows(config: CharLMConfig, streams: np.ndarray, first: int, count: int):
    """Windows ``first .. first + count - 1`` as time-major arrays (inputs, targets, resets).

    Window ``w`` starts at ``(w mod W) * k1`` of every stream; a new pass over the
    streams (``w mod W == 0``) starts from the zero state.
    """
    k1, k2 = config.window, config.k2
    per_epoch = (streams.shape[1] - 1 - k2) // k1 + 1
    index = (np.arange(first, first + count) % per_epoch)[:, None] * k1 + np.arange(k2)
    xs = np.moveaxis(streams[:, index], 0, -1)  # [count, k2, B]
    ys = np.moveaxis(streams[:, index + 1], 0, -1)
    resets = np.zeros(xs.shape, bool)
    resets[:, 0, :] = (np.arange(first, first + count) % per_epoch == 0)[:, None]
    return xs.astype(np.int32), ys.astype(np.int32), resets


def new_state(model: CharLM) -> TrainState:
    """The training state before the first update: params, optimizer state, carry and key,
    all drawn from the config's seed."""
    key = jax.random.key(model.config.seed)
    params = model.init(jax.random.fold_in(key, 0))
    optimizer = train.default_optimizer(model.config.learning_rate, max_norm=model.config.max_norm)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        carry=model.init_carry((model.config.batch_size,)),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(key),
    )


@functools.lru_cache(maxsize=8)
def make_chunk_fn(model: CharLM, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """A jitted function running a chunk of windows ``[C, k2, B]`` as one ``lax.scan``.

    Cached per model and mesh, so that runs of one configuration (a resumed run, a run
    continued) reuse its compiled calls.

    With a ``mesh`` of several devices (:func:`device_mesh`), the streams are split over it
    (:func:`seqjax.sharding.shard_map_tbptt_scan`): each device runs its ``B / n`` streams
    and their carries, and the loss and gradients are summed across devices once per
    window, so the updates equal the single-device ones up to the order of float sums.
    Pass it a state from :func:`place_state` and windows from :func:`place_windows`.
    """
    config = model.config
    optimizer = train.default_optimizer(config.learning_rate, max_norm=config.max_norm)
    if mesh is None or mesh.size == 1:
        loss_fn = train.window_loss(model, losses.cross_entropy, k1=config.window, k2=config.k2)
        step = train.tbptt_step(loss_fn, optimizer)

        def scan(params, opt_state, carry, windows):
            return train.tbptt_scan(step, params, opt_state, carry, windows)

    else:
        summed = train.window_loss(
            model,
            functools.partial(losses.cross_entropy, average=False),
            k1=config.window,
            k2=config.k2,
        )

        def local_loss(params, carry, window):  # this device's streams: summed loss, count
            total, next_carry = summed(params, carry, window)
            count = config.window * math.prod(window[1].shape[1:])
            return total, (jnp.asarray(count, total.dtype), next_carry)

        scan = sharding.shard_map_tbptt_scan(local_loss, optimizer, mesh)

    @jax.jit
    def run(state: TrainState, windows):
        params, opt_state, carry, metrics = scan(
            state.params, state.opt_state, state.carry, windows
        )
        count = jnp.asarray(windows[0].shape[0], jnp.int32)
        return TrainState(params, opt_state, carry, state.step + count, state.key), metrics

    return run


def device_mesh(devices: int, batch_size: int) -> jax.sharding.Mesh | None:
    """A mesh over the first ``devices`` devices for ``batch_size`` streams (None for 1).

    On CPU the devices are host devices: call :func:`seqjax.sharding.use_cpu_devices`
    before JAX initialises (``seqjax train-charlm --devices N`` does).
    """
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"train_char_lm: devices must be a positive int; got {devices!r}")
    if devices == 1:
        return None
    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f"train_char_lm: devices={devices}, but JAX sees {len(available)} "
            f"{jax.default_backend()} device(s); on CPU, call "
            f"seqjax.sharding.use_cpu_devices({devices}) before the first JAX operation (the "
            f"`--devices {devices}` option of `seqjax train-charlm` does)"
        )
    if batch_size % devices:
        raise ValueError(
            f"train_char_lm: batch_size ({batch_size} streams) must be divisible by devices "
            f"({devices})"
        )
    return sharding.batch_mesh(available[:devices])


def place_state(state: TrainState, mesh: jax.sharding.Mesh | None) -> TrainState:
    """Put ``state`` on ``mesh``: the carries split by stream, everything else replicated."""
    if mesh is None:
        return state
    return sharding.replicate(state, mesh)._replace(
        carry=sharding.shard_batch(state.carry, mesh, axis=0)
    )


def place_windows(windows, mesh: jax.sharding.Mesh | None) -> tuple:
    """Move numpy windows ``[C, k2, B]`` (from ``_windows``) to the device(s)."""
    if mesh is None:
        return tuple(jnp.asarray(a) for a in windows)
    where = jax.sharding.NamedSharding(mesh, sharding.batch_spec(2, axis_name=mesh.axis_names[0]))
    return tuple(jax.device_put(a, where) for a in windows)


@functools.partial(jax.jit, static_argnums=0)
def _eval_loss(model: CharLM, params, ids):
    _, logits = model(params, model.init_carry(ids.shape[1:]), ids[:-1])
    return losses.cross_entropy(logits, ids[1:])


def evaluate(model: CharLM, params: CharLMParams, held_out: np.ndarray, streams: int = 16) -> float:
    """Held-out bits per character: the text cut into ``streams`` streams, each read once."""
    streams = min(streams, max(1, len(held_out) // 2))
    ids = data.to_streams(held_out, streams).T.astype(np.int32)  # [L, S]
    return bits_per_char(float(_eval_loss(model, params, jnp.asarray(ids))))


def generate_text(
    model: CharLM,
    params: CharLMParams,
    prompt: str,
    num_chars: int,
    key: PRNGKey,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
) -> str:
    """Continue ``prompt`` by ``num_chars`` sampled bytes (``temperature=0``: greedy)."""
    ids = data.encode(prompt or "\n").astype(np.int32)
    carry = model.init_carry(())
    if len(ids) > 1:
        carry, _ = model(params, carry, jnp.asarray(ids[:-1]))
    _, tokens = generate.sample(
        model.step,
        params,
        carry,
        jnp.asarray(ids[-1]),
        key,
        num_chars,
        temperature=temperature,
        top_k=top_k,
    )
    return data.decode(np.asarray(tokens))


class Progress:
    """One status line: rewritten in place on a terminal, printed every few updates elsewhere."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()

    def __call__(self, step: int, loss: float, grad_norm: float, chars: int):
        elapsed = time.perf_counter() - self.start
        done = int(30 * step / max(self.total, 1))
        line = (
            f"[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} "
            f"loss {loss:.3f} ({bits_per_char(loss):.3f} bpc) |grad| {grad_norm:.2f} "
            f"{chars / max(elapsed, 1e-9):,.0f} chars/s"
        )
        print(
            ("\r" + line) if self.tty else line,
            end="" if self.tty else "\n",
            file=self.stream,
            flush=True,
        )

    def close(self):
        if self.tty:
            print(file=self.stream)


def train_char_lm(
    config: CharLMConfig,
    steps: int,
    *,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 500,
    chunk: int = 25,
    devices: int = 1,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> tuple[CharLM, TrainState, list[dict[str, float]]]:
    """Train (or resume) a char-LM for ``steps`` updates in total; return model, state, history.

    With ``checkpoint_dir``, the newest compatible checkpoint there is resumed, and the
    state is saved every ``checkpoint_every`` updates and at the end. A checkpoint of
    another configuration raises :class:`seqjax.checkpoint.IncompatibleCheckpointError`
    before anything is written. Updates run ``chunk`` windows per compiled call, the calls
    aligned to multiples of ``chunk`` whatever step a run starts from, so that a resumed
    run repeats the uninterrupted run's calls.

    With ``devices > 1`` the streams are split over the first ``devices`` devices
    (:func:`make_chunk_fn`); ``batch_size`` must be divisible by it. On CPU these are host
    devices, which must exist before JAX initialises
    (:func:`seqjax.sharding.use_cpu_devices`). The updates equal the single-device ones up
    to the order of float sums; checkpoints are the same either way.
    """
    if steps < 0:
        raise ValueError(f"train_char_lm: steps must be >= 0; got {steps}")
    if checkpoint_every % chunk:
        raise ValueError(
            f"train_char_lm: checkpoint_every ({checkpoint_every}) must be a multiple of "
            f"chunk ({chunk}) so that a resumed run repeats the same compiled calls"
        )
    mesh = device_mesh(devices, config.batch_size)
    model = CharLM(config)
    corpus = load(config)
    state = place_state(new_state(model), mesh)
    if (
        checkpoint_dir is not None
        and checkpoint.check_compatible(checkpoint_dir, config.meta()) is not None
    ):
        restored_step, state = checkpoint.restore(checkpoint_dir, state, config.meta())
        log(f"resumed from {checkpoint_dir} at step {restored_step}")
    run = make_chunk_fn(model, mesh)
    bar = Progress(steps) if progress else None
    history, start_step = [], int(state.step)
    chars_per_update = config.window * config.batch_size
    while int(state.step) < steps:
        first = int(state.step)
        count = min(chunk - first % chunk, steps - first)  # chunks on multiples of `chunk`
        windows = place_windows(_windows(config, corpus.streams, first, count), mesh)
        state, metrics = run(state, windows)
        loss, grad_norm = float(metrics.loss.mean()), float(metrics.grad_norm.max())
        history.append({"step": int(state.step), "loss": loss, "grad_norm": grad_norm})
        if bar:
            bar(int(state.step), loss, grad_norm, (int(state.step) - start_step) * chars_per_update)
        done = int(state.step)
        if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == steps):
            checkpoint.save(checkpoint_dir, done, state, config.meta())
    if bar:
        bar.close()
    return model, state, history


def load_trained(checkpoint_dir: str) -> tuple[CharLM, TrainState]:
    """Rebuild the model saved in ``checkpoint_dir`` and restore its newest state."""
    meta = checkpoint.read_meta(checkpoint_dir)
    try:
        config = CharLMConfig(**meta)
    except TypeError as err:
        raise ValueError(
            f"load_trained: {os.fspath(checkpoint_dir)!r} holds a checkpoint that is not a "
            f"seqjax char-LM's (its meta record: {sorted(meta)}): {err}"
        ) from err
    model = CharLM(config)
    _, state = checkpoint.restore(checkpoint_dir, new_state(model), config.meta())
    return model, state

"""A character-level (byte-level) language model: seqjax's main job, end to end.

Embedding -> stacked recurrent cells -> dense logits over 256 byte values, trained with
streamed truncated BPTT (:func:`seqjax.train.tbptt_step`) and the default clipped Adam
recipe, evaluated in bits per character on held-out text, checkpointed with
:mod:`seqjax.checkpoint` (verified, locked, resumed bit for bit), and sampled with
temperature / top-k. The ``seqjax train-charlm`` and ``seqjax sample`` commands and
``examples/char_lm.py`` are thin shells around this module.

:func:`train_char_lm` is three parts, each a function of its own: :func:`resume_or_start`
(the state to train from, restored and verified when a checkpoint directory holds a run),
:func:`train_loop` (the compiled calls, the saves, divergence and stop requests) and
:class:`Progress` (what the user sees while it runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks, checkpoint, generate, losses, sharding, train
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.apps import data
from seqjax.cells import BY_NAME
from seqjax.embedded import embedded_unroll
from seqjax.layers import Dense, Embedding, Stack

__all__ = [
    "CELLS",
    "SETTINGS_FILE",
    "CharLM",
    "CharLMConfig",
    "CharLMParams",
    "Corpus",
    "DivergedError",
    "Progress",
    "TrainState",
    "auto_devices",
    "bits_per_char",
    "call_sizes",
    "device_mesh",
    "evaluate",
    "generate_text",
    "host_copy",
    "load",
    "load_trained",
    "local_rows",
    "make_chunk_fn",
    "new_state",
    "place_state",
    "place_windows",
    "printable",
    "read_settings",
    "resume_or_start",
    "sample_bytes",
    "train_char_lm",
    "train_loop",
]

CELLS = BY_NAME  #: The cells ``--cell`` chooses from, :data:`seqjax.cells.BY_NAME`.


@dataclass(frozen=True)
class CharLMConfig:
    """Everything that defines a run; all of it but the learning rate is saved with each
    checkpoint (:meth:`CharLMConfig.meta`) and fixed for the life of the run.

    Attributes:
        cell: ``"lstm"``, ``"gru"`` or ``"elman"``.
        hidden_size: hidden units per layer.
        num_layers: recurrent layers.
        embed_size: byte embedding width.
        batch_size: parallel streams ``B`` the corpus is cut into.
        window: ``k1``, steps per update; ``backprop``: ``k2 >= k1`` steps backpropagated
            (None: ``k1``).
        learning_rate: Adam's step size at the start of the run. It lives in the training
            state (:attr:`TrainState.learning_rate`), so that a resumed run may change it.
        max_norm: the default optimizer's clipping norm.
        held_out: fraction of the corpus kept for evaluation (its tail).
        eval_bytes: at most this many held-out bytes are evaluated.
        corpus: a file (read as bytes, any content), or None for the Python standard
            library's source.
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
        for name in (
            "hidden_size", "num_layers", "embed_size", "batch_size", "window", "eval_bytes"
        ):  # fmt: skip
            _checks.positive_int(name, getattr(self, name), "CharLMConfig")
        if self.backprop is not None and (
            not _checks.is_int(self.backprop) or self.backprop < self.window
        ):
            raise ValueError(
                f"CharLMConfig: backprop (k2) must be an int >= window (k1) = {self.window}; "
                f"got {self.backprop!r}"
            )
        for name in ("learning_rate", "max_norm"):
            _check_step_size(name, getattr(self, name), "CharLMConfig")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"CharLMConfig: held_out must lie in (0, 1); got {self.held_out!r}")
        if self.max_bytes is not None and (
            not _checks.is_int(self.max_bytes) or self.max_bytes < 1
        ):
            raise ValueError(
                f"CharLMConfig: max_bytes must be None or a positive int; got {self.max_bytes!r}"
            )
        if not _checks.is_int(self.seed) or not 0 <= self.seed < 2**32:
            # jax.random.key keeps 32 bits of a seed without x64: 2**32 would repeat seed 0.
            raise ValueError(f"CharLMConfig: seed must be an int in [0, 2**32); got {self.seed!r}")

    @property
    def k2(self) -> int:
        return self.window if self.backprop is None else self.backprop

    def meta(self) -> dict[str, Any]:
        """The checkpoint's record of the run: every field but ``learning_rate``."""
        meta = dataclasses.asdict(self)
        del meta["learning_rate"]
        return meta


def _check_step_size(name: str, value, where: str) -> float:
    """A learning rate or clipping norm: a finite number > 0 (NaN trains to NaN silently)."""
    real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: {name} must be a finite number > 0; got {value!r}")
    return float(value)


def _as_python_float(value) -> float:
    """A float32 scalar as the shortest Python float that rounds to it (0.003, not
    0.0030000000260770321), so that a learning rate read back from a state compares equal
    to the one the user typed."""
    return float(str(np.float32(value)))


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
    learning_rate: Array  # [] float32: Adam's step size for the next updates


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


def new_state(model: CharLM, learning_rate: float | None = None) -> TrainState:
    """The training state before the first update: params, optimizer state, carry and key,
    all drawn from the config's seed, and the learning rate (the config's when None)."""
    config = model.config
    learning_rate = config.learning_rate if learning_rate is None else learning_rate
    learning_rate = _check_step_size("learning_rate", learning_rate, "new_state")
    key = jax.random.key(config.seed)
    params = model.init(jax.random.fold_in(key, 0))
    return TrainState(
        params=params,
        opt_state=_optimizer(config, learning_rate).init(params),
        carry=model.init_carry((config.batch_size,)),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(key),
        learning_rate=jnp.asarray(learning_rate, jnp.float32),
    )


def _optimizer(config: CharLMConfig, learning_rate):
    # Adam's state does not depend on its step size, so the step size can be a traced value
    # read from the state: a resumed run may change it without recompiling, and the update
    # is bit for bit the one with the same step size as a Python float.
    return train.default_optimizer(learning_rate, max_norm=config.max_norm)


@functools.lru_cache(maxsize=8)
def make_chunk_fn(model: CharLM, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """A jitted function running a chunk of windows ``[C, k2, B]`` as one ``lax.scan``.

    ``run(state, windows) -> (state, metrics)``, with Adam's step size read from
    ``state.learning_rate``. Cached per model and mesh, so that runs of one configuration
    (a resumed run, a run continued) reuse its compiled calls; each chunk length ``C``
    compiles once.

    With a ``mesh`` of several devices (:func:`device_mesh`), the streams are split over it
    (:func:`seqjax.sharding.shard_map_tbptt_scan`): each device runs its ``B / n`` streams
    and their carries, and the loss and gradients are summed across devices once per
    window, so the updates equal the single-device ones up to the order of float sums.
    Pass it a state from :func:`place_state` and windows from :func:`place_windows`.
    """
    config = model.config
    if mesh is None or mesh.size == 1:
        loss_fn = train.window_loss(model, losses.cross_entropy, k1=config.window, k2=config.k2)

        def scan(optimizer, params, opt_state, carry, windows):
            step = train.tbptt_step(loss_fn, optimizer)
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

        def scan(optimizer, params, opt_state, carry, windows):
            run = sharding.shard_map_tbptt_scan(local_loss, optimizer, mesh)
            return run(params, opt_state, carry, windows)

    @jax.jit
    def run(state: TrainState, windows):
        optimizer = _optimizer(config, state.learning_rate)
        params, opt_state, carry, metrics = scan(
            optimizer, state.params, state.opt_state, state.carry, windows
        )
        count = jnp.asarray(windows[0].shape[0], jnp.int32)
        return state._replace(
            params=params, opt_state=opt_state, carry=carry, step=state.step + count
        ), metrics

    return run


# --devices auto on CPU uses at most this many host devices. Measured on 2 cores only (1.3x
# the updates/s of one device at the default sizes: benchmarks/char_lm_vs_torch.py); the cap
# keeps a many-core machine from cutting 32 streams into 32 one-stream devices, where each
# device's matmul would be too small to pay for the gradient sum across devices.
MAX_HOST_DEVICES = 8


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` and container limits respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_devices(batch_size: int, platform: str = "cpu", cores: int | None = None) -> int:
    """The device count of ``--devices auto``: one accelerator; on CPU, host devices.

    One XLA:CPU device runs each time step's matmul on every core but the rest of the step
    (gates, the loss, the optimizer) on one thread, so a char-LM update uses ~1.3 of 2
    cores; split over host devices, each device runs its share of the streams on its own
    core. On CPU this is the largest count that divides ``batch_size`` and is at most the
    usable cores and ``MAX_HOST_DEVICES`` (8); on a GPU or TPU it is 1 (one chip runs 32
    streams at once, and splitting them would only add the gradient sum).

    Example:
        >>> auto_devices(32, cores=2), auto_devices(6, cores=4), auto_devices(32, "gpu")
        (2, 3, 1)
    """
    if platform != "cpu":
        return 1
    cores = usable_cores() if cores is None else cores
    limit = max(1, min(cores, MAX_HOST_DEVICES, batch_size))
    return max(d for d in range(1, limit + 1) if batch_size % d == 0)


def device_mesh(devices: int, batch_size: int) -> jax.sharding.Mesh | None:
    """A mesh over the first ``devices`` devices for ``batch_size`` streams (None for 1).

    On CPU the devices are host devices: call :func:`seqjax.sharding.use_cpu_devices`
    before JAX initialises (``seqjax train-charlm --devices N`` does). In a run of several
    processes (``jax.distributed``), ``devices`` counts the devices of each process, and the
    mesh spans the first ``devices`` of every process (a mesh even for 1).

    Raises:
        ValueError: ``devices`` is not a positive int, more than JAX sees (in a process), or
            does not divide ``batch_size`` (with the processes: times their count).
    """
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"train_char_lm: devices must be a positive int; got {devices!r}")
    if jax.process_count() > 1:
        return _process_mesh(devices, batch_size)
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


def _process_mesh(devices: int, batch_size: int) -> jax.sharding.Mesh:
    """The mesh of a run of several processes: the first ``devices`` of each process's
    devices, in process order (as :func:`seqjax.sharding.process_rows` needs)."""
    local = jax.local_devices()
    if devices > len(local):
        raise ValueError(
            f"train_char_lm: devices={devices} per process, but process {jax.process_index()} "
            f"sees {len(local)} {jax.default_backend()} device(s); on CPU, pass "
            f"cpu_devices={devices} to seqjax.sharding.initialize_distributed (the "
            f"`--devices {devices}` option of `seqjax train-charlm` does)"
        )
    processes = jax.process_count()
    chosen = [
        device
        for process in range(processes)
        for device in [d for d in jax.devices() if d.process_index == process][:devices]
    ]
    if batch_size % len(chosen):
        raise ValueError(
            f"train_char_lm: batch_size ({batch_size} streams) must be divisible by the "
            f"{len(chosen)} devices of the run ({processes} processes x {devices} devices)"
        )
    return sharding.batch_mesh(chosen)


def local_rows(tree: PyTree, mesh: jax.sharding.Mesh | None, axis: int = 0) -> PyTree:
    """This process's streams of ``tree`` (every leaf's ``axis`` is the global batch ``B``):
    in a run of several processes the rows :func:`seqjax.sharding.process_rows` names,
    else ``tree`` itself."""
    if mesh is None or jax.process_count() == 1:
        return tree
    size = jax.tree.leaves(tree)[0].shape[axis]
    rows = sharding.process_rows(size, mesh)
    return jax.tree.map(lambda x: x[(slice(None),) * axis + (rows,)], tree)


def place_state(state: TrainState, mesh: jax.sharding.Mesh | None) -> TrainState:
    """Put ``state`` on ``mesh``: the carries split by stream, everything else replicated.

    ``state`` holds every stream's carry (``[B, H]`` leaves); in a run of several processes
    each process places only its own streams' (:func:`local_rows`) and the result is the
    global array.
    """
    if mesh is None:
        return state
    if jax.process_count() == 1:
        return sharding.replicate(state, mesh)._replace(
            carry=sharding.shard_batch(state.carry, mesh, axis=0)
        )
    carry = sharding.shard_batch(local_rows(state.carry, mesh), mesh, axis=0)
    return sharding.replicate(state._replace(carry=()), mesh)._replace(carry=carry)


def place_windows(windows, mesh: jax.sharding.Mesh | None) -> tuple:
    """Move numpy windows ``[C, k2, B]`` (from ``_windows``) to the device(s).

    In a run of several processes each process passes the windows of its own streams
    (``[C, k2, B / P]``) and gets the global arrays back.
    """
    if mesh is None:
        return tuple(jnp.asarray(a) for a in windows)
    if jax.process_count() > 1:
        return tuple(sharding.shard_batch(tuple(windows), mesh, axis=2))
    where = jax.sharding.NamedSharding(mesh, sharding.batch_spec(2, axis_name=mesh.axis_names[0]))
    return tuple(jax.device_put(a, where) for a in windows)


def host_copy(tree: PyTree) -> PyTree:
    """``tree`` (replicated arrays) as host arrays in a run of several processes, else itself.

    A jitted call on a global array is a computation every process must join; on the host
    copy, one process (process 0: the held-out figure, the sample) computes alone on its own
    device.
    """
    return jax.device_get(tree) if jax.process_count() > 1 else tree


@functools.partial(jax.jit, static_argnums=0)
def _eval_loss(model: CharLM, params, ids):
    _, logits = model(params, model.init_carry(ids.shape[1:]), ids[:-1])
    return losses.cross_entropy(logits, ids[1:])


def evaluate(model: CharLM, params: CharLMParams, held_out: np.ndarray, streams: int = 16) -> float:
    """Held-out bits per character: the text cut into ``streams`` streams, each read once."""
    streams = min(streams, max(1, len(held_out) // 2))
    ids = data.to_streams(held_out, streams).T.astype(np.int32)  # [L, S]
    return bits_per_char(float(_eval_loss(model, params, jnp.asarray(ids))))


def sample_bytes(
    model: CharLM,
    params: CharLMParams,
    prompt: str | bytes,
    num_bytes: int,
    key: PRNGKey,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
) -> bytes:
    """``num_bytes`` bytes sampled after ``prompt`` (text as UTF-8, or bytes as they are);
    ``temperature=0``: greedy. Arguments are checked before the model runs."""
    if isinstance(prompt, str):
        prompt = prompt.encode("utf-8")
    if not isinstance(prompt, bytes | bytearray):
        raise TypeError(f"sample_bytes: prompt must be str or bytes; got {type(prompt).__name__}")
    if not _checks.is_int(num_bytes) or num_bytes < 0:
        raise ValueError(f"sample_bytes: num_bytes must be an int >= 0; got {num_bytes!r}")
    if num_bytes == 0:
        return b""
    ids = np.frombuffer(bytes(prompt) or b"\n", np.uint8).astype(np.int32)
    carry = model.init_carry(())
    if len(ids) > 1:
        carry, _ = model(params, carry, jnp.asarray(ids[:-1]))
    _, tokens = generate.sample(
        model.step,
        params,
        carry,
        jnp.asarray(ids[-1]),
        key,
        num_bytes,
        temperature=temperature,
        top_k=top_k,
    )
    return bytes(np.asarray(tokens).astype(np.uint8).tolist())


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
    """Continue ``prompt`` by ``num_chars`` sampled bytes, as text (invalid UTF-8 as U+FFFD;
    :func:`sample_bytes` gives the bytes, :func:`printable` a form safe for a terminal)."""
    out = sample_bytes(model, params, prompt, num_chars, key, temperature=temperature, top_k=top_k)
    return data.decode(np.frombuffer(out, np.uint8))


def printable(raw: bytes) -> str:
    r"""``raw`` as text safe to print on a terminal: UTF-8 characters that print as
    themselves, newlines and tabs are kept; every other byte (control codes, terminal escape
    sequences, invalid UTF-8) is written ``\xNN``, and a backslash ``\\``, so the output
    stays unambiguous.

    Example:
        >>> print(printable(b"caf\xc3\xa9 \x1b[2J \x00\xff \\"))
        café \x1b[2J \x00\xff \\
    """
    out = []
    for char in raw.decode("utf-8", errors="surrogateescape"):
        if char == "\\":
            out.append("\\\\")
        elif char in "\n\t" or char.isprintable():  # an undecodable byte is not printable
            out.append(char)
        else:
            out.append("".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogateescape")))
    return "".join(out)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """What a run shows while it trains: a tqdm bar on a terminal, plain lines elsewhere.

    On a terminal the bar shows updates done of the total, updates/s, elapsed time and
    ETA (tqdm's, smoothed), and after it the last loss and the running held-out figure; the
    lines of :meth:`write` (checkpoints saved) print above it. Elsewhere (a CI log, a
    file) it prints one line at each tenth of the run, with the rate and ETA measured after
    the first call (which includes compiling).

    Args:
        total: the update the run ends at.
        start: the update it starts from (a resumed run's step).
        chars_per_update: bytes read per update (streams x window), for chars/s.
        stream: where to write (stdout by default).
        log: how plain lines are written (``print`` to ``stream`` by default).
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        *,
        chars_per_update: int = 0,
        stream=None,
        log: Callable[[str], None] | None = None,
    ):
        self.total, self.start, self.chars_per_update = total, start, chars_per_update
        self.stream = stream or sys.stdout
        self.log = log or (lambda line: print(line, file=self.stream, flush=True))
        self.every = max(1, (total - start) // 10)
        self.began = time.perf_counter()
        self.warm: tuple[int, float] | None = None  # (step, time) after the first call
        self.last_report = start
        self.held_out_bpc: float | None = None
        self.held_out_label = ""
        self.bar = None
        progress_bar: Any = None
        # A terminal that reports no size (some ptys) would get an empty bar: lines instead.
        if self.stream.isatty() and shutil.get_terminal_size((0, 0)).columns > 0:
            try:
                import tqdm

                progress_bar = tqdm.tqdm
            except ImportError:  # a dependency, but a broken environment still gets lines
                pass
        if progress_bar is not None:
            self.bar = progress_bar(
                total=total,
                initial=start,
                unit="upd",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
                leave=True,
            )

    def due(self, step: int) -> bool:
        """Whether ``step`` ends a tenth of the run (a report and a held-out figure are due)."""
        return step // self.every > self.last_report // self.every or step == self.total

    def rate(self, step: int) -> float | None:
        """Updates per second since the first call ended (None before a second call)."""
        if self.warm is None or step <= self.warm[0]:
            return None
        return (step - self.warm[0]) / max(time.perf_counter() - self.warm[1], 1e-9)

    def update(self, step: int, loss: float, grad_norm: float) -> None:
        """Record that the run reached ``step`` with this mean loss (nats) and gradient norm."""
        if self.warm is None:
            self.warm = (step, time.perf_counter())
        figures = f"loss {loss:.3f} ({bits_per_char(loss):.3f} bpc)"
        if self.held_out_bpc is not None:
            figures += f", held-out ({self.held_out_label}) {self.held_out_bpc:.3f} bpc"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(figures, refresh=True)
        elif self.due(step):
            self.log(self._line(step, figures, grad_norm))
        if self.due(step):
            self.last_report = step

    def held_out(self, bpc: float, label: str = "") -> None:
        """The running held-out figure (of the part named by ``label``), shown from the
        next update on."""
        self.held_out_bpc, self.held_out_label = bpc, label

    def _line(self, step: int, figures: str, grad_norm: float) -> str:
        elapsed = time.perf_counter() - self.began
        rate = self.rate(step)
        if rate is None:
            speed = "first call (compiling)"
        else:
            eta = (self.total - step) / rate
            speed = (
                f"{rate:.1f} updates/s ({rate * self.chars_per_update:,.0f} chars/s), "
                f"ETA {_clock(eta)}"
            )
        share = 100 * step / max(self.total, 1)
        return (
            f"step {step}/{self.total} ({share:.0f}%): {figures}, |grad| {grad_norm:.2f}; "
            f"{speed}; elapsed {_clock(elapsed)}"
        )

    def write(self, line: str) -> None:
        """Print a line (a checkpoint saved) without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class DivergedError(ValueError):
    """Training produced a NaN or Inf loss, gradient or state; nothing of it was saved."""


# The running held-out figure reads this much of the held-out text (its start, in the same
# 16 streams as :func:`evaluate`): at the default sizes it takes ~0.2 s, where the whole
# 64 KiB takes ~1.8 s, and it is evaluated ten times per run.
RUNNING_EVAL_BYTES = 8192


def call_sizes(first: int, last: int, chunk: int, every: int | None = None) -> Iterator[int]:
    """The windows per compiled call from update ``first`` to update ``last``.

    ``chunk`` windows at a time, each run of calls cut at the multiples of ``every`` (the
    checkpoints), so that every save falls between two calls: a run with ``every=500``
    makes calls of 25, ``every=20`` calls of 20, ``every=30`` calls of 25 and 5. Each
    distinct size compiles once; the updates do not depend on how they are grouped into
    calls (tested bit for bit), so a resumed run may group them differently.

    Example:
        >>> list(call_sizes(0, 70, 25, every=30)), list(call_sizes(40, 70, 25))
        ([25, 5, 25, 5, 10], [25, 5])
    """
    step = first
    while step < last:
        boundary = last if every is None else min(last, (step // every + 1) * every)
        size = min(chunk, boundary - step)
        yield size
        step += size


def _save(directory: str, state: TrainState, config: CharLMConfig, say) -> int:
    step = int(state.step)
    began = time.perf_counter()
    try:
        checkpoint.save(directory, step, state, config.meta())
    except checkpoint.NonFiniteStateError as err:
        raise DivergedError(f"training diverged before step {step}: {err}") from err
    say(f"saved checkpoint step {step} in {directory} ({time.perf_counter() - began:.1f} s)")
    return step


def resume_or_start(
    model: CharLM,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_dir: str | None = None,
    *,
    log: Callable[[str], None] = print,
) -> tuple[TrainState, int | None]:
    """The state to train from: the newest good checkpoint in ``checkpoint_dir`` when it
    holds one (verified, :func:`seqjax.checkpoint.restore_verified`), else a new state.

    Logs the step loaded and every newer step passed over (and why; those are left in
    place).

    Returns:
        ``(state, step)``, placed on ``mesh``; ``step`` is the restored step, or None for a
        new state.
    """
    state = place_state(new_state(model), mesh)
    if checkpoint_dir is None or checkpoint.latest_step(checkpoint_dir) is None:
        return state, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checkpoint.SkippedCheckpointWarning)  # logged below
        restored = checkpoint.restore_verified(checkpoint_dir, state, model.config.meta())
    for skipped in restored.skipped:
        log(f"skipped checkpoint step {skipped.step}, which fails verification: {skipped.reason}")
    newest = " (the newest that verifies)" if restored.skipped else ""
    log(f"loaded checkpoint step {restored.step} from {checkpoint_dir}{newest}")
    return restored.state, restored.step


def train_loop(
    model: CharLM,
    state: TrainState,
    corpus: Corpus,
    steps: int,
    *,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 500,
    chunk: int = 25,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Train ``state`` up to update ``steps``; return the state and one record per call.

    Runs the compiled calls of :func:`call_sizes`; saves to ``checkpoint_dir`` (if set) at
    every multiple of ``checkpoint_every`` and at ``steps``. After each call, ``stop()``
    (if given) is asked whether to stop early: then the state is saved (if a directory is
    set and it was not just saved) and returned, at a step below ``steps``.

    Raises:
        DivergedError: a call's losses, gradient norms or state are not finite. The state
            of that call is dropped; checkpoints saved before it are kept.
    """
    config = model.config
    run = make_chunk_fn(model, mesh)
    step = int(state.step)
    bar = None
    if progress:
        bar = Progress(steps, step, chars_per_update=config.window * config.batch_size, log=log)
    say = bar.write if bar is not None else log
    saved = None  # the newest step in checkpoint_dir, if it is this state's
    if checkpoint_dir is not None and checkpoint.latest_step(checkpoint_dir) == step:
        saved = step
    every = checkpoint_every if checkpoint_dir is not None else None
    history: list[dict[str, float]] = []
    try:
        for size in call_sizes(step, steps, chunk, every):
            if stop is not None and stop():
                break
            windows = place_windows(_windows(config, corpus.streams, step, size), mesh)
            new, metrics = run(state, windows)
            loss, norms = np.asarray(metrics.loss), np.asarray(metrics.grad_norm)
            if not (np.isfinite(loss).all() and np.isfinite(norms).all()):
                bad = int(np.argmin(np.isfinite(loss) & np.isfinite(norms)))
                where = (
                    f"the newest checkpoint, step {saved}, is kept in {checkpoint_dir}; resume "
                    "from it with a lower learning rate"
                    if saved is not None
                    else "nothing of this run was saved"
                )
                raise DivergedError(
                    f"training diverged at update {step + bad + 1}: loss {loss[bad]}, gradient "
                    f"norm {norms[bad]} (learning rate {_as_python_float(state.learning_rate)}"
                    f"); {where}"
                )
            state, step = new, step + size
            history.append(
                {"step": step, "loss": float(loss.mean()), "grad_norm": float(norms.max())}
            )
            if bar is not None:
                if bar.due(step):
                    held = corpus.held_out[:RUNNING_EVAL_BYTES]
                    whole = len(held) == len(corpus.held_out)
                    label = "all" if whole else f"first {len(held) // 1024} KiB"
                    bar.held_out(evaluate(model, host_copy(state.params), held), label)
                bar.update(step, history[-1]["loss"], history[-1]["grad_norm"])
            if (
                checkpoint_dir is not None
                and every is not None
                and (step % every == 0 or step == steps)
            ):
                saved = _save(checkpoint_dir, state, config, say)
        if checkpoint_dir is not None and step != saved and step < steps:  # stopped early
            saved = _save(checkpoint_dir, state, config, say)
    finally:
        if bar is not None:
            bar.close()
    return state, history


@contextlib.contextmanager
def _writer(checkpoint_dir: str | None):
    """Hold the checkpoint directory for the whole run (None: nothing to hold).

    A run of several processes is one writer: every process enters together, process 0
    takes the lock for the run, and a failure in any process raises in all of them (see
    :class:`seqjax.checkpoint.CheckpointLock`).
    """
    if checkpoint_dir is None:
        yield
        return
    with checkpoint.CheckpointLock(checkpoint_dir):
        yield


SETTINGS_FILE = "seqjax_run.json"  #: The run options recorded beside the checkpoints.


def write_settings(checkpoint_dir: str, settings: dict[str, Any]) -> None:
    """Record a run's settings (JSON values) beside its checkpoints, atomically."""
    path = os.path.join(checkpoint_dir, SETTINGS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(settings, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_settings(checkpoint_dir: str) -> dict[str, Any]:
    """The settings :func:`train_char_lm` recorded in ``checkpoint_dir`` ({} if none)."""
    try:
        with open(os.path.join(checkpoint_dir, SETTINGS_FILE)) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def train_char_lm(
    config: CharLMConfig,
    steps: int,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    chunk: int = 25,
    devices: int = 1,
    learning_rate: float | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[CharLM, TrainState, list[dict[str, float]]]:
    """Train (or resume) a char-LM for ``steps`` updates in total; return model, state, history.

    With ``checkpoint_dir``: a directory holding a run of another configuration is refused
    (:class:`seqjax.checkpoint.IncompatibleCheckpointError`) before anything is read or
    written; the directory is checked writable and locked for the whole run (a second
    writer gets :class:`seqjax.checkpoint.CheckpointLockedError`); the newest checkpoint
    that verifies is resumed (:func:`resume_or_start`), and the state is saved every
    ``checkpoint_every`` updates and at the end (:func:`train_loop`). ``settings`` (JSON
    values) are written beside the checkpoints as :data:`SETTINGS_FILE` for a later resume
    (:func:`read_settings`).

    Updates run ``chunk`` windows per compiled call (:func:`call_sizes`); a resumed run
    continues bit for bit as the uninterrupted run.

    Args:
        learning_rate: Adam's step size from here on; None keeps the resumed state's (or
            ``config.learning_rate`` for a new run). A change on resume is logged.
        devices: split the streams over the first ``devices`` devices (:func:`make_chunk_fn`);
            ``batch_size`` must be divisible by it. On CPU these are host devices, which must
            exist before JAX initialises (:func:`seqjax.sharding.use_cpu_devices`). The
            updates equal the single-device ones up to the order of float sums; checkpoints
            are the same either way. In a run of several processes (after
            :func:`seqjax.sharding.initialize_distributed`), the devices of each process:
            the streams are split over all of them (:func:`device_mesh`), each process
            keeps its own streams of the corpus (:func:`local_rows`), every process saves
            and restores the checkpoints together, and process 0 alone logs.
        stop: asked after every call; True stops the run there (saved, if a directory is
            set), before ``steps``.
        progress: show a :class:`Progress` display (lines through ``log``).

    Raises:
        DivergedError: the loss or the state became NaN or Inf; every checkpoint saved
            before is kept.
    """
    if not _checks.is_int(steps) or steps < 0:
        raise ValueError(f"train_char_lm: steps must be an int >= 0; got {steps!r}")
    for name, value in (("checkpoint_every", checkpoint_every), ("chunk", chunk)):
        _checks.positive_int(name, value, "train_char_lm")
    if learning_rate is not None:
        learning_rate = _check_step_size("learning_rate", learning_rate, "train_char_lm")
    mesh = device_mesh(devices, config.batch_size)
    log, progress, stop = _for_processes(log, progress, stop)
    model = CharLM(config)
    if checkpoint_dir is not None:
        checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
        if os.path.isdir(checkpoint_dir):  # another run's directory: refused, left untouched
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", checkpoint.SkippedCheckpointWarning)
                checkpoint.check_compatible(checkpoint_dir, config.meta())
            for warning in caught:
                log(f"warning: {warning.message}")
    corpus = load(config)
    corpus = corpus._replace(streams=local_rows(corpus.streams, mesh))
    with _writer(checkpoint_dir):
        state, restored = resume_or_start(model, mesh, checkpoint_dir, log=log)
        if learning_rate is not None:
            before = _as_python_float(state.learning_rate)
            if restored is not None and learning_rate != before:
                log(f"learning rate {before:g} -> {learning_rate:g} from step {restored} on")
            rate = jnp.asarray(learning_rate, jnp.float32)
            state = state._replace(learning_rate=jax.device_put(rate, state.learning_rate.sharding))
        if settings is not None and checkpoint_dir is not None and sharding.is_main_process():
            write_settings(checkpoint_dir, settings)
        state, history = train_loop(
            model,
            state,
            corpus,
            steps,
            mesh=mesh,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            chunk=chunk,
            log=log,
            progress=progress,
            stop=stop,
        )
    return model, state, history


def _for_processes(
    log: Callable[[str], None], progress: bool, stop: Callable[[], bool] | None
) -> tuple[Callable[[str], None], bool, Callable[[], bool] | None]:
    """``log``, ``progress`` and ``stop`` for this process of the run.

    In a run of several processes, process 0 alone logs and shows progress, and a stop
    asked in any process (a signal) stops every process after the same call: each call of
    the returned ``stop`` is a collective. With one process all three are unchanged.
    """
    if jax.process_count() == 1:
        return log, progress, stop
    if not sharding.is_main_process():
        log, progress = _silent, False
    if stop is None:
        return log, progress, None
    asked = stop

    def any_process_asked() -> bool:
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([asked()], np.int32))
        return bool(np.any(flags))

    return log, progress, any_process_asked


def _silent(line: str) -> None:
    """The log of the processes other than 0: nothing."""


def load_trained(
    checkpoint_dir: str, *, log: Callable[[str], None] | None = None
) -> tuple[CharLM, TrainState]:
    """Rebuild the model saved in ``checkpoint_dir`` and restore its newest good state
    (``log``, if given, is told which step was loaded and which were skipped)."""
    meta = checkpoint.read_meta(checkpoint_dir)
    try:
        config = CharLMConfig(**meta)
    except TypeError as err:
        raise ValueError(
            f"load_trained: {os.fspath(checkpoint_dir)!r} holds a checkpoint that is not a "
            f"seqjax char-LM's (its meta record: {sorted(meta)}): {err}"
        ) from err
    model = CharLM(config)
    state, _ = resume_or_start(model, None, checkpoint_dir, log=log or (lambda _: None))
    config = dataclasses.replace(config, learning_rate=_as_python_float(state.learning_rate))
    return CharLM(config), state

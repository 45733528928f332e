"""Corpora and batching: the embedded default corpus, byte-level text, stream windows.

Text is modelled as UTF-8 bytes (a fixed vocabulary of 256 symbols, so any file works and
checkpoints never depend on a vocabulary file); for ASCII text a byte is a character.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np

from seqjax import _checks

__all__ = [
    "VOCAB_SIZE",
    "adding_problem",
    "decode",
    "encode",
    "load_corpus",
    "python_stdlib_text",
    "split_held_out",
    "sunspots",
    "to_streams",
]

#: The vocabulary size, 256, since every text is read as bytes.
VOCAB_SIZE = 256


def python_stdlib_text(max_bytes: int | None = None) -> bytes:
    """The default corpus: the Python standard library's top-level ``.py`` files, by name.

    Real text nobody here wrote, present wherever Python is. The files are read in sorted
    order, so the corpus is the same for the same Python version.

    Args:
        max_bytes: stop after this many bytes (None: every file).
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        chunk = path.read_bytes()
        parts.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total >= max_bytes:
            break
    text = b"".join(parts)
    return text if max_bytes is None else text[:max_bytes]


def load_corpus(path: str | os.PathLike | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Bytes of ``path`` (or of the default corpus) as a ``uint8`` array ``[N]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the corpus is empty.
    """
    if max_bytes is not None:
        max_bytes = _checks.positive_int("max_bytes", max_bytes, "load_corpus")
    if path is None:
        text = python_stdlib_text(max_bytes)
        source = "the Python standard library"
    else:
        text = Path(path).read_bytes()
        text = text if max_bytes is None else text[:max_bytes]
        source = str(path)
    if not text:
        raise ValueError(f"load_corpus: the corpus from {source} is empty; a model needs text")
    return np.frombuffer(text, np.uint8).copy()


def split_held_out(data: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split ``[N]`` into a training head and a held-out tail of ``fraction * N`` symbols."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split_held_out: fraction must lie in (0, 1); got {fraction}")
    cut = len(data) - max(1, int(len(data) * fraction))
    return data[:cut], data[cut:]


def to_streams(data: np.ndarray, num_streams: int) -> np.ndarray:
    """Cut ``[N]`` into ``num_streams`` contiguous streams ``[B, N // B]`` (remainder dropped).

    Stream ``b`` continues where its previous window stopped, so a carry handed from one
    window to the next reads on through the same text (stateful truncated BPTT).
    """
    num_streams = _checks.positive_int("num_streams", num_streams, "to_streams")
    length = len(data) // num_streams
    if length < 2:
        raise ValueError(
            f"to_streams: {len(data)} symbols cannot make {num_streams} streams of at least "
            "2 symbols (an input and its target)"
        )
    return data[: num_streams * length].reshape(num_streams, length)


def decode(ids) -> str:
    """Byte ids ``[N]`` in ``[0, 256)`` to text (invalid UTF-8 sequences shown as U+FFFD)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"decode: ids must be bytes, in [0, 256); got {ids.min()} to {ids.max()}")
    return bytes(ids.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def encode(text: str) -> np.ndarray:
    """Text to byte ids ``[N]`` (``uint8``)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).copy()


def adding_problem(key, num_steps: int, batch_size: int):
    """The adding problem (Hochreiter & Schmidhuber, 1997): a long-range memory task.

    Each sequence has two channels: values drawn from U(0, 1), and a marker that is 1 at
    exactly two steps, one in each half of the sequence. The target is the sum of the two
    marked values; predicting the mean (1.0) scores a mean squared error of 1/6.

    Returns:
        ``(xs [T, B, 2], targets [B])``, float32, time-major.

    Example:
        >>> import jax
        >>> xs, targets = adding_problem(jax.random.key(0), 10, 4)
        >>> xs.shape, targets.shape, xs[:, :, 1].sum(0).tolist()
        ((10, 4, 2), (4,), [2.0, 2.0, 2.0, 2.0])
    """
    import jax
    import jax.numpy as jnp

    if num_steps < 2:
        raise ValueError(f"adding_problem: num_steps must be >= 2; got {num_steps}")
    kv, k1, k2 = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (num_steps, batch_size), jnp.float32)
    half = num_steps // 2
    first = jax.random.randint(k1, (batch_size,), 0, half)
    second = jax.random.randint(k2, (batch_size,), half, num_steps)
    steps = jnp.arange(num_steps)[:, None]
    marker = ((steps == first[None]) | (steps == second[None])).astype(jnp.float32)
    targets = jnp.sum(values * marker, axis=0)
    return jnp.stack([values, marker], axis=-1), targets


def sunspots() -> tuple[np.ndarray, np.ndarray]:
    """Yearly mean sunspot numbers, 1700-2008: a real series for forecasting benchmarks.

    The classic Wolf/Zurich yearly sunspot series (309 values, an 11-year cycle of varying
    height), read from the copy that ships inside statsmodels (no download; needs the
    optional extra ``pip install "seqjax[series]"``, i.e. statsmodels; pandas is not loaded).

    Returns:
        ``(years [309], values [309])``, float64 NumPy arrays.

    Raises:
        ImportError: statsmodels is not installed.
    """
    import importlib.resources

    try:
        folder = importlib.resources.files("statsmodels") / "datasets" / "sunspots"
    except ModuleNotFoundError as err:
        raise ImportError(
            "sunspots: the series ships with statsmodels: pip install statsmodels "
            '(or "seqjax[series]")'
        ) from err
    table = np.loadtxt(str(folder / "sunspots.csv"), delimiter=",", skiprows=1)
    return table[:, 0], table[:, 1]

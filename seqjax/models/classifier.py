"""Many-to-one: a sequence classifier (an encoder, a summary of its states, a dense head)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.layers import Dense, DenseParams, Embedding
from seqjax.losses import cross_entropy
from seqjax.models._common import (
    check_lengths,
    check_parts,
    ids_time_major,
    last_state,
    output_size,
    run_encoder,
)
from seqjax.unroll import UnrollOptions


class ClassifierParams(NamedTuple):
    embed: PyTree  # EmbeddingParams, or None without an embedding
    encoder: PyTree  # the encoder's parameters
    head: DenseParams  # [F, C] readout


def embed_inputs(embed: Embedding | None, params, xs, time_axis: int, where: str) -> Array:
    """Time-major features ``[T, *B, I]`` from ``xs``: embedded ids, or floats as given."""
    if embed is not None:
        return embed(params, ids_time_major("xs", xs, time_axis, where))
    xs = _checks.floating_array("xs", xs, where)
    axis = _checks.time_axis_of("xs", xs.shape, time_axis, where)
    return jnp.moveaxis(xs, axis, 0)


@dataclass(frozen=True)
class SequenceClassifier:
    """Many-to-one: ``xs [T, *B, I] -> logits [*B, C]`` through an encoder and a dense head.

    The encoder reads the valid steps of each sequence (``lengths``); ``pool`` turns its
    outputs ``ys [T, *B, F]`` into one vector per sequence, and a :class:`Dense` head maps it
    to class logits. Padded steps (at or past a sequence's length) never reach the logits.

    Attributes:
        encoder: a cell, a :class:`Stack` or a :class:`Bidirectional` layer.
        num_classes: ``C``.
        embed: an :class:`Embedding` when ``xs`` holds token ids ``[T, *B]``; None for
            float features ``[T, *B, I]``.
        pool: ``pool(ys [T, *B, F], lengths [*B] | None) -> [*B, F]``, e.g.
            :func:`seqjax.mean_valid`. None (default): the last valid state, i.e. the output
            at each sequence's last valid step, or for a bidirectional top layer its forward
            half there and its backward half at ``t = 0``.
        options: the :func:`seqjax.unroll` options of the encoder (an
            :class:`~seqjax.UnrollOptions`: ``method``, ``truncate``, ``reverse``), forwarded
            whole.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell
        >>> model = SequenceClassifier(GRUCell(8, 16), num_classes=10)
        >>> params = model.init(jax.random.key(0))
        >>> xs = jnp.ones((8, 4, 8))                               # [T, B, I]
        >>> model(params, xs, lengths=jnp.array([8, 8, 5, 1])).shape   # [B, C]
        (4, 10)
    """

    encoder: Any
    num_classes: int
    embed: Embedding | None = None
    pool: Callable[[Array, Array | None], Array] | None = None
    options: UnrollOptions = UnrollOptions()

    def __post_init__(self):
        _checks.sizes(self, ("num_classes",), "SequenceClassifier")
        check_parts(self, "SequenceClassifier")
        if self.embed is not None and self.embed.features != self.encoder.input_size:
            raise ValueError(
                "SequenceClassifier: embed.features must equal the encoder's input_size "
                f"{self.encoder.input_size}; got {self.embed.features}"
            )

    @property
    def head(self) -> Dense:
        return Dense(output_size(self.encoder), self.num_classes)

    def init(self, key: PRNGKey, dtype=jnp.float32) -> ClassifierParams:
        ke, kr, kh = jax.random.split(key, 3)
        embed = None if self.embed is None else self.embed.init(ke, dtype)
        return ClassifierParams(embed, self.encoder.init(kr, dtype), self.head.init(kh, dtype))

    def features(
        self, params: ClassifierParams, xs: Array, lengths: Array | None = None, *, time_axis=0
    ) -> Array:
        """The pooled summary ``[*B, F]`` the head reads."""
        xs = embed_inputs(self.embed, params.embed, xs, time_axis, "SequenceClassifier")
        lengths = check_lengths(lengths, xs.shape[1:-1], xs.shape[0], "SequenceClassifier")
        _, ys = run_encoder(self.encoder, params.encoder, xs, lengths, self.options)
        if self.pool is None:
            return last_state(self.encoder, ys, lengths, self.options.reverse)
        return self.pool(ys, lengths)

    def __call__(
        self, params: ClassifierParams, xs: Array, lengths: Array | None = None, *, time_axis=0
    ) -> Array:
        """Class logits ``[*B, C]`` for ``xs`` ``[T, *B, I]`` (or ids ``[T, *B]``)."""
        return self.head(params.head, self.features(params, xs, lengths, time_axis=time_axis))

    def loss(
        self,
        params: ClassifierParams,
        xs: Array,
        labels: Array,
        lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """Mean cross-entropy (nats) of integer ``labels`` ``[*B]``."""
        return cross_entropy(self(params, xs, lengths, time_axis=time_axis), labels)

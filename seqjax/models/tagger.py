"""Synced many-to-many: a sequence tagger, one label per valid step."""

from __future__ import annotations

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
    output_size,
    run_encoder,
    step_mask,
    zero_padded,
)
from seqjax.models.classifier import embed_inputs
from seqjax.unroll import UnrollOptions


class TaggerParams(NamedTuple):
    embed: PyTree  # EmbeddingParams, or None without an embedding
    encoder: PyTree  # the encoder's parameters
    head: DenseParams  # [F, C] per-step readout


@dataclass(frozen=True)
class SequenceTagger:
    """Synced many-to-many: ``xs [T, *B, I] -> logits [T, *B, C]``, one tag per step.

    An encoder (a bidirectional one sees both sides of each step) and a :class:`Dense` head
    applied at every step. Steps at or past a sequence's length get zero logits and never
    count in :meth:`loss`, and their inputs never reach the valid steps' logits.

    Attributes:
        encoder: a cell, a :class:`Stack` or a :class:`Bidirectional` layer.
        num_tags: ``C``.
        embed: an :class:`Embedding` when ``xs`` holds token ids ``[T, *B]``; None for
            float features ``[T, *B, I]``.
        options: the :func:`seqjax.unroll` options of the encoder (an
            :class:`~seqjax.UnrollOptions`: ``method``, ``truncate``, ``reverse``), forwarded
            whole.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import Embedding, LSTMCell, Stack
        >>> rnn = Stack.build(LSTMCell, 4, (8,), bidirectional=True)
        >>> model = SequenceTagger(rnn, num_tags=3, embed=Embedding(10, 4))
        >>> params = model.init(jax.random.key(0))
        >>> ids = jnp.zeros((6, 2), jnp.int32)                     # [T, B]
        >>> logits = model(params, ids, lengths=jnp.array([6, 3]))
        >>> logits.shape, bool((logits[3:, 1] == 0).all())
        ((6, 2, 3), True)
    """

    encoder: Any
    num_tags: int
    embed: Embedding | None = None
    options: UnrollOptions = UnrollOptions()

    def __post_init__(self):
        _checks.sizes(self, ("num_tags",), "SequenceTagger")
        check_parts(self, "SequenceTagger")
        if self.embed is not None and self.embed.features != self.encoder.input_size:
            raise ValueError(
                "SequenceTagger: embed.features must equal the encoder's input_size "
                f"{self.encoder.input_size}; got {self.embed.features}"
            )

    @property
    def head(self) -> Dense:
        return Dense(output_size(self.encoder), self.num_tags)

    def init(self, key: PRNGKey, dtype=jnp.float32) -> TaggerParams:
        ke, kr, kh = jax.random.split(key, 3)
        embed = None if self.embed is None else self.embed.init(ke, dtype)
        return TaggerParams(embed, self.encoder.init(kr, dtype), self.head.init(kh, dtype))

    def __call__(
        self, params: TaggerParams, xs: Array, lengths: Array | None = None, *, time_axis=0
    ) -> Array:
        """Tag logits ``[T, *B, C]`` (time on ``time_axis``), zero at padded steps."""
        xs = embed_inputs(self.embed, params.embed, xs, time_axis, "SequenceTagger")
        num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
        lengths = check_lengths(lengths, batch_shape, num_steps, "SequenceTagger")
        _, ys = run_encoder(self.encoder, params.encoder, xs, lengths, self.options)
        logits = zero_padded(self.head(params.head, ys), step_mask(lengths, num_steps, batch_shape))
        return jnp.moveaxis(logits, 0, time_axis)

    def loss(
        self,
        params: TaggerParams,
        xs: Array,
        tags: Array,
        lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """Mean cross-entropy (nats) over valid steps of integer ``tags`` ``[T, *B]``."""
        tags = ids_time_major("tags", tags, time_axis, "SequenceTagger.loss")  # before running
        logits = jnp.moveaxis(self(params, xs, lengths, time_axis=time_axis), time_axis, 0)
        mask = step_mask(lengths, logits.shape[0], logits.shape[1:-1])
        return cross_entropy(logits, tags, mask)

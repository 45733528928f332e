"""Many-to-many, unsynced: an encoder-decoder trained with teacher forcing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey, PyTree
from seqjax.generate import Beams, Decoded
from seqjax.layers import Embedding
from seqjax.models._common import (
    check_lengths,
    check_parts,
    ids_time_major,
    last_state,
    output_size,
    run_encoder,
)
from seqjax.models.conditioned import ConditionedGenerator, ConditionedParams
from seqjax.unroll import UnrollOptions


class Seq2SeqParams(NamedTuple):
    source_embed: PyTree  # EmbeddingParams [V_src, E_src]
    encoder: PyTree  # the encoder's parameters
    target: ConditionedParams  # the decoder side


@dataclass(frozen=True)
class Seq2Seq:
    """Encoder-decoder: ``source [S, *B]`` ids in, ``target [T, *B]`` ids out.

    The encoder reads the embedded source (its valid steps only) and is summarised into one
    vector per sequence (``pool``; by default its last valid state, both directions' for a
    bidirectional encoder), which sets the initial state of the decoder, a
    :class:`ConditionedGenerator` (Sutskever et al., "Sequence to sequence learning with
    neural networks", 2014, without attention). Training is teacher forcing
    (:meth:`loss`); inference is greedy or sampled (:meth:`decode`) or beam search
    (:meth:`beam_search`), all under ``lax.scan``.

    Attributes:
        source_embed: the source :class:`Embedding`; its ``features`` are the encoder's
            ``input_size``.
        encoder: a cell, a :class:`Stack` or a :class:`Bidirectional` layer.
        decoder: the :class:`ConditionedGenerator`; its ``condition_size`` is the pooled
            width (the encoder's output size for the default pool).
        pool: ``pool(ys [S, *B, F], lengths [*B] | None) -> [*B, F]``; None for the last
            valid state.
        options: the :func:`seqjax.unroll` options of the encoder (an
            :class:`~seqjax.UnrollOptions`: ``method``, ``truncate``, ``reverse``), forwarded
            whole.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import Embedding, GRUCell, Stack
        >>> encoder = Stack.build(GRUCell, 4, (8,), bidirectional=True)
        >>> decoder = ConditionedGenerator(16, GRUCell(4, 8), vocab_size=12, embed_size=4,
        ...                                start_token=10, end_token=11)
        >>> model = Seq2Seq(Embedding(10, 4), encoder, decoder)
        >>> params = model.init(jax.random.key(0))
        >>> source, lengths = jnp.zeros((5, 3), jnp.int32), jnp.array([5, 2, 3])
        >>> out = model.decode(params, source, lengths, jax.random.key(1), max_length=6)
        >>> beams = model.beam_search(params, source, lengths, beam_width=4, max_length=6)
        >>> out.tokens.shape, beams.tokens.shape                 # [L, B], [L, B, K]
        ((6, 3), (6, 3, 4))
    """

    source_embed: Embedding
    encoder: Any
    decoder: ConditionedGenerator
    pool: Callable[[Array, Array | None], Array] | None = None
    options: UnrollOptions = UnrollOptions()

    def __post_init__(self):
        if not isinstance(self.source_embed, Embedding):
            raise TypeError(
                f"Seq2Seq: source_embed must be a seqjax.Embedding; got {self.source_embed!r}"
            )
        check_parts(self, "Seq2Seq")
        if not isinstance(self.decoder, ConditionedGenerator):
            raise TypeError(
                f"Seq2Seq: decoder must be a ConditionedGenerator; got {self.decoder!r}"
            )
        if self.source_embed.features != self.encoder.input_size:
            raise ValueError(
                "Seq2Seq: source_embed.features must equal the encoder's input_size "
                f"{self.encoder.input_size}; got {self.source_embed.features}"
            )
        if self.pool is None and output_size(self.encoder) != self.decoder.condition_size:
            raise ValueError(
                "Seq2Seq: decoder.condition_size must equal the encoder's output size "
                f"{output_size(self.encoder)}; got {self.decoder.condition_size}"
            )

    def init(self, key: PRNGKey, dtype=jnp.float32) -> Seq2SeqParams:
        ks, ke, kd = jax.random.split(key, 3)
        return Seq2SeqParams(
            self.source_embed.init(ks, dtype),
            self.encoder.init(ke, dtype),
            self.decoder.init(kd, dtype),
        )

    def encode(
        self,
        params: Seq2SeqParams,
        source: Array,
        source_lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """The summary ``[*B, C]`` of each source ``[S, *B]`` that conditions the decoder."""
        source = ids_time_major("source", source, time_axis, "Seq2Seq")
        source_lengths = check_lengths(
            source_lengths, source.shape[1:], source.shape[0], "Seq2Seq", "source_lengths"
        )
        xs = self.source_embed(params.source_embed, source)
        _, ys = run_encoder(self.encoder, params.encoder, xs, source_lengths, self.options)
        if self.pool is None:
            return last_state(self.encoder, ys, source_lengths, self.options.reverse)
        return self.pool(ys, source_lengths)

    def __call__(
        self,
        params: Seq2SeqParams,
        source: Array,
        source_lengths: Array | None,
        targets: Array,
        target_lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """Teacher-forced logits ``[T, *B, V]`` (zero at padded target steps)."""
        condition = self.encode(params, source, source_lengths, time_axis=time_axis)
        return self.decoder(params.target, condition, targets, target_lengths, time_axis=time_axis)

    def loss(
        self,
        params: Seq2SeqParams,
        source: Array,
        source_lengths: Array | None,
        targets: Array,
        target_lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """Teacher-forcing cross-entropy (nats), the mean over valid target tokens.

        ``targets [T, *B]`` end with the decoder's ``end_token``; ``target_lengths`` count
        it. Padded source and target steps never change the loss.
        """
        condition = self.encode(params, source, source_lengths, time_axis=time_axis)
        return self.decoder.loss(
            params.target, condition, targets, target_lengths, time_axis=time_axis
        )

    def decode(
        self,
        params: Seq2SeqParams,
        source: Array,
        source_lengths: Array | None,
        key: PRNGKey,
        max_length: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        time_axis: int = 0,
    ) -> Decoded:
        """Greedy (default) or sampled outputs, ``tokens [L, *B]``; see :func:`decode`.

        ``time_axis`` is the source's; the outputs are time-major.
        """
        condition = self.encode(params, source, source_lengths, time_axis=time_axis)
        return self.decoder.generate(
            params.target, condition, key, max_length, temperature=temperature, top_k=top_k
        )

    def beam_search(
        self,
        params: Seq2SeqParams,
        source: Array,
        source_lengths: Array | None,
        beam_width: int,
        max_length: int,
        *,
        time_axis: int = 0,
    ) -> Beams:
        """The ``beam_width`` best outputs, ``tokens [L, *B, K]``; see :func:`beam_search`.

        ``time_axis`` is the source's; the outputs are time-major.
        """
        condition = self.encode(params, source, source_lengths, time_axis=time_axis)
        return self.decoder.beam_search(params.target, condition, beam_width, max_length)

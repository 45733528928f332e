"""One-to-many: a token decoder whose initial state is computed from one input vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._base import Cell
from seqjax.generate import Beams, Decoded, beam_search, decode
from seqjax.layers import Dense, DenseParams, Embedding, Stack
from seqjax.losses import cross_entropy
from seqjax.models._common import (
    check_lengths,
    check_parts,
    ids_time_major,
    step_mask,
    zero_padded,
)
from seqjax.unroll import UnrollOptions, unroll


class ConditionedParams(NamedTuple):
    bridge: tuple  # DenseParams per carry leaf: [C, H_leaf]
    embed: PyTree  # EmbeddingParams [V, E]
    decoder: PyTree  # the decoder cell's parameters
    head: DenseParams  # [H, V]


@dataclass(frozen=True)
class ConditionedGenerator:
    """One-to-many: generate tokens from one vector ``condition [*B, C]`` (a captioning shape).

    The condition sets the decoder's initial state: every leaf of the decoder's carry (``h``,
    and ``c`` for an LSTM; every layer's for a :class:`Stack`) is ``tanh(condition W + b)``
    with its own ``W [C, H]``, ``b [H]``. From there the decoder reads its own previous token
    (embedded) and a :class:`Dense` head gives logits over ``V`` tokens, as in Vinyals et
    al., "Show and tell" (2015), with the image fed through the initial state.

    Training is teacher forcing (:meth:`loss`): the inputs are ``start_token`` followed by
    the targets shifted by one. Inference is :meth:`generate` (greedy or sampled) or
    :meth:`beam_search`, all under ``lax.scan``.

    Attributes:
        condition_size: ``C``.
        decoder: a cell, or a :class:`Stack` of cells (it must have ``step``), reading
            ``embed_size`` features.
        vocab_size: ``V``, including the start and end tokens.
        embed_size: ``E``, the token embedding width (the decoder's ``input_size``).
        start_token: the first input of every sequence.
        end_token: the token that ends a sequence (part of every target).
        options: the :func:`seqjax.unroll` options of the teacher-forced decoder run
            (``method``, ``truncate``); ``reverse`` is refused, since generation reads
            tokens in order.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell
        >>> model = ConditionedGenerator(5, GRUCell(4, 8), vocab_size=6, embed_size=4,
        ...                              start_token=0, end_token=1)
        >>> params = model.init(jax.random.key(0))
        >>> out = model.generate(params, jnp.ones((3, 5)), jax.random.key(1), max_length=7)
        >>> out.tokens.shape, out.lengths.shape                 # [L, B], [B]
        ((7, 3), (3,))
    """

    condition_size: int
    decoder: Any
    vocab_size: int
    embed_size: int
    start_token: int = 0
    end_token: int = 1
    options: UnrollOptions = UnrollOptions()

    def __post_init__(self):
        where = "ConditionedGenerator"
        _checks.sizes(self, ("condition_size", "vocab_size", "embed_size"), where)
        check_parts(self, where)
        # A decoder generates one token at a time: a cell, or a Stack of cells.
        parts = self.decoder.layers if isinstance(self.decoder, Stack) else (self.decoder,)
        if not isinstance(self.decoder, Cell) or not all(isinstance(p, Cell) for p in parts):
            raise TypeError(
                f"{where}: decoder must be a seqjax cell or a Stack of cells (it steps one "
                f"token at a time; a Bidirectional layer cannot); got {self.decoder!r}"
            )
        if self.options.reverse:
            raise ValueError(
                "ConditionedGenerator: options.reverse must be False (a decoder generates "
                "tokens in order; reverse the targets instead); got reverse=True"
            )
        if self.decoder.input_size != self.embed_size:
            raise ValueError(
                "ConditionedGenerator: the decoder's input_size must equal embed_size "
                f"{self.embed_size}; got {self.decoder.input_size}"
            )
        for name in ("start_token", "end_token"):
            token = getattr(self, name)
            if not (_checks.is_int(token) and 0 <= token < self.vocab_size):
                raise ValueError(
                    f"ConditionedGenerator: {name} must lie in [0, vocab_size) = "
                    f"[0, {self.vocab_size}); got {token}"
                )

    @property
    def embed(self) -> Embedding:
        return Embedding(self.vocab_size, self.embed_size)

    @property
    def head(self) -> Dense:
        return Dense(self.decoder.hidden_size, self.vocab_size)

    def _carry_leaves(self):
        shapes = jax.eval_shape(lambda: self.decoder.init_carry(()))
        return jax.tree.flatten(shapes)

    def init(self, key: PRNGKey, dtype=jnp.float32) -> ConditionedParams:
        leaves, _ = self._carry_leaves()
        kb, ke, kd, kh = jax.random.split(key, 4)
        bridge = tuple(
            Dense(self.condition_size, leaf.shape[-1]).init(k, dtype)
            for leaf, k in zip(leaves, jax.random.split(kb, len(leaves)), strict=True)
        )
        return ConditionedParams(
            bridge,
            self.embed.init(ke, dtype),
            self.decoder.init(kd, dtype),
            self.head.init(kh, dtype),
        )

    def initial_carry(self, params: ConditionedParams, condition: Array) -> PyTree:
        """The decoder's state ``[*B, H]`` leaves from ``condition`` ``[*B, C]``."""
        condition = _checks.floating_array("condition", condition, "ConditionedGenerator")
        if condition.ndim < 1 or condition.shape[-1] != self.condition_size:
            raise ValueError(
                f"ConditionedGenerator: condition must have shape [*B, {self.condition_size}]; "
                f"got {condition.shape}"
            )
        leaves, treedef = self._carry_leaves()
        return treedef.unflatten(
            [
                jnp.tanh(Dense(self.condition_size, leaf.shape[-1])(p, condition))
                for leaf, p in zip(leaves, params.bridge, strict=True)
            ]
        )

    def step(self, params: ConditionedParams, carry: PyTree, token: Array) -> tuple[PyTree, Array]:
        """One token ``[*B]`` in, ``(carry, logits [*B, V])`` out: a ``step_fn`` for decoding."""
        carry, y = self.decoder.apply(params.decoder, carry, self.embed(params.embed, token))
        return carry, self.head(params.head, y)

    def teacher_inputs(self, targets: Array) -> Array:
        """``[start, y_0, ..., y_{T-2}]``: time-major targets ``[T, *B]`` shifted right by one."""
        start = jnp.full((1, *targets.shape[1:]), self.start_token, targets.dtype)
        return jnp.concatenate([start, targets[:-1]], axis=0)

    def __call__(
        self,
        params: ConditionedParams,
        condition: Array,
        targets: Array,
        lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """Teacher-forced logits ``[T, *B, V]`` for ``targets`` ``[T, *B]``; zero when padded.

        Step ``t`` reads ``targets[t - 1]`` (``start_token`` at ``t = 0``) and predicts
        ``targets[t]``; ``lengths [*B]`` counts each target's valid tokens, its end token
        included.
        """
        targets = ids_time_major("targets", targets, time_axis, "ConditionedGenerator")
        lengths = check_lengths(
            lengths, targets.shape[1:], targets.shape[0], "ConditionedGenerator"
        )
        carry = self.initial_carry(params, condition)
        xs = self.embed(params.embed, self.teacher_inputs(targets))
        _, ys = unroll(
            self.decoder, params.decoder, xs, carry, lengths=lengths, **self.options.kwargs()
        )
        logits = self.head(params.head, ys)
        mask = step_mask(lengths, targets.shape[0], targets.shape[1:])
        return jnp.moveaxis(zero_padded(logits, mask), 0, time_axis)

    def loss(
        self,
        params: ConditionedParams,
        condition: Array,
        targets: Array,
        lengths: Array | None = None,
        *,
        time_axis: int = 0,
    ) -> Array:
        """Teacher-forcing cross-entropy (nats), the mean over valid target tokens."""
        time_major = ids_time_major("targets", targets, time_axis, "ConditionedGenerator.loss")
        logits = jnp.moveaxis(
            self(params, condition, targets, lengths, time_axis=time_axis), time_axis, 0
        )
        targets = time_major
        return cross_entropy(
            logits, targets, step_mask(lengths, targets.shape[0], targets.shape[1:])
        )

    def generate(
        self,
        params: ConditionedParams,
        condition: Array,
        key: PRNGKey,
        max_length: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
    ) -> Decoded:
        """Decode from ``condition [*B, C]``: greedy (default) or sampled; see :func:`decode`."""
        carry = self.initial_carry(params, condition)
        start = jnp.full(condition.shape[:-1], self.start_token, jnp.int32)
        return decode(
            self.step,
            params,
            carry,
            start,
            key,
            max_length,
            temperature=temperature,
            top_k=top_k,
            end_token=self.end_token,
        )

    def beam_search(
        self, params: ConditionedParams, condition: Array, beam_width: int, max_length: int
    ) -> Beams:
        """The ``beam_width`` best sequences for ``condition [*B, C]``; see :func:`beam_search`."""
        carry = self.initial_carry(params, condition)
        start = jnp.full(condition.shape[:-1], self.start_token, jnp.int32)
        return beam_search(
            self.step, params, carry, start, beam_width, max_length, end_token=self.end_token
        )

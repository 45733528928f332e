"""Sampling and decoding loops under ``lax.scan``: greedy, temperature, top-k and beam search.

Every loop runs a fixed number of steps inside one ``lax.scan``, so it jits with fixed
shapes; a model enters as ``step_fn(params, carry, token [*B]) -> (carry, logits [*B, V])``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree

__all__ = [
    "Beams",
    "Decoded",
    "beam_search",
    "decode",
    "pick_token",
    "sample",
]


def pick_token(key: PRNGKey, logits: Array, *, temperature: float = 1.0, top_k: int | None = None):
    """Draw token ids ``[*B]`` from logits ``[*B, V]``.

    Args:
        key: PRNG key (unused when greedy).
        logits: ``[*B, V]`` unnormalised log-probabilities.
        temperature: softmax temperature, a finite concrete number ``>= 0`` (it picks the
            code path while tracing); ``0`` picks the most likely token (greedy).
        top_k: sample among the ``k`` most likely tokens only (exactly ``k``: among tokens
            tied at the ``k``-th logit, the lower ids); all when None.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logits = jnp.log(jnp.array([[0.1, 0.7, 0.2]]))
        >>> pick_token(jax.random.key(0), logits, temperature=0.0).tolist()
        [1]
    """
    temperature = _temperature(temperature)
    logits = _checks.floating_array("logits", logits, "pick_token")
    if logits.ndim < 1:
        raise ValueError(f"pick_token: logits must be [*B, V]; got shape {logits.shape}")
    vocab_size = logits.shape[-1]
    if top_k is not None:
        top_k = _checks.positive_int("top_k", top_k, "pick_token")
        if top_k > vocab_size:
            raise ValueError(
                f"pick_token: top_k must lie in [1, V] = [1, {vocab_size}]; got {top_k}"
            )
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    if top_k is not None and top_k < vocab_size:
        # The top_k ids themselves, not a threshold at the k-th logit, which keeps every tie.
        rows = logits.reshape(-1, vocab_size)
        _, ids = jax.lax.top_k(rows, top_k)
        keep = jnp.zeros(rows.shape, bool).at[jnp.arange(rows.shape[0])[:, None], ids].set(True)
        logits = jnp.where(keep.reshape(logits.shape), logits, jnp.full_like(logits, -jnp.inf))
    return jax.random.categorical(key, logits / temperature, axis=-1)


def _temperature(temperature) -> float:
    """``temperature`` as a float: a finite concrete number >= 0. NaN and traced values are
    refused, and so is ``inf``: it turns a masked ``-inf`` logit into NaN, and the draw then
    picked a token of probability 0."""
    if isinstance(temperature, jax.core.Tracer):
        raise TypeError(
            "pick_token: temperature must be a concrete number (0 selects greedy decoding "
            "while tracing): close over it, or mark it static under jit; got a traced value"
        )
    value = None
    if not isinstance(temperature, bool | str) and np.ndim(temperature) == 0:
        try:
            value = float(temperature)
        except (TypeError, ValueError):
            value = None
    if value is None or not 0 <= value < float("inf"):  # NaN fails too
        raise ValueError(f"pick_token: temperature must be >= 0 and finite; got {temperature!r}")
    return value


def sample(
    step_fn: Callable[[PyTree, PyTree, Array], tuple[PyTree, Array]],
    params: PyTree,
    carry: PyTree,
    token: Array,
    key: PRNGKey,
    num_steps: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> tuple[PyTree, Array]:
    """Generate ``num_steps`` tokens autoregressively, each fed back as the next input.

    Args:
        step_fn: ``step_fn(params, carry, token [*B]) -> (carry, logits [*B, V])``: one
            step of a model reading token ids.
        params: the model's parameters.
        carry: the state after the prompt (all but its last token).
        token: ``[*B]`` the prompt's last token, the first input.
        key: PRNG key; step ``t`` uses ``fold_in(key, t)``.
        num_steps: number of tokens to generate.
        temperature, top_k: as in :func:`pick_token`.

    Returns:
        ``(carry, tokens)``: the final state and the generated ids ``[num_steps, *B]``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def step_fn(params, carry, token):           # always predicts token + 1
        ...     return carry, jax.nn.one_hot((token + 1) % 5, 5) * 10.0
        >>> _, tokens = sample(step_fn, None, (), jnp.array([0]), jax.random.key(0), 4,
        ...                    temperature=0.0)
        >>> tokens[:, 0].tolist()
        [1, 2, 3, 4]
    """

    def body(state, t):
        carry, token = state
        carry, logits = step_fn(params, carry, token)
        token = pick_token(
            jax.random.fold_in(key, t), logits, temperature=temperature, top_k=top_k
        ).astype(token.dtype)
        return (carry, token), token

    token = _check_token("sample", token)
    num_steps = _checks.count("num_steps", num_steps, "sample")
    (carry, _), tokens = jax.lax.scan(body, (carry, token), jnp.arange(num_steps))
    return carry, tokens


class Decoded(NamedTuple):
    """What :func:`decode` returns."""

    tokens: Array  # [L, *B] int: generated ids; ``end_token`` past each sequence's end
    lengths: Array  # [*B] int32: valid tokens, the end token included (L if none was drawn)
    log_probs: Array  # [*B] summed model log-probabilities (temperature 1) of the valid tokens
    carry: PyTree  # the state that emitted each sequence's last valid token (not yet read)


class Beams(NamedTuple):
    """What :func:`beam_search` returns; beams are ordered best first along ``K``."""

    tokens: Array  # [L, *B, K] int: ids; ``end_token`` past each beam's end
    lengths: Array  # [*B, K] int32: valid tokens, the end token included
    scores: Array  # [*B, K] summed log-probabilities of the valid tokens


def _where_batch(mask: Array, new: PyTree, old: PyTree) -> PyTree:
    """Per batch element (``mask`` ``[*B]``), ``new`` where True, ``old`` elsewhere."""

    def pick(n, o):
        m = jnp.reshape(mask, mask.shape + (1,) * (jnp.ndim(n) - mask.ndim))
        return jnp.where(jnp.broadcast_to(m, jnp.shape(n)), n, o)

    return jax.tree.map(pick, new, old)


def _check_token(name: str, token) -> Array:
    token = jnp.asarray(token)
    if not jnp.issubdtype(token.dtype, jnp.integer):
        raise TypeError(f"{name}: token must hold integer ids; got dtype {token.dtype}")
    return token


def _check_decode_args(name: str, max_length: int, end_token, vocab_size: int) -> int:
    """``max_length`` as an int, after checking it and ``end_token``."""
    max_length = _checks.positive_int("max_length", max_length, name)
    if end_token is not None and not (_checks.is_int(end_token) and 0 <= end_token < vocab_size):
        raise ValueError(
            f"{name}: end_token must lie in [0, V) = [0, {vocab_size}); got {end_token}"
        )
    return max_length


def decode(
    step_fn: Callable[[PyTree, PyTree, Array], tuple[PyTree, Array]],
    params: PyTree,
    carry: PyTree,
    token: Array,
    key: PRNGKey,
    max_length: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    end_token: int | None = None,
) -> Decoded:
    """Greedy (default) or sampled decoding that stops each sequence at ``end_token``.

    Like :func:`sample` (same keys, so the same tokens up to each end), but a sequence that
    has drawn ``end_token`` is finished: its carry stays the one that emitted it, its
    later tokens are ``end_token`` and do not count in ``lengths`` or ``log_probs``. The
    loop always runs ``max_length`` steps under ``lax.scan``, so it jits with fixed shapes.

    Args:
        step_fn: ``step_fn(params, carry, token [*B]) -> (carry, logits [*B, V])``.
        params: the model's parameters.
        carry: the decoder's initial state (leaves ``[*B, ...]``).
        token: ``[*B]`` integer ids, the first input (a start token).
        key: PRNG key; step ``t`` draws with ``fold_in(key, t)`` (unused when greedy).
        max_length: number of steps ``L``.
        temperature, top_k: as in :func:`pick_token`; ``temperature=0`` is greedy.
        end_token: the id that ends a sequence; None: every sequence runs ``L`` steps.

    Returns:
        :class:`Decoded`: ``tokens [L, *B]``, ``lengths [*B]``, ``log_probs [*B]`` (under
        the model's own distribution, whatever the temperature), and the final ``carry``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def step_fn(params, carry, token):       # predicts token + 1, ids 0..4
        ...     return carry, jax.nn.one_hot((token + 1) % 5, 5) * 10.0
        >>> out = decode(step_fn, None, (), jnp.array([0, 2]), jax.random.key(0), 4,
        ...              end_token=4)
        >>> out.tokens.T.tolist(), out.lengths.tolist()
        ([[1, 2, 3, 4], [3, 4, 4, 4]], [4, 2])
    """
    token = _check_token("decode", token)
    spec = jax.eval_shape(step_fn, params, carry, token)[1]
    max_length = _check_decode_args("decode", max_length, end_token, spec.shape[-1])
    batch_shape = token.shape

    def body(state, t):
        carry, token, done, length, score = state
        new_carry, logits = step_fn(params, carry, token)
        picked = pick_token(
            jax.random.fold_in(key, t), logits, temperature=temperature, top_k=top_k
        ).astype(token.dtype)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        log_p = jnp.take_along_axis(log_p, picked[..., None], axis=-1)[..., 0]
        if end_token is not None:
            picked = jnp.where(done, jnp.full_like(picked, end_token), picked)
            new_carry = _where_batch(done, carry, new_carry)
        live = jnp.logical_not(done)
        length = length + live.astype(length.dtype)
        score = score + jnp.where(live, log_p, jnp.zeros_like(log_p))
        if end_token is not None:
            done = done | (picked == end_token)
        return (new_carry, picked, done, length, score), picked

    state = (
        carry,
        token,
        jnp.zeros(batch_shape, bool),
        jnp.zeros(batch_shape, jnp.int32),
        jnp.zeros(batch_shape, spec.dtype),
    )
    (carry, _, _, lengths, scores), tokens = jax.lax.scan(body, state, jnp.arange(max_length))
    return Decoded(tokens, lengths, scores, carry)


def beam_search(
    step_fn: Callable[[PyTree, PyTree, Array], tuple[PyTree, Array]],
    params: PyTree,
    carry: PyTree,
    token: Array,
    beam_width: int,
    max_length: int,
    *,
    end_token: int | None = None,
) -> Beams:
    """Beam search of fixed width ``K`` under ``lax.scan``; returns the ``K`` best sequences.

    Every step extends each of the ``K`` beams by every token and keeps the ``K`` best of
    the ``K * V`` candidates. A beam that has drawn ``end_token`` is finished: it can only
    be extended by ``end_token`` again, at log-probability 0, so it keeps its score and
    competes with the live beams until the end. The loop always runs ``max_length`` steps.

    Scores are summed log-probabilities, with no length normalisation: the end token has its
    own probability, so the model's length distribution is already in the score. This is
    the right ranking when the output length follows from the input (reversing or sorting a
    sequence); for open-ended generation, where summed scores favour short outputs, rescore
    the returned beams, e.g. by ``scores / lengths ** alpha``.

    With ``K >= V ** (L - 1)`` every prefix survives to the last step and the search is
    exact: the beams are the ``K`` most likely sequences of at most ``L`` tokens.

    Args:
        step_fn: ``step_fn(params, carry, token [*B]) -> (carry, logits [*B, V])``; it
            is called with batch shape ``[*B, K]`` (every cell accepts any batch shape).
        params: the model's parameters.
        carry: the decoder's initial state (leaves ``[*B, ...]``), shared by all beams.
        token: ``[*B]`` integer ids, the first input (a start token).
        beam_width: ``K``, the number of beams kept (and returned).
        max_length: number of steps ``L``.
        end_token: the id that finishes a beam; None: every beam runs ``L`` steps.

    Returns:
        :class:`Beams`: ``tokens [L, *B, K]``, ``lengths [*B, K]``, ``scores [*B, K]``,
        best first. Beams that could not be filled (``K`` larger than the number of
        sequences) score ``-inf``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def step_fn(params, carry, token):       # token + 1 likely, token next; ids 0..4
        ...     logits = 3.0 * jax.nn.one_hot((token + 1) % 5, 5) + 0.5 * jax.nn.one_hot(token, 5)
        ...     return carry, logits
        >>> beams = beam_search(step_fn, None, (), jnp.array(2), 2, 4, end_token=4)
        >>> beams.tokens.T.tolist(), beams.lengths.tolist()      # best first; 4 ends a beam
        ([[3, 4, 4, 4], [3, 3, 4, 4]], [2, 3])
    """
    token = _check_token("beam_search", token)
    beam_width = _checks.positive_int("beam_width", beam_width, "beam_search")
    batch_shape, k = token.shape, beam_width
    axis = len(batch_shape)  # the beam axis, right after the batch dims

    def expand(a):
        a = jnp.asarray(a)
        return jnp.broadcast_to(jnp.expand_dims(a, axis), (*batch_shape, k, *a.shape[axis:]))

    carry, token = jax.tree.map(expand, carry), expand(token)
    spec = jax.eval_shape(step_fn, params, carry, token)[1]
    vocab_size, dtype = spec.shape[-1], spec.dtype
    max_length = _check_decode_args("beam_search", max_length, end_token, vocab_size)
    neg_inf = jnp.array(-jnp.inf, dtype)
    zero = jnp.array(0, dtype)
    # All beams start equal; only the first is live, so step 1 does not pick one token K times.
    scores = jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, zero, neg_inf), (*batch_shape, k))
    only_end = None
    if end_token is not None:
        only_end = jnp.where(jnp.arange(vocab_size) == end_token, zero, neg_inf)

    def gather(a, parent):  # a [*B, K, ...] reordered by parent [*B, K]
        index = jnp.reshape(parent, parent.shape + (1,) * (a.ndim - parent.ndim))
        return jnp.take_along_axis(
            a, jnp.broadcast_to(index, parent.shape + a.shape[axis + 1 :]), axis=axis
        )

    def body(state, _):
        carry, token, scores, done, lengths = state
        carry, logits = step_fn(params, carry, token)
        log_p = jax.nn.log_softmax(logits, axis=-1)  # [*B, K, V]
        if only_end is not None:
            finished = jnp.broadcast_to(done[..., None], log_p.shape)
            log_p = jnp.where(finished, jnp.broadcast_to(only_end, log_p.shape), log_p)
        candidates = jnp.broadcast_to(scores[..., None], log_p.shape) + log_p
        scores, index = jax.lax.top_k(candidates.reshape(*batch_shape, k * vocab_size), k)
        parent, token = index // vocab_size, (index % vocab_size).astype(token.dtype)
        carry = jax.tree.map(lambda a: gather(a, parent), carry)
        done = gather(done, parent)
        if end_token is not None:  # a finished parent's -inf candidates must not leak out
            token = jnp.where(done, jnp.full_like(token, end_token), token)
        lengths = gather(lengths, parent) + jnp.logical_not(done).astype(lengths.dtype)
        if end_token is not None:
            done = done | (token == end_token)
        return (carry, token, scores, done, lengths), (token, parent)

    state = (
        carry,
        token,
        scores,
        jnp.zeros((*batch_shape, k), bool),
        jnp.zeros((*batch_shape, k), jnp.int32),
    )
    (_, _, scores, _, lengths), (tokens, parents) = jax.lax.scan(
        body, state, None, length=max_length
    )

    # top_k returns its K best sorted, so the last step's beams are already best first;
    # walk the parent pointers back to read each beam's tokens.
    def back(beam, step):
        token, parent = step
        return gather(parent, beam), gather(token, beam)

    start = jnp.broadcast_to(jnp.arange(k, dtype=parents.dtype), (*batch_shape, k))
    _, tokens = jax.lax.scan(back, start, (tokens, parents), reverse=True)
    return Beams(tokens, lengths, scores)

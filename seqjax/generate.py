"""Sampling and decoding loops under ``lax.scan``: greedy, temperature and top-k."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey, PyTree


def pick_token(key: PRNGKey, logits: Array, *, temperature: float = 1.0, top_k: int | None = None):
    """Draw token ids ``[*B]`` from logits ``[*B, V]``.

    Args:
        key: PRNG key (unused when greedy).
        logits: ``[*B, V]`` unnormalised log-probabilities.
        temperature: softmax temperature; ``0`` picks the most likely token (greedy).
        top_k: sample among the ``k`` most likely tokens only; all when None.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logits = jnp.log(jnp.array([[0.1, 0.7, 0.2]]))
        >>> pick_token(jax.random.key(0), logits, temperature=0.0).tolist()
        [1]
    """
    if temperature < 0:
        raise ValueError(f"pick_token: temperature must be >= 0; got {temperature}")
    if top_k is not None and not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(
            f"pick_token: top_k must lie in [1, V] = [1, {logits.shape[-1]}]; got {top_k}"
        )
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, jnp.full_like(logits, -jnp.inf), logits)
    return jax.random.categorical(key, logits / temperature, axis=-1)


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

    token = jnp.asarray(token)
    (carry, _), tokens = jax.lax.scan(body, (carry, token), jnp.arange(num_steps))
    return carry, tokens

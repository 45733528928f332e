"""Draw the randomness of every regularising wrapper in a model from one explicit key."""

from __future__ import annotations

import jax

from seqjax._types import PRNGKey, PyTree


def with_noise(
    model,
    params: PyTree,
    key: PRNGKey | None,
    batch_shape: tuple[int, ...] = (),
    *,
    deterministic: bool = False,
) -> PyTree:
    """``params`` with fresh dropout masks and zoneout keys for every regulariser in ``model``.

    Walks ``model``: a cell, a wrapper cell, a :class:`~seqjax.Stack` (params a tuple per
    layer) or a :class:`~seqjax.Bidirectional` pair. Every part with a ``with_noise`` method
    (:class:`~seqjax.VariationalDropoutCell`, :class:`~seqjax.ZoneoutCell`, and wrappers
    around them) draws its own randomness from its own split of ``key``; every other part
    keeps its params. Call it inside the loss, once per batch, with a new key per batch:
    gradients then flow to the plain params only.

    Args:
        model: the model whose ``init`` made ``params``.
        params: its params, with or without noise already drawn.
        key: a PRNG key; may be None when ``deterministic``.
        batch_shape: ``*B``, the batch shape of the sequences about to be run (variational
            dropout draws one mask per sequence, ``[*B, I]`` and ``[*B, H]``).
        deterministic: return the params without noise (evaluation mode): dropout off,
            zoneout in expectation. Every cell then computes exactly what it computes
            after ``init``.

    Returns:
        Params of the same model, the noise fields filled (or emptied when
        ``deterministic``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, Stack, VariationalDropoutCell, unroll, with_noise
        >>> layer = lambda i, h: VariationalDropoutCell(LSTMCell(i, h), input_rate=0.2,
        ...                                             recurrent_rate=0.2)
        >>> model = Stack.build(layer, input_size=3, hidden_sizes=(4, 4))
        >>> params = model.init(jax.random.key(0))
        >>> noisy = with_noise(model, params, jax.random.key(1), batch_shape=(2,))
        >>> noisy[1].masks.recurrent.shape                    # one mask per sequence [B, H]
        (2, 4)
        >>> _, ys = model(noisy, jnp.ones((5, 2, 3)))
        >>> ys.shape
        (5, 2, 4)
    """
    if key is None and not deterministic:
        raise ValueError("with_noise: key must be a PRNG key unless deterministic=True; got None")
    batch_shape = tuple(batch_shape)
    if hasattr(model, "with_noise"):
        return model.with_noise(params, key, batch_shape, deterministic=deterministic)
    layers = getattr(model, "layers", None)
    if isinstance(layers, tuple):  # a Stack: one params entry per layer
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        return tuple(
            with_noise(layer, p, k, batch_shape, deterministic=deterministic)
            for layer, p, k in zip(layers, params, keys, strict=True)
        )
    if hasattr(model, "forward") and hasattr(model, "backward"):  # a Bidirectional pair
        kf, kb = (None, None) if key is None else jax.random.split(key)
        return type(params)(
            with_noise(model.forward, params.forward, kf, batch_shape, deterministic=deterministic),
            with_noise(
                model.backward, params.backward, kb, batch_shape, deterministic=deterministic
            ),
        )
    return params

"""Pieces shared by the cell families: the affine map and the initialisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqjax._types import Array, PRNGKey


def affine(x: Array, w: Array, b: Array | None = None) -> Array:
    """``x @ w + b`` over any leading dims, with the bias broadcast explicitly.

    Explicit broadcasting keeps seqjax usable under ``jax_numpy_rank_promotion='raise'``.
    """
    y = x @ w
    return y if b is None else y + jnp.broadcast_to(b, y.shape)


def _draw_dtype(dtype):
    """Draw in at least float32, then cast: half-precision draws would be coarse, and XLA:CPU
    has no bfloat16/float16 QR for the orthogonal initialiser."""
    if not jnp.issubdtype(dtype, jnp.floating):  # jnp.finfo's own error names no argument
        raise TypeError(f"init: dtype must be a floating dtype; got {jnp.dtype(dtype)}")
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32


def glorot_uniform(key: PRNGKey, shape: tuple[int, int], dtype) -> Array:
    """Glorot/Xavier uniform for an ``(in, out)`` matrix: U(-a, a), a = sqrt(6 / (in + out))."""
    limit = (6.0 / (shape[0] + shape[1])) ** 0.5
    return jax.random.uniform(key, shape, _draw_dtype(dtype), -limit, limit).astype(dtype)


def orthogonal_blocks(key: PRNGKey, hidden_size: int, num_blocks: int, dtype) -> Array:
    """``[H, num_blocks * H]``: one independent orthogonal ``H x H`` block per gate.

    Orthogonal recurrent weights keep ``h @ W_h`` norm-preserving at initialisation, so
    gradients through time neither vanish nor explode from the weights alone.
    """
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, num_blocks)
    blocks = [init(k, (hidden_size, hidden_size), _draw_dtype(dtype)) for k in keys]
    return jnp.concatenate(blocks, axis=1).astype(dtype)


def zeros_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype) -> Array:
    # A bare int (init_carry(2) for init_carry((2,))) failed inside jnp.zeros.
    if not isinstance(batch_shape, tuple | list) or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in batch_shape
    ):
        raise ValueError(
            f"init_carry: batch_shape must be a tuple of ints >= 0 (() for one sequence); got "
            f"{batch_shape!r}"
        )
    return jnp.zeros((*batch_shape, hidden_size), dtype)


def block_diagonals(w_h: Array, count: int, shape) -> list[Array]:
    """Diagonals of the ``count`` square ``[H, H]`` column blocks of ``w_h``, broadcast to shape."""
    hidden = w_h.shape[0]
    return [
        jnp.broadcast_to(jnp.diagonal(w_h[:, k * hidden : (k + 1) * hidden]), shape)
        for k in range(count)
    ]


def bernoulli(key: PRNGKey, p: float, shape: tuple[int, ...]) -> Array:
    """Booleans, True with probability ``p``: a float32 uniform draw below ``p``.

    ``jax.random.bernoulli`` draws its uniform in the default float dtype, so one key gives
    other draws with ``jax_enable_x64`` on and off; this draw depends on the key alone (and
    equals ``jax.random.bernoulli``'s with x64 off).
    """
    return jax.random.uniform(key, shape, jnp.float32) < p

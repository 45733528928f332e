"""Why a recurrent network learns or not: gradient flow through time and state-Jacobian spectra.

* :func:`carry_gradients` gives ``dL/dh`` for the state read by every step in one backward
  pass (a zero perturbation is added to the carry entering each step and differentiated),
  so vanishing and
  exploding gradients show up as norms that fall or grow with distance from the loss.
* :func:`state_jacobians` gives the one-step Jacobians ``J_t = dh_t / dh_{t-1}`` along a
  trajectory; :func:`jacobian_summary` their singular values and spectral radii, and the
  norm of the products ``dh_T / dh_t`` that backpropagation multiplies together.
* :func:`carry_trajectory` keeps the whole state after every step and
  :func:`unit_correlations` finds the units that track a property of the input (inside a
  string, the column in a line): the material of hidden-state pictures
  (:func:`seqjax.apps.plots.plot_hidden_states`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from seqjax import _checks
from seqjax._types import Array, PyTree
from seqjax.cells._base import Cell

__all__ = [
    "carry_gradients",
    "carry_trajectory",
    "gradient_norms",
    "jacobian_summary",
    "state_jacobians",
    "unit_correlations",
]


def _flat(carry) -> Array:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(carry)])


def _check_cell(cell, where: str) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"{where}: cell must be a seqjax cell instance; got {cell!r}")


def _inputs(cell: Cell, params, xs, carry, where: str) -> tuple[Array, PyTree]:
    """``xs`` ``[T, *B, I]`` and the carry (zeros when None), checked against ``cell`` (and
    ``params``: another cell's fail deep inside JAX otherwise)."""
    _check_cell(cell, where)
    xs = _checks.floating_array("xs", xs, where)
    if xs.ndim < 2:
        raise ValueError(f"{where}: xs must be [T, *B, I]; got shape {xs.shape}")
    _checks.feature_size("xs", xs.shape, cell.input_size, where)
    cell.check_params(params, where)
    expected = cell.init_carry(xs.shape[1:-1], xs.dtype)
    if carry is None:
        return xs, expected
    _checks.carry_matches(carry, expected, where)
    return xs, carry


def carry_gradients(
    cell: Cell,
    params: PyTree,
    xs: Array,
    loss_fn: Callable[[Array], Array],
    carry: PyTree | None = None,
) -> PyTree:
    """The gradient of ``loss_fn(ys)`` w.r.t. the carry that each step reads.

    Args:
        cell: any cell.
        params: its parameters.
        xs: inputs ``[T, *B, I]`` (time-major).
        loss_fn: ``loss_fn(ys [T, *B, H]) -> []``, e.g. a loss on the last output only.
        carry: the initial carry (zeros when None).

    Returns:
        A carry-shaped pytree whose leaves are ``[T, *B, H]``: entry ``t`` is the gradient
        with respect to the carry entering step ``t`` (``h_{t-1}``; the initial carry at
        ``t = 0``), which every output from ``ys[t]`` on depends on (for an LSTM, both ``h``
        and ``c``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import ElmanCell
        >>> cell = ElmanCell(1, 8)
        >>> params = cell.init(jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (20, 1))
        >>> grads = carry_gradients(cell, params, xs, lambda ys: ys[-1].sum())
        >>> norms = gradient_norms(grads)                       # [T]
        >>> norms.shape, bool(norms[-1] > 0)
        ((20,), True)
    """
    xs, carry = _inputs(cell, params, xs, carry, "carry_gradients")
    _checks.function("loss_fn", loss_fn, "carry_gradients")
    zeros = jax.tree.map(lambda a: jnp.zeros((xs.shape[0], *a.shape), a.dtype), carry)

    def loss_of_perturbations(eps):
        def body(c, x_e):
            x, e = x_e
            return cell.apply(params, jax.tree.map(jnp.add, c, e), x)

        _, ys = jax.lax.scan(body, carry, (xs, eps))
        return loss_fn(ys)

    return jax.grad(loss_of_perturbations)(zeros)


def gradient_norms(grads: PyTree) -> Array:
    """L2 norm over the features of every leaf together: ``[T, *B, H]`` leaves -> ``[T, *B]``."""
    return jnp.sqrt(sum(jnp.sum(g**2, axis=-1) for g in jax.tree.leaves(grads)))


def carry_trajectory(cell: Cell, params: PyTree, xs: Array, carry: PyTree | None = None) -> PyTree:
    """The carry after every step: the whole state, not only the output (an LSTM's ``c`` too).

    For hidden-state pictures: :func:`seqjax.unroll` returns only the outputs ``y`` (an
    LSTM's ``h``); this keeps every carry leaf. Works for any cell, including a
    :class:`seqjax.Stack` of cells (whose carry is one entry per layer).

    Args:
        cell: any cell.
        params: its parameters.
        xs: inputs ``[T, *B, I]`` (time-major).
        carry: the initial carry (zeros when None).

    Returns:
        A carry-shaped pytree whose leaves are ``[T, *B, H]``: entry ``t`` is the carry
        after reading ``xs[t]``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell
        >>> cell = LSTMCell(2, 8)
        >>> states = carry_trajectory(cell, cell.init(jax.random.key(0)), jnp.ones((5, 2)))
        >>> states.c.shape                                        # [T, H]
        (5, 8)
    """
    xs, carry = _inputs(cell, params, xs, carry, "carry_trajectory")

    def body(c, x):
        c, _ = cell.apply(params, c, x)
        return c, c

    return jax.lax.scan(body, carry, xs)[1]


def unit_correlations(states: Array, features: Array) -> Array:
    """Pearson correlation of every unit with every feature over time: which unit tracks what.

    Args:
        states: ``[T, H]`` unit activations along one sequence.
        features: ``[T, K]`` quantities per step (e.g. "inside a string", the column in a
            line of text).

    Returns:
        ``[H, K]`` correlations in ``[-1, 1]``; 0 where a unit or a feature is constant.

    Example:
        >>> import jax.numpy as jnp
        >>> t = jnp.arange(10.0)
        >>> states = jnp.stack([t, -t, jnp.ones(10)], axis=1)         # [T, H=3]
        >>> unit_correlations(states, t[:, None]).ravel().round(3).tolist()
        [1.0, -1.0, 0.0]
    """
    states = _checks.floating_array("states", states, "unit_correlations")
    features = _checks.floating_array("features", features, "unit_correlations")
    if states.ndim != 2 or features.ndim != 2 or states.shape[0] != features.shape[0]:
        raise ValueError(
            "unit_correlations: states must be [T, H] and features [T, K] with the same T; "
            f"got shapes {states.shape} and {features.shape}"
        )
    features = features.astype(states.dtype)
    a = states - states.mean(axis=0, keepdims=True)
    b = features - features.mean(axis=0, keepdims=True)
    covariance = a.T @ b  # [H, K]
    norm_a, norm_b = jnp.sqrt(jnp.sum(a**2, axis=0)), jnp.sqrt(jnp.sum(b**2, axis=0))
    # A constant column minus its rounded mean leaves rounding residue, whose correlation with
    # another constant's residue came out as 1.0000001: below T ulps of its size, constant.
    eps = jnp.finfo(states.dtype).eps * states.shape[0]
    live_a = norm_a > eps * jnp.max(jnp.abs(states), axis=0, initial=0.0)
    live_b = norm_b > eps * jnp.max(jnp.abs(features), axis=0, initial=0.0)
    live = live_a[:, None] & live_b[None, :]
    scale = jnp.where(live, norm_a[:, None] * norm_b[None, :], jnp.ones_like(covariance))
    return jnp.where(live, jnp.clip(covariance / scale, -1.0, 1.0), jnp.zeros_like(covariance))


def state_jacobians(cell: Cell, params: PyTree, xs: Array, carry: PyTree | None = None) -> Array:
    """One-step Jacobians ``J_t = d carry_t / d carry_{t-1}`` along the trajectory of ``xs``.

    Args:
        xs: inputs ``[T, I]`` of one sequence (no batch dims).
        carry: initial carry (zeros when None).

    Returns:
        ``[T, S, S]`` with ``S`` the flattened carry size (``H``; ``2H`` for an LSTM, ``h``
        then ``c``).
    """
    _check_cell(cell, "state_jacobians")
    xs = _checks.floating_array("xs", xs, "state_jacobians")
    if xs.ndim != 2:
        raise ValueError(
            f"state_jacobians: xs must be one sequence [T, I] (vmap for batches); "
            f"got shape {xs.shape}"
        )
    _checks.feature_size("xs", xs.shape, cell.input_size, "state_jacobians")
    cell.check_params(params, "state_jacobians")
    expected = cell.init_carry((), xs.dtype)
    if carry is None:
        carry = expected
    else:
        _checks.carry_matches(carry, expected, "state_jacobians")
    _, unravel = ravel_pytree(carry)

    def body(c, x):
        def step(flat):
            return _flat(cell.apply(params, unravel(flat), x)[0])

        flat = _flat(c)
        return unravel(step(flat)), jax.jacfwd(step)(flat)

    _, jacobians = jax.lax.scan(body, carry, xs)
    return jacobians


def jacobian_summary(jacobians: Array) -> dict[str, Array]:
    """Singular values, spectral radii and backpropagated products of one-step Jacobians.

    Args:
        jacobians: ``[T, S, S]`` from :func:`state_jacobians`.

    Returns:
        ``singular_values`` ``[T, S]`` (descending), ``spectral_radius`` ``[T]`` (largest
        eigenvalue modulus), and ``product_norm`` ``[T]``: the spectral norm of
        ``dh_T / dh_t = J_T ... J_{t+1}`` (1 at ``t = T``), the factor by which a gradient
        at the last step is scaled on its way back to step ``t``.

    Example:
        >>> import jax.numpy as jnp
        >>> summary = jacobian_summary(jnp.stack([0.5 * jnp.eye(2)] * 3))
        >>> summary["product_norm"].tolist()
        [0.25, 0.5, 1.0]
    """
    jacobians = _checks.floating_array("jacobians", jacobians, "jacobian_summary")
    if jacobians.ndim != 3 or jacobians.shape[1] != jacobians.shape[2]:
        raise ValueError(
            f"jacobian_summary: jacobians must be [T, S, S] (from state_jacobians); got shape "
            f"{jacobians.shape}"
        )

    def accumulate(product, jacobian):
        return product @ jacobian, product

    size = jacobians.shape[-1]
    _, products = jax.lax.scan(
        accumulate, jnp.eye(size, dtype=jacobians.dtype), jacobians, reverse=True
    )
    return {
        "singular_values": jnp.linalg.svd(jacobians, compute_uv=False),
        "spectral_radius": jnp.max(jnp.abs(jnp.linalg.eigvals(jacobians)), axis=-1),
        "product_norm": jnp.linalg.norm(products, ord=2, axis=(-2, -1)),
    }

"""What the Flax NNX and linen adapters share: running a layer, naming its parameters, and
the per-gate layout of Flax's own cells.

Nothing here computes a recurrence: running goes through :func:`seqjax.unroll` or the
layer's own ``__call__``; the converters only split, concatenate and check arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells import Cell, ElmanCell, GRUCell, LSTMCell, Noisy, supports, with_noise
from seqjax.layers import Stack, run_layer
from seqjax.unroll import UnrollOptions

# --------------------------------------------------------------------------- running


def steps(layer) -> bool:
    """Whether ``layer`` advances one step at a time: a cell, or a Stack of cells (a
    Bidirectional layer, or a Stack holding one, needs the whole sequence)."""
    if isinstance(layer, Stack):
        return all(steps(sub) for sub in layer.layers)
    return isinstance(layer, Cell)


def has_noise(layer) -> bool:
    """Whether ``layer`` holds a regulariser that draws randomness (as ``with_noise`` walks)."""
    return supports(layer, Noisy)


def run(
    layer,
    params: PyTree,
    xs: Array,
    carry: PyTree | None,
    *,
    key: PRNGKey | None,
    lengths: Array | None,
    resets: Array | None,
    time_axis: int,
    options: UnrollOptions,
    where: str,
) -> tuple[PyTree, Array]:
    """Run a cell with :func:`seqjax.unroll`, or call a sequence layer, every option forwarded.

    A layer with regularisers gets its noise from ``key`` with :func:`seqjax.with_noise`,
    one draw per call for the batch shape of ``xs``; ``key=None`` runs it deterministically.
    """
    if has_noise(layer):
        xs = _checks.floating_array("xs", xs, where)
        axis = _checks.time_axis_of("xs", xs.shape, time_axis, where)
        batch_shape = tuple(n for k, n in enumerate(xs.shape[:-1]) if k != axis)
        params = with_noise(layer, params, key, batch_shape, deterministic=key is None)
    return run_layer(
        layer, params, xs, carry, lengths=lengths, resets=resets, time_axis=time_axis,
        options=options,
    )  # fmt: skip


def step(layer, params: PyTree, carry: PyTree, x: Array, where: str) -> tuple[PyTree, Array]:
    """One step of a cell (``apply``), or a clear error for a layer that needs the sequence."""
    if not steps(layer):
        raise TypeError(
            f"{where}: step needs a cell (or a Stack of cells) as its layer; got a "
            f"{type(layer).__name__}, which needs the whole sequence"
        )
    return layer.apply(params, carry, x)


# --------------------------------------------------------------------------- parameter names


def _key_name(entry) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_names(tree: PyTree) -> list[tuple[str, ...]]:
    """The path of every leaf of ``tree`` as names: NamedTuple fields, tuple indices, dict keys."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [tuple(_key_name(k) for k in path) or ("value",) for path, _ in paths]


def _structure(layer) -> tuple[Any, tuple[tuple[str, ...], ...]]:
    shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0)))
    return jax.tree.structure(shapes), tuple(leaf_names(shapes))


_cached_structure = functools.lru_cache(maxsize=256)(_structure)


def structure(layer) -> tuple[Any, tuple[tuple[str, ...], ...]]:
    """``(treedef, names)`` of ``layer.init``'s params, found without computing any array."""
    try:
        return _cached_structure(layer)
    except TypeError:  # an unhashable layer: trace its init again
        return _structure(layer)


def to_nested_dict(tree: PyTree, wrap: Callable[[Any, Any], Any] = lambda a, _: a) -> dict:
    """Params as nested dicts keyed by field names (``{"w_x": ..}``, ``{"0": {"w_x": ..}}``).

    ``wrap(leaf, name_path)`` may box each leaf (e.g. with sharding metadata).
    """
    out: dict = {}
    leaves = jax.tree.leaves(tree)
    for names, leaf in zip(leaf_names(tree), leaves, strict=True):
        node = out
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = wrap(leaf, names)
    return out


def from_nested_dict(layer, tree: Mapping[str, Any], where: str) -> PyTree:
    """Inverse of :func:`to_nested_dict` for ``layer``'s params: no array is copied."""
    treedef, names = structure(layer)
    leaves = []
    for path in names:
        node = tree
        for name in path:
            if not isinstance(node, Mapping) or name not in node:
                raise ValueError(
                    f"{where}: the stored parameters (tree) must hold {'/'.join(path)}, which "
                    f"{type(layer).__name__} needs; got keys {list(tree)}"
                )
            node = node[name]
        leaves.append(node)
    return treedef.unflatten(leaves)


def check_params(layer, params: PyTree, where: str) -> None:
    """Raise unless ``params`` has the structure and leaf shapes of ``layer.init``'s."""
    expected = jax.eval_shape(lambda: layer.init(jax.random.key(0)))
    # jaxlib's PyTreeDef reaches mypy as an unresolvable alias (shown "PyTreeDef?").
    if jax.tree.structure(params) != jax.tree.structure(expected):  # type: ignore[operator]
        raise ValueError(
            f"{where}: params must have the structure of {type(layer).__name__}.init's, "
            f"{jax.tree.structure(expected)}; got {jax.tree.structure(params)}"
        )
    for names, got, want in zip(
        leaf_names(params), jax.tree.leaves(params), jax.tree.leaves(expected), strict=True
    ):
        if jnp.shape(got) != want.shape:
            raise ValueError(
                f"{where}: params leaf {'/'.join(names)} must have shape {want.shape}; "
                f"got {jnp.shape(got)}"
            )


def sharding_for(params: PyTree, sharding: PyTree | None) -> list:
    """One partition spec (a tuple of mesh axis names, or None) per leaf of ``params``.

    ``sharding`` has the structure of ``params`` down to its leaves, where it holds a tuple
    (or ``PartitionSpec``) of axis names, one per dimension of that leaf, or None.
    """
    leaves = jax.tree.leaves(params)
    if sharding is None:
        return [None] * len(leaves)
    specs = []

    def collect(leaf, spec):
        if spec is not None:
            spec = tuple(spec)
            if len(spec) != jnp.ndim(leaf):
                raise ValueError(
                    f"sharding: each spec must name one axis (or None) per dimension of its "
                    f"parameter, shape {jnp.shape(leaf)}; got {spec}"
                )
        specs.append(spec)

    try:
        jax.tree.map(collect, params, sharding)
    except ValueError as err:
        if "sharding:" in str(err):
            raise
        raise ValueError(
            "sharding must have the structure of the params (e.g. LSTMParams(w_x=(None, "
            f"'model'), w_h=(None, 'model'), b=('model',))); got {sharding!r}"
        ) from err
    return specs


# --------------------------------------------------------------------------- Flax's cells


def flax_activation_check(cell, gate_fn, activation_fn, where: str) -> None:
    """Raise unless a Flax cell's nonlinearities are the ones the seqjax cell computes."""
    if isinstance(cell, LSTMCell | GRUCell):
        if gate_fn is not jax.nn.sigmoid or activation_fn is not jnp.tanh:
            raise ValueError(
                f"{where}: seqjax's {type(cell).__name__} uses gate_fn=sigmoid and "
                f"activation_fn=tanh; got {gate_fn!r} and {activation_fn!r}"
            )
    elif isinstance(cell, ElmanCell) and activation_fn is not cell.activation:
        raise ValueError(
            f"{where}: the Flax SimpleCell's activation_fn {activation_fn!r} differs from the "
            f"ElmanCell's activation {cell.activation!r}"
        )


def check_shape(array, shape: tuple[int, ...], name: str, where: str) -> Array:
    array = jnp.asarray(array)
    if array.shape != shape:
        raise ValueError(f"{where}: {name} must have shape {shape}; got {array.shape}")
    return array


def check_cell_type(cell, where: str) -> None:
    if not isinstance(cell, LSTMCell | GRUCell | ElmanCell):
        raise TypeError(
            f"{where}: cell must be an LSTMCell, GRUCell or ElmanCell; got {type(cell)}"
        )
    if isinstance(cell, GRUCell) and not cell.reset_after:
        raise ValueError(
            f"{where}: cell must be a GRUCell(reset_after=True): Flax's GRUCell applies the "
            "reset gate after the recurrent matmul; got reset_after=False"
        )

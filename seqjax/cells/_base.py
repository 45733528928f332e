"""The cell protocol as a typed base, its optional capabilities, and the wrapper base.

Every cell subclasses :class:`Cell`: four abstract methods (``init``, ``init_carry``,
``project``, ``step``) and one shared ``apply``. What a cell can do beyond that is a
*capability*, a ``runtime_checkable`` protocol of its own:

=====================  =====================================================================
capability             methods, and who uses them
=====================  =====================================================================
:class:`SplitStep`     ``recur(params, carry)``, ``update(params, carry, px, r)``: the
                       structured derivative (``Scan(derivative="structured")``)
:class:`SummedUpdate`  ``update_summed(params, carry, z)``, ``update`` reads ``px + r`` only:
                       the structured derivative saves one array per step instead of two
:class:`ProjectWeight` ``project_weight(params)``: ``project`` is ``x W_x + b``; the embedding
                       fold of :func:`seqjax.embedded_unroll`, transposed-weight products
:class:`RecurWeight`   ``recur_weight(params)``, ``recur_input(params, carry)``: ``recur`` is
                       ``recur_input W_h + b_h``; transposed-weight products
:class:`LinearRecurrence`  ``coefficients(params, px)``, ``to_state``, ``from_state``:
                       ``h' = a h + b``; ``method="associative"``
:class:`LogCoefficients`   ``log_coefficients(params, px)``: the log-space associative scan
:class:`JacobianDiagonal`  ``jacobian_diagonal(params, carry, px)``: quasi-DEER without
                       forming the dense Jacobian
:class:`Noisy`         ``with_noise(params, key, batch_shape, *, deterministic)``: draws
                       dropout masks or zoneout keys (:func:`seqjax.with_noise`)
=====================  =====================================================================

Ask with :func:`supports` (never by probing attributes): a plain cell supports a capability
when it has the protocol's methods (``isinstance``), and may narrow that by overriding
:meth:`Cell.supports` (a minGRU with ``log_space=False`` has no log coefficients). A
:class:`CellWrapper` implements every forwardable capability in terms of its wrapped cell
and says, in ``forwards``, which of them its own semantics keep; it supports one of those
exactly when its wrapped cell does.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree


class Cell(abc.ABC):
    """A recurrent cell: hashable hyperparameters in fields, pure methods over pytrees.

    Subclasses are frozen dataclasses whose fields are hyperparameters only (sizes,
    activation, initialiser choices). Argument order is always ``(params, carry, x)`` and
    the result ``(carry, y)``, as in ``lax.scan``.

    Attributes:
        input_size: ``I``, the features each step reads.
        hidden_size: ``H``, the features each step outputs.
    """

    input_size: int
    hidden_size: int

    # Whether project and recur treat every leading axis of their inputs as rows under the
    # same parameters, so that steps stacked as [T, *B] may be flattened into one batch of
    # rows (the structured derivative does, for speed). False for a cell whose params hold
    # per-sequence data, such as VariationalDropoutCell's masks.
    shared_rows: ClassVar[bool] = True

    def __post_init__(self):
        """Check the hyperparameters that are fields of this cell: sizes are positive ints
        (``LSTMCell(3, -2)``, ``GRUCell(3, 4.0)`` and ``hidden_size=0`` are refused here, not
        deep inside JAX), and every field named in :data:`FIELD_CHECKS` passes its check (a
        string ``reset_after="no"`` would otherwise read as True)."""
        fields = getattr(type(self), "__dataclass_fields__", {})
        where = type(self).__name__
        own = tuple(name for name in ("input_size", "hidden_size") if name in fields)
        _checks.sizes(self, own, where)
        for name, check in FIELD_CHECKS.items():
            if name in fields:
                check(name, getattr(self, name), where)

    @abc.abstractmethod
    def init(self, key: PRNGKey, dtype: Any = jnp.float32) -> PyTree:
        """Draw parameters (a NamedTuple of arrays) from ``key``, in ``dtype``.

        They depend only on the key, the hyperparameters and ``dtype``: never on the
        backend, on tuning or on ``jax_enable_x64``.
        """

    @abc.abstractmethod
    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> PyTree:
        """The initial state for a batch ``[*B]``: leaves ``[*B, H]`` (zeros for most cells)."""

    @abc.abstractmethod
    def project(self, params: PyTree, xs: Array) -> Array:
        """The time-parallel part, ``[..., I] -> [..., G]``, for any number of steps at once."""

    @abc.abstractmethod
    def step(self, params: PyTree, carry: PyTree, px: Array) -> tuple[PyTree, Array]:
        """The sequential part: one step from the projected input ``px`` ``[*B, G]``."""

    def apply(self, params: PyTree, carry: PyTree, x: Array) -> tuple[PyTree, Array]:
        """One step from the raw input ``x`` ``[*B, I]``: ``step(params, carry, project(x))``."""
        return self.step(params, carry, self.project(params, x))

    def supports(self, capability: type) -> bool:
        """Whether this cell offers ``capability`` (one of :data:`CAPABILITIES`)."""
        return isinstance(self, capability)

    def check_params(self, params: PyTree, where: str = "unroll") -> None:
        """Raise a ValueError naming this cell unless ``params`` have the structure and leaf
        shapes of ``init``'s (noise drawn by :func:`with_noise` allowed; dtypes free).

        Parameters of another cell or of another size are the common mistake; without this
        check they fail deep inside JAX (a ``dot_general`` shape error, a missing field).
        """
        if supports(self, Noisy):
            params = with_noise(self, params, None, deterministic=True)
        expected = _init_shapes(self)
        got_paths = _leaf_shapes(params)
        want_paths = _leaf_shapes(expected)
        # jaxlib's PyTreeDef reaches mypy as an unresolvable alias (shown "PyTreeDef?").
        if jax.tree.structure(params) != jax.tree.structure(expected):  # type: ignore[operator]
            missing = [p for p in want_paths if p not in got_paths]
            extra = [p for p in got_paths if p not in want_paths]
            raise ValueError(
                f"{where}: params do not fit {self!r}: it expects {_describe(expected)}; got "
                f"{_describe(params)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
                + ". Parameters of another cell? Draw them with this cell's init."
            )
        for path, shape in want_paths.items():
            if got_paths[path] != shape:
                raise ValueError(
                    f"{where}: params leaf {path} must have shape {shape} for {self!r}; got "
                    f"{got_paths[path]}. Parameters of another size? Draw them with this "
                    "cell's init."
                )


# Hyperparameters that several cells share, by field name, and their checks.
FIELD_CHECKS: dict[str, Callable[[str, Any, str], Any]] = {
    "forget_bias": _checks.number,  # a finite number (NaN would make every forget gate NaN)
    "eps": functools.partial(_checks.number, low=0.0, low_open=True),  # layer norm's epsilon
    "reset_after": _checks.flag,
    "log_space": _checks.flag,
    "activation": _checks.function,
}


def _init_shapes(cell: Cell) -> PyTree:
    """The shapes of ``cell.init``'s params (traced once per cell and cached)."""
    try:
        return _cached_init_shapes(cell)
    except TypeError:  # an unhashable cell
        return jax.eval_shape(lambda: cell.init(jax.random.key(0)))


@functools.lru_cache(maxsize=512)
def _cached_init_shapes(cell: Cell) -> PyTree:
    return jax.eval_shape(lambda: cell.init(jax.random.key(0)))


def _leaf_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path) or "params": tuple(jnp.shape(a)) for path, a in leaves}


def _describe(tree: PyTree) -> str:
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return f"{type(tree).__name__}({', '.join(tree._fields)})"
    if isinstance(tree, tuple):
        return f"a tuple of {len(tree)}"
    return type(tree).__name__


@runtime_checkable
class SplitStep(Protocol):
    """``step(p, c, px) == update(p, c, px, recur(p, c))``.

    ``recur(params, carry) -> r`` is the recurrent matmul (``h W_h``, ``[*B, G_r]``), a
    function of the carry and the recurrent weights only; ``update(params, carry, px, r)
    -> (carry, y)`` is the rest of the step (elementwise for the shipped cells; the
    reset-before GRU keeps its second matmul there).
    """

    def recur(self, params: PyTree, carry: PyTree) -> Array: ...

    def update(
        self, params: PyTree, carry: PyTree, px: Array, r: Array
    ) -> tuple[PyTree, Array]: ...


@runtime_checkable
class SummedUpdate(SplitStep, Protocol):
    """``update(p, c, px, r) == update_summed(p, c, px + r)``: the update reads the sum only."""

    def update_summed(self, params: PyTree, carry: PyTree, z: Array) -> tuple[PyTree, Array]: ...


@runtime_checkable
class ProjectWeight(Protocol):
    """``project(params, x) == x @ project_weight(params) + b``, ``b`` constant in ``x``."""

    def project_weight(self, params: PyTree) -> Array: ...


@runtime_checkable
class RecurWeight(SplitStep, Protocol):
    """``recur(p, c) == recur_input(p, c) @ recur_weight(p) + b_h``.

    ``recur_input`` is linear in the carry (by default the carry's ``h``), ``b_h`` constant
    in it. The structured derivative then multiplies cotangents by a transposed copy of
    ``W_h``, the form XLA:CPU runs fastest.
    """

    def recur_weight(self, params: PyTree) -> Array: ...

    def recur_input(self, params: PyTree, carry: PyTree) -> Array: ...


@runtime_checkable
class LinearRecurrence(Protocol):
    """``step`` is ``s' = a * s + b`` elementwise on the state ``s = to_state(carry)``.

    ``coefficients(params, px) -> (a, b)`` for any number of steps at once; ``to_state``
    maps a carry to one (possibly complex) array ``[*B, H]`` and ``from_state`` back.
    """

    def coefficients(self, params: PyTree, px: Array) -> tuple[Array, Array]: ...

    def to_state(self, carry: PyTree) -> Array: ...

    def from_state(self, state: Array) -> PyTree: ...


@runtime_checkable
class LogCoefficients(LinearRecurrence, Protocol):
    """``log_coefficients(params, px) -> (log a, log b)``: scan in log space (needs ``b > 0``)."""

    def log_coefficients(self, params: PyTree, px: Array) -> tuple[Array, Array]: ...


@runtime_checkable
class JacobianDiagonal(Protocol):
    """``jacobian_diagonal(params, carry, px)``: ``d step(carry)[0] / d carry`` on its
    diagonal, shaped like the carry, without forming the dense Jacobian."""

    def jacobian_diagonal(self, params: PyTree, carry: PyTree, px: Array) -> PyTree: ...


@runtime_checkable
class Noisy(Protocol):
    """``with_noise(params, key, batch_shape, *, deterministic)``: params with fresh noise."""

    def with_noise(
        self,
        params: PyTree,
        key: PRNGKey | None,
        batch_shape: tuple[int, ...] = (),
        *,
        deterministic: bool = False,
    ) -> PyTree: ...


#: Every capability protocol, in the order the docs list them.
CAPABILITIES: tuple[type, ...] = (
    SplitStep,
    SummedUpdate,
    ProjectWeight,
    RecurWeight,
    LinearRecurrence,
    LogCoefficients,
    JacobianDiagonal,
    Noisy,
)


def supports(model: Any, capability: type) -> bool:
    """Whether ``model`` (a cell, a wrapper, a layer) offers ``capability``.

    Args:
        model: any cell or sequence layer.
        capability: one of :data:`CAPABILITIES`.

    Example:
        >>> from seqjax import GRUCell, LSTMCell, MinGRUCell, ZoneoutCell
        >>> supports(LSTMCell(3, 4), SplitStep), supports(GRUCell(3, 4), SummedUpdate)
        (True, False)
        >>> supports(ZoneoutCell(LSTMCell(3, 4), hidden_rate=0.1), SplitStep)   # forwarded
        True
        >>> supports(MinGRUCell(3, 4, log_space=False), LogCoefficients)
        False
    """
    if capability not in CAPABILITIES:
        raise TypeError(
            f"supports: capability must be one of {[c.__name__ for c in CAPABILITIES]}; "
            f"got {capability!r}"
        )
    if isinstance(model, Cell | Layer):  # answers for itself (wrappers ask their cell)
        return bool(model.supports(capability))
    return isinstance(model, capability)


class Layer(abc.ABC):
    """A sequence layer: runs over a whole sequence (``__call__``), as :class:`seqjax.Stack`
    and :class:`seqjax.Bidirectional` do. Its ``__call__`` takes every option of
    :func:`seqjax.unroll`."""

    @abc.abstractmethod
    def init(self, key: PRNGKey, dtype: Any = jnp.float32) -> PyTree: ...

    @abc.abstractmethod
    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> PyTree: ...

    @property
    @abc.abstractmethod
    def output_size(self) -> int:
        """Features per step of the outputs ``ys``."""

    @abc.abstractmethod
    def __call__(
        self,
        params: PyTree,
        xs: Array,
        carry: PyTree | None = None,
        *,
        lengths: Array | None = None,
        resets: Array | None = None,
        reverse: bool = False,
        truncate: int | None = None,
        time_axis: int = 0,
        method: Any = None,  # a seqjax.methods.Method or its shorthand (cells sit below methods)
    ) -> tuple[PyTree, Array]:
        """Run over ``xs`` ``[T, *B, I]`` with :func:`seqjax.unroll`'s options; ``(carry, ys)``."""

    def supports(self, capability: type) -> bool:
        """Whether this layer offers ``capability`` (:data:`CAPABILITIES`)."""
        return isinstance(self, capability)


# What CellWrapper implements in terms of its wrapped cell; a subclass keeps the ones its
# semantics allow by listing them in ``forwards``.
FORWARDABLE: tuple[type, ...] = (
    SplitStep,
    SummedUpdate,
    ProjectWeight,
    RecurWeight,
    LinearRecurrence,
    LogCoefficients,
    JacobianDiagonal,
    Noisy,
)


class CellWrapper(Cell):
    """A cell around another cell: ``step`` runs the wrapped cell between two hooks.

    ``step(params, carry, px)`` is ``leave(params, carry, *cell.step(inner_params(params),
    enter(params, carry), px))``: ``enter`` gives the state the wrapped cell reads (a
    dropout mask applied, a learned state blended in), ``leave`` the wrapper's new carry
    and output from the wrapped cell's (zoneout mixed in, a step counted). Every
    capability in ``FORWARDABLE`` is implemented here through the same hooks;
    ``forwards`` lists those the subclass's semantics keep (say which and why in its
    docstring), ``own`` those it always has.

    Subclasses are frozen dataclasses with a field ``cell``.
    """

    cell: Cell
    forwards: ClassVar[frozenset[type]] = frozenset()
    own: ClassVar[frozenset[type]] = frozenset()

    def __post_init__(self):
        """The wrapped cell must be a cell instance (a class, or a layer, fails much later)."""
        if not isinstance(self.cell, Cell):
            raise TypeError(
                f"{type(self).__name__}: cell must be a seqjax cell instance (e.g. "
                f"LSTMCell(3, 4)); got {self.cell!r}"
            )

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:  # type: ignore[override]
        return self.cell.hidden_size

    @property
    def shared_rows(self) -> bool:  # type: ignore[override]
        return self.cell.shared_rows

    def supports(self, capability: type) -> bool:
        if capability in self.own:
            return True
        if capability in self.forwards:
            return supports(self.cell, capability)
        return capability not in FORWARDABLE and isinstance(self, capability)

    # ---------------------------------------------------------------- hooks

    def inner_params(self, params: PyTree) -> PyTree:
        """The wrapped cell's params inside ``params``."""
        return params.cell

    def enter(self, params: PyTree, carry: PyTree) -> PyTree:
        """The wrapped cell's state that ``carry`` gives it to read."""
        return carry

    def leave(self, params: PyTree, carry: PyTree, new: PyTree, y: Array) -> tuple[PyTree, Array]:
        """The wrapper's ``(carry, y)`` after the wrapped cell's step gave ``(new, y)``."""
        return new, y

    # ---------------------------------------------------------------- the protocol

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> PyTree:
        """The wrapped cell's initial carry."""
        return self.cell.init_carry(batch_shape, dtype)

    def project(self, params: PyTree, xs: Array) -> Array:
        """The wrapped cell's projection, ``[..., I] -> [..., G]``."""
        return self.cell.project(self.inner_params(params), xs)

    def step(self, params: PyTree, carry: PyTree, px: Array) -> tuple[PyTree, Array]:
        """The wrapped cell's step between ``enter`` and ``leave``."""
        inner = self.enter(params, carry)
        return self.leave(params, carry, *self.cell.step(self.inner_params(params), inner, px))

    # ---------------------------------------------------------------- forwarded capabilities
    # Each is called only where ``supports(self, capability)`` holds, which for a forwarded
    # capability means the wrapped cell has it (the casts say so to the type checker).

    def recur(self, params: PyTree, carry: PyTree) -> Array:
        return cast(SplitStep, self.cell).recur(
            self.inner_params(params), self.enter(params, carry)
        )

    def update(self, params: PyTree, carry: PyTree, px: Array, r: Array) -> tuple[PyTree, Array]:
        inner = self.enter(params, carry)
        new, y = cast(SplitStep, self.cell).update(self.inner_params(params), inner, px, r)
        return self.leave(params, carry, new, y)

    def update_summed(self, params: PyTree, carry: PyTree, z: Array) -> tuple[PyTree, Array]:
        inner = self.enter(params, carry)
        new, y = cast(SummedUpdate, self.cell).update_summed(self.inner_params(params), inner, z)
        return self.leave(params, carry, new, y)

    def project_weight(self, params: PyTree) -> Array:
        return cast(ProjectWeight, self.cell).project_weight(self.inner_params(params))

    def recur_weight(self, params: PyTree) -> Array:
        return cast(RecurWeight, self.cell).recur_weight(self.inner_params(params))

    def recur_input(self, params: PyTree, carry: PyTree) -> Array:
        return cast(RecurWeight, self.cell).recur_input(
            self.inner_params(params), self.enter(params, carry)
        )

    def coefficients(self, params: PyTree, px: Array) -> tuple[Array, Array]:
        return cast(LinearRecurrence, self.cell).coefficients(self.inner_params(params), px)

    def log_coefficients(self, params: PyTree, px: Array) -> tuple[Array, Array]:
        return cast(LogCoefficients, self.cell).log_coefficients(self.inner_params(params), px)

    def to_state(self, carry: PyTree) -> Array:
        return cast(LinearRecurrence, self.cell).to_state(carry)

    def from_state(self, state: Array) -> PyTree:
        return cast(LinearRecurrence, self.cell).from_state(state)

    def jacobian_diagonal(self, params: PyTree, carry: PyTree, px: Array) -> PyTree:
        """The wrapped cell's diagonal, for wrappers whose hooks are the identity."""
        return cast(JacobianDiagonal, self.cell).jacobian_diagonal(
            self.inner_params(params), carry, px
        )

    def with_noise(
        self,
        params: PyTree,
        key: PRNGKey | None,
        batch_shape: tuple[int, ...] = (),
        *,
        deterministic: bool = False,
    ) -> PyTree:
        """``params`` with the wrapped cell's noise drawn (see :func:`seqjax.with_noise`)."""
        inner = with_noise(
            self.cell, self.inner_params(params), key, batch_shape, deterministic=deterministic
        )
        return params._replace(cell=inner)


def with_noise(
    model: Any,
    params: PyTree,
    key: PRNGKey | None,
    batch_shape: tuple[int, ...] = (),
    *,
    deterministic: bool = False,
) -> PyTree:
    """``params`` with fresh dropout masks and zoneout keys for every regulariser in ``model``.

    ``model`` is a cell, a wrapper cell, a :class:`~seqjax.Stack` or a
    :class:`~seqjax.Bidirectional` layer. Every part that :func:`supports` :class:`Noisy`
    (:class:`~seqjax.VariationalDropoutCell`, :class:`~seqjax.ZoneoutCell`, and the layers
    and wrappers holding them) draws its own randomness from its own split of ``key``; every
    other part keeps its params. Call it inside the loss, once per batch, with a new key per
    batch: gradients then flow to the plain params only.

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
        >>> from seqjax import LSTMCell, Stack, VariationalDropoutCell, with_noise
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
    if not supports(model, Noisy):
        return params
    return model.with_noise(params, key, tuple(batch_shape), deterministic=deterministic)


def jacobian_diagonal(cell: Cell, params: PyTree, carry: PyTree, px: Array) -> PyTree:
    """The diagonal of ``d step(carry)[0] / d carry``, shaped like the carry.

    The cell's own ``jacobian_diagonal`` when it :func:`supports` :class:`JacobianDiagonal`
    (analytic, no ``[H, H]`` Jacobian formed); otherwise the diagonal of the dense Jacobian
    from forward-mode products (``D`` of them per step, ``D`` the carry size).

    Args:
        cell: any cell.
        params: its parameters.
        carry: the state entering the step, leaves ``[*B, H]``.
        px: the projected input ``[*B, G]``.

    Returns:
        A pytree like ``carry``: entry ``i`` is ``d carry'_i / d carry_i``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell
        >>> cell = GRUCell(input_size=2, hidden_size=3)
        >>> params = cell.init(jax.random.key(0))
        >>> h, px = jnp.full(3, 0.5), cell.project(params, jnp.ones(2))
        >>> dense = jax.jacfwd(lambda h: cell.step(params, h, px)[0])(h)
        >>> bool(jnp.allclose(jacobian_diagonal(cell, params, h, px), jnp.diagonal(dense)))
        True
    """
    if supports(cell, JacobianDiagonal):
        return cast(JacobianDiagonal, cell).jacobian_diagonal(params, carry, px)
    leaves, treedef = jax.tree.flatten(carry)
    sizes = [leaf.shape[-1] for leaf in leaves]
    dtype = jnp.result_type(*leaves)
    s = jnp.concatenate([leaf.astype(dtype) for leaf in leaves], axis=-1)
    cuts = np.cumsum(sizes)[:-1].tolist()

    def unflatten(s):
        parts = jnp.split(s, cuts, axis=-1)
        return treedef.unflatten([p.astype(a.dtype) for p, a in zip(parts, leaves, strict=True)])

    def flat_step(s):
        new = jax.tree.leaves(cell.step(params, unflatten(s), px)[0])
        return jnp.concatenate([leaf.astype(dtype) for leaf in new], axis=-1)

    dense = row_jacobians(flat_step, s)
    return unflatten(jnp.diagonal(dense, axis1=-2, axis2=-1))


def row_jacobians(f: Callable[[Array], Array], s: Array) -> Array:
    """``[..., D, D]``: the Jacobian of each row of ``f(s)`` with respect to the same row of ``s``.

    ``f`` maps ``[..., D]`` to ``[..., D]`` row by row (a step of a batch), so one
    forward-mode product per state coordinate, applied to every row at once, gives a column of
    every row's Jacobian. ``f`` sees the whole batch, as a step does in the scan: a cell may draw
    noise per row, which one row at a time would not reproduce.
    """

    def column(e):
        return jax.jvp(f, (s,), (jnp.broadcast_to(e, s.shape),))[1]

    columns = jax.vmap(column)(jnp.eye(s.shape[-1], dtype=s.dtype))  # [D (j), ..., D (i)]
    return jnp.moveaxis(columns, 0, -1)

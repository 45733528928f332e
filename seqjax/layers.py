"""Sequence models assembled from cells: stacks, bidirectional layers, dense and embedding heads.

A *sequence layer* (:class:`~seqjax.cells.Layer`) has ``init(key)``,
``init_carry(batch_shape, dtype)`` and ``__call__(params, xs, carry=None, **options)``, where
the options are every keyword option of :func:`seqjax.unroll` (``lengths``, ``resets``,
``reverse``, ``truncate``, ``time_axis``, ``method``). A cell is run as a sequence layer by
:func:`seqjax.unroll`; :class:`Bidirectional` and :class:`Stack` are sequence layers
themselves, and a :class:`Stack` of cells is also a cell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._base import Cell, Layer, Noisy, supports, with_noise
from seqjax.cells._common import affine, glorot_uniform
from seqjax.losses import masked_mean
from seqjax.methods import Method
from seqjax.unroll import UnrollOptions, unroll

__all__ = [
    "Bidirectional",
    "BidirectionalCarry",
    "BidirectionalParams",
    "Dense",
    "DenseParams",
    "Embedding",
    "EmbeddingParams",
    "Stack",
    "last_valid",
    "mean_valid",
    "output_size",
    "run_layer",
]


_DEFAULT_OPTIONS = UnrollOptions()


def output_size(layer) -> int:
    """Features per step of a cell (``hidden_size``) or a layer (``output_size``)."""
    return layer.output_size if isinstance(layer, Layer) else layer.hidden_size


def run_layer(
    layer,
    params: PyTree,
    xs: Array,
    carry: PyTree | None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    time_axis: int = 0,
    options: UnrollOptions = _DEFAULT_OPTIONS,
) -> tuple[PyTree, Array]:
    """Run a sequence layer (called) or a cell (through :func:`seqjax.unroll`), every option
    forwarded: the one place where layers, models and adapters hand options on."""
    if isinstance(layer, Layer):
        return layer(
            params, xs, carry, lengths=lengths, resets=resets, time_axis=time_axis,
            **options.kwargs(),
        )  # fmt: skip
    return unroll(
        layer, params, xs, carry, lengths=lengths, resets=resets, time_axis=time_axis,
        **options.kwargs(),
    )  # fmt: skip


class BidirectionalParams(NamedTuple):
    forward: PyTree
    backward: PyTree


class BidirectionalCarry(NamedTuple):
    forward: PyTree  # final forward state: at each sequence's true length
    backward: PyTree  # final backward state: after reading back to t = 0


@dataclass(frozen=True)
class Bidirectional(Layer):
    """Two cells over the same sequence, one forwards and one backwards; outputs concatenated.

    With ``lengths``, the backward cell starts at each sequence's last valid step, so padding
    never leaks into it; ``ys[t] = [forward_y[t], backward_y[t]]``, both for ``xs[t]``, and
    padded steps are zero. This is PyTorch's ``bidirectional=True`` over packed sequences.
    With ``reverse=True`` the whole layer runs on the time-reversed valid prefix (the
    forward cell backwards and the backward cell forwards), as for any layer.

    Attributes:
        forward: the cell run from ``t = 0``.
        backward: the cell run from the last valid step; same ``input_size``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import Bidirectional, GRUCell
        >>> layer = Bidirectional(GRUCell(3, 4), GRUCell(3, 4))
        >>> params = layer.init(jax.random.key(0))
        >>> carry, ys = layer(params, jnp.ones((6, 2, 3)), lengths=jnp.array([6, 2]))
        >>> ys.shape                                         # [T, B, 2H]
        (6, 2, 8)
    """

    forward: Cell
    backward: Cell

    def __post_init__(self):
        for name in ("forward", "backward"):
            cell = getattr(self, name)
            if not isinstance(cell, Cell):
                raise TypeError(
                    f"Bidirectional: {name} must be a seqjax cell instance (e.g. "
                    f"LSTMCell(3, 4)); got {cell!r}"
                )
        if self.forward.input_size != self.backward.input_size:
            raise ValueError(
                "Bidirectional: forward and backward cells must share input_size; got "
                f"{self.forward.input_size} and {self.backward.input_size}"
            )

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    @property
    def output_size(self) -> int:
        return self.forward.hidden_size + self.backward.hidden_size

    def init(self, key: PRNGKey, dtype=jnp.float32) -> BidirectionalParams:
        kf, kb = jax.random.split(key)
        return BidirectionalParams(self.forward.init(kf, dtype), self.backward.init(kb, dtype))

    def init_carry(self, batch_shape=(), dtype=jnp.float32) -> BidirectionalCarry:
        return BidirectionalCarry(
            self.forward.init_carry(batch_shape, dtype),
            self.backward.init_carry(batch_shape, dtype),
        )

    def supports(self, capability: type) -> bool:
        if capability is Noisy:
            return supports(self.forward, Noisy) or supports(self.backward, Noisy)
        return False

    def with_noise(self, params, key, batch_shape=(), *, deterministic=False):
        """Noise for both directions, each from its own split of ``key``."""
        kf, kb = (None, None) if key is None else jax.random.split(key)
        return BidirectionalParams(
            with_noise(self.forward, params.forward, kf, batch_shape, deterministic=deterministic),
            with_noise(
                self.backward, params.backward, kb, batch_shape, deterministic=deterministic
            ),
        )

    def __call__(
        self,
        params: BidirectionalParams,
        xs: Array,
        carry: BidirectionalCarry | None = None,
        *,
        lengths: Array | None = None,
        resets: Array | None = None,
        reverse: bool = False,
        truncate: int | None = None,
        time_axis: int = 0,
        method: Method | str | None = None,
    ) -> tuple[BidirectionalCarry, Array]:
        """Run both directions over ``xs`` ``[T, *B, I]``; returns ``ys`` ``[T, *B, Hf + Hb]``.

        The keyword options are :func:`seqjax.unroll`'s, applied to both directions
        (``reverse`` flips both).
        """
        carry = BidirectionalCarry(None, None) if carry is None else carry
        common: dict[str, Any] = dict(
            lengths=lengths, resets=resets, truncate=truncate, time_axis=time_axis, method=method
        )
        cf, yf = unroll(self.forward, params.forward, xs, carry.forward, reverse=reverse, **common)
        cb, yb = unroll(
            self.backward, params.backward, xs, carry.backward, reverse=not reverse, **common
        )
        return BidirectionalCarry(cf, cb), jnp.concatenate([yf, yb], axis=-1)


@dataclass(frozen=True)
class Stack(Cell, Layer):
    """Recurrent layers applied one after another, each over the whole sequence.

    Each layer is a cell or a sequence layer (e.g. :class:`Bidirectional`); layer ``k``
    reads the outputs of layer ``k - 1``. Parameters and carries are tuples, one entry per
    layer. When every layer is a cell, the stack is a cell too: ``step``/``apply`` advance
    all layers by one time step (for generation) and ``unroll(stack, ...)`` runs them all
    inside one scan; calling the stack runs layer by layer, which is faster for training.

    Attributes:
        layers: the layers, bottom first.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, Stack
        >>> model = Stack.build(LSTMCell, input_size=3, hidden_sizes=(8, 8), bidirectional=True)
        >>> params = model.init(jax.random.key(0))
        >>> carry, ys = model(params, jnp.ones((2, 5, 3)), time_axis=1)    # batch-major
        >>> ys.shape                                                       # [B, T, 2H]
        (2, 5, 16)
    """

    layers: tuple[Any, ...]

    def __post_init__(self):
        if isinstance(self.layers, Cell | Layer | str) or not isinstance(self.layers, Iterable):
            raise TypeError(
                "Stack: layers must be a sequence of cells or sequence layers (a tuple, "
                f"bottom first: Stack((cell,)) for one); got {self.layers!r}"
            )
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ValueError("Stack: layers must hold at least one layer; got none")
        for k, layer in enumerate(self.layers):
            if not isinstance(layer, Cell | Layer):
                raise TypeError(
                    f"Stack: layer {k} must be a seqjax cell or sequence layer instance; got "
                    f"{layer!r}"
                )
        for k in range(1, len(self.layers)):
            want, got = output_size(self.layers[k - 1]), self.layers[k].input_size
            if want != got:
                raise ValueError(
                    f"Stack: layer {k} must have input_size {want} (layer {k - 1}'s output "
                    f"size); got {got}"
                )

    @classmethod
    def build(
        cls,
        make_cell: Callable[[int, int], Cell],
        input_size: int,
        hidden_sizes: Sequence[int],
        *,
        bidirectional: bool = False,
    ) -> Stack:
        """Stack ``make_cell(input_size, hidden_size)`` cells, one layer per hidden size.

        ``make_cell`` is a cell class or any function of the two sizes, e.g.
        ``functools.partial(GRUCell, reset_after=False)``. With ``bidirectional`` each
        layer is a :class:`Bidirectional` pair and the next layer reads ``2H`` features.
        """
        layers: list[Cell | Bidirectional] = []
        size = input_size
        for hidden in hidden_sizes:
            if bidirectional:
                layers.append(Bidirectional(make_cell(size, hidden), make_cell(size, hidden)))
                size = 2 * hidden
            else:
                layers.append(make_cell(size, hidden))
                size = hidden
        return cls(tuple(layers))

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.layers[0].input_size

    @property
    def output_size(self) -> int:
        return output_size(self.layers[-1])

    @property
    def hidden_size(self) -> int:  # type: ignore[override]
        return self.output_size

    def supports(self, capability: type) -> bool:
        if capability is Noisy:
            return any(supports(layer, Noisy) for layer in self.layers)
        return False

    def with_noise(self, params, key, batch_shape=(), *, deterministic=False) -> tuple:
        """Noise for every layer, each from its own split of ``key``."""
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        return tuple(
            with_noise(layer, p, k, batch_shape, deterministic=deterministic)
            for layer, p, k in zip(self.layers, params, keys, strict=True)
        )

    def init(self, key: PRNGKey, dtype=jnp.float32) -> tuple:
        keys = jax.random.split(key, len(self.layers))
        return tuple(layer.init(k, dtype) for layer, k in zip(self.layers, keys, strict=True))

    def init_carry(self, batch_shape=(), dtype=jnp.float32) -> tuple:
        return tuple(layer.init_carry(batch_shape, dtype) for layer in self.layers)

    def __call__(
        self,
        params: tuple,
        xs: Array,
        carry: tuple | None = None,
        *,
        lengths: Array | None = None,
        resets: Array | None = None,
        reverse: bool = False,
        truncate: int | None = None,
        time_axis: int = 0,
        method: Method | str | None = None,
    ) -> tuple[tuple, Array]:
        """Run the layers bottom to top over ``xs`` ``[T, *B, I]``; ``ys`` is the top's output.

        The keyword options are :func:`seqjax.unroll`'s, applied to every layer
        (``reverse`` runs the whole stack on the time-reversed valid prefix).
        """
        xs = _checks.floating_array("xs", xs, "Stack")
        axis = _checks.time_axis_of("xs", xs.shape, time_axis, "Stack")
        ys = jnp.moveaxis(xs, axis, 0)
        if resets is not None:
            resets = jnp.moveaxis(jnp.asarray(resets), axis, 0)
        options = UnrollOptions(reverse=reverse, truncate=truncate, method=method)
        carry = (None,) * len(self.layers) if carry is None else tuple(carry)
        for name, tree in (("params", params), ("carry", carry)):
            if len(tree) != len(self.layers):
                raise ValueError(
                    f"Stack: {name} must hold one entry per layer, {len(self.layers)}; "
                    f"got {len(tree)}"
                )
        carries = []
        for layer, p, c in zip(self.layers, params, carry, strict=True):
            c, ys = run_layer(layer, p, ys, c, lengths=lengths, resets=resets, options=options)
            carries.append(c)
        return tuple(carries), jnp.moveaxis(ys, 0, axis)

    def _cells(self) -> tuple:
        if any(isinstance(layer, Layer) and not isinstance(layer, Cell) for layer in self.layers):
            raise TypeError(
                "Stack: step-by-step evaluation needs every layer to be a cell (a "
                "Bidirectional layer needs the whole sequence); got layers "
                f"{[type(layer).__name__ for layer in self.layers]}"
            )
        return self.layers

    def project(self, params: tuple, xs: Array) -> Array:
        """The bottom cell's input projection, ``[..., I] -> [..., G_0]``."""
        return self._cells()[0].project(params[0], xs)

    def step(self, params: tuple, carry: tuple, px: Array) -> tuple[tuple, Array]:
        """Advance every layer one step; ``px`` is the bottom cell's projected input."""
        first, *rest = self._cells()
        c, y = first.step(params[0], carry[0], px)
        carries = [c]
        for cell, p, c in zip(rest, params[1:], carry[1:], strict=True):
            c, y = cell.apply(p, c, y)
            carries.append(c)
        return tuple(carries), y


class DenseParams(NamedTuple):
    w: Array  # [I, O]
    b: Array  # [O]


@dataclass(frozen=True)
class Dense:
    """Affine readout ``y = x W + b`` over any leading dims: ``[..., I] -> [..., O]``.

    Initialisation: ``W`` Glorot uniform, ``b`` zeros.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> head = Dense(input_size=4, output_size=2)
        >>> head(head.init(jax.random.key(0)), jnp.ones((7, 3, 4))).shape
        (7, 3, 2)
    """

    input_size: int
    output_size: int

    def __post_init__(self):
        _checks.sizes(self, ("input_size", "output_size"), "Dense")

    def init(self, key: PRNGKey, dtype=jnp.float32) -> DenseParams:
        w = glorot_uniform(key, (self.input_size, self.output_size), dtype)
        return DenseParams(w=w, b=jnp.zeros((self.output_size,), dtype))

    def __call__(self, params: DenseParams, x: Array) -> Array:
        x = _checks.floating_array("x", x, "Dense")
        if x.ndim < 1 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"Dense: x must have shape [..., {self.input_size}]; got shape {x.shape}"
            )
        _check_leaves(
            "Dense", params, DenseParams, w=(self.input_size, self.output_size),
            b=(self.output_size,),
        )  # fmt: skip
        return affine(x, params.w, params.b)


def _check_leaves(where: str, params, params_type, **shapes) -> None:
    """Raise unless ``params`` has the fields of ``params_type`` with the given shapes (the
    params of another layer or size otherwise fail inside ``dot_general`` or ``take``)."""
    if not all(hasattr(params, name) for name in shapes):
        raise TypeError(
            f"{where}: params must be a {params_type.__name__}{tuple(shapes)} (from init); "
            f"got {type(params).__name__}"
        )
    for name, shape in shapes.items():
        got = jnp.shape(getattr(params, name))
        if got != shape:
            raise ValueError(
                f"{where}: params.{name} must have shape {shape} for this layer; got {got}. "
                "Parameters of another size? Draw them with this layer's init."
            )


class EmbeddingParams(NamedTuple):
    table: Array  # [V, F]


@dataclass(frozen=True)
class Embedding:
    """Token embedding: integer ids ``[...]`` to vectors ``[..., F]``.

    Initialisation: ``N(0, 1)``, as PyTorch's ``nn.Embedding``.

    Ids follow ``jnp.take``: a negative id counts from the end (``-1`` is row ``V - 1``) and an
    id outside ``[-V, V)`` gives a row of NaN, which shows in the loss instead of reading
    another token's row; the same holds under ``jit``. (:func:`seqjax.embedded_unroll` reads
    ids the same way.)

    Example:
        >>> import jax, jax.numpy as jnp
        >>> embed = Embedding(vocab_size=10, features=4)
        >>> embed(embed.init(jax.random.key(0)), jnp.array([[1, 2, 3]])).shape
        (1, 3, 4)
    """

    vocab_size: int
    features: int

    def __post_init__(self):
        _checks.sizes(self, ("vocab_size", "features"), "Embedding")

    def init(self, key: PRNGKey, dtype=jnp.float32) -> EmbeddingParams:
        return EmbeddingParams(jax.random.normal(key, (self.vocab_size, self.features), dtype))

    def __call__(self, params: EmbeddingParams, ids: Array) -> Array:
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"Embedding: ids must be integers; got dtype {ids.dtype}")
        _check_leaves("Embedding", params, EmbeddingParams, table=(self.vocab_size, self.features))
        return jnp.take(params.table, ids, axis=0)


def last_valid(ys: Array, lengths: Array | None = None, *, time_axis: int = 0) -> Array:
    """The output at each sequence's last valid step: ``[T, *B, H] -> [*B, H]``.

    Sequences of length 0 give zeros. Use it for many-to-one models over a forward
    layer (for a bidirectional one, the final carry holds both directions' summaries).

    Example:
        >>> import jax.numpy as jnp
        >>> ys = jnp.arange(6.0).reshape(3, 2, 1)          # [T=3, B=2, H=1]
        >>> last_valid(ys, jnp.array([3, 1])).ravel().tolist()
        [4.0, 1.0]
    """
    axis = _checks.time_axis_of("ys", jnp.shape(ys), time_axis, "last_valid")
    ys = jnp.moveaxis(ys, axis, 0)
    if lengths is None:
        return ys[-1]
    lengths = _checks.lengths_array(lengths, ys.shape[1:-1], ys.shape[0], "last_valid")
    index = jnp.maximum(lengths - 1, 0)[None, ..., None]
    picked = jnp.take_along_axis(ys, index, axis=0)[0]
    return jnp.where((lengths > 0)[..., None], picked, jnp.zeros_like(picked))


def mean_valid(ys: Array, lengths: Array | None = None, *, time_axis: int = 0) -> Array:
    """The mean output over each sequence's valid steps: ``[T, *B, H] -> [*B, H]`` (0 if empty).

    Example:
        >>> import jax.numpy as jnp
        >>> ys = jnp.arange(6.0).reshape(3, 2, 1)
        >>> mean_valid(ys, jnp.array([3, 1])).ravel().tolist()
        [2.0, 1.0]
    """
    axis = _checks.time_axis_of("ys", jnp.shape(ys), time_axis, "mean_valid")
    ys = jnp.moveaxis(ys, axis, 0)
    if lengths is None:
        return ys.mean(axis=0)
    lengths = _checks.lengths_array(lengths, ys.shape[1:-1], ys.shape[0], "mean_valid")
    mask = _checks.valid_steps(lengths, ys.shape[0])[..., None]
    return masked_mean(ys, mask, axis=0)  # accumulated in >= float32, like every masked mean

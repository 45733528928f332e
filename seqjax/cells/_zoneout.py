"""Zoneout (Krueger et al., 2016) around any cell whose state is ``h`` or ``(h, c)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._base import (
    CellWrapper,
    JacobianDiagonal,
    Noisy,
    ProjectWeight,
    RecurWeight,
    SplitStep,
    SummedUpdate,
    with_noise,
)
from seqjax.cells._common import bernoulli


class ZoneoutParams(NamedTuple):
    """Parameters of a :class:`ZoneoutCell`."""

    cell: PyTree  # the wrapped cell's params
    key: PRNGKey | None = None  # None: evaluation (the expectation); a key: training


class ZoneoutCarry(NamedTuple):
    """State of a :class:`ZoneoutCell`."""

    cell: PyTree  # the wrapped cell's carry
    step: Array  # [*B, 1] steps taken since the carry was made, the index of the next masks


def _fields(carry) -> tuple[str, ...] | None:
    """The state fields zoneout acts on: ``()`` for an array, ``("h", "c")`` for an LSTM."""
    fields = getattr(carry, "_fields", None)
    if fields is None:
        return () if hasattr(carry, "shape") else None
    if "h" not in fields or not set(fields) <= {"h", "c"}:
        return None
    return tuple(fields)


@dataclass(frozen=True)
class ZoneoutCell(CellWrapper):
    """Zoneout: each unit keeps its previous value with some probability, at each step.

    Krueger et al., "Zoneout: regularizing RNNs by randomly preserving hidden activations",
    ICLR 2017 (arXiv:1606.01305, 2016). With ``(h~, c~)`` the wrapped cell's new state and
    ``d`` fresh Bernoulli draws per unit, per step and per sequence::

        training:    h' = d_h * h + (1 - d_h) * h~       d_h ~ Bernoulli(hidden_rate)
                     c' = d_c * c + (1 - d_c) * c~       d_c ~ Bernoulli(cell_rate)
        evaluation:  h' = z_h * h + (1 - z_h) * h~       (the expectation; z = the rate)
                     c' = z_c * c + (1 - z_c) * c~

    The output is the new ``h'``. Unlike dropout, zoneout never zeroes a unit: it carries
    the old value forward, so the identity path through time (and its gradient) stays.
    The paper's LSTM uses ``cell_rate`` 0.5 and ``hidden_rate`` 0.05.

    Randomness: the params hold a key, ``ZoneoutParams(cell, key)``. ``init`` gives
    ``key=None`` (evaluation); :meth:`with_noise` (or :func:`seqjax.with_noise`) sets one.
    The masks of sequence row ``r`` at the ``n``-th step since its carry was made come from
    ``fold_in(fold_in(key, r), n)``, and the carry counts ``n`` (``ZoneoutCarry.step``), so
    masks differ between steps and between rows and are reproducible from the key. Under
    ``jax.vmap`` over sequences every row is row 0: vmap the key too. A reset (``unroll``'s
    ``resets``) restarts the count, so a later episode in the same row repeats the earlier
    episode's masks. In half precision the count wraps after ``2^8`` (bfloat16) or ``2^11``
    (float16) steps, the largest integers those dtypes hold exactly; in float32 after
    ``2^24``.

    With both rates 0 every step is exactly the wrapped cell's.

    * Wrapped cell: its carry must be an array ``h`` (Elman, GRU) or a NamedTuple with
      fields ``h`` and ``c`` (the LSTMs), and its output its new ``h``.
    * Carry: :class:`ZoneoutCarry` ``(cell, step)``; ``step`` is ``[*B, 1]`` in the carry
      dtype (0 from ``init_carry``).
    * Capabilities: always :class:`~seqjax.cells.Noisy`; the wrapped cell's split step (so
      the structured derivative), summed update, projection and recurrent weights and
      Jacobian diagonal are kept, since zoneout acts after the wrapped update, elementwise.
      Not its linear recurrence (the step count is part of the state).

    Attributes:
        cell: the wrapped cell.
        hidden_rate: ``z_h``, the probability that a unit of ``h`` keeps its value.
        cell_rate: ``z_c``, the same for ``c``; must be 0 for a cell without one.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import LSTMCell, unroll
        >>> cell = ZoneoutCell(LSTMCell(3, 4), hidden_rate=0.05, cell_rate=0.5)
        >>> params = cell.init(jax.random.key(0))               # key None: evaluation
        >>> train = cell.with_noise(params, jax.random.key(1))  # a key: random masks
        >>> carry, ys = unroll(cell, train, jnp.ones((6, 2, 3)))
        >>> ys.shape, carry.step[:, 0].tolist()
        ((6, 2, 4), [6.0, 6.0])
    """

    cell: Any
    hidden_rate: float = 0.0
    cell_rate: float = 0.0
    forwards = frozenset(
        {SplitStep, SummedUpdate, ProjectWeight, RecurWeight, JacobianDiagonal}
    )  # zoneout only mixes the new state with the old, after the wrapped update
    own = frozenset({Noisy})

    def __post_init__(self):
        super().__post_init__()
        for name in ("hidden_rate", "cell_rate"):
            rate = getattr(self, name)
            if not _checks.is_real(rate) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"ZoneoutCell: {name} must be a number in [0, 1]; got {rate!r}")
        fields = _fields(jax.eval_shape(lambda: self.cell.init_carry(())))
        if fields is None:
            raise TypeError(
                "ZoneoutCell: the wrapped cell's carry must be an array h or a NamedTuple with "
                f"fields h (and c); got the carry of {type(self.cell).__name__}"
            )
        if self.cell_rate and "c" not in fields:
            raise ValueError(
                f"ZoneoutCell: cell_rate applies to a cell state c, which "
                f"{type(self.cell).__name__} does not have; got cell_rate={self.cell_rate}"
            )

    def init(self, key: PRNGKey, dtype=jnp.float32) -> ZoneoutParams:
        """The wrapped cell's params, key None (evaluation)."""
        return ZoneoutParams(cell=self.cell.init(key, dtype), key=None)

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> ZoneoutCarry:
        """The wrapped cell's initial carry and a step count of 0, ``[*B, 1]``."""
        return ZoneoutCarry(
            cell=self.cell.init_carry(batch_shape, dtype),
            step=jnp.zeros((*batch_shape, 1), dtype),
        )

    def with_noise(
        self,
        params: ZoneoutParams,
        key: PRNGKey | None,
        batch_shape: tuple[int, ...] = (),
        *,
        deterministic: bool = False,
    ) -> ZoneoutParams:
        """``params`` with a key for the masks (training), or none if ``deterministic``.

        ``batch_shape`` is not needed (masks are drawn at each step) and only passed on
        to the wrapped cell.
        """
        if key is None and not deterministic:
            raise ValueError(
                "ZoneoutCell.with_noise: key must be a PRNG key unless deterministic=True; got None"
            )
        own, inner_key = (None, None) if key is None else tuple(jax.random.split(key))
        inner = with_noise(
            self.cell, params.cell, inner_key, batch_shape, deterministic=deterministic
        )
        return ZoneoutParams(cell=inner, key=None if deterministic else own)

    def _rates(self, fields: tuple[str, ...] | None) -> dict[str, float]:
        if not fields:
            return {"": self.hidden_rate}
        return {name: self.cell_rate if name == "c" else self.hidden_rate for name in fields}

    def _keep_masks(self, key, count: Array, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Boolean masks (True: keep the old value) for every state field, per row and step."""
        batch_shape = count.shape[:-1]
        rows = math.prod(batch_shape)
        steps = count.reshape(rows).astype(jnp.int32)
        rates = self._rates(tuple(name for name in shapes if name))

        def draw(row, step):
            row_key = jax.random.fold_in(jax.random.fold_in(key, row), step)
            keys = jax.random.split(row_key, len(shapes))
            return {
                name: bernoulli(k, rates[name], shapes[name][len(batch_shape) :])
                for k, name in zip(keys, shapes, strict=True)
            }

        masks = jax.vmap(draw)(jnp.arange(rows, dtype=jnp.int32), steps)
        return {name: m.reshape(shapes[name]) for name, m in masks.items()}

    def _zone(self, params: ZoneoutParams, count: Array, old: PyTree, new: PyTree) -> PyTree:
        """Per state field, ``old`` where the unit keeps its value and ``new`` elsewhere (in
        expectation without a key): linear in ``(old, new)``, so it also maps derivatives."""
        fields = _fields(new)
        old_parts = {"": old} if not fields else old._asdict()
        new_parts = {"": new} if not fields else new._asdict()
        rates = self._rates(fields)
        if params.key is not None:
            active = {name: part.shape for name, part in new_parts.items() if rates[name]}
            keep = self._keep_masks(params.key, count, active) if active else {}
        out = {}
        for name, part in new_parts.items():
            rate, previous = rates[name], old_parts[name]
            if rate == 0:
                out[name] = part
            elif params.key is not None:
                out[name] = jnp.where(keep[name], previous, part)
            else:
                out[name] = rate * previous + (1.0 - rate) * part
        return out[""] if not fields else type(new)(**out)

    @staticmethod
    def _next_count(count: Array) -> Array:
        period = float(min(2 ** (jnp.finfo(count.dtype).nmant + 1), 2**30))
        count = count + 1.0
        return jnp.where(count >= period, jnp.zeros_like(count), count)

    def enter(self, params: ZoneoutParams, carry: ZoneoutCarry) -> PyTree:
        return carry.cell

    def leave(
        self, params: ZoneoutParams, carry: ZoneoutCarry, new: PyTree, y: Array
    ) -> tuple[ZoneoutCarry, Array]:
        """Zoneout of each state field of the wrapped cell's new state; ``(carry, h')``."""
        new = self._zone(params, carry.step, carry.cell, new)
        y = new if not _fields(new) else new.h
        return ZoneoutCarry(cell=new, step=self._next_count(carry.step)), y

    def jacobian_diagonal(
        self, params: ZoneoutParams, carry: ZoneoutCarry, px: Array
    ) -> ZoneoutCarry:
        """The diagonal of ``d carry' / d carry``: 1 where a unit keeps its value, the
        wrapped cell's diagonal where it takes the new one (``rate + (1 - rate) d`` in
        expectation); the step count's is 1 (0 where it wraps)."""
        inner = self.cell.jacobian_diagonal(params.cell, carry.cell, px)
        ones = jax.tree.map(jnp.ones_like, carry.cell)
        count = self._next_count(carry.step)
        slope = jnp.where((count == 0) & (carry.step != 0), 0.0, 1.0).astype(carry.step.dtype)
        return ZoneoutCarry(cell=self._zone(params, carry.step, ones, inner), step=slope)

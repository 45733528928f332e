"""Zoneout (Krueger et al., 2016) around any cell whose state is ``h`` or ``(h, c)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._noise import with_noise


class ZoneoutParams(NamedTuple):
    """Parameters of a :class:`ZoneoutCell`."""

    cell: PyTree  # the wrapped cell's params
    key: PRNGKey | None = None  # None: evaluation (the expectation); a key: training


class ZoneoutCarry(NamedTuple):
    """State of a :class:`ZoneoutCell`."""

    cell: PyTree  # the wrapped cell's carry
    step: Array  # [*B, 1] steps taken since the carry was made, the index of the next masks


def _fields(carry) -> tuple[str, ...]:
    """The state fields zoneout acts on: ``()`` for an array, ``("h", "c")`` for an LSTM."""
    fields = getattr(carry, "_fields", None)
    if fields is None:
        return () if hasattr(carry, "shape") else None
    if "h" not in fields or not set(fields) <= {"h", "c"}:
        return None
    return tuple(fields)


@dataclass(frozen=True)
class ZoneoutCell:
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

    def __post_init__(self):
        for name in ("hidden_rate", "cell_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
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

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

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

    def project(self, params: ZoneoutParams, xs: Array) -> Array:
        """The wrapped cell's projection, ``[..., I] -> [..., G]``."""
        return self.cell.project(params.cell, xs)

    def _rates(self, fields: tuple[str, ...]) -> dict[str, float]:
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
                name: jax.random.bernoulli(k, rates[name], shapes[name][len(batch_shape) :])
                for k, name in zip(keys, shapes, strict=True)
            }

        masks = jax.vmap(draw)(jnp.arange(rows, dtype=jnp.int32), steps)
        return {name: m.reshape(shapes[name]) for name, m in masks.items()}

    def step(
        self, params: ZoneoutParams, carry: ZoneoutCarry, px: Array
    ) -> tuple[ZoneoutCarry, Array]:
        """One step of the wrapped cell, then zoneout of each state field; ``(carry, h')``."""
        new, y = self.cell.step(params.cell, carry.cell, px)
        fields = _fields(new)
        old_parts = {"": carry.cell} if not fields else carry.cell._asdict()
        new_parts = {"": new} if not fields else new._asdict()
        rates = self._rates(fields)
        out = {}
        if params.key is not None:
            active = {name: part.shape for name, part in new_parts.items() if rates[name]}
            keep = self._keep_masks(params.key, carry.step, active) if active else {}
        for name, part in new_parts.items():
            rate, old = rates[name], old_parts[name]
            if rate == 0:
                out[name] = part
            elif params.key is not None:
                out[name] = jnp.where(keep[name], old, part)
            else:
                out[name] = rate * old + (1.0 - rate) * part
        new = out[""] if not fields else type(new)(**out)
        y = new if not fields else new.h
        dtype = carry.step.dtype
        period = float(min(2 ** (jnp.finfo(dtype).nmant + 1), 2**30))
        count = carry.step + 1.0
        count = jnp.where(count >= period, jnp.zeros_like(count), count)
        return ZoneoutCarry(cell=new, step=count), y

    def apply(
        self, params: ZoneoutParams, carry: ZoneoutCarry, x: Array
    ) -> tuple[ZoneoutCarry, Array]:
        """One step from the raw input ``x`` ``[*B, I]``."""
        return self.step(params, carry, self.project(params, x))

"""A learnable initial state, as a wrapper around any cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax._types import Array, PRNGKey, PyTree
from seqjax.cells._base import (
    CellWrapper,
    JacobianDiagonal,
    Noisy,
    ProjectWeight,
    SplitStep,
    SummedUpdate,
)


class LearnedInitParams(NamedTuple):
    """Parameters of a :class:`LearnedInitCell`."""

    cell: PyTree  # the wrapped cell's params
    carry: PyTree  # the learned initial state: the wrapped cell's carry for one sequence, [H]


class LearnedInitCarry(NamedTuple):
    """State of a :class:`LearnedInitCell`."""

    cell: PyTree  # the wrapped cell's carry; stands for the learned state until started
    started: Array  # [*B, 1]: 0 until the first step (the state is then ``params.carry``), 1 after


@dataclass(frozen=True)
class LearnedInitCell(CellWrapper):
    """A cell whose initial state is a parameter, shared by every sequence.

    The params add ``carry``, one state of the wrapped cell (leaves ``[H]``) trained like
    any weight; it is broadcast over the batch. ``init_carry`` cannot see params, so the
    carry says whether it has been started: ``LearnedInitCarry(cell, started)``, with
    ``started = 0`` from ``init_carry``. Each step first reads the state::

        state = started * carry.cell + (1 - started) * params.carry     (broadcast over *B)

    then runs the wrapped cell from it and sets ``started = 1``. So ``unroll`` with no
    carry, and every ``reset`` in a stream (which restores ``init_carry``), start from the
    learned state, and a carry passed on between windows continues where it stopped.
    :meth:`state` gives the state a carry stands for (e.g. after ``lengths`` of 0).

    * Carry: :class:`LearnedInitCarry`; the output is the wrapped cell's.
    * Capabilities: the wrapped cell's split step, summed update, projection weight,
      Jacobian diagonal and noise; not its recurrent weight or linear recurrence (the state
      read blends in ``params.carry`` by ``started``, a part of the carry).
    * Initialisation: the wrapped cell's params; ``carry`` its zero state, so an
      initialised wrapper computes exactly what the wrapped cell computes from zeros.

    Attributes:
        cell: the wrapped cell.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from seqjax import GRUCell, unroll
        >>> cell = LearnedInitCell(GRUCell(3, 4))
        >>> params = cell.init(jax.random.key(0))
        >>> params.carry.shape                                   # one state, [H]
        (4,)
        >>> loss = lambda p: jnp.sum(unroll(cell, p, jnp.ones((5, 2, 3)))[1])
        >>> bool(jnp.any(jax.grad(loss)(params).carry != 0))     # it learns
        True
    """

    cell: Any
    # Not RecurWeight nor LinearRecurrence: the state read, started * c + (1 - started) *
    # learned, is not linear in the carry (started is part of it).
    forwards = frozenset({SplitStep, SummedUpdate, ProjectWeight, JacobianDiagonal, Noisy})

    def init(self, key: PRNGKey, dtype=jnp.float32) -> LearnedInitParams:
        """The wrapped cell's params and its zero state (unbatched) as the initial state."""
        return LearnedInitParams(
            cell=self.cell.init(key, dtype), carry=self.cell.init_carry((), dtype)
        )

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LearnedInitCarry:
        """A not-yet-started carry: it stands for ``params.carry`` on every sequence."""
        return LearnedInitCarry(
            cell=self.cell.init_carry(batch_shape, dtype),
            started=jnp.zeros((*batch_shape, 1), dtype),
        )

    def state(self, params: LearnedInitParams, carry: LearnedInitCarry) -> PyTree:
        """The wrapped cell's state that ``carry`` stands for, leaves ``[*B, H]``."""

        def blend(c, learned):
            started = jnp.broadcast_to(carry.started, c.shape).astype(c.dtype)
            learned = jnp.broadcast_to(learned.astype(c.dtype), c.shape)
            return started * c + (1.0 - started) * learned

        return jax.tree.map(blend, carry.cell, params.carry)

    enter = state

    def leave(
        self, params: LearnedInitParams, carry: LearnedInitCarry, new: PyTree, y: Array
    ) -> tuple[LearnedInitCarry, Array]:
        return LearnedInitCarry(cell=new, started=jnp.ones_like(carry.started)), y

    def jacobian_diagonal(
        self, params: LearnedInitParams, carry: LearnedInitCarry, px: Array
    ) -> LearnedInitCarry:
        """The wrapped cell's diagonal at :meth:`state`, times ``started`` (the learned state
        stands in until then); ``started`` itself becomes 1 whatever it was: 0."""
        inner = self.cell.jacobian_diagonal(params.cell, self.state(params, carry), px)
        scale = jax.tree.map(
            lambda d: d * jnp.broadcast_to(carry.started, d.shape).astype(d.dtype), inner
        )
        return LearnedInitCarry(cell=scale, started=jnp.zeros_like(carry.started))

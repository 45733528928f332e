"""Shape vocabulary shared by every docstring in seqjax.

Dimension letters:

* ``T`` time steps,
* ``B`` batch (any number of leading dims, ``*B``, including none),
* ``I`` input features, ``H`` hidden units, ``O`` output features,
* ``G`` gate pre-activations (``4H`` for an LSTM, ``3H`` for a GRU, ``H`` for an Elman cell).

Sequence layout: seqjax computes time-major (``[T, *B, I]``, the layout ``lax.scan`` sees).
Every public entry point that takes a sequence also takes ``time_axis`` (default ``0``);
pass ``time_axis=1`` for batch-major ``[B, T, I]`` data. Outputs come back in the caller's
layout.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

import jax

Array: TypeAlias = jax.Array
PRNGKey: TypeAlias = jax.Array
PyTree: TypeAlias = Any


class Cell(Protocol):
    """The cell protocol: hyperparameters in fields, pure methods.

    ``step`` may be refined, optionally, into two methods with
    ``step(params, carry, px) == update(params, carry, px, recur(params, carry))``:

    * ``recur(params, carry) -> r``: the recurrent matmul (``h W_h``, ``[*B, G]`` for the
      shipped cells), a function of the carry and the recurrent weights only;
    * ``update(params, carry, px, r) -> (carry, y)``: the rest of the step, elementwise
      for the shipped cells (the reset-before GRU keeps its second matmul here).

    A cell whose ``update`` reads ``px`` and ``r`` only through their sum (LSTM, Elman) may
    say so with a class attribute ``update_reads_sum = True``
    (``update(p, c, px, r) == update(p, c, px + r, 0)``); the structured derivative then saves
    and differentiates one ``[*B, G]`` array per step instead of two.

    A cell may also name the matrices of those two maps (either or both):
    ``project_weight(params)`` ``W_x`` ``[I, G]`` and ``recur_weight(params)`` ``W_h`` with
    ``project(params, x) == x W_x + b`` and ``recur(params, carry) == recur_input(carry) W_h
    + b_h`` (``b``, ``b_h`` constant in ``x`` and the carry; ``recur_input`` linear, by
    default the carry itself). The structured derivative then multiplies cotangents by
    transposed copies of them, the form XLA:CPU runs fastest.

    With them, ``unroll(..., backward="custom")`` differentiates the scan with a reverse
    loop that holds only what is sequential and computes all weight and input gradients
    as one matmul each over every step (seqjax/_backward.py). A cell without them works
    everywhere, through JAX's own derivative of the scan.
    """

    input_size: int
    hidden_size: int

    def init(self, key: PRNGKey) -> PyTree: ...

    def init_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = ...) -> PyTree: ...

    def project(self, params: PyTree, xs: Array) -> Array: ...

    def step(self, params: PyTree, carry: PyTree, px: Array) -> tuple[PyTree, Array]: ...

    def apply(self, params: PyTree, carry: PyTree, x: Array) -> tuple[PyTree, Array]: ...

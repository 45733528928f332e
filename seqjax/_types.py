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

from typing import Any, TypeAlias

import jax

Array: TypeAlias = jax.Array
PRNGKey: TypeAlias = jax.Array
PyTree: TypeAlias = Any

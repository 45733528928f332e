"""How :func:`seqjax.unroll` evaluates a cell over time: one small frozen object per method.

=========================  ============================================  =========================
method                     what it does                                  file
=========================  ============================================  =========================
:class:`Scan`              ``lax.scan`` step by step (the default); its  ``_scan.py``,
                           derivative by autodiff or structured          ``_structured.py``
:class:`Remat`             the scan in checkpointed chunks: BPTT         ``_remat.py``
                           memory grows like ``T/k + k``
:class:`Associative`       linear-in-state cells: one associative scan   ``_associative.py``
:class:`DEER`              any cell: Newton iterations over the          ``_newton.py``
                           trajectory
:class:`QuasiDEER`         the same with diagonal Jacobians              ``_newton.py``
:class:`Pallas`            one persistent kernel over all steps (GPU;    ``_pallas.py``
                           chosen only explicitly until measured)
:class:`SequenceParallel`  the time axis split over a mesh axis; each    ``_sequence_parallel.py``
                           chunk by a scan, Associative, DEER or
                           QuasiDEER, joined by collectives
=========================  ============================================  =========================

The strings ``"sequential"``, ``"associative"``, ``"deer"`` and ``"quasi_deer"`` are short
for the default object of each; ``None`` is ``Scan()``. A new method is one file: a frozen
dataclass subclassing :class:`Method` with a ``run`` (and ``check`` for what it needs of
the cell), exported here.
"""

from __future__ import annotations

from seqjax.methods._associative import Associative
from seqjax.methods._base import Inputs, Method, ParallelInfo
from seqjax.methods._newton import DEER, QuasiDEER
from seqjax.methods._pallas import Pallas
from seqjax.methods._remat import Remat
from seqjax.methods._scan import Scan
from seqjax.methods._sequence_parallel import SequenceParallel

__all__ = [
    "DEER",
    "SHORTHANDS",
    "Associative",
    "Inputs",
    "Method",
    "Pallas",
    "ParallelInfo",
    "QuasiDEER",
    "Remat",
    "Scan",
    "SequenceParallel",
    "resolve",
]

#: The strings :func:`seqjax.unroll` accepts for ``method``, and the default object each names.
SHORTHANDS: dict[str, Method] = {
    "sequential": Scan(),
    "associative": Associative(),
    "deer": DEER(),
    "quasi_deer": QuasiDEER(),
}


def resolve(method: Method | str | None, where: str = "unroll") -> Method:
    """The :class:`Method` that ``method`` names (an object, a shorthand string, or None).

    Example:
        >>> resolve("deer") == DEER(), resolve(None) == Scan()
        (True, True)
    """
    if method is None:
        return SHORTHANDS["sequential"]
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in SHORTHANDS:
        return SHORTHANDS[method]
    raise ValueError(
        f"{where}: method must be a seqjax.methods.Method (Scan, Remat, Associative, DEER, "
        f"QuasiDEER), one of {tuple(SHORTHANDS)} or None; got {method!r}"
    )

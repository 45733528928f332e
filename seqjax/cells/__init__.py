"""Recurrent cells: one family per file, each satisfying the cell protocol (DESIGN.md)."""

from seqjax.cells._elman import ElmanCell, ElmanParams
from seqjax.cells._gru import GRUCell, GRUParams
from seqjax.cells._lstm import LSTMCarry, LSTMCell, LSTMParams

__all__ = [
    "ElmanCell",
    "ElmanParams",
    "GRUCell",
    "GRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
]

"""Recurrent cells: one family per file, each satisfying the cell protocol (seqjax._types.Cell)."""

from seqjax.cells._dropout import DropoutMasks, DropoutParams, VariationalDropoutCell
from seqjax.cells._elman import ElmanCell, ElmanParams
from seqjax.cells._esn import EchoStateCell, EchoStateParams, spectral_radius
from seqjax.cells._gru import GRUCell, GRUParams
from seqjax.cells._layernorm import (
    LayerNormGRUCell,
    LayerNormGRUParams,
    LayerNormLSTMCell,
    LayerNormLSTMParams,
    layer_norm,
)
from seqjax.cells._learned_init import LearnedInitCarry, LearnedInitCell, LearnedInitParams
from seqjax.cells._lru import LRUCarry, LRUCell, LRUParams
from seqjax.cells._lstm import LSTMCarry, LSTMCell, LSTMParams
from seqjax.cells._lstmp import LSTMProjCell, LSTMProjParams
from seqjax.cells._minimal import MinGRUCell, MinGRUParams, MinLSTMCell, MinLSTMParams
from seqjax.cells._noise import with_noise
from seqjax.cells._peephole import PeepholeLSTMCell, PeepholeLSTMParams
from seqjax.cells._zoneout import ZoneoutCarry, ZoneoutCell, ZoneoutParams

__all__ = [
    "ElmanCell",
    "ElmanParams",
    # echo-state networks (issue 5)
    "EchoStateCell",
    "EchoStateParams",
    "spectral_radius",
    "GRUCell",
    "GRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
    "LRUCarry",
    "LRUCell",
    "LRUParams",
    "MinGRUCell",
    "MinGRUParams",
    "MinLSTMCell",
    "MinLSTMParams",
    # regularisers and variants (issue 6)
    "DropoutMasks",
    "DropoutParams",
    "LayerNormGRUCell",
    "LayerNormGRUParams",
    "LayerNormLSTMCell",
    "LayerNormLSTMParams",
    "LearnedInitCarry",
    "LearnedInitCell",
    "LearnedInitParams",
    "LSTMProjCell",
    "LSTMProjParams",
    "PeepholeLSTMCell",
    "PeepholeLSTMParams",
    "VariationalDropoutCell",
    "ZoneoutCarry",
    "ZoneoutCell",
    "ZoneoutParams",
    "layer_norm",
    "with_noise",
]

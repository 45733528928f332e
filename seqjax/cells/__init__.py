"""Recurrent cells: one family per file, each a :class:`Cell` with its capabilities.

The cell protocol, its capabilities and the wrapper base live in ``_base.py``; every other
file holds one family (parameters, carry, cell class and its pure math).
"""

from seqjax.cells._base import (
    CAPABILITIES,
    Cell,
    CellWrapper,
    JacobianDiagonal,
    Layer,
    LinearRecurrence,
    LogCoefficients,
    Noisy,
    ProjectWeight,
    RecurWeight,
    SplitStep,
    SummedUpdate,
    jacobian_diagonal,
    supports,
    with_noise,
)
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
from seqjax.cells._peephole import PeepholeLSTMCell, PeepholeLSTMParams
from seqjax.cells._zoneout import ZoneoutCarry, ZoneoutCell, ZoneoutParams

#: The three classic cells by name, the ones PyTorch and Flax also have
#: (``seqjax train-charlm --cell`` and ``seqjax bench --cells`` choose from these).
BY_NAME: dict[str, type[LSTMCell | GRUCell | ElmanCell]] = {
    "lstm": LSTMCell,
    "gru": GRUCell,
    "elman": ElmanCell,
}

__all__ = [
    "BY_NAME",
    "CAPABILITIES",
    "Cell",
    "CellWrapper",
    "DropoutMasks",
    "DropoutParams",
    "EchoStateCell",
    "EchoStateParams",
    "ElmanCell",
    "ElmanParams",
    "GRUCell",
    "GRUParams",
    "JacobianDiagonal",
    "LRUCarry",
    "LRUCell",
    "LRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
    "LSTMProjCell",
    "LSTMProjParams",
    "Layer",
    "LayerNormGRUCell",
    "LayerNormGRUParams",
    "LayerNormLSTMCell",
    "LayerNormLSTMParams",
    "LearnedInitCarry",
    "LearnedInitCell",
    "LearnedInitParams",
    "LinearRecurrence",
    "LogCoefficients",
    "MinGRUCell",
    "MinGRUParams",
    "MinLSTMCell",
    "MinLSTMParams",
    "Noisy",
    "PeepholeLSTMCell",
    "PeepholeLSTMParams",
    "ProjectWeight",
    "RecurWeight",
    "SplitStep",
    "SummedUpdate",
    "VariationalDropoutCell",
    "ZoneoutCarry",
    "ZoneoutCell",
    "ZoneoutParams",
    "jacobian_diagonal",
    "layer_norm",
    "spectral_radius",
    "supports",
    "with_noise",
]

"""seqjax: recurrent sequence models as pure JAX functions over pytrees.

Cells (:class:`ElmanCell`, :class:`LSTMCell`, :class:`GRUCell`) hold hyperparameters and
expose pure ``init / init_carry / project / step / apply`` methods; :func:`unroll` runs one
over a sequence with ``lax.scan``; :mod:`seqjax.layers` assembles stacks, bidirectional
layers and heads. Shapes use the letters of :mod:`seqjax._types` (T, B, I, H, O); sequences
are time-major unless ``time_axis`` says otherwise.
"""

from seqjax.cells import (
    ElmanCell,
    ElmanParams,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    LSTMParams,
)
from seqjax.layers import (
    Bidirectional,
    BidirectionalCarry,
    BidirectionalParams,
    Dense,
    DenseParams,
    Embedding,
    EmbeddingParams,
    Stack,
    last_valid,
    mean_valid,
)
from seqjax.unroll import unroll, unroll_reference

__version__ = "0.1.0"

__all__ = [
    "Bidirectional",
    "BidirectionalCarry",
    "BidirectionalParams",
    "Dense",
    "DenseParams",
    "ElmanCell",
    "ElmanParams",
    "Embedding",
    "EmbeddingParams",
    "GRUCell",
    "GRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
    "Stack",
    "last_valid",
    "mean_valid",
    "unroll",
    "unroll_reference",
]

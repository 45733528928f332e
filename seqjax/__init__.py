"""seqjax: recurrent sequence models as pure JAX functions over pytrees.

Cells (:class:`ElmanCell`, :class:`LSTMCell`, :class:`GRUCell`) hold hyperparameters and
expose pure ``init / init_carry / project / step / apply`` methods; :func:`unroll` runs one
over a sequence with ``lax.scan``; :mod:`seqjax.layers` assembles stacks, bidirectional
layers and heads; :mod:`seqjax.train` trains them (BPTT, truncated BPTT, clipping) and
:mod:`seqjax.generate` samples from them. Shapes use the letters of :mod:`seqjax._types`
(T, B, I, H, O); sequences are time-major unless ``time_axis`` says otherwise.
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
from seqjax.generate import pick_token, sample
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
from seqjax.train import (
    StepMetrics,
    bptt_step,
    cross_entropy,
    default_optimizer,
    mean_squared_error,
    sequence_mask,
    stream_windows,
    tbptt_scan,
    tbptt_step,
    window_loss,
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
    "StepMetrics",
    "bptt_step",
    "cross_entropy",
    "default_optimizer",
    "last_valid",
    "mean_squared_error",
    "mean_valid",
    "pick_token",
    "sample",
    "sequence_mask",
    "stream_windows",
    "tbptt_scan",
    "tbptt_step",
    "unroll",
    "unroll_reference",
    "window_loss",
]

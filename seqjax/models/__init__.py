"""Models for each classic task shape, assembled from seqjax cells and layers.

* many-to-one: :class:`SequenceClassifier` (last valid state or pooled states, dense head);
* synced many-to-many: :class:`SequenceTagger` (one tag per valid step);
* one-to-many: :class:`ConditionedGenerator` (initial state from one vector, token decoder);
* many-to-many: :class:`Seq2Seq` (encoder-decoder, teacher forcing, greedy/sampled/beam).

Each is a frozen dataclass of hyperparameters with pure ``init`` and apply methods over
NamedTuple parameters; every one takes ``lengths`` and ignores padded steps.
"""

from seqjax.models.classifier import ClassifierParams, SequenceClassifier
from seqjax.models.conditioned import ConditionedGenerator, ConditionedParams
from seqjax.models.seq2seq import Seq2Seq, Seq2SeqParams
from seqjax.models.tagger import SequenceTagger, TaggerParams

__all__ = [
    "ClassifierParams",
    "ConditionedGenerator",
    "ConditionedParams",
    "Seq2Seq",
    "Seq2SeqParams",
    "SequenceClassifier",
    "SequenceTagger",
    "TaggerParams",
]

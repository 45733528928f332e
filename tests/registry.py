"""Every cell seqjax ships, small, enrolled in every property test. A new cell is one line here."""

from __future__ import annotations

import jax
import pytest

from seqjax import EchoStateCell, ElmanCell, GRUCell, LSTMCell, Stack
from seqjax.cells import (
    BY_NAME,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LearnedInitCell,
    LRUCell,
    LSTMProjCell,
    MinGRUCell,
    MinLSTMCell,
    PeepholeLSTMCell,
    VariationalDropoutCell,
    ZoneoutCell,
)

I, H = 3, 4

CELLS = {
    # The three classic cells come from seqjax.cells.BY_NAME, the one table of cells by name.
    **{name: BY_NAME[name](I, H) for name in ("lstm", "gru")},
    "elman_tanh": BY_NAME["elman"](I, H),
    "elman_relu": ElmanCell(I, H, activation=jax.nn.relu),
    "gru_reset_before": GRUCell(I, H, reset_after=False),
    "stack_lstm_gru": Stack((LSTMCell(I, H), GRUCell(H, 5))),
    "min_gru": MinGRUCell(I, H),
    "min_lstm_linear": MinLSTMCell(I, H, log_space=False),
    "lru": LRUCell(I, H),
    "lstm_dropout": VariationalDropoutCell(LSTMCell(I, H), input_rate=0.25, recurrent_rate=0.25),
    "lstm_zoneout": ZoneoutCell(LSTMCell(I, H), hidden_rate=0.1, cell_rate=0.5),
    # eps=1: the property tests' fixed float32 and finite-difference tolerances suit unnormalised
    # cells; LN over H=4 units amplifies rounding and curvature by 1/sqrt(var + eps). The
    # default eps is checked in test_variants.py against a float64 reference.
    "lstm_layernorm": LayerNormLSTMCell(I, H, eps=1.0),
    "gru_layernorm": LayerNormGRUCell(I, H, eps=1.0),
    "lstm_peephole": PeepholeLSTMCell(I, H),
    "lstm_proj": LSTMProjCell(I, H, cell_size=6),
    "gru_learned_init": LearnedInitCell(GRUCell(I, H)),
    "esn": EchoStateCell(I, H, connectivity=1.0, bias_scaling=0.5, trainable=True),
}

every_cell = pytest.mark.parametrize("cell", list(CELLS.values()), ids=list(CELLS))

# One cell per kind of carry and of initial state: a plain array, a NamedTuple, two leaves
# of different widths, a tuple of layers' carries, a wrapper's carry, a zero state taken from
# the params, a complex recurrence kept as two real leaves. For properties of unroll's own
# bookkeeping (lengths, padding, layouts, resets, truncation, jit/vmap/grad, TBPTT windows,
# the diagnostics' carry gradients and Jacobians, program size), which touch the cell only
# through its carry's structure: over the whole registry they cost minutes of CI
# compile time for no further coverage. Properties of a cell's math run over every cell.
CARRY_KINDS = [
    "elman_tanh", "lstm", "lstm_proj", "stack_lstm_gru", "lstm_zoneout", "gru_learned_init",
    "lru",
]  # fmt: skip
every_carry_kind = pytest.mark.parametrize(
    "cell", [CELLS[name] for name in CARRY_KINDS], ids=CARRY_KINDS
)

"""Every cell seqjax ships, small, enrolled in every property test. A new cell is one line here."""

from __future__ import annotations

import jax
import pytest

from seqjax import ElmanCell, GRUCell, LSTMCell, Stack

I, H = 3, 4

CELLS = {
    "elman_tanh": ElmanCell(I, H),
    "elman_relu": ElmanCell(I, H, activation=jax.nn.relu),
    "lstm": LSTMCell(I, H),
    "gru": GRUCell(I, H),
    "gru_reset_before": GRUCell(I, H, reset_after=False),
    "stack_lstm_gru": Stack((LSTMCell(I, H), GRUCell(H, 5))),
}

every_cell = pytest.mark.parametrize("cell", list(CELLS.values()), ids=list(CELLS))

"""LSTMProjCell agrees with PyTorch's ``nn.LSTM(proj_size=...)`` through seqjax.interop.torch.

* Stored cases (``tests/fixtures/torch_projection.npz``, written by
  ``tests/fixtures/make_torch_projection_fixtures.py``) run without torch: outputs, final
  states and the gradients with respect to the inputs and the initial state.
* Live cases need torch (they skip without it): weights exported from seqjax and imported
  from torch, and bit-exact round trips.
* The converters reject bad input with errors that name what is wrong.

Tolerances as in ``test_torch_equivalence.py`` (float32 on both sides; summation order
differs).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import Bidirectional, LSTMCarry, LSTMCell, LSTMProjCell, LSTMProjParams, Stack
from seqjax.interop.torch import (
    carry_from_torch,
    carry_to_torch,
    cell_params_from_torch,
    cell_params_to_torch,
    params_from_torch,
    params_to_torch,
)
from tests.test_torch_equivalence import (
    assert_bit_equal,
    assert_results_close,
    random_params,
    run_seqjax,
)

FIXTURE = Path(__file__).parent / "fixtures" / "torch_projection.npz"
CASES = ("lstm_proj_batch_first", "lstm_proj_packed")


def proj_model(input_size, cell_size, proj_size, num_layers, bidirectional):
    """The seqjax model of ``nn.LSTM(input_size, cell_size, proj_size=proj_size, ...)``."""

    def make(i, h):
        return LSTMProjCell(i, h, cell_size=cell_size)

    if num_layers > 1:
        return Stack.build(make, input_size, [proj_size] * num_layers, bidirectional=bidirectional)
    if bidirectional:
        return Bidirectional(make(input_size, proj_size), make(input_size, proj_size))
    return make(input_size, proj_size)


def load_case(name: str) -> tuple[dict, dict, dict]:
    with np.load(FIXTURE) as data:
        arrays = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(name + "/")}
    config = json.loads(str(arrays.pop("config")))
    state_dict = {
        k.removeprefix("state_dict/"): arrays.pop(k) for k in list(arrays) if "state_dict/" in k
    }
    return config, state_dict, arrays


def _model_of(config):
    return proj_model(
        config["input_size"],
        config["cell_size"],
        config["proj_size"],
        config["num_layers"],
        config["bidirectional"],
    )


@pytest.mark.parametrize("name", CASES)
def test_matches_stored_torch_results(name):
    config, state_dict, case = load_case(name)
    assert "weight_hr_l0" in state_dict
    model = _model_of(config)
    params = params_from_torch(model, state_dict)
    actual = run_seqjax(model, params, case, time_axis=1 if config["batch_first"] else 0)
    assert_results_close(actual, {key: case[key] for key in actual})
    assert actual["out"].shape[-1] == (2 if config["bidirectional"] else 1) * config["proj_size"]
    assert actual["c_n"].shape[-1] == config["cell_size"]
    # Export gives back the stored state_dict: weights bit for bit, LSTM biases summed.
    exported = params_to_torch(model, params)
    assert sorted(exported) == sorted(state_dict)
    for key, value in state_dict.items():
        if key.startswith("bias_ih"):
            value = value + state_dict[key.replace("bias_ih", "bias_hh")]
        elif key.startswith("bias_hh"):
            value = np.zeros_like(value)
        assert exported[key].tobytes() == value.tobytes(), key


def test_fixture_is_small():
    assert FIXTURE.stat().st_size < 100_000


# --- live PyTorch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_layers, bidirectional, batch_first", [(1, False, True), (2, True, False)]
)
def test_export_to_and_import_from_torch(num_layers, bidirectional, batch_first):
    torch = pytest.importorskip("torch")
    from tests.fixtures.make_torch_fixtures import run_torch
    from tests.fixtures.make_torch_projection_fixtures import make_module

    seed = 7 * num_layers
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    num_steps, batch, input_size, cell_size, proj_size = 4, 2, 3, 4, 3
    model = proj_model(input_size, cell_size, proj_size, num_layers, bidirectional)
    module = make_module(input_size, cell_size, proj_size, num_layers, bidirectional, batch_first)
    directions = 2 if bidirectional else 1
    states = num_layers * directions

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x = (
        normal(batch, num_steps, input_size)
        if batch_first
        else normal(num_steps, batch, input_size)
    )
    case = dict(
        x=x,
        h0=normal(states, batch, proj_size),
        c0=normal(states, batch, cell_size),
        g_out=normal(*x.shape[:2], directions * proj_size),
        g_h=normal(states, batch, proj_size),
        g_c=normal(states, batch, cell_size),
        lengths=np.array([num_steps, 2]),
    )

    def torch_results():
        names = ("x", "h0", "c0", "lengths", "g_out", "g_h", "g_c")
        return run_torch(module, *(case[name] for name in names))

    time_axis = 1 if batch_first else 0
    # torch -> seqjax
    params = params_from_torch(model, module.state_dict())
    assert_results_close(run_seqjax(model, params, case, time_axis), torch_results())
    # seqjax -> torch: strict load, same function, bit-exact round trip
    mine = random_params(model, seed)
    state_dict = params_to_torch(model, mine)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    assert_results_close(run_seqjax(model, mine, case, time_axis), torch_results())
    assert_bit_equal(params_from_torch(model, state_dict), mine)


# --- single cells, carries, bad input -------------------------------------------------------


def test_cell_params_round_trip_with_weight_hr():
    cell = LSTMProjCell(3, 2, cell_size=5)
    params = random_params(cell, 0)
    weights = cell_params_to_torch(cell, params)
    assert {k: v.shape for k, v in weights.items()} == {
        "weight_ih": (20, 3),
        "weight_hh": (20, 2),
        "bias_ih": (20,),
        "bias_hh": (20,),
        "weight_hr": (2, 5),
    }
    back = cell_params_from_torch(cell, **weights)
    assert isinstance(back, LSTMProjParams)
    assert_bit_equal(back, params)


def test_projection_errors():
    cell = LSTMProjCell(3, 2, cell_size=5)
    weights = cell_params_to_torch(cell, random_params(cell, 0))
    with pytest.raises(ValueError, match="weight_hr is required"):
        cell_params_from_torch(cell, **(weights | {"weight_hr": None}))
    with pytest.raises(ValueError, match=r"weight_hr must have shape \(2, 5\) \(\[P, C\]"):
        cell_params_from_torch(cell, **(weights | {"weight_hr": weights["weight_hr"].T}))
    with pytest.raises(ValueError, match="weight_hr is the projection of an LSTMProjCell"):
        plain = cell_params_to_torch(LSTMCell(3, 5), random_params(LSTMCell(3, 5), 0))
        cell_params_from_torch(LSTMCell(3, 5), **plain, weight_hr=weights["weight_hr"])
    state_dict = {k + "_l0": v for k, v in weights.items()}
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_hr_l0'\]"):
        params_from_torch(LSTMCell(3, 5), state_dict)
    del state_dict["weight_hr_l0"]
    with pytest.raises(ValueError, match=r"missing keys \['weight_hr_l0'\]"):
        params_from_torch(cell, state_dict)
    with pytest.raises(ValueError, match="one kind of cell"):
        params_from_torch(Stack((LSTMProjCell(3, 4, cell_size=5), LSTMCell(4, 4))), {})
    with pytest.raises(ValueError, match=r"LSTMProjCell cell_size \[5, 6\]"):
        params_from_torch(Stack((cell, LSTMProjCell(2, 2, cell_size=6))), {})
    with pytest.raises(ValueError, match="proj_size < hidden_size"):
        cell_params_to_torch(LSTMProjCell(3, 5, cell_size=5), random_params(cell, 0))


def test_carry_layout_with_a_projection():
    model = Stack.build(lambda i, h: LSTMProjCell(i, h, cell_size=5), 3, (2, 2))
    h0 = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)  # [L * D, B, P]
    c0 = -np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)  # [L * D, B, C]
    carry = carry_from_torch(model, h0, c0)
    assert isinstance(carry[1], LSTMCarry)
    np.testing.assert_array_equal(carry[1].c, c0[1])
    assert jax.tree.structure(carry) == jax.tree.structure(model.init_carry((4,)))
    assert_bit_equal(carry_to_torch(model, carry), (h0, c0))
    with pytest.raises(ValueError, match=r"c0 must have shape \[L \* D, \*B, C\] = \[2, \*B, 5\]"):
        carry_from_torch(model, h0, h0)
    with pytest.raises(ValueError, match="c0 must have the shape of h0 but for its last axis"):
        carry_from_torch(model, h0, c0[:, :3])
    with pytest.raises(ValueError, match="needs c0"):
        carry_from_torch(model, jnp.asarray(h0))

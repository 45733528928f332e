"""seqjax agrees with PyTorch's nn.RNN / nn.LSTM / nn.GRU, through seqjax.interop.torch.

* Stored cases (``tests/fixtures/torch_reference.npz``, written by
  ``tests/fixtures/make_torch_fixtures.py``) run without torch: outputs, final states and the
  gradients with respect to the inputs and the initial state.
* Live cases need torch (they skip without it): random shapes, weights exported from seqjax
  and imported from torch, and the round trips.
* The converters reject bad input with errors that name what is wrong.

Everything is float32 on both sides. Tolerance: rtol 1e-5 (the float32 summation order
differs: PyTorch adds ``bias_ih`` and ``bias_hh`` separately, seqjax adds their sum; XLA and
PyTorch order matmul sums differently), with atol 1e-6 because entries near zero (gradients
that almost cancel) carry the absolute rounding error of the O(1) terms they came from, not
a relative one. Measured on CPU: at most 4e-7 absolute error anywhere and 2.2e-6 relative
error on entries above 0.1; no entry needed more than 7e-8 of atol beyond rtol * |expected|.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import (
    Bidirectional,
    ElmanCell,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    Stack,
    unroll,
)
from seqjax.interop.torch import (
    carry_from_torch,
    carry_to_torch,
    cell_params_from_torch,
    cell_params_to_torch,
    params_from_torch,
    params_to_torch,
)
from seqjax.layers import Dense

RTOL, ATOL = 1e-5, 1e-6
FIXTURE = Path(__file__).parent / "fixtures" / "torch_reference.npz"
with np.load(FIXTURE) as _data:
    STORED_CASES = sorted({name.split("/")[0] for name in _data.files if "/" in name})

MAKE_CELL = {
    "RNN_TANH": ElmanCell,
    "RNN_RELU": partial(ElmanCell, activation=jax.nn.relu),
    "LSTM": LSTMCell,
    "GRU": GRUCell,
}


def seqjax_model(mode, input_size, hidden_size, num_layers, bidirectional):
    """The seqjax model of a PyTorch module: a bare cell or Bidirectional for one layer."""
    make_cell = MAKE_CELL[mode]
    if num_layers > 1:
        hidden_sizes = [hidden_size] * num_layers
        return Stack.build(make_cell, input_size, hidden_sizes, bidirectional=bidirectional)
    if bidirectional:
        return Bidirectional(make_cell(input_size, hidden_size), make_cell(input_size, hidden_size))
    return make_cell(input_size, hidden_size)


@partial(jax.jit, static_argnames=("model", "time_axis"))
def _seqjax_results(model, params, case, time_axis):
    def forward(xs, h0, c0):
        carry = carry_from_torch(model, h0, c0)
        lengths = case.get("lengths")
        if isinstance(model, Stack | Bidirectional):
            carry, ys = model(params, xs, carry, lengths=lengths, time_axis=time_axis)
        else:
            carry, ys = unroll(model, params, xs, carry, lengths=lengths, time_axis=time_axis)
        return ys, carry_to_torch(model, carry)

    lstm = "c0" in case
    (out, state), vjp = jax.vjp(forward, case["x"], case["h0"], case.get("c0"))
    grad_x, grad_h0, grad_c0 = vjp(
        (case["g_out"], (case["g_h"], case["g_c"]) if lstm else case["g_h"])
    )
    results = dict(out=out, grad_x=grad_x, grad_h0=grad_h0)
    if lstm:
        return results | dict(h_n=state[0], c_n=state[1], grad_c0=grad_c0)
    return results | dict(h_n=state)


def run_seqjax(model, params, case, time_axis) -> dict[str, np.ndarray]:
    """What ``run_torch`` returns, computed by seqjax from the same torch-layout inputs.

    Jitted, so that each model compiles once (eager dispatch of the many small ops costs
    several times more); the lengths are then traced, as in training.
    """
    inputs = ("x", "h0", "c0", "lengths", "g_out", "g_h", "g_c")
    case = {name: jnp.asarray(case[name]) for name in inputs if name in case}
    results = _seqjax_results(model, params, case, time_axis)
    return {name: np.asarray(value) for name, value in results.items()}


def random_params(model, seed: int):
    """Params of ``model``, every entry drawn from N(0, 0.5^2).

    Not ``model.init``: it sets biases to constants, which would hide a mix-up of bias
    blocks. NumPy draws also skip the slow eager dispatch of JAX's initialisers.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), dtype=s.dtype), shapes
    )


def assert_results_close(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].dtype == np.float32, name
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=name)


def assert_bit_equal(actual, expected) -> None:
    """Same structure, dtypes, shapes and bits (so -0.0 differs from 0.0)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape
        assert a.tobytes() == e.tobytes()


# --- stored PyTorch results: no torch needed ----------------------------------------------


def load_case(name: str) -> tuple[dict, dict, dict]:
    """``(config, state_dict, arrays)`` of one stored case."""
    with np.load(FIXTURE) as data:
        arrays = {
            key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(name + "/")
        }
    config = json.loads(str(arrays.pop("config")))
    state_dict = {
        key.removeprefix("state_dict/"): arrays.pop(key)
        for key in list(arrays)
        if key.startswith("state_dict/")
    }
    return config, state_dict, arrays


def test_fixture_covers_every_module():
    assert STORED_CASES == sorted(
        f"{mode}_{config}"
        for mode in ("rnn_tanh", "rnn_relu", "lstm", "gru")
        for config in ("packed", "batch_first")
    )
    assert FIXTURE.stat().st_size < 200_000


@pytest.mark.parametrize("name", STORED_CASES)
def test_matches_stored_torch_results(name):
    config, state_dict, case = load_case(name)
    model = seqjax_model(
        config["mode"],
        config["input_size"],
        config["hidden_size"],
        config["num_layers"],
        config["bidirectional"],
    )
    params = params_from_torch(model, state_dict)
    actual = run_seqjax(model, params, case, time_axis=1 if config["batch_first"] else 0)
    expected = {key: case[key] for key in actual}
    assert_results_close(actual, expected)
    if config["packed"]:  # padding: zero outputs, zero input gradients
        steps = np.arange(case["x"].shape[0])[:, None]
        padding = steps >= case["lengths"][None, :]
        assert padding.any() and not actual["out"][padding].any()
        assert not actual["grad_x"][padding].any()


# --- live PyTorch: random shapes, both directions of conversion ---------------------------

LIVE_CASES = {
    "lstm_cell_batch_first": dict(mode="LSTM", num_layers=1, bidirectional=False, batch_first=True),
    "gru_3_layers_lengths": dict(mode="GRU", num_layers=3, bidirectional=False, lengths=True),
    "relu_bidirectional_lengths": dict(
        mode="RNN_RELU", num_layers=1, bidirectional=True, lengths=True
    ),
    "tanh_2_bi_batch_first_lengths": dict(
        mode="RNN_TANH", num_layers=2, bidirectional=True, batch_first=True, lengths=True
    ),
    "lstm_3_bi_lengths": dict(mode="LSTM", num_layers=3, bidirectional=True, lengths=True),
}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def live_setup(spec: dict, seed: int):
    """Random-shaped seqjax model, torch module (seeded init), inputs and time axis."""
    import torch

    from tests.fixtures.make_torch_fixtures import make_module

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_steps, batch, input_size, hidden = (int(n) for n in rng.integers(1, 7, size=4))
    batch_first = spec.get("batch_first", False)
    directions = 2 if spec["bidirectional"] else 1
    states = spec["num_layers"] * directions
    mode = spec["mode"]
    model = seqjax_model(mode, input_size, hidden, spec["num_layers"], spec["bidirectional"])
    module = make_module(
        mode, input_size, hidden, spec["num_layers"], spec["bidirectional"], batch_first
    )

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x = (
        normal(batch, num_steps, input_size)
        if batch_first
        else normal(num_steps, batch, input_size)
    )
    case = dict(
        x=x, h0=normal(states, batch, hidden), g_out=normal(*x.shape[:2], directions * hidden)
    )
    case["g_h"] = normal(states, batch, hidden)
    if mode == "LSTM":
        case.update(c0=normal(states, batch, hidden), g_c=normal(states, batch, hidden))
    if spec.get("lengths"):
        case["lengths"] = rng.integers(1, num_steps + 1, size=batch)
    return model, module, case, 1 if batch_first else 0


def torch_results(module, case) -> dict[str, np.ndarray]:
    from tests.fixtures.make_torch_fixtures import run_torch

    return run_torch(
        module,
        case["x"],
        case["h0"],
        case.get("c0"),
        case.get("lengths"),
        case["g_out"],
        case["g_h"],
        case.get("g_c"),
    )


def load(torch, module, state_dict: dict[str, np.ndarray]) -> None:
    module.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})


@pytest.mark.parametrize("seed, spec", list(enumerate(LIVE_CASES.values())), ids=list(LIVE_CASES))
def test_export_to_torch(torch, seed, spec):
    model, module, case, time_axis = live_setup(spec, seed)
    params = random_params(model, seed)
    state_dict = params_to_torch(model, params)
    load(torch, module, state_dict)  # strict: the keys are exactly the module's
    assert_results_close(run_seqjax(model, params, case, time_axis), torch_results(module, case))
    assert_bit_equal(params_from_torch(model, state_dict), params)


@pytest.mark.parametrize("seed, spec", list(enumerate(LIVE_CASES.values())), ids=list(LIVE_CASES))
def test_import_from_torch(torch, seed, spec):
    model, module, case, time_axis = live_setup(spec, seed)
    expected = torch_results(module, case)
    params = params_from_torch(model, module.state_dict())  # torch tensors, read as NumPy
    assert_results_close(run_seqjax(model, params, case, time_axis), expected)

    # torch -> seqjax -> torch: the same module function, the same weight matrices.
    state_dict = params_to_torch(model, params)
    _, reloaded, _, _ = live_setup(spec, seed)
    load(torch, reloaded, state_dict)
    assert_results_close(torch_results(reloaded, case), expected)
    original = {key: value.numpy() for key, value in module.state_dict().items()}
    for key, value in original.items():
        if key.startswith("bias_ih") and spec["mode"] != "GRU":
            value = value + original[key.replace("bias_ih", "bias_hh")]
        if key.startswith("bias_hh") and spec["mode"] != "GRU":
            value = np.zeros_like(value)
        assert state_dict[key].tobytes() == value.tobytes(), key


# --- bad input ------------------------------------------------------------------------------

LSTM_2_BI = Stack.build(LSTMCell, 3, (2, 2), bidirectional=True)


def lstm_2_bi_state_dict():
    return params_to_torch(LSTM_2_BI, random_params(LSTM_2_BI, 0))


def test_cell_shape_error_names_key_and_shapes():
    cell = LSTMCell(3, 2)
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(8, 2\).*got shape \(2, 8\)"):
        cell_params_from_torch(cell, np.zeros((8, 3), np.float32), np.zeros((2, 8), np.float32))


def test_state_dict_shape_error_names_key():
    state_dict = lstm_2_bi_state_dict()
    state_dict["weight_ih_l1_reverse"] = np.zeros((8, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight_ih_l1_reverse must have shape \(8, 4\)"):
        params_from_torch(LSTM_2_BI, state_dict)


def test_missing_and_unexpected_keys():
    state_dict = lstm_2_bi_state_dict()
    del state_dict["weight_hh_l1"]
    with pytest.raises(ValueError, match=r"missing keys \['weight_hh_l1'\]"):
        params_from_torch(LSTM_2_BI, state_dict)
    state_dict = lstm_2_bi_state_dict() | {"weight_hr_l0": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_hr_l0'\]"):
        params_from_torch(LSTM_2_BI, state_dict)
    with pytest.raises(ValueError, match="missing keys"):  # a 2-layer dict for 1 layer
        params_from_torch(LSTMCell(3, 2), lstm_2_bi_state_dict())
    state_dict = lstm_2_bi_state_dict()
    del state_dict["bias_hh_l0"]  # biases are all present or all absent
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l0'\]"):
        params_from_torch(LSTM_2_BI, state_dict)


def test_missing_biases_are_zeros():
    state_dict = {k: v for k, v in lstm_2_bi_state_dict().items() if k.startswith("weight")}
    params = params_from_torch(LSTM_2_BI, state_dict)
    assert all(not np.asarray(p.b).any() for layer in params for p in layer)


def test_dtype_errors():
    weight_ih, weight_hh = np.zeros((4, 3), np.float32), np.zeros((4, 4), np.float32)
    with pytest.raises(TypeError, match="weight_ih must be floating"):
        cell_params_from_torch(ElmanCell(3, 4), weight_ih.astype(np.int32), weight_hh)
    with pytest.raises(TypeError, match="bias_ih must have the dtype of weight_ih, float32"):
        cell_params_from_torch(ElmanCell(3, 4), weight_ih, weight_hh, np.zeros(4, np.float64))


def test_bfloat16_goes_both_ways_bit_for_bit(torch):
    """NumPy has no bfloat16 of its own: torch tensors come in through float32 (exact)."""
    params = random_params(LSTM_2_BI, 0)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    state_dict = params_to_torch(LSTM_2_BI, params)
    assert_bit_equal(params_from_torch(LSTM_2_BI, state_dict), params)
    tensors = {k: torch.from_numpy(v.astype(np.float32)).bfloat16() for k, v in state_dict.items()}
    assert_bit_equal(params_from_torch(LSTM_2_BI, tensors), params)


def test_a_module_in_place_of_its_state_dict_is_refused(torch):
    module = torch.nn.LSTM(3, 2)
    with pytest.raises(TypeError, match=r"state_dict must be a mapping .*module.state_dict"):
        params_from_torch(LSTMCell(3, 2), module)


def test_models_without_torch_counterpart():
    weights = np.zeros((6, 3), np.float32), np.zeros((6, 2), np.float32)
    reset_before = GRUCell(3, 2, reset_after=False)
    with pytest.raises(ValueError, match="reset_after=False"):
        cell_params_from_torch(reset_before, *weights)
    with pytest.raises(ValueError, match="reset_after=False"):
        params_to_torch(reset_before, random_params(reset_before, 0))
    sigmoid_rnn = ElmanCell(3, 2, activation=jax.nn.sigmoid)
    with pytest.raises(ValueError, match="activation"):
        params_from_torch(sigmoid_rnn, {})
    with pytest.raises(ValueError, match="one kind of cell"):
        params_from_torch(Stack((LSTMCell(3, 2), GRUCell(2, 2))), {})
    with pytest.raises(ValueError, match="hidden sizes"):
        params_from_torch(Stack.build(GRUCell, 3, (2, 4)), {})
    with pytest.raises(ValueError, match="directions"):
        params_from_torch(Stack((Bidirectional(GRUCell(3, 2), GRUCell(3, 2)), GRUCell(4, 2))), {})
    with pytest.raises(TypeError, match="got Dense"):
        params_from_torch(Dense(3, 2), {})
    with pytest.raises(TypeError, match="got Stack inside a Stack"):
        carry_from_torch(Stack((Stack((GRUCell(3, 2),)),)), np.zeros((1, 2), np.float32))


def test_params_structure_errors():
    params = random_params(LSTM_2_BI, 0)
    with pytest.raises(TypeError, match="tuple of 2 entries; got tuple of 1"):
        params_to_torch(LSTM_2_BI, params[:1])
    with pytest.raises(TypeError, match=r"params\[1\] of a Bidirectional layer"):
        params_to_torch(LSTM_2_BI, (params[0], params[1].forward))
    cell = GRUCell(3, 2)
    with pytest.raises(TypeError, match="must be a GRUParams; got ElmanParams"):
        cell_params_to_torch(cell, random_params(ElmanCell(3, 2), 0))
    good = random_params(cell, 0)
    with pytest.raises(ValueError, match=r"params.b_h must have shape \(6,\).*got shape \(5,\)"):
        cell_params_to_torch(cell, good._replace(b_h=jnp.zeros(5, jnp.float32)))
    assert isinstance(
        params_from_torch(
            cell, {k + "_l0": v for k, v in cell_params_to_torch(cell, good).items()}
        ),
        GRUParams,
    )


def test_carry_errors_and_layout():
    h0 = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2)
    carry = carry_from_torch(LSTM_2_BI, h0, -h0)
    assert isinstance(carry[1].backward, LSTMCarry)
    np.testing.assert_array_equal(carry[1].forward.c, -h0[2])  # entry layer * D + direction
    h_n, c_n = carry_to_torch(LSTM_2_BI, carry)
    assert_bit_equal((h_n, c_n), (h0, -h0))
    unbatched = carry_from_torch(Stack.build(GRUCell, 3, (2, 2)), h0[:2, 0])  # [L * D, H]
    assert [leaf.shape for leaf in unbatched] == [(2,), (2,)]
    with pytest.raises(
        ValueError,
        match=r"h0 must have shape \[L \* D, \*B, H\] = \[4, \*B, 2\].*got shape \(2, 5, 2\)",
    ):
        carry_from_torch(LSTM_2_BI, h0[:2], h0[:2])
    with pytest.raises(ValueError, match="needs c0"):
        carry_from_torch(LSTM_2_BI, h0)
    with pytest.raises(ValueError, match="c0 is the LSTM cell state"):
        carry_from_torch(GRUCell(3, 2), h0[:1], h0[:1])
    with pytest.raises(ValueError, match="c0 must have the shape of h0"):
        carry_from_torch(LSTM_2_BI, h0, h0[:, :3])
    with pytest.raises(TypeError, match="LSTMCarry"):
        carry_to_torch(LSTMCell(3, 2), jnp.zeros((5, 2), jnp.float32))

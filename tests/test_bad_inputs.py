"""Every argument check of seqjax's public API, in one registry (issue 22).

Each :class:`Case` is one bad input: the public function or class and the argument it
concerns, a zero-argument ``call`` that makes the bad call, and the exception and message
expected. The message follows the project's rule: it names the argument, says what was
expected and what came. The tests hold the registry true:

* ``test_bad_input_raises``: each case raises its exception with its message;
* ``test_message_names_the_argument_and_what_came``: the rule, for every message;
* ``test_bad_input_raises_at_trace_time``: each case whose check is static or shape-level
  raises the same under ``jax.jit`` while tracing (value checks that need concrete data say
  so in ``traced`` and what happens to traced values instead);
* ``test_every_check_has_a_case``: every ``raise ValueError/TypeError`` and every call of a
  raising helper of :mod:`seqjax._checks` in the core (not ``seqjax.apps``,
  ``seqjax.sharding``, ``seqjax.checkpoint``) is reached by some case, or is listed in
  :data:`UNREACHED` with the reason; so a new check without a case fails here;
* ``test_error_table_is_current``: ``docs/errors.md``, which ``docs/tools/error_table.py``
  renders from this registry and from the messages the cases produce, is up to date.

:data:`MEANINGS` lists the inputs that look wrong but are accepted on purpose, with the test
that pins what they mean; the table renders them too.

Add a check: add its case here and run ``python docs/tools/error_table.py``.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import pathlib
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from seqjax import diagnostics, forecast, losses, methods, reservoir
from seqjax.interop import flax_linen, flax_nnx
from seqjax.interop import torch as sj_torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The core, whose checks must all have a case. The applications, sharding and checkpoints are
# reviewed apart (their owners rewrite them).
EXCLUDED = ("seqjax/apps/", "seqjax/sharding.py", "seqjax/checkpoint/")


@dataclass(frozen=True)
class Case:
    """One bad input and the error it must raise.

    Attributes:
        label: a short unique id (the test id).
        module: the public module the target is read from (the table's group).
        target: the function or class, as named in ``module``.
        argument: the argument or field the check concerns; the message must name it.
        check: what is checked, in words (the table's column).
        fn: ``fn(*args)`` makes the bad call.
        args: the data arrays of the call, traced by the jit test; everything static is
            closed over in ``fn``.
        error: the exception type.
        match: a regex the message must contain (``re.search``).
        traced: None when the check is static or shape-level (it fires while tracing under
            ``jit``); otherwise what happens to a traced value instead (a value check needs
            concrete data).
    """

    label: str
    module: str
    target: str
    argument: str
    check: str
    fn: Callable[..., Any]
    args: tuple = ()
    error: type[Exception] = ValueError
    match: str = ""
    traced: str | None = None

    @property
    def call(self) -> Callable[[], Any]:
        """The bad call, with no arguments."""
        return functools.partial(self.fn, *self.args)


CASES: list[Case] = []
_module = ""


def section(module: str) -> None:
    """The public module of the cases that follow."""
    global _module
    _module = module


def case(label, target, argument, check, fn, *args, error=ValueError, match, traced=None):
    CASES.append(Case(label, _module, target, argument, check, fn, args, error, match, traced))


# ---------------------------------------------------------------------------------- fixtures

# The cases fail before computing anything, so their arrays are NumPy zeros and their params
# zeros of init's shapes: nothing is drawn or compiled for them (the file stays fast).
KEY = jax.random.key(0)
F32 = functools.partial(np.zeros, dtype=np.float32)
I32 = functools.partial(np.zeros, dtype=np.int32)


def ones_bool(*shape):
    return np.ones(shape, bool)


def zeros_params(model, dtype=jnp.float32):
    """``model.init``'s params as NumPy zeros: the structure and shapes, nothing drawn."""
    shapes = jax.eval_shape(lambda: model.init(KEY, dtype))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


LSTM = sj.LSTMCell(3, 4)
LSTM_P = zeros_params(LSTM)
GRU = sj.GRUCell(3, 4)
GRU_P = zeros_params(GRU)
ELMAN = sj.ElmanCell(3, 4)
XS = F32((5, 2, 3))  # [T, B, I]


def step_fn(params, carry, token):
    """A five-token model for decoding: predicts ``token + 1``."""
    return carry, jax.nn.one_hot((token + 1) % 5, 5, dtype=jnp.float32) * 10.0


def relu_sq(x):
    return jax.nn.relu(x) ** 2


# The registry reads as a table, a case per few lines: the formatter leaves it as written.
# fmt: off
# =================================================================================== cells
section("seqjax.cells")

case("cell-hidden-negative", "LSTMCell", "hidden_size", "sizes are positive ints",
     lambda: sj.LSTMCell(3, -2), match=r"LSTMCell: hidden_size must be a positive int; got -2")
case("cell-hidden-float", "GRUCell", "hidden_size", "sizes are ints (4.0 is not)",
     lambda: sj.GRUCell(3, 4.0), match=r"GRUCell: hidden_size must be a positive int; got 4\.0")
case("cell-input-zero", "ElmanCell", "input_size", "sizes are positive ints",
     lambda: sj.ElmanCell(0, 4), match=r"ElmanCell: input_size must be a positive int; got 0")
case("cell-hidden-bool", "MinGRUCell", "hidden_size", "a bool is not a size",
     lambda: sj.MinGRUCell(3, True),
     match=r"MinGRUCell: hidden_size must be a positive int; got True")
case("lstmp-cell-size", "LSTMProjCell", "cell_size", "sizes are positive ints",
     lambda: sj.LSTMProjCell(3, 2, 0),
     match=r"LSTMProjCell: cell_size must be a positive int; got 0")
case("lstm-forget-bias-nan", "LSTMCell", "forget_bias",
     "a finite number (NaN made every forget gate NaN)",
     lambda: sj.LSTMCell(3, 4, forget_bias=float("nan")),
     match=r"LSTMCell: forget_bias must be a finite number; got nan")
case("peephole-forget-bias-str", "PeepholeLSTMCell", "forget_bias",
     "a number (a string failed inside init)",
     lambda: sj.PeepholeLSTMCell(3, 4, forget_bias="1"),
     match=r"PeepholeLSTMCell: forget_bias must be a finite number; got '1'")
case("layernorm-eps", "LayerNormLSTMCell", "eps", "layer norm's epsilon is > 0",
     lambda: sj.LayerNormLSTMCell(3, 4, eps=0.0),
     match=r"LayerNormLSTMCell: eps must be a finite number > 0; got 0\.0")
case("gru-reset-after", "GRUCell", "reset_after", "a bool (the string 'no' read as True)",
     lambda: sj.GRUCell(3, 4, reset_after="no"),
     match=r"GRUCell: reset_after must be a bool \(True or False\); got 'no'")
case("mingru-log-space", "MinLSTMCell", "log_space", "a bool",
     lambda: sj.MinLSTMCell(3, 4, log_space=1),
     match=r"MinLSTMCell: log_space must be a bool \(True or False\); got 1")
case("elman-activation", "ElmanCell", "activation", "a function (a name failed at the first step)",
     lambda: sj.ElmanCell(3, 4, activation="relu"), error=TypeError,
     match=r"ElmanCell: activation must be a function \(callable\); got 'relu'")
case("lru-r-max", "LRUCell", "r_max", "eigenvalue moduli in [r_min, 1) (1.5 gave NaN params)",
     lambda: sj.LRUCell(3, 4, r_max=1.5),
     match=r"LRUCell: r_max must be a number in \[0, 1\); got 1\.5")
case("lru-r-min", "LRUCell", "r_min", "in [0, 1)",
     lambda: sj.LRUCell(3, 4, r_min=-0.1),
     match=r"LRUCell: r_min must be a number in \[0, 1\); got -0\.1")
case("lru-max-phase", "LRUCell", "max_phase", "> 0 (0 gave -inf, a negative range NaN)",
     lambda: sj.LRUCell(3, 4, max_phase=0.0),
     match=r"LRUCell: max_phase must be a finite number > 0; got 0\.0")
case("init-dtype", "GRUCell.init", "dtype", "a floating dtype (jnp.finfo failed on ints)",
     lambda: GRU.init(KEY, jnp.int32), error=TypeError,
     match=r"init: dtype must be a floating dtype; got int32")
case("init-carry-batch-shape", "GRUCell.init_carry", "batch_shape",
     "a tuple of ints (a bare int failed inside jnp.zeros)",
     lambda: GRU.init_carry(2),
     match=r"init_carry: batch_shape must be a tuple of ints >= 0 \(\(\) for one sequence\); got 2")
case("mingru-log-coefficients", "MinGRUCell.log_coefficients", "log_space",
     "log coefficients need log_space=True",
     lambda: sj.MinGRUCell(3, 4, log_space=False).log_coefficients(None, F32((2, 8))),
     match=r"MinGRUCell\.log_coefficients: needs log_space=True .*got log_space=False")
case("wrapper-cell-class", "ZoneoutCell", "cell", "a cell instance (a class failed in eval_shape)",
     lambda: sj.ZoneoutCell(sj.LSTMCell, 0.1), error=TypeError,
     match=r"ZoneoutCell: cell must be a seqjax cell instance \(e\.g\. LSTMCell\(3, 4\)\); got "
           r"<class")
case("wrapper-cell-int", "LearnedInitCell", "cell",
     "a cell instance (was accepted, failed at init)",
     lambda: sj.LearnedInitCell(3), error=TypeError,
     match=r"LearnedInitCell: cell must be a seqjax cell instance .*; got 3")
case("dropout-rate", "VariationalDropoutCell", "input_rate", "a rate in [0, 1)",
     lambda: sj.VariationalDropoutCell(LSTM, input_rate=1.0),
     match=r"VariationalDropoutCell: input_rate must be a number in \[0, 1\); got 1\.0")
case("dropout-rate-nan", "VariationalDropoutCell", "recurrent_rate",
     "a rate in [0, 1) (NaN refused)",
     lambda: sj.VariationalDropoutCell(LSTM, recurrent_rate=float("nan")),
     match=r"VariationalDropoutCell: recurrent_rate must be a number in \[0, 1\); got nan")
case("dropout-recurrent-cell", "VariationalDropoutCell", "recurrent_rate",
     "recurrent dropout needs a cell that reads h only through its matmul",
     lambda: sj.VariationalDropoutCell(sj.GRUCell(3, 4), recurrent_rate=0.2),
     match=r"recurrent dropout needs a cell that reads h only .*; got GRUCell\. Use "
           r"recurrent_rate=0")
case("dropout-noise-key", "VariationalDropoutCell.with_noise", "key",
     "a key unless deterministic",
     lambda: sj.VariationalDropoutCell(LSTM, 0.1).with_noise(None, None),
     match=r"VariationalDropoutCell\.with_noise: key must be a PRNG key unless "
           r"deterministic=True; got None")
_DROPOUT = sj.VariationalDropoutCell(LSTM, input_rate=0.5, recurrent_rate=0.5)
_MASKS = sj.DropoutMasks(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))  # B = 2
_DROPOUT_P = sj.DropoutParams(LSTM_P, _MASKS)
case("dropout-input-mask", "VariationalDropoutCell.project", "xs",
     "xs end with the input mask's batch shape [*B, I]",
     lambda xs: _DROPOUT.project(_DROPOUT_P, xs), F32((5, 3, 3)),
     match=r"xs must end with the input mask's shape \[\*B, I\] = \(2, 3\) .*got shape \(5, 3, 3\)")
case("dropout-recurrent-mask", "VariationalDropoutCell.step", "carry",
     "the recurrent mask has the shape of h",
     lambda c: _DROPOUT.step(_DROPOUT_P, c, F32((3, 16))), LSTM.init_carry((3,)),
     match=r"the recurrent mask must have the shape of h, \(3, 4\) .*got \(2, 4\)")
case("zoneout-rate", "ZoneoutCell", "hidden_rate", "a rate in [0, 1] (True is not a rate)",
     lambda: sj.ZoneoutCell(LSTM, hidden_rate=True),
     match=r"ZoneoutCell: hidden_rate must be a number in \[0, 1\]; got True")
case("zoneout-cell-rate", "ZoneoutCell", "cell_rate", "cell_rate needs a cell state c",
     lambda: sj.ZoneoutCell(GRU, cell_rate=0.1),
     match=r"ZoneoutCell: cell_rate applies to a cell state c, which GRUCell does not have; got "
           r"cell_rate=0\.1")
case("zoneout-carry", "ZoneoutCell", "cell", "the wrapped carry is h or (h, c)",
     lambda: sj.ZoneoutCell(sj.LRUCell(3, 4), hidden_rate=0.1), error=TypeError,
     match=r"ZoneoutCell: the wrapped cell's carry must be an array h or a NamedTuple with fields "
           r"h .*LRUCell")
case("zoneout-noise-key", "ZoneoutCell.with_noise", "key", "a key unless deterministic",
     lambda: sj.ZoneoutCell(LSTM, 0.1).with_noise(None, None),
     match=r"ZoneoutCell\.with_noise: key must be a PRNG key unless deterministic=True; got None")
case("with-noise-key", "with_noise", "key", "a key unless deterministic",
     lambda: sj.with_noise(sj.ZoneoutCell(LSTM, 0.1), None, None),
     match=r"with_noise: key must be a PRNG key unless deterministic=True; got None")
case("supports-capability", "supports", "capability", "one of CAPABILITIES",
     lambda: sj.supports(LSTM, "SplitStep"), error=TypeError,
     match=r"supports: capability must be one of \['SplitStep', .*\]; got 'SplitStep'")
case("esn-leak-rate", "EchoStateCell", "leak_rate", "every leak rate in (0, 1]",
     lambda: sj.EchoStateCell(3, 4, leak_rate=0.0),
     match=r"EchoStateCell: leak_rate must lie in \(0, 1\]; got 0\.0")
case("esn-leak-rate-count", "EchoStateCell", "leak_rate", "one rate or H of them",
     lambda: sj.EchoStateCell(3, 4, leak_rate=(0.5, 0.5)),
     match=r"EchoStateCell: leak_rate must be a number or 4 numbers; got 2")
case("esn-leak-rate-str", "EchoStateCell", "leak_rate", "numbers (a string failed inside float())",
     lambda: sj.EchoStateCell(3, 4, leak_rate="0.3"),
     match=r"EchoStateCell: leak_rate must be a number or 4 numbers; got '0\.3'")
case("esn-input-scaling", "EchoStateCell", "input_scaling", "finite scalings (NaN was accepted)",
     lambda: sj.EchoStateCell(3, 4, input_scaling=float("nan")),
     match=r"EchoStateCell: input_scaling must be finite; got nan")
case("esn-bias-scaling", "EchoStateCell", "bias_scaling", "a finite number (NaN was accepted)",
     lambda: sj.EchoStateCell(3, 4, bias_scaling=float("inf")),
     match=r"EchoStateCell: bias_scaling must be a finite number; got inf")
case("esn-connectivity", "EchoStateCell", "connectivity", "a fraction in (0, 1]",
     lambda: sj.EchoStateCell(3, 4, connectivity=1.5),
     match=r"EchoStateCell: connectivity must lie in \(0, 1\]; got 1\.5")
case("esn-input-connectivity-str", "EchoStateCell", "input_connectivity",
     "a number (a string failed in a comparison)",
     lambda: sj.EchoStateCell(3, 4, input_connectivity="0.1"),
     match=r"EchoStateCell: input_connectivity must lie in \(0, 1\]; got '0\.1'")
case("esn-fixed-fan-in", "EchoStateCell", "fixed_fan_in", "a bool",
     lambda: sj.EchoStateCell(3, 4, fixed_fan_in=1),
     match=r"EchoStateCell: fixed_fan_in must be a bool; got 1")
case("esn-sparse", "EchoStateCell", "sparse", "a bool or None",
     lambda: sj.EchoStateCell(3, 4, sparse="yes"),
     match=r"EchoStateCell: sparse must be a bool or None; got 'yes'")
case("esn-spectral-radius", "EchoStateCell", "spectral_radius",
     "finite and >= 0 (inf was accepted)",
     lambda: sj.EchoStateCell(3, 4, spectral_radius=float("inf")),
     match=r"EchoStateCell: spectral_radius must be >= 0 and finite; got inf")
case("esn-trainable-type", "EchoStateCell", "trainable", "a bool, a field name or a tuple of them",
     lambda: sj.EchoStateCell(3, 4, trainable=3),
     match=r"EchoStateCell: trainable must be True, False, a field name of EchoStateParams or a "
           r"tuple of them; got 3")
case("esn-trainable-name", "EchoStateCell", "trainable", "names fields of EchoStateParams",
     lambda: sj.EchoStateCell(3, 4, trainable=("leak",)),
     match=r"EchoStateCell: trainable must name fields of EchoStateParams .*; got unknown "
           r"\['leak'\]")
case("esn-activation", "EchoStateCell", "activation", "a function",
     lambda: sj.EchoStateCell(3, 4, activation=None), error=TypeError,
     match=r"EchoStateCell: activation must be a function \(callable\); got None")
case("esn-init-no-cycle", "EchoStateCell.init", "connectivity",
     "the drawn reservoir has a cycle (radius 0 cannot be scaled)",
     lambda: sj.EchoStateCell(1, 10, connectivity=0.01, sparse=False).init(jax.random.key(1)),
     match=r"EchoStateCell\.init: connectivity must give the reservoir a cycle .*; got "
           r"connectivity=0\.01, whose 1 connections among 10 units form no cycle",
     traced="under a trace the reservoir's weights are NaN (documented)")

section("seqjax.reservoir")
case("spectral-radius-method", "spectral_radius", "method", "one of auto, eigvals, iterative",
     lambda: reservoir.spectral_radius(np.eye(3), method="power"),
     match=r"spectral_radius: method must be one of \('auto', 'eigvals', 'iterative'\); got "
           r"'power'")
case("spectral-radius-square", "spectral_radius", "w", "a square matrix [H, H]",
     lambda w: reservoir.spectral_radius(w), F32((3, 4)),
     match=r"spectral_radius: w must be a square matrix \[H, H\]; got shape \(3, 4\)")

# ============================================================================== methods
section("seqjax.methods")
case("scan-unroll", "Scan", "unroll", "a positive int (or True)",
     lambda: sj.Scan(unroll=0), match=r"Scan: unroll must be a positive int; got 0")
case("scan-hoist", "Scan", "hoist_projection", "a bool or None",
     lambda: sj.Scan(hoist_projection=1),
     match=r"Scan: hoist_projection must be a bool or None; got 1")
case("scan-derivative", "Scan", "derivative", "'autodiff', 'structured' or None",
     lambda: sj.Scan(derivative="reverse"),
     match=r"Scan: derivative must be one of \('autodiff', 'structured'\) or None; got 'reverse'")
case("scan-tuning", "Scan", "tuning", "a Tuning or None (a string failed inside replace)",
     lambda: sj.Scan(tuning="gpu"), error=TypeError,
     match=r"Scan: tuning must be a seqjax\.tuning\.Tuning .* or None; got 'gpu'")
case("scan-structured-cell", "Scan", "derivative", "structured needs a SplitStep cell",
     lambda xs: sj.unroll(sj.MinGRUCell(3, 4), zeros_params(sj.MinGRUCell(3, 4)), xs,
                          method=sj.Scan(derivative="structured")), XS, error=TypeError,
     match=r"Scan\(derivative='structured'\) needs a cell that supports SplitStep .*; got "
           r"MinGRUCell, which does not")
case("remat-chunks", "Remat", "chunks", "a positive int or a tuple of them",
     lambda: sj.Remat((4, 0)),
     match=r"Remat: chunks must be a positive int or a tuple of them; got \(4, 0\)")
case("remat-tuning", "Remat", "tuning", "a Tuning or None",
     lambda: sj.Remat(2, tuning={"scan_unroll": 2}), error=TypeError,
     match=r"Remat: tuning must be a seqjax\.tuning\.Tuning .*; got \{'scan_unroll': 2\}")
case("remat-unroll", "Remat", "unroll", "a positive int (or True)",
     lambda: sj.Remat(2, unroll=-1), match=r"Remat: unroll must be a positive int; got -1")
case("associative-cell", "Associative", "cell", "a LinearRecurrence cell",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, method="associative"), XS,
     match=r"Associative needs a cell whose recurrence is linear in the state .*got LSTMCell")
case("deer-derivative", "DEER", "derivative", "'parallel' or 'sequential'",
     lambda: sj.DEER(derivative="adjoint"),
     match=r"DEER: derivative must be one of \('parallel', 'sequential'\); got 'adjoint'")
case("deer-damping", "QuasiDEER", "damping", "a number >= 0",
     lambda: sj.QuasiDEER(damping=-0.5),
     match=r"QuasiDEER: damping must be a number >= 0; got -0\.5")
case("deer-tol", "DEER", "tol", "> 0 or None",
     lambda: sj.DEER(tol=-1.0),
     match=r"DEER: tol must be > 0 \(or None for the dtype's default\); got -1\.0")
case("deer-max-iters", "DEER", "max_iters", "an int >= 0 or None",
     lambda: sj.DEER(max_iters=2.5), match=r"DEER: max_iters must be a non-negative int; got 2\.5")
case("deer-fallback", "DEER", "fallback", "a bool",
     lambda: sj.DEER(fallback="no"), match=r"DEER: fallback must be a bool; got 'no'")
case("pallas-block-batch", "Pallas", "block_batch", "a positive int",
     lambda: sj.Pallas(block_batch=0), match=r"Pallas: block_batch must be a positive int; got 0")
case("pallas-block-batch-pow2", "Pallas", "block_batch", "a power of two",
     lambda: sj.Pallas(block_batch=24), match=r"Pallas: block_batch must be a power of two; got 24")
case("pallas-interpret", "Pallas", "interpret", "a bool or None",
     lambda: sj.Pallas(interpret="yes"),
     match=r"Pallas: interpret must be a bool \(True or False\); got 'yes'")
case("pallas-cell", "Pallas", "cell", "LSTM, reset-after GRU or tanh/relu Elman",
     lambda xs: sj.unroll(sj.MinGRUCell(3, 4), zeros_params(sj.MinGRUCell(3, 4)), xs,
                          method=sj.Pallas()), XS, error=TypeError,
     match=r"Pallas runs LSTMCell, GRUCell\(reset_after=True\) and ElmanCell .* so the cell must "
           r"be one of them; got MinGRUCell")
_MESH = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "time"))
case("seqpar-mesh", "SequenceParallel", "mesh", "a jax.sharding.Mesh",
     lambda: sj.SequenceParallel("mesh"), error=TypeError,
     match=r"SequenceParallel: mesh must be a jax\.sharding\.Mesh; got str")
case("seqpar-axis", "SequenceParallel", "axis", "an axis of the mesh",
     lambda: sj.SequenceParallel(_MESH, axis="steps"),
     match=r"SequenceParallel: axis must be an axis of the mesh \('batch', 'time'\); got 'steps'")
case("seqpar-batch-axis", "SequenceParallel", "batch_axis", "another axis of the mesh or None",
     lambda: sj.SequenceParallel(_MESH, batch_axis="time"),
     match=r"SequenceParallel: batch_axis must be another axis of the mesh .* or None; "
           r"got 'time'")
case("seqpar-solver", "SequenceParallel", "solver",
     "Scan, Associative, DEER, QuasiDEER or None",
     lambda: sj.SequenceParallel(_MESH, solver=sj.Remat(4)),
     match=r"SequenceParallel: solver must be Scan\(\), Associative\(\), DEER\(\.\.\.\), "
           r"QuasiDEER\(\.\.\.\) or None; got Remat")
case("seqpar-solver-scan-options", "SequenceParallel", "solver", "Scan() without options",
     lambda: sj.SequenceParallel(_MESH, solver=sj.Scan(unroll=4)),
     match=r"SequenceParallel: solver=Scan\(\) scans each chunk .* pass Scan\(\) itself; "
           r"got Scan\(unroll=4")
case("seqpar-solver-scan-cell", "SequenceParallel", "solver", "Scan() for linear cells only",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs,
                          method=sj.SequenceParallel(_MESH, solver=sj.Scan())), XS,
     match=r"SequenceParallel: solver=Scan\(\) needs a cell whose recurrence is linear .*"
           r"got LSTMCell")
case("seqpar-batch-axis-cell", "SequenceParallel", "batch_axis",
     "a cell without per-sequence params",
     lambda xs: sj.unroll(_DROPOUT, _DROPOUT_P, xs,
                          method=sj.SequenceParallel(_MESH, batch_axis="batch")), XS,
     match=r"SequenceParallel: batch_axis needs a cell whose params hold no per-sequence data "
           r".*got VariationalDropoutCell")
case("resolve-method", "resolve", "method", "a Method, a shorthand or None",
     lambda: methods.resolve("scan"),
     match=r"unroll: method must be a seqjax\.methods\.Method .*or None; got 'scan'")

# =============================================================================== unroll
section("seqjax.unroll")
case("unroll-cell-class", "unroll", "cell", "a cell instance (a class failed on .input_size)",
     lambda xs: sj.unroll(sj.LSTMCell, LSTM_P, xs), XS, error=TypeError,
     match=r"unroll: cell must be a seqjax cell instance \(e\.g\. LSTMCell\(3, 4\)\); got <class")
case("unroll-cell-layer", "unroll", "cell", "a cell, not a Bidirectional layer",
     lambda xs: sj.unroll(sj.Bidirectional(LSTM, LSTM), LSTM_P, xs), XS, error=TypeError,
     match=r"unroll: cell must be a seqjax cell instance .*\(call a Stack or Bidirectional layer "
           r"directly\)")
case("unroll-reference-cell", "unroll_reference", "cell", "a cell instance",
     lambda xs: sj.unroll_reference(None, LSTM_P, xs), XS, error=TypeError,
     match=r"unroll_reference: cell must be a seqjax cell instance .*; got None")
case("unroll-xs-int", "unroll", "xs", "floating dtype",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs), I32((5, 2, 3)), error=TypeError,
     match=r"unroll: xs must have a floating dtype .*; got dtype int32")
case("unroll-xs-rank", "unroll", "xs", "at least [T, I]",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs), F32((5,)),
     match=r"unroll: xs must have at least 2 dims, \[T, \*B, I\] .*; got shape \(5,\)")
case("unroll-xs-features", "unroll", "xs", "input_size features last",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs), F32((5, 2, 7)),
     match=r"unroll: xs must have 3 features in its last axis .*; got shape \(5, 2, 7\)")
case("unroll-time-axis-feature", "unroll", "time_axis", "not the feature axis",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, time_axis=2), XS,
     match=r"unroll: time_axis must name a non-feature axis of xs \(0 to 1 for shape \(5, 2, "
           r"3\).*got time_axis=2")
case("unroll-time-axis-range", "unroll", "time_axis", "an axis of xs",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, time_axis=3), XS,
     match=r"unroll: time_axis must name a non-feature axis of xs .*; got time_axis=3")
case("unroll-time-axis-bool", "unroll", "time_axis", "an int (True read as 1)",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, time_axis=True), XS,
     match=r"unroll: time_axis must name a non-feature axis of xs .*; got time_axis=True")
case("unroll-params-cell", "unroll", "params", "params of this cell (structure)",
     lambda xs: sj.unroll(LSTM, GRU_P, xs), XS,
     match=r"unroll: params do not fit LSTMCell\(.*\): it expects LSTMParams\(w_x, w_h, b\); got "
           r"GRUParams")
case("unroll-params-size", "unroll", "params", "params of this size (leaf shapes)",
     lambda xs: sj.unroll(LSTM, zeros_params(sj.LSTMCell(3, 5)), xs), XS,
     match=r"unroll: params leaf \.w_x must have shape \(3, 16\) .*; got \(3, 20\)")
case("unroll-carry-structure", "unroll", "carry", "the cell's carry structure",
     lambda xs, c: sj.unroll(LSTM, LSTM_P, xs, c), XS, F32((2, 4)),
     match=r"unroll: carry must have structure PyTreeDef\(CustomNode\(namedtuple\[LSTMCarry\].*; "
           r"got PyTreeDef\(\*\)")
case("unroll-carry-shape", "unroll", "carry", "leaves [*B, H] with the batch of xs",
     lambda xs, c: sj.unroll(LSTM, LSTM_P, xs, c), XS, LSTM.init_carry((3,)),
     match=r"unroll: carry leaves must have shape \(2, 4\) \(\[\*B, H\]\); got \(3, 4\)")
case("unroll-carry-dtype-strict", "unroll", "carry",
     "a dtype one step keeps (strict promotion: the step's promotion error)",
     lambda xs, c: sj.unroll(LSTM, LSTM_P, xs, c), XS, LSTM.init_carry((2,), jnp.float16),
     error=TypeError,
     match=r"unroll: carry leaves must have a dtype one step keeps .*\(float32, as init_carry "
           r"gives\); got float16, float16")


def _carry_dtype_standard(xs, c):
    with jax.numpy_dtype_promotion("standard"):
        return sj.unroll(LSTM, LSTM_P, xs, c)


case("unroll-carry-dtype", "unroll", "carry", "a dtype one step keeps (standard promotion)",
     _carry_dtype_standard, XS, LSTM.init_carry((2,), jnp.float16), error=TypeError,
     match=r"unroll: carry leaves must have a dtype one step keeps .*; got float16, float16")
case("unroll-lengths-shape", "unroll", "lengths", "the batch shape of xs",
     lambda xs, n: sj.unroll(LSTM, LSTM_P, xs, lengths=n), XS, I32((3,)),
     match=r"unroll: lengths must have the batch shape of xs, \(2,\); got shape \(3,\)")
case("unroll-lengths-dtype", "unroll", "lengths", "integers",
     lambda xs, n: sj.unroll(LSTM, LSTM_P, xs, lengths=n), XS, F32((2,)), error=TypeError,
     match=r"unroll: lengths must be integers; got dtype float32")
case("unroll-lengths-range", "unroll", "lengths", "values in [0, T]",
     lambda: sj.unroll(LSTM, LSTM_P, XS, lengths=np.array([6, -1], np.int32)),
     match=r"unroll: lengths must lie in \[0, T\] = \[0, 5\]; got values from -1 to 6",
     traced="traced lengths are clipped to [0, T] (every consumer reads past-T as T)")
case("unroll-resets-dtype", "unroll", "resets", "booleans",
     lambda xs, r: sj.unroll(LSTM, LSTM_P, xs, resets=r), XS, I32((5, 2)), error=TypeError,
     match=r"unroll: resets must be booleans; got dtype int32")
case("unroll-resets-shape", "unroll", "resets", "xs's shape without features",
     lambda xs, r: sj.unroll(LSTM, LSTM_P, xs, resets=r), XS, ones_bool(5, 3),
     match=r"unroll: resets must have the shape of xs without its feature axis, \(5, 2\); got "
           r"shape \(5, 3\)")
case("unroll-reference-resets", "unroll_reference", "resets", "xs's shape without features",
     lambda xs, r: sj.unroll_reference(LSTM, LSTM_P, xs, resets=r), XS, ones_bool(2, 5),
     match=r"unroll_reference: resets must have the shape of xs without its feature axis")
case("unroll-truncate", "unroll", "truncate", "a positive int",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, truncate=0), XS,
     match=r"unroll: truncate must be a positive int; got 0")
case("unroll-truncate-bool", "unroll", "truncate", "a bool is not a window",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, truncate=True), XS,
     match=r"unroll: truncate must be a positive int; got True")
case("unroll-truncate-parallel", "unroll", "truncate", "only the sequential methods truncate",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, truncate=2, method="deer"), XS,
     match=r"unroll: truncate applies to the sequential methods \(Scan, Remat\); got method=DEER")
case("unroll-reverse", "unroll", "reverse", "a bool",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, reverse=1), XS,
     match=r"unroll: reverse must be a bool; got 1")
case("unroll-method", "unroll", "method", "a Method, a shorthand or None",
     lambda xs: sj.unroll(LSTM, LSTM_P, xs, method="bogus"), XS,
     match=r"unroll: method must be a seqjax\.methods\.Method .*; got 'bogus'")
case("unroll-with-info-method", "unroll_with_info", "method", "a Method, a shorthand or None",
     lambda xs: sj.unroll_with_info(LSTM, LSTM_P, xs, method=sj.Scan), XS,
     match=r"unroll_with_info: method must be a seqjax\.methods\.Method .*; got <class")
case("options-reverse", "UnrollOptions", "reverse", "a bool (1 was accepted)",
     lambda: sj.UnrollOptions(reverse=1),
     match=r"UnrollOptions: reverse must be a bool \(True or False\); got 1")
case("options-truncate", "UnrollOptions", "truncate", "a positive int",
     lambda: sj.UnrollOptions(truncate=-3),
     match=r"UnrollOptions: truncate must be a positive int; got -3")
case("options-truncate-method", "UnrollOptions", "truncate", "only the sequential methods truncate",
     lambda: sj.UnrollOptions(truncate=3, method="associative"),
     match=r"UnrollOptions: truncate applies to the sequential methods .*; got "
           r"method=Associative\(\)")
case("options-method", "UnrollOptions", "method", "a Method, a shorthand or None",
     lambda: sj.UnrollOptions(method=3),
     match=r"UnrollOptions: method must be a seqjax\.methods\.Method .*; got 3")

# =============================================================================== layers
section("seqjax.layers")
_STACK = sj.Stack((LSTM, sj.GRUCell(4, 5)))
_STACK_P = zeros_params(_STACK)
_BI = sj.Bidirectional(LSTM, LSTM)
case("stack-empty", "Stack", "layers", "at least one layer",
     lambda: sj.Stack(()), match=r"Stack: layers must hold at least one layer; got none")
case("stack-not-sequence", "Stack", "layers", "a sequence (a lone cell failed as 'not iterable')",
     lambda: sj.Stack(LSTM), error=TypeError,
     match=r"Stack: layers must be a sequence of cells or sequence layers .*; got LSTMCell\(")
case("stack-layer-type", "Stack", "layers", "every layer a cell or sequence layer",
     lambda: sj.Stack((LSTM, "gru")), error=TypeError,
     match=r"Stack: layer 1 must be a seqjax cell or sequence layer instance; got 'gru'")
case("stack-sizes", "Stack", "layers", "each layer reads the previous one's output size",
     lambda: sj.Stack((LSTM, sj.GRUCell(5, 4))),
     match=r"Stack: layer 1 must have input_size 4 \(layer 0's output size\); got 5")
case("stack-params-count", "Stack", "params", "one entry per layer",
     lambda xs: _STACK(_STACK_P[:1], xs), XS,
     match=r"Stack: params must hold one entry per layer, 2; got 1")
case("stack-carry-count", "Stack", "carry", "one entry per layer",
     lambda xs: _STACK(_STACK_P, xs, (LSTM.init_carry((2,)),)), XS,
     match=r"Stack: carry must hold one entry per layer, 2; got 1")
case("stack-xs-dtype", "Stack", "xs", "floating dtype",
     lambda xs: _STACK(_STACK_P, xs), I32((5, 2, 3)), error=TypeError,
     match=r"Stack: xs must have a floating dtype .*; got dtype int32")
case("stack-time-axis", "Stack", "time_axis", "a non-feature axis of xs",
     lambda xs: _STACK(_STACK_P, xs, time_axis=-1), XS,
     match=r"Stack: time_axis must name a non-feature axis of xs .*; got time_axis=-1")
case("stack-step-bidirectional", "Stack.step", "layers",
     "stepping needs every layer to be a cell",
     lambda: sj.Stack((_BI,)).apply(None, None, F32((3,))), error=TypeError,
     match=r"Stack: step-by-step evaluation needs every layer to be a cell .*got layers "
           r"\['Bidirectional'\]")
case("bidirectional-sizes", "Bidirectional", "backward", "both cells share input_size",
     lambda: sj.Bidirectional(LSTM, sj.LSTMCell(2, 4)),
     match=r"Bidirectional: forward and backward cells must share input_size; got 3 and 2")
case("bidirectional-cell", "Bidirectional", "forward",
     "cell instances (a class failed on .input_size)",
     lambda: sj.Bidirectional(sj.LSTMCell, LSTM), error=TypeError,
     match=r"Bidirectional: forward must be a seqjax cell instance \(e\.g\. LSTMCell\(3, 4\)\); "
           r"got <class")
case("dense-size", "Dense", "output_size", "sizes are positive ints",
     lambda: sj.Dense(4, 0), match=r"Dense: output_size must be a positive int; got 0")
case("dense-x-dtype", "Dense", "x", "floating dtype",
     lambda x: sj.Dense(4, 2)(zeros_params(sj.Dense(4, 2)), x), I32((3, 4)), error=TypeError,
     match=r"Dense: x must have a floating dtype .*; got dtype int32")
case("dense-x-shape", "Dense", "x", "[..., input_size]",
     lambda x: sj.Dense(4, 2)(zeros_params(sj.Dense(4, 2)), x), F32((3, 5)),
     match=r"Dense: x must have shape \[\.\.\., 4\]; got shape \(3, 5\)")
case("dense-params-shape", "Dense", "params", "params of this size (dot_general failed)",
     lambda x: sj.Dense(4, 2)(zeros_params(sj.Dense(3, 2)), x), F32((3, 4)),
     match=r"Dense: params\.w must have shape \(4, 2\) for this layer; got \(3, 2\)")
case("dense-params-type", "Dense", "params", "a DenseParams (w, b)",
     lambda x: sj.Dense(4, 2)(zeros_params(sj.Embedding(4, 2)), x), F32((3, 4)), error=TypeError,
     match=r"Dense: params must be a DenseParams\('w', 'b'\) \(from init\); got EmbeddingParams")
case("embedding-size", "Embedding", "vocab_size", "sizes are positive ints",
     lambda: sj.Embedding(0, 3), match=r"Embedding: vocab_size must be a positive int; got 0")
case("embedding-ids-dtype", "Embedding", "ids", "integer ids",
     lambda ids: sj.Embedding(10, 4)(zeros_params(sj.Embedding(10, 4)), ids), F32((3,)),
     error=TypeError,
     match=r"Embedding: ids must be integers; got dtype float32")
case("embedding-params", "Embedding", "params", "a table [V, F] of this size",
     lambda ids: sj.Embedding(10, 4)(zeros_params(sj.Embedding(10, 3)), ids), I32((3,)),
     match=r"Embedding: params\.table must have shape \(10, 4\) for this layer; got \(10, 3\)")
case("last-valid-rank", "last_valid", "ys", "[T, *B, H]",
     lambda ys: sj.last_valid(ys), F32((3,)),
     match=r"last_valid: ys must have at least 2 dims, \[T, \*B, I\] .*; got shape \(3,\)")
case("last-valid-lengths", "last_valid", "lengths", "values in [0, T]",
     lambda: sj.last_valid(F32((3, 2, 4)), np.array([4, 1], np.int32)),
     match=r"last_valid: lengths must lie in \[0, T\] = \[0, 3\]; got values from 1 to 4",
     traced="traced lengths are clipped to [0, T]")
case("mean-valid-time-axis", "mean_valid", "time_axis", "a non-feature axis of ys",
     lambda ys: sj.mean_valid(ys, time_axis=2), F32((3, 2, 4)),
     match=r"mean_valid: time_axis must name a non-feature axis of ys .*; got time_axis=2")
case("mean-valid-lengths", "mean_valid", "lengths", "the batch shape of ys",
     lambda ys, n: sj.mean_valid(ys, n), F32((3, 2, 4)), I32((3,)),
     match=r"mean_valid: lengths must have the batch shape of xs, \(2,\); got shape \(3,\)")

# =============================================================================== losses
section("seqjax.losses")
case("ce-targets-dtype", "cross_entropy", "targets", "integer ids",
     lambda lg, t: sj.cross_entropy(lg, t), F32((3, 4)), F32((3,)), error=TypeError,
     match=r"cross_entropy: targets must be integer ids; got dtype float32")
case("ce-targets-shape", "cross_entropy", "targets", "logits.shape[:-1]",
     lambda lg, t: sj.cross_entropy(lg, t), F32((3, 4)), I32((4,)),
     match=r"cross_entropy: targets must have shape logits\.shape\[:-1\] = \(3,\); got \(4,\)")
case("ce-targets-range", "cross_entropy", "targets", "ids in [0, V) where counted",
     lambda: sj.cross_entropy(F32((3, 4)), np.array([0, 1, -1], np.int32)),
     match=r"cross_entropy: targets must lie in \[0, V\) = \[0, 4\) .*; got \[-1\]",
     traced="traced targets outside [0, V) make the loss and its gradient NaN")
case("ce-mask-dtype", "cross_entropy", "mask", "booleans",
     lambda lg, t, m: sj.cross_entropy(lg, t, m), F32((3, 4)), I32((3,)), np.ones(3, np.int32),
     error=TypeError, match=r"cross_entropy: mask must be booleans .*; got dtype int32")
case("ce-mask-shape", "cross_entropy", "mask", "the shape of the per-step losses",
     lambda lg, t, m: sj.cross_entropy(lg, t, m), F32((5, 2, 3)), I32((5, 2)), ones_bool(5, 3),
     match=r"cross_entropy: mask must have the shape of the per-step losses, \(5, 2\); got \(5, "
           r"3\)")
case("mse-targets-shape", "mean_squared_error", "targets", "the shape of predictions",
     lambda p, t: sj.mean_squared_error(p, t), F32((2, 3)), F32((2, 4)),
     match=r"mean_squared_error: targets must have the shape of predictions, \(2, 3\); got \(2, "
           r"4\)")
case("mse-mask-dtype", "mean_squared_error", "mask", "booleans",
     lambda p, t, m: sj.mean_squared_error(p, t, m), F32((2, 3)), F32((2, 3)), F32((2,)),
     error=TypeError, match=r"mean_squared_error: mask must be booleans .*; got dtype float32")
case("sequence-mask-dtype", "sequence_mask", "lengths", "integers",
     lambda n: sj.sequence_mask(n, 3), F32((2,)), error=TypeError,
     match=r"sequence_mask: lengths must be integers; got dtype float32")
case("sequence-mask-steps", "sequence_mask", "num_steps", "an int >= 0 (2.5 gave 3 steps)",
     lambda n: sj.sequence_mask(n, 2.5), I32((2,)),
     match=r"sequence_mask: num_steps must be an int >= 0; got 2\.5")
case("sequence-mask-time-axis", "sequence_mask", "time_axis", "an axis of the mask",
     lambda n: sj.sequence_mask(n, 3, time_axis=2), I32((2,)),
     match=r"sequence_mask: time_axis must name an axis of the mask \[T, \*B\] .*; got time_axis=2")
case("masked-mean-values", "masked_mean", "values", "floating (ints failed in finfo)",
     lambda v: sj.masked_mean(v), I32((3,)), error=TypeError,
     match=r"masked_mean: values must have a floating dtype .*; got dtype int32")
case("masked-mean-mask-dtype", "masked_mean", "mask", "booleans (numbers counted as weights)",
     lambda v, m: sj.masked_mean(v, m), F32((3,)), np.ones(3, np.int32), error=TypeError,
     match=r"masked_mean: mask must be booleans .*; got dtype int32")
case("masked-mean-mask-shape", "masked_mean", "mask", "broadcasts to values",
     lambda v, m: sj.masked_mean(v, m), F32((3,)), ones_bool(4),
     match=r"masked_mean: mask must broadcast to the shape of values, \(3,\); got shape \(4,\)")
case("rmse-predictions", "rmse", "predictions", "floating dtype",
     lambda p, t: losses.rmse(p, t), I32((3,)), F32((3,)), error=TypeError,
     match=r"rmse: predictions must have a floating dtype .*; got dtype int32")
case("rmse-targets", "rmse", "targets", "floating dtype",
     lambda p, t: losses.rmse(p, t), F32((3,)), I32((3,)), error=TypeError,
     match=r"rmse: targets must have a floating dtype .*; got dtype int32")
case("rmse-targets-shape", "rmse", "targets", "the shape of predictions",
     lambda p, t: losses.rmse(p, t), F32((3, 2)), F32((3, 1)),
     match=r"rmse: targets must have the shape of predictions, \(3, 2\); got \(3, 1\)")
case("rmse-mask-dtype", "rmse", "mask", "booleans",
     lambda p, t, m: losses.rmse(p, t, m), F32((3,)), F32((3,)), np.ones(3, np.int32),
     error=TypeError, match=r"rmse: mask must be booleans; got dtype int32")
case("rmse-mask-shape", "rmse", "mask", "the shape of predictions or a prefix",
     lambda p, t, m: losses.rmse(p, t, m), F32((3, 2)), F32((3, 2)), ones_bool(2),
     match=r"rmse: mask must have the shape of predictions or a prefix of it .*\(3, 2\); got "
           r"\(2,\)")
case("nrmse-scale", "nrmse", "scale", "positive and finite (0 gave inf, < 0 a negative error)",
     lambda p, t: losses.nrmse(p, t, scale=0.0), F32((3,)), F32((3,)),
     match=r"nrmse: scale must be positive and finite .*; got 0\.0",
     traced="a traced scale is used as given")
case("mase-history", "mase", "history", "[T, *B, F]",
     lambda p, t, h: losses.mase(p, t, h), F32((1, 1)), F32((1, 1)), F32((3,)),
     match=r"mase: history must be time-major \[T, \*B, F\] .*; got shape \(3,\)")
case("mase-history-steps", "mase", "history", "at least 2 steps",
     lambda p, t, h: losses.mase(p, t, h), F32((1, 1)), F32((1, 1)), F32((1, 1)),
     match=r"mase: history must hold at least 2 steps; got shape \(1, 1\)")

# ================================================================================ train
section("seqjax.train")


def _loss(params, batch):
    return jnp.sum(params)


case("optimizer-learning-rate", "default_optimizer", "learning_rate", "a positive number",
     lambda: sj.default_optimizer(float("nan")),
     match=r"default_optimizer: learning_rate must be a positive number; got nan")
case("optimizer-learning-rate-inf", "default_optimizer", "learning_rate", "finite",
     lambda: sj.default_optimizer(float("inf")),
     match=r"default_optimizer: learning_rate must be finite; got inf")
case("optimizer-learning-rate-traced", "default_optimizer", "learning_rate",
     "a scalar float when traced",
     lambda: jax.jit(lambda r: sj.default_optimizer(r).init(jnp.zeros(2)))(jnp.ones(2)),
     match=r"default_optimizer: learning_rate must be a scalar float; got float\d+\[2\]")
case("optimizer-max-norm", "default_optimizer", "max_norm", "a positive number or None",
     lambda: sj.default_optimizer(max_norm=0.0),
     match=r"default_optimizer: max_norm must be a positive number; got 0\.0")
case("optimizer-max-value", "default_optimizer", "max_value", "a positive number or None",
     lambda: sj.default_optimizer(max_value=-1.0),
     match=r"default_optimizer: max_value must be a positive number; got -1\.0")
case("bptt-loss-fn", "bptt_step", "loss_fn", "a function (failed at the first step)",
     lambda: sj.bptt_step("mse", sj.default_optimizer()), error=TypeError,
     match=r"bptt_step: loss_fn must be a function \(callable\); got 'mse'")
case("bptt-optimizer", "bptt_step", "optimizer", "a GradientTransformation",
     lambda: sj.bptt_step(_loss, "adam"), error=TypeError,
     match=r"bptt_step: optimizer must be an optax GradientTransformation .*; got 'adam'")
case("tbptt-optimizer", "tbptt_step", "optimizer", "a GradientTransformation",
     lambda: sj.tbptt_step(_loss, None), error=TypeError,
     match=r"tbptt_step: optimizer must be an optax GradientTransformation .*; got None")
case("window-loss-k1", "window_loss", "k1", "a positive int",
     lambda: sj.window_loss(_loss, _loss, k1=0),
     match=r"window_loss: k1 must be a positive int; got 0")
case("window-loss-k2", "window_loss", "k2", "a positive int",
     lambda: sj.window_loss(_loss, _loss, k1=2, k2=2.0),
     match=r"window_loss: k2 must be a positive int; got 2\.0")
case("window-loss-order", "window_loss", "k2", ">= k1",
     lambda: sj.window_loss(_loss, _loss, k1=4, k2=2),
     match=r"window_loss: k2 must be >= k1 = 4; got k2=2")
case("window-loss-forward", "window_loss", "forward", "a function",
     lambda: sj.window_loss(None, _loss, k1=2), error=TypeError,
     match=r"window_loss: forward must be a function \(callable\); got None")
case("window-loss-loss", "window_loss", "loss", "a function",
     lambda: sj.window_loss(_loss, "ce", k1=2), error=TypeError,
     match=r"window_loss: loss must be a function \(callable\); got 'ce'")
case("window-loss-window", "window_loss", "window", "windows of k2 steps",
     lambda xs: sj.window_loss(_loss, _loss, k1=2, k2=3)(None, None, (xs, xs, None)), F32((4, 2)),
     match=r"window_loss: windows must hold k2 = 3 steps; got 4 \(shape \(4, 2\)\)")
case("stream-windows-k1", "stream_windows", "k1", "a positive int",
     lambda s: sj.stream_windows(s, k1=-1), F32((7,)),
     match=r"stream_windows: k1 must be a positive int; got -1")
case("stream-windows-short", "stream_windows", "stream", "at least one window of k2 steps",
     lambda s: sj.stream_windows(s, k1=2, k2=8), F32((7,)),
     match=r"stream_windows: stream must hold at least k2 = 8 steps; got 7 steps, fewer than one "
           r"window")
case("stream-windows-time-axis", "stream_windows", "time_axis", "an axis of stream",
     lambda s: sj.stream_windows(s, k1=2, time_axis=1), F32((7,)),
     match=r"stream_windows: time_axis must name an axis of stream \(shape \(7,\)\); got "
           r"time_axis=1")

# ============================================================================= generate
section("seqjax.generate")
case("pick-temperature", "pick_token", "temperature",
     ">= 0 and finite (NaN and inf drew wrong tokens)",
     lambda lg: sj.pick_token(KEY, lg, temperature=float("nan")), F32((2, 5)),
     match=r"pick_token: temperature must be >= 0 and finite; got nan")
case("pick-temperature-negative", "pick_token", "temperature", ">= 0",
     lambda lg: sj.pick_token(KEY, lg, temperature=-1.0), F32((2, 5)),
     match=r"pick_token: temperature must be >= 0 and finite; got -1\.0")
case("pick-temperature-traced", "pick_token", "temperature",
     "concrete (it selects greedy at trace time)",
     lambda lg: jax.jit(lambda t: sj.pick_token(KEY, lg, temperature=t))(1.0), F32((2, 5)),
     error=TypeError,
     match=r"pick_token: temperature must be a concrete number .*; got a traced value")
case("pick-logits-dtype", "pick_token", "logits", "floating dtype",
     lambda lg: sj.pick_token(KEY, lg), I32((2, 5)), error=TypeError,
     match=r"pick_token: logits must have a floating dtype .*; got dtype int32")
case("pick-logits-rank", "pick_token", "logits", "[*B, V] (a scalar failed on shape[-1])",
     lambda lg: sj.pick_token(KEY, lg), F32(()),
     match=r"pick_token: logits must be \[\*B, V\]; got shape \(\)")
case("pick-top-k", "pick_token", "top_k", "a positive int",
     lambda lg: sj.pick_token(KEY, lg, top_k=0), F32((2, 5)),
     match=r"pick_token: top_k must be a positive int; got 0")
case("pick-top-k-range", "pick_token", "top_k", "at most V",
     lambda lg: sj.pick_token(KEY, lg, top_k=6), F32((2, 5)),
     match=r"pick_token: top_k must lie in \[1, V\] = \[1, 5\]; got 6")
case("sample-num-steps", "sample", "num_steps", "an int >= 0 (2.5 gave 3 steps, -1 none)",
     lambda t: sj.sample(step_fn, None, (), t, KEY, 2.5), I32((1,)),
     match=r"sample: num_steps must be an int >= 0; got 2\.5")
case("sample-token", "sample", "token", "integer ids (floats were fed back silently)",
     lambda t: sj.sample(step_fn, None, (), t, KEY, 2), F32((1,)), error=TypeError,
     match=r"sample: token must hold integer ids; got dtype float32")
case("decode-token", "decode", "token", "integer ids",
     lambda t: sj.decode(step_fn, None, (), t, KEY, 3), F32((1,)), error=TypeError,
     match=r"decode: token must hold integer ids; got dtype float32")
case("decode-max-length", "decode", "max_length", "a positive int",
     lambda t: sj.decode(step_fn, None, (), t, KEY, 0), I32((1,)),
     match=r"decode: max_length must be a positive int; got 0")
case("decode-end-token", "decode", "end_token", "an int id in [0, V) (1.5 was cast)",
     lambda t: sj.decode(step_fn, None, (), t, KEY, 3, end_token=1.5), I32((1,)),
     match=r"decode: end_token must lie in \[0, V\) = \[0, 5\); got 1\.5")
case("beam-token", "beam_search", "token", "integer ids",
     lambda t: sj.beam_search(step_fn, None, (), t, 2, 3), F32((1,)), error=TypeError,
     match=r"beam_search: token must hold integer ids; got dtype float32")
case("beam-width", "beam_search", "beam_width", "a positive int",
     lambda t: sj.beam_search(step_fn, None, (), t, 0, 3), I32((1,)),
     match=r"beam_search: beam_width must be a positive int; got 0")
case("beam-end-token", "beam_search", "end_token", "an id in [0, V)",
     lambda t: sj.beam_search(step_fn, None, (), t, 2, 3, end_token=5), I32((1,)),
     match=r"beam_search: end_token must lie in \[0, V\) = \[0, 5\); got 5")

# ============================================================================= embedded
section("seqjax.embedded")
_TABLE = F32((10, 3))
_LN_GRU = sj.LayerNormGRUCell(3, 4)
case("embedded-cell", "embedded_unroll", "cell", "a cell instance",
     lambda t, ids: sj.embedded_unroll(sj.LSTMCell, LSTM_P, t, ids), _TABLE, I32((4, 2)),
     error=TypeError, match=r"embedded_unroll: cell must be a seqjax cell instance; got <class")
case("embedded-ids", "embedded_unroll", "ids", "integer ids",
     lambda t, ids: sj.embedded_unroll(LSTM, LSTM_P, t, ids), _TABLE, F32((4, 2)), error=TypeError,
     match=r"embedded_unroll: ids must be integers; got dtype float32")
case("embedded-table", "embedded_unroll", "table", "[V, input_size]",
     lambda t, ids: sj.embedded_unroll(LSTM, LSTM_P, t, ids), F32((10, 4)), I32((4, 2)),
     match=r"embedded_unroll: table must be \[V, I\] with I = 3 .*; got shape \(10, 4\)")
case("embedded-time-axis", "embedded_unroll", "time_axis", "an axis of ids",
     lambda t, ids: sj.embedded_unroll(LSTM, LSTM_P, t, ids, time_axis=2), _TABLE, I32((4, 2)),
     match=r"embedded_unroll: time_axis must name an axis of ids \(shape \(4, 2\)\); got "
           r"time_axis=2")
case("embedded-fold", "embedded_unroll", "fold", "a bool or None ('yes' read as True)",
     lambda t, ids: sj.embedded_unroll(LSTM, LSTM_P, t, ids, fold="yes"), _TABLE, I32((4, 2)),
     match=r"embedded_unroll: fold must be a bool \(True or False\); got 'yes'")
case("embedded-fold-cell", "embedded_unroll", "fold", "fold=True needs project_weight",
     lambda t, ids: sj.embedded_unroll(_LN_GRU, zeros_params(_LN_GRU), t, ids, fold=True),
     _TABLE, I32((4, 2)),
     match=r"embedded_unroll: fold=True needs a cell whose project is affine per row .*; got "
           r"LayerNormGRUCell")
case("embedded-params", "embedded_unroll", "params",
     "params of this cell (checked before the fold)",
     lambda t, ids: sj.embedded_unroll(LSTM, GRU_P, t, ids, fold=True), _TABLE, I32((4, 2)),
     match=r"embedded_unroll: params do not fit LSTMCell\(.*; got GRUParams")

# =============================================================================== models
section("seqjax.models")
_CLS = sj.SequenceClassifier(LSTM, 3)
_CLS_P = zeros_params(_CLS)
_TAG = sj.SequenceTagger(LSTM, 3, embed=sj.Embedding(10, 3))
_TAG_P = zeros_params(_TAG)
_GEN = sj.ConditionedGenerator(2, GRU, vocab_size=5, embed_size=3)
_GEN_P = zeros_params(_GEN)
_S2S = sj.Seq2Seq(sj.Embedding(7, 3), LSTM, sj.ConditionedGenerator(4, GRU, 5, 3))
_S2S_P = zeros_params(_S2S)
case("classifier-classes", "SequenceClassifier", "num_classes", "a positive int",
     lambda: sj.SequenceClassifier(LSTM, 0),
     match=r"SequenceClassifier: num_classes must be a positive int; got 0")
case("classifier-encoder", "SequenceClassifier", "encoder",
     "a cell or sequence layer (was accepted)",
     lambda: sj.SequenceClassifier("lstm", 3), error=TypeError,
     match=r"SequenceClassifier: encoder must be a seqjax cell, Stack or Bidirectional instance; "
           r"got 'lstm'")
case("classifier-embed-type", "SequenceClassifier", "embed", "an Embedding or None",
     lambda: sj.SequenceClassifier(LSTM, 3, embed=10), error=TypeError,
     match=r"SequenceClassifier: embed must be a seqjax\.Embedding or None; got 10")
case("classifier-embed", "SequenceClassifier", "embed", "features equal the encoder's input_size",
     lambda: sj.SequenceClassifier(LSTM, 3, embed=sj.Embedding(10, 5)),
     match=r"SequenceClassifier: embed\.features must equal the encoder's input_size 3; got 5")
case("classifier-pool", "SequenceClassifier", "pool", "a function or None",
     lambda: sj.SequenceClassifier(LSTM, 3, pool="mean"), error=TypeError,
     match=r"SequenceClassifier: pool must be a function \(callable\); got 'mean'")
case("classifier-options", "SequenceClassifier", "options",
     "an UnrollOptions (a dict was accepted)",
     lambda: sj.SequenceClassifier(LSTM, 3, options={"truncate": 2}), error=TypeError,
     match=r"SequenceClassifier: options must be a seqjax\.UnrollOptions .*; got \{'truncate': 2\}")
case("classifier-xs", "SequenceClassifier", "xs", "floating features without an embed",
     lambda xs: _CLS(_CLS_P, xs), I32((5, 2, 3)), error=TypeError,
     match=r"SequenceClassifier: xs must have a floating dtype .*; got dtype int32")
case("classifier-time-axis", "SequenceClassifier", "time_axis", "a non-feature axis",
     lambda xs: _CLS(_CLS_P, xs, time_axis=2), XS,
     match=r"SequenceClassifier: time_axis must name a non-feature axis of xs .*; got time_axis=2")
case("classifier-lengths", "SequenceClassifier", "lengths", "the batch shape",
     lambda xs, n: _CLS(_CLS_P, xs, n), XS, I32((3,)),
     match=r"SequenceClassifier: lengths must have the batch shape of xs, \(2,\); got shape \(3,\)")
case("tagger-tags", "SequenceTagger", "num_tags", "a positive int",
     lambda: sj.SequenceTagger(LSTM, -1),
     match=r"SequenceTagger: num_tags must be a positive int; got -1")
case("tagger-embed", "SequenceTagger", "embed", "features equal the encoder's input_size",
     lambda: sj.SequenceTagger(LSTM, 3, embed=sj.Embedding(10, 2)),
     match=r"SequenceTagger: embed\.features must equal the encoder's input_size 3; got 2")
case("tagger-ids", "SequenceTagger", "xs", "integer ids with an embed",
     lambda ids: _TAG(_TAG_P, ids), F32((5, 2)), error=TypeError,
     match=r"SequenceTagger: xs must hold integer ids; got dtype float32")
case("tagger-ids-time-axis", "SequenceTagger", "time_axis", "an axis of the ids",
     lambda ids: _TAG(_TAG_P, ids, time_axis=2), I32((5, 2)),
     match=r"SequenceTagger: xs must have a time axis at time_axis=2; got shape \(5, 2\)")
case("tagger-loss-tags", "SequenceTagger.loss", "tags", "integer ids",
     lambda ids, tags: _TAG.loss(_TAG_P, ids, tags), I32((5, 2)), F32((5, 2)), error=TypeError,
     match=r"SequenceTagger\.loss: tags must hold integer ids; got dtype float32")
case("generator-sizes", "ConditionedGenerator", "vocab_size", "sizes are positive ints",
     lambda: sj.ConditionedGenerator(2, GRU, vocab_size=0, embed_size=3),
     match=r"ConditionedGenerator: vocab_size must be a positive int; got 0")
case("generator-decoder", "ConditionedGenerator", "decoder", "a cell or a Stack of cells (steps)",
     lambda: sj.ConditionedGenerator(2, _BI, 5, 3), error=TypeError,
     match=r"ConditionedGenerator: decoder must be a seqjax cell or a Stack of cells .*; got "
           r"Bidirectional")
case("generator-reverse", "ConditionedGenerator", "options", "reverse=False",
     lambda: sj.ConditionedGenerator(2, GRU, 5, 3, options=sj.UnrollOptions(reverse=True)),
     match=r"ConditionedGenerator: options\.reverse must be False .*; got reverse=True")
case("generator-embed-size", "ConditionedGenerator", "embed_size",
     "equals the decoder's input_size",
     lambda: sj.ConditionedGenerator(2, GRU, 5, 4),
     match=r"ConditionedGenerator: the decoder's input_size must equal embed_size 4; got 3")
case("generator-start-token", "ConditionedGenerator", "start_token",
     "an int id in [0, V) (1.5 was accepted)",
     lambda: sj.ConditionedGenerator(2, GRU, 5, 3, start_token=1.5),
     match=r"ConditionedGenerator: start_token must lie in \[0, vocab_size\) = \[0, 5\); got 1\.5")
case("generator-end-token", "ConditionedGenerator", "end_token", "an id in [0, V)",
     lambda: sj.ConditionedGenerator(2, GRU, 5, 3, end_token=5),
     match=r"ConditionedGenerator: end_token must lie in \[0, vocab_size\) = \[0, 5\); got 5")
case("generator-condition-dtype", "ConditionedGenerator", "condition", "floating dtype",
     lambda c: _GEN.initial_carry(_GEN_P, c), I32((1, 2)), error=TypeError,
     match=r"ConditionedGenerator: condition must have a floating dtype .*; got dtype int32")
case("generator-condition-shape", "ConditionedGenerator", "condition", "[*B, condition_size]",
     lambda c: _GEN.generate(_GEN_P, c, KEY, 3), F32((1, 3)),
     match=r"ConditionedGenerator: condition must have shape \[\*B, 2\]; got \(1, 3\)")
case("generator-targets", "ConditionedGenerator", "targets", "integer ids",
     lambda c, t: _GEN(_GEN_P, c, t), F32((1, 2)), F32((4, 1)), error=TypeError,
     match=r"ConditionedGenerator: targets must hold integer ids; got dtype float32")
case("generator-loss-targets", "ConditionedGenerator.loss", "targets",
     "integer ids (checked before the run)",
     lambda c, t: _GEN.loss(_GEN_P, c, t), F32((1, 2)), F32((4, 1)), error=TypeError,
     match=r"ConditionedGenerator\.loss: targets must hold integer ids; got dtype float32")
case("generator-lengths", "ConditionedGenerator", "lengths", "the batch shape of targets",
     lambda c, t, n: _GEN(_GEN_P, c, t, n), F32((1, 2)), I32((4, 1)), I32((2,)),
     match=r"ConditionedGenerator: lengths must have the batch shape of xs, \(1,\); got shape "
           r"\(2,\)")
case("seq2seq-source-embed", "Seq2Seq", "source_embed", "an Embedding",
     lambda: sj.Seq2Seq(None, LSTM, _GEN), error=TypeError,
     match=r"Seq2Seq: source_embed must be a seqjax\.Embedding; got None")
case("seq2seq-decoder", "Seq2Seq", "decoder", "a ConditionedGenerator",
     lambda: sj.Seq2Seq(sj.Embedding(7, 3), LSTM, GRU), error=TypeError,
     match=r"Seq2Seq: decoder must be a ConditionedGenerator; got GRUCell")
case("seq2seq-encoder", "Seq2Seq", "encoder", "a cell or sequence layer",
     lambda: sj.Seq2Seq(sj.Embedding(7, 3), None, _GEN), error=TypeError,
     match=r"Seq2Seq: encoder must be a seqjax cell, Stack or Bidirectional instance; got None")
case("seq2seq-embed-size", "Seq2Seq", "source_embed", "features equal the encoder's input_size",
     lambda: sj.Seq2Seq(sj.Embedding(7, 2), LSTM, _GEN),
     match=r"Seq2Seq: source_embed\.features must equal the encoder's input_size 3; got 2")
case("seq2seq-condition-size", "Seq2Seq", "decoder", "condition_size equals the encoder's output",
     lambda: sj.Seq2Seq(sj.Embedding(7, 3), LSTM, _GEN),
     match=r"Seq2Seq: decoder\.condition_size must equal the encoder's output size 4; got 2")
case("seq2seq-source", "Seq2Seq", "source", "integer ids",
     lambda s: _S2S.encode(_S2S_P, s), F32((6, 2)), error=TypeError,
     match=r"Seq2Seq: source must hold integer ids; got dtype float32")
case("seq2seq-source-lengths", "Seq2Seq", "source_lengths", "values in [0, S]",
     lambda: _S2S.encode(_S2S_P, I32((6, 2)), np.array([7, 1], np.int32)),
     match=r"Seq2Seq: source_lengths must lie in \[0, T\] = \[0, 6\]; got values from 1 to 7",
     traced="traced lengths are clipped to [0, S]")

# ============================================================================= forecast
section("seqjax.forecast")
SERIES = F32((10, 1))
_AR = forecast.ARModel(3)
_AR_P = zeros_params(_AR)
_LAR = forecast.LatentAR(sj.GRUCell(1, 4))
_LAR_P = zeros_params(_LAR)
case("ar-windows-series", "ar_windows", "series", "floating dtype",
     lambda s: forecast.ar_windows(s, 2), I32((10, 1)), error=TypeError,
     match=r"ar_windows: series must have a floating dtype .*; got dtype int32")
case("ar-windows-order", "ar_windows", "order", "a positive int",
     lambda s: forecast.ar_windows(s, 0), SERIES,
     match=r"ar_windows: order must be a positive int; got 0")
case("ar-windows-long", "ar_windows", "order", "shorter than the series",
     lambda s: forecast.ar_windows(s, 10), SERIES,
     match=r"ar_windows: order must be shorter than the series \(T = 10\), .*; got order = 10")
case("ar-model-order", "ARModel", "order", "a positive int",
     lambda: forecast.ARModel(0), match=r"ARModel: order must be a positive int; got 0")
case("ar-model-features", "ARModel", "features", "a positive int",
     lambda: forecast.ARModel(2, features=0),
     match=r"ARModel: features must be a positive int; got 0")
case("ar-model-hidden", "ARModel", "hidden_sizes", "a sequence (an int failed as 'not iterable')",
     lambda: forecast.ARModel(2, hidden_sizes=8),
     match=r"ARModel: hidden_sizes must be a sequence of positive ints \(\(\) for a linear "
           r"model\); got 8")
case("ar-model-hidden-entry", "ARModel", "hidden_sizes", "positive int entries",
     lambda: forecast.ARModel(2, hidden_sizes=(8, 0)),
     match=r"ARModel: hidden_sizes entries must be a positive int; got 0")
case("ar-model-activation", "ARModel", "activation", "a function",
     lambda: forecast.ARModel(2, hidden_sizes=(4,), activation="tanh"), error=TypeError,
     match=r"ARModel: activation must be a function \(callable\); got 'tanh'")
case("ar-predict-dtype", "ARModel.predict", "windows", "floating dtype",
     lambda w: _AR.predict(_AR_P, w), I32((2, 3, 1)), error=TypeError,
     match=r"ARModel\.predict: windows must have a floating dtype .*; got dtype int32")
case("ar-predict-shape", "ARModel.predict", "windows", "[..., order, F]",
     lambda w: _AR.predict(_AR_P, w), F32((2, 4, 1)),
     match=r"ARModel\.predict: windows must have shape \[\.\.\., order, F\] = \[\.\.\., 3, 1\]; "
           r"got shape \(2, 4, 1\)")
case("ar-call-xs", "ARModel", "xs", "[T, *B, F]",
     lambda xs: _AR(_AR_P, xs), F32((10,)),
     match=r"ARModel: xs must be time-major \[T, \*B, F\] .*; got shape \(10,\)")
case("ar-call-features", "ARModel", "xs", "F features last",
     lambda xs: _AR(_AR_P, xs), F32((10, 2)),
     match=r"ARModel: xs must have F = 1 features in its last axis; got shape \(10, 2\)")
case("ar-call-carry", "ARModel", "carry", "the window [*B, order, F] (failed inside concatenate)",
     lambda xs, c: _AR(_AR_P, xs, c), F32((10, 2, 1)), F32((2, 2, 1)),
     match=r"ARModel: carry must be the window \[\*B, order, F\] = \(2, 3, 1\) .*; got shape \(2, "
           r"2, 1\)")
case("fit-ar-series", "fit_linear_ar", "series", "[T, *B, F]",
     lambda s: forecast.fit_linear_ar(s, 2), F32((10,)),
     match=r"fit_linear_ar: series must be time-major \[T, \*B, F\] .*; got shape \(10,\)")
case("fit-ar-ridge", "fit_linear_ar", "ridge", ">= 0 (NaN solved to NaN weights)",
     lambda s: forecast.fit_linear_ar(s, 2, ridge=float("nan")), SERIES,
     match=r"fit_linear_ar: ridge must be >= 0; got nan")
case("latent-ar-cell", "LatentAR", "cell", "a cell instance (was accepted)",
     lambda: forecast.LatentAR("gru"), error=TypeError,
     match=r"LatentAR: cell must be a seqjax cell instance; got 'gru'")
case("latent-ar-residual", "LatentAR", "residual", "a bool",
     lambda: forecast.LatentAR(GRU, residual="yes"),
     match=r"LatentAR: residual must be a bool \(True or False\); got 'yes'")
case("latent-ar-xs", "LatentAR", "xs", "[T, *B, F]",
     lambda xs: _LAR(_LAR_P, xs), F32((10,)),
     match=r"LatentAR: xs must be time-major \[T, \*B, F\] .*; got shape \(10,\)")
case("latent-ar-lengths", "LatentAR", "lengths", "the batch shape of xs",
     lambda xs, n: _LAR(_LAR_P, xs, lengths=n), F32((10, 2, 1)), I32((3,)),
     match=r"LatentAR: lengths must have the batch shape of xs, \(2,\); got shape \(3,\)")
case("closed-loop-horizon", "closed_loop", "horizon", "a positive int",
     lambda x: forecast.closed_loop(_AR.step, _AR_P, _AR.init_carry(), x, 0), F32((1,)),
     match=r"closed_loop: horizon must be a positive int; got 0")
case("closed-loop-step", "closed_loop", "step_fn", "predicts a value shaped like x",
     lambda x: forecast.closed_loop(lambda p, c, x: (c, x[:1]), None, (), x, 2), F32((3,)),
     match=r"closed_loop: step_fn must predict a value shaped like its input x, \(3,\), to feed "
           r"it back; got \(1,\)")
case("forecast-horizon", "forecast", "horizon", "a positive int",
     lambda c: forecast.forecast(_AR, _AR_P, c, 1.5), SERIES,
     match=r"forecast: horizon must be a positive int; got 1\.5")
case("forecast-context", "forecast", "context", "[C, *B, F]",
     lambda c: forecast.forecast(_AR, _AR_P, c, 2), F32((10,)),
     match=r"forecast: context must be time-major \[T, \*B, F\] .*; got shape \(10,\)")
case("forecast-context-short", "forecast", "context", "at least the model's window",
     lambda c: forecast.forecast(_AR, _AR_P, c, 2), F32((2, 1)),
     match=r"forecast: context must hold at least 3 steps \(the model's window, when no carry is "
           r"given\); got 2 steps")
case("one-step-xs", "one_step_loss", "xs", "[T, *B, F]",
     lambda xs: forecast.one_step_loss(_AR, _AR_P, xs), I32((10, 1)), error=TypeError,
     match=r"one_step_loss: xs must have a floating dtype .*; got dtype int32")
case("one-step-short", "one_step_loss", "xs", "at least 2 steps (the skip message blamed skip)",
     lambda xs: forecast.one_step_loss(_AR, _AR_P, xs), F32((1, 1)),
     match=r"one_step_loss: xs must hold at least 2 steps .*; got shape \(1, 1\)")
case("one-step-skip", "one_step_loss", "skip", "an int in [0, T - 1)",
     lambda xs: forecast.one_step_loss(_AR, _AR_P, xs, skip=9), SERIES,
     match=r"one_step_loss: skip must be an int in \[0, T - 1\) = \[0, 9\); got 9")
case("one-step-lengths", "one_step_loss", "lengths", "integers",
     lambda xs, n: forecast.one_step_loss(_AR, _AR_P, xs, lengths=n), SERIES, F32(()),
     error=TypeError, match=r"one_step_loss: lengths must be integers; got dtype float32")
case("last-value-horizon", "last_value_forecast", "horizon", "a positive int",
     lambda c: forecast.last_value_forecast(c, -2), SERIES,
     match=r"last_value_forecast: horizon must be a positive int; got -2")
case("last-value-context", "last_value_forecast", "context", "[C, *B, F]",
     lambda c: forecast.last_value_forecast(c, 2), F32((10,)),
     match=r"last_value_forecast: context must be time-major \[T, \*B, F\] .*; got shape \(10,\)")
case("last-value-empty", "last_value_forecast", "context", "at least one step",
     lambda c: forecast.last_value_forecast(c, 2), F32((0, 1)),
     match=r"last_value_forecast: context must hold at least one step; got none")
case("origins-series", "origins", "series", "floating [T, F]",
     lambda s: forecast.origins(s, [4], 2, 2), I32((10, 1)), error=TypeError,
     match=r"origins: series must have a floating dtype .*; got dtype int32")
case("origins-one-series", "origins", "series", "one series [T, F]",
     lambda s: forecast.origins(s, [4], 2, 2), F32((10, 2, 1)),
     match=r"origins: series must be one series \[T, F\]; got shape \(10, 2, 1\)")
case("origins-context", "origins", "context_length", "a positive int",
     lambda s: forecast.origins(s, [4], 0, 2), SERIES,
     match=r"origins: context_length must be a positive int; got 0")
case("origins-horizon", "origins", "horizon", "a positive int",
     lambda s: forecast.origins(s, [4], 2, 0), SERIES,
     match=r"origins: horizon must be a positive int; got 0")
case("origins-starts-type", "origins", "starts", "a 1-D sequence of ints",
     lambda s: forecast.origins(s, [3.5], 2, 2), SERIES, error=TypeError,
     match=r"origins: starts must be a 1-D sequence of ints; got array\(\[3\.5\]\)")
case("origins-starts-range", "origins", "starts", "in [context_length, T - horizon]",
     lambda s: forecast.origins(s, [1, 9], 2, 2), SERIES,
     match=r"origins: starts must lie in \[context_length, T - horizon\] = \[2, 8\] \(T = 10\); "
           r"got values from 1 to 9")

# ============================================================================ reservoir
section("seqjax.reservoir")
_ESN = sj.EchoStateCell(1, 10, connectivity=0.5)
_ESN_P = zeros_params(_ESN)
_W_FB = F32((1, 10))
_READOUT = sj.DenseParams(F32((10, 1)), F32((1,)))
case("readout-features", "readout_features", "inputs", "the states' leading shape",
     lambda s, u: reservoir.readout_features(s, u), F32((5, 2, 10)), F32((5, 3, 1)),
     match=r"readout_features: inputs must match the states' leading shape \(5, 2\); got shape "
           r"\(5, 3, 1\)")
case("ridge-features", "ridge_regression", "features", "floating dtype",
     lambda x, y: reservoir.ridge_regression(x, y), I32((5, 2)), F32((5, 1)), error=TypeError,
     match=r"ridge_regression: features must have a floating dtype .*; got dtype int32")
case("ridge-time-axis", "ridge_regression", "time_axis", "a non-feature axis",
     lambda x, y: reservoir.ridge_regression(x, y, time_axis=1), F32((5, 2)), F32((5, 1)),
     match=r"ridge_regression: time_axis must name a non-feature axis of features .*; got "
           r"time_axis=1")
case("ridge-washout", "ridge_regression", "washout", "an int in [0, T) (1.5 failed in slicing)",
     lambda x, y: reservoir.ridge_regression(x, y, washout=1.5), F32((5, 2)), F32((5, 1)),
     match=r"ridge_regression: washout must lie in \[0, T\) = \[0, 5\); got 1\.5")
case("ridge-targets", "ridge_regression", "targets", "the time and batch shape of features",
     lambda x, y: reservoir.ridge_regression(x, y), F32((5, 2)), F32((4, 1)),
     match=r"ridge_regression: targets must have the time and batch shape of features \(5,\); got "
           r"shape \(4, 1\)")
case("ridge-ridge", "ridge_regression", "ridge",
     "a finite number >= 0 (< 0 and NaN solved silently)",
     lambda x, y: reservoir.ridge_regression(x, y, ridge=-1.0), F32((5, 2)), F32((5, 1)),
     match=r"ridge_regression: ridge must be a finite number >= 0; got -1\.0",
     traced="a traced ridge (vmapped over, say) is used as given")
case("rls-init-features", "rls_init", "num_features", "a positive int (-1 failed in broadcast)",
     lambda: reservoir.rls_init(-1, 1),
     match=r"rls_init: num_features must be a positive int; got -1")
case("rls-init-outputs", "rls_init", "num_outputs", "a positive int",
     lambda: reservoir.rls_init(3, 0), match=r"rls_init: num_outputs must be a positive int; got 0")
case("rls-init-alpha", "rls_init", "alpha", "> 0 (0 gave an inf/NaN P)",
     lambda: reservoir.rls_init(3, 1, alpha=0.0),
     match=r"rls_init: alpha must be a finite number > 0; got 0\.0",
     traced="a traced alpha is used as given")
case("rls-features", "rls_regression", "features", "floating dtype",
     lambda x, y: reservoir.rls_regression(x, y), I32((5, 2)), F32((5, 1)), error=TypeError,
     match=r"rls_regression: features must have a floating dtype .*; got dtype int32")
case("rls-targets", "rls_regression", "targets", "floating dtype",
     lambda x, y: reservoir.rls_regression(x, y), F32((5, 2)), I32((5, 1)), error=TypeError,
     match=r"rls_regression: targets must have a floating dtype .*; got dtype int32")
case("rls-shapes", "rls_regression", "targets", "[T, F] and [T, O] with the same T",
     lambda x, y: reservoir.rls_regression(x, y), F32((5, 2)), F32((4, 1)),
     match=r"rls_regression: features must be \[T, F\] and targets \[T, O\] with the same T .*got "
           r"shapes \(5, 2\) and \(4, 1\)")
case("rls-washout", "rls_regression", "washout", "an int in [0, T]",
     lambda x, y: reservoir.rls_regression(x, y, washout=6), F32((5, 2)), F32((5, 1)),
     match=r"rls_regression: washout must lie in \[0, T\]; got 6")
case("rls-forgetting", "rls_regression", "forgetting", "in (0, 1] (0 gave NaN)",
     lambda x, y: reservoir.rls_regression(x, y, forgetting=0.0), F32((5, 2)), F32((5, 1)),
     match=r"rls_regression: forgetting must be a number in \(0, 1\]; got 0\.0",
     traced="a traced forgetting factor is used as given")
case("rls-alpha", "rls_regression", "alpha", "> 0",
     lambda x, y: reservoir.rls_regression(x, y, alpha=-1.0), F32((5, 2)), F32((5, 1)),
     match=r"rls_regression: alpha must be a finite number > 0; got -1\.0",
     traced="a traced alpha is used as given")
case("feedback-sizes", "feedback_weights", "output_size", "a positive int",
     lambda: reservoir.feedback_weights(KEY, 0, 10),
     match=r"feedback_weights: output_size must be a positive int; got 0")
case("feedback-hidden", "feedback_weights", "hidden_size", "a positive int",
     lambda: reservoir.feedback_weights(KEY, 1, 2.0),
     match=r"feedback_weights: hidden_size must be a positive int; got 2\.0")
case("feedback-scaling", "feedback_weights", "scaling", "a finite number",
     lambda: reservoir.feedback_weights(KEY, 1, 10, scaling=float("nan")),
     match=r"feedback_weights: scaling must be a finite number; got nan")
case("feedback-connectivity", "feedback_weights", "connectivity", "in (0, 1]",
     lambda: reservoir.feedback_weights(KEY, 1, 10, connectivity=0.0),
     match=r"feedback_weights: connectivity must lie in \(0, 1\]; got 0\.0")
case("force-targets-dtype", "force_train", "targets", "floating dtype",
     lambda y: reservoir.force_train(_ESN, _ESN_P, _W_FB, y), I32((5, 1)), error=TypeError,
     match=r"force_train: targets must have a floating dtype .*; got dtype int32")
case("force-targets", "force_train", "targets", "[T, O]",
     lambda y: reservoir.force_train(_ESN, _ESN_P, _W_FB, y), F32((5, 2, 1)),
     match=r"force_train: targets must be \[T, O\] \(vmap for batches\); got shape \(5, 2, 1\)")
case("force-w-fb", "force_train", "w_fb", "[O, H]",
     lambda y, w: reservoir.force_train(_ESN, _ESN_P, w, y), F32((5, 1)), F32((10, 1)),
     match=r"force_train: w_fb must have shape \[O, H\] = \[1, 10\]; got \(10, 1\)")
case("force-xs-dtype", "force_train", "xs", "floating dtype",
     lambda y, xs: reservoir.force_train(_ESN, _ESN_P, _W_FB, y, xs), F32((5, 1)), I32((5, 1)),
     error=TypeError, match=r"force_train: xs must have a floating dtype .*; got dtype int32")
case("force-xs", "force_train", "xs", "[T, I]",
     lambda y, xs: reservoir.force_train(_ESN, _ESN_P, _W_FB, y, xs), F32((5, 1)), F32((4, 1)),
     match=r"force_train: xs must have shape \[T, I\] = \[5, 1\] \(vmap for batches\); got \(4, "
           r"1\)")
case("force-carry", "force_train", "carry", "FeedbackCarry(x [H], y [O])",
     lambda y, c: reservoir.force_train(_ESN, _ESN_P, _W_FB, y, None, c), F32((5, 1)),
     reservoir.FeedbackCarry(F32((2, 10)), F32((2, 1))),
     match=r"feedback carry must be FeedbackCarry\(x \[H\], y \[O\]\) = \(\[10\], \[1\]\) .*got "
           r"shapes \(2, 10\), \(2, 1\)")
case("force-forgetting", "force_train", "forgetting", "in (0, 1]",
     lambda y: reservoir.force_train(_ESN, _ESN_P, _W_FB, y, forgetting=1.5), F32((5, 1)),
     match=r"force_train: forgetting must be a number in \(0, 1\]; got 1\.5",
     traced="a traced forgetting factor is used as given")
case("force-alpha", "force_train", "alpha", "> 0 (0 gave NaN outputs)",
     lambda y: reservoir.force_train(_ESN, _ESN_P, _W_FB, y, alpha=0.0), F32((5, 1)),
     match=r"force_train: alpha must be a finite number > 0; got 0\.0",
     traced="a traced alpha is used as given")
case("force-run-steps", "force_run", "num_steps", "an int >= 0",
     lambda: reservoir.force_run(_ESN, _ESN_P, _W_FB, _READOUT, None, -1),
     match=r"force_run: num_steps must be an int >= 0; got -1")
case("force-run-readout", "force_run", "readout", "w [H, O]",
     lambda w: reservoir.force_run(_ESN, _ESN_P, _W_FB, sj.DenseParams(w, F32((1,))), None, 3),
     F32((9, 1)),
     match=r"force_run: readout\.w must have shape \[H, O\] = \[10, 1\]; got \(9, 1\)")
case("esn-network-cell", "EchoStateNetwork", "cell", "an EchoStateCell",
     lambda: reservoir.EchoStateNetwork(LSTM, 1), error=TypeError,
     match=r"EchoStateNetwork: cell must be an EchoStateCell; got LSTMCell")
case("esn-network-output", "EchoStateNetwork", "output_size", "a positive int (0 was accepted)",
     lambda: reservoir.EchoStateNetwork(_ESN, 0),
     match=r"EchoStateNetwork: output_size must be a positive int; got 0")
case("esn-network-input", "EchoStateNetwork", "input_to_readout", "a bool",
     lambda: reservoir.EchoStateNetwork(_ESN, 1, input_to_readout="yes"),
     match=r"EchoStateNetwork: input_to_readout must be a bool \(True or False\); got 'yes'")


class _Reservoir:
    """A stand-in for ``reservoirpy.nodes.Reservoir``: the checks run without ReservoirPy."""

    def __init__(self, initialized=True, activation=None):
        self.initialized = initialized
        self.activation = activation


def _rpy_tanh(x):
    return np.tanh(x)


@contextlib.contextmanager
def _fake_reservoirpy():
    names = ("reservoirpy", "reservoirpy.nodes", "reservoirpy.activationsfunc")
    saved = {name: sys.modules.get(name) for name in names}
    package = types.ModuleType("reservoirpy")
    nodes = types.ModuleType("reservoirpy.nodes")
    nodes.Reservoir = _Reservoir
    activations = types.ModuleType("reservoirpy.activationsfunc")
    activations.tanh = _rpy_tanh
    sys.modules.update(dict(zip(names, (package, nodes, activations), strict=True)))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _from_rpy(reservoir_node):
    with _fake_reservoirpy():
        return reservoir.from_reservoirpy(reservoir_node)


case("rpy-type", "from_reservoirpy", "reservoir", "a ReservoirPy Reservoir",
     lambda: _from_rpy("reservoir"), error=TypeError,
     match=r"from_reservoirpy: reservoir must be a reservoirpy Reservoir; got 'reservoir'")
case("rpy-initialised", "from_reservoirpy", "reservoir", "initialised (W and Win drawn)",
     lambda: _from_rpy(_Reservoir(initialized=False)),
     match=r"from_reservoirpy: reservoir must be initialised .*; got one not initialised")
case("rpy-activation", "from_reservoirpy", "reservoir", "the tanh activation",
     lambda: _from_rpy(_Reservoir(activation=np.sin)),
     match=r"from_reservoirpy: only the tanh activation is supported; got <ufunc 'sin'>")

# ========================================================================== diagnostics
section("seqjax.diagnostics")
case("diag-cell", "carry_trajectory", "cell", "a cell instance",
     lambda xs: diagnostics.carry_trajectory("lstm", LSTM_P, xs), XS, error=TypeError,
     match=r"carry_trajectory: cell must be a seqjax cell instance; got 'lstm'")
case("diag-xs-dtype", "carry_trajectory", "xs", "floating dtype",
     lambda xs: diagnostics.carry_trajectory(LSTM, LSTM_P, xs), I32((5, 2, 3)), error=TypeError,
     match=r"carry_trajectory: xs must have a floating dtype .*; got dtype int32")
case("diag-xs-rank", "carry_trajectory", "xs", "[T, *B, I]",
     lambda xs: diagnostics.carry_trajectory(LSTM, LSTM_P, xs), F32((5,)),
     match=r"carry_trajectory: xs must be \[T, \*B, I\]; got shape \(5,\)")
case("diag-xs-features", "carry_gradients", "xs", "input_size features",
     lambda xs: diagnostics.carry_gradients(LSTM, LSTM_P, xs, jnp.sum), F32((5, 2)),
     match=r"carry_gradients: xs must have 3 features in its last axis .*; got shape \(5, 2\)")
case("diag-params", "carry_trajectory", "params", "params of this cell (failed on a missing field)",
     lambda xs: diagnostics.carry_trajectory(LSTM, GRU_P, xs), XS,
     match=r"carry_trajectory: params do not fit LSTMCell\(.*; got GRUParams")
case("diag-carry", "carry_gradients", "carry", "the cell's carry for the batch of xs",
     lambda xs, c: diagnostics.carry_gradients(LSTM, LSTM_P, xs, jnp.sum, c), XS,
     LSTM.init_carry((3,)),
     match=r"carry_gradients: carry leaves must have shape \(2, 4\) \(\[\*B, H\]\); got \(3, 4\)")
case("diag-loss-fn", "carry_gradients", "loss_fn", "a function",
     lambda xs: diagnostics.carry_gradients(LSTM, LSTM_P, xs, "sum"), XS, error=TypeError,
     match=r"carry_gradients: loss_fn must be a function \(callable\); got 'sum'")
case("correlations-states", "unit_correlations", "states", "floating dtype",
     lambda s, f: diagnostics.unit_correlations(s, f), I32((5, 4)), F32((5, 2)), error=TypeError,
     match=r"unit_correlations: states must have a floating dtype .*; got dtype int32")
case("correlations-features", "unit_correlations", "features", "floating dtype",
     lambda s, f: diagnostics.unit_correlations(s, f), F32((5, 4)), I32((5, 2)), error=TypeError,
     match=r"unit_correlations: features must have a floating dtype .*; got dtype int32")
case("correlations-shapes", "unit_correlations", "features", "[T, H] and [T, K], same T",
     lambda s, f: diagnostics.unit_correlations(s, f), F32((5, 4)), F32((6, 2)),
     match=r"unit_correlations: states must be \[T, H\] and features \[T, K\] with the same T; "
           r"got shapes \(5, 4\) and \(6, 2\)")
case("jacobians-cell", "state_jacobians", "cell", "a cell instance",
     lambda xs: diagnostics.state_jacobians(None, LSTM_P, xs), F32((5, 3)), error=TypeError,
     match=r"state_jacobians: cell must be a seqjax cell instance; got None")
case("jacobians-xs-dtype", "state_jacobians", "xs", "floating dtype",
     lambda xs: diagnostics.state_jacobians(LSTM, LSTM_P, xs), I32((5, 3)), error=TypeError,
     match=r"state_jacobians: xs must have a floating dtype .*; got dtype int32")
case("jacobians-xs-rank", "state_jacobians", "xs", "one sequence [T, I]",
     lambda xs: diagnostics.state_jacobians(LSTM, LSTM_P, xs), XS,
     match=r"state_jacobians: xs must be one sequence \[T, I\] \(vmap for batches\); got shape "
           r"\(5, 2, 3\)")
case("jacobians-xs-features", "state_jacobians", "xs", "input_size features",
     lambda xs: diagnostics.state_jacobians(LSTM, LSTM_P, xs), F32((5, 4)),
     match=r"state_jacobians: xs must have 3 features in its last axis .*; got shape \(5, 4\)")
case("jacobians-params", "state_jacobians", "params", "params of this cell",
     lambda xs: diagnostics.state_jacobians(LSTM, GRU_P, xs), F32((5, 3)),
     match=r"state_jacobians: params do not fit LSTMCell\(.*; got GRUParams")
case("jacobians-carry", "state_jacobians", "carry", "the cell's unbatched carry (was unchecked)",
     lambda xs, c: diagnostics.state_jacobians(LSTM, LSTM_P, xs, c), F32((5, 3)), F32((4,)),
     match=r"state_jacobians: carry must have structure "
           r"PyTreeDef\(CustomNode\(namedtuple\[LSTMCarry\].*got PyTreeDef\(\*\)")
case("summary-dtype", "jacobian_summary", "jacobians", "floating dtype",
     lambda j: diagnostics.jacobian_summary(j), I32((5, 2, 2)), error=TypeError,
     match=r"jacobian_summary: jacobians must have a floating dtype .*; got dtype int32")
case("summary-shape", "jacobian_summary", "jacobians", "[T, S, S]",
     lambda j: diagnostics.jacobian_summary(j), F32((5, 2, 3)),
     match=r"jacobian_summary: jacobians must be \[T, S, S\] \(from state_jacobians\); got shape "
           r"\(5, 2, 3\)")

# ============================================================================ interop: torch
section("seqjax.interop.torch")
_W = functools.partial(np.zeros, dtype=np.float32)
_LSTM_TORCH = dict(weight_ih=_W((16, 3)), weight_hh=_W((16, 4)), bias_ih=_W(16), bias_hh=_W(16))
_STACK2 = sj.Stack((LSTM, sj.LSTMCell(4, 4)))


def _lstm_torch(**changes):
    return sj_torch.cell_params_from_torch(LSTM, **(_LSTM_TORCH | changes))


case("torch-cell-kind", "cell_params_to_torch", "cell", "Elman, LSTM, LSTMProj or GRU",
     lambda: sj_torch.cell_params_to_torch(sj.MinGRUCell(3, 4), None), error=TypeError,
     match=r"cell_params_to_torch: expected an ElmanCell, LSTMCell, LSTMProjCell or GRUCell; got "
           r"MinGRUCell")
case("torch-elman-activation", "cell_params_to_torch", "cell", "tanh or relu activation",
     lambda: sj_torch.cell_params_to_torch(sj.ElmanCell(3, 4, activation=jax.nn.sigmoid), None),
     match=r"cell_params_to_torch: nn\.RNN supports only the activations .*; got an ElmanCell "
           r"with activation")
case("torch-lstmp-sizes", "cell_params_to_torch", "cell", "proj_size < hidden_size",
     lambda: sj_torch.cell_params_to_torch(sj.LSTMProjCell(3, 4, 4), None),
     match=r"nn\.LSTM needs proj_size < hidden_size, .*; got hidden_size=4, cell_size=4")
case("torch-gru-reset", "cell_params_from_torch", "cell", "GRUCell(reset_after=True)",
     lambda: sj_torch.cell_params_from_torch(
         sj.GRUCell(3, 4, reset_after=False), _W((12, 3)), _W((12, 4))),
     match=r"cell_params_from_torch: cell must be a GRUCell\(reset_after=True\): .*; got "
           r"GRUCell\(reset_after=False\)")
case("torch-weight-shape", "cell_params_from_torch", "weight_ih", "[G, I] for the cell",
     lambda: _lstm_torch(weight_ih=_W((16, 4))),
     match=r"cell_params_from_torch: weight_ih must have shape \(16, 3\) \(\[G, I\], G = 4H, for "
           r"LSTMCell\(3, 4\)\); got shape \(16, 4\)")
case("torch-weight-dtype", "cell_params_from_torch", "weight_hh", "floating",
     lambda: _lstm_torch(weight_hh=np.zeros((16, 4), np.int32)), error=TypeError,
     match=r"cell_params_from_torch: weight_hh must be floating; got dtype int32")
case("torch-weight-dtypes", "cell_params_from_torch", "bias_ih", "the dtype of weight_ih",
     lambda: _lstm_torch(bias_ih=np.zeros(16, np.float64)), error=TypeError,
     match=r"cell_params_from_torch: bias_ih must have the dtype of weight_ih, float32; got dtype "
           r"float64")
case("torch-weight-hr", "cell_params_from_torch", "weight_hr", "only for an LSTMProjCell",
     lambda: _lstm_torch(weight_hr=_W((2, 4))),
     match=r"cell_params_from_torch: weight_hr is the projection of an LSTMProjCell; got one for "
           r"LSTMCell")
case("torch-weight-required", "cell_params_from_torch", "weight_ih", "required",
     lambda: _lstm_torch(weight_ih=None),
     match=r"cell_params_from_torch: weight_ih is required; got None")
case("torch-params-type", "cell_params_to_torch", "params", "the cell's params type",
     lambda: sj_torch.cell_params_to_torch(LSTM, GRU_P), error=TypeError,
     match=r"cell_params_to_torch: params for LSTMCell\(3, 4\) must be a LSTMParams; got GRUParams")
case("torch-params-shape", "cell_params_to_torch", "params", "leaf shapes of the cell",
     lambda: sj_torch.cell_params_to_torch(LSTM, LSTM_P._replace(b=F32((12,)))),
     match=r"cell_params_to_torch: params\.b must have shape \(16,\) for LSTMCell\(3, 4\); got "
           r"shape \(12,\)")
case("torch-state-dict-type", "params_from_torch", "state_dict", "a mapping",
     lambda: sj_torch.params_from_torch(LSTM, [("weight_ih_l0", _W((16, 3)))]), error=TypeError,
     match=r"params_from_torch: state_dict must be a mapping of names to arrays; got list")
case("torch-state-dict-keys", "params_from_torch", "state_dict", "the module's keys",
     lambda: sj_torch.params_from_torch(LSTM, {"rnn.weight_ih_l0": _W((16, 3))}),
     match=r"params_from_torch: state_dict must hold the keys of nn\.LSTM with num_layers=1, "
           r"bidirectional=False; got missing keys \['weight_ih_l0', 'weight_hh_l0'\]")
case("torch-model-kind", "params_from_torch", "model", "a cell, a Bidirectional pair or a Stack",
     lambda: sj_torch.params_from_torch(sj.Stack((sj.MinGRUCell(3, 4),)), {}), error=TypeError,
     match=r"params_from_torch: model must be a cell, a Bidirectional pair of cells or a Stack of "
           r"either .*; got MinGRUCell inside a Stack")
case("torch-model-uniform", "params_from_torch", "model", "one kind of cell and one hidden_size",
     lambda: sj_torch.params_from_torch(sj.Stack((LSTM, sj.GRUCell(4, 4))), {}),
     match=r"params_from_torch: model must have one kind of cell, one hidden_size .*; got cells "
           r"\['GRU', 'LSTM'\]")
case("torch-params-layers", "params_to_torch", "params", "one entry per layer of a Stack",
     lambda: sj_torch.params_to_torch(_STACK2, LSTM_P), error=TypeError,
     match=r"params_to_torch: params for a 2-layer Stack must be a tuple of 2 entries; got "
           r"LSTMParams of 3")
case("torch-params-directions", "params_to_torch", "params", "BidirectionalParams for a pair",
     lambda: sj_torch.params_to_torch(_BI, LSTM_P), error=TypeError,
     match=r"params_to_torch: params\[0\] of a Bidirectional layer must be a BidirectionalParams; "
           r"got LSTMParams")
case("torch-h0-shape", "carry_from_torch", "h0", "[L * D, *B, H]",
     lambda h: sj_torch.carry_from_torch(GRU, h), F32((2, 3, 4)),
     match=r"carry_from_torch: h0 must have shape \[L \* D, \*B, H\] = \[1, \*B, 4\] .*; got "
           r"shape \(2, 3, 4\)")
case("torch-c0-missing", "carry_from_torch", "c0", "an LSTM needs c0",
     lambda h: sj_torch.carry_from_torch(LSTM, h), F32((1, 3, 4)),
     match=r"carry_from_torch: an LSTM state needs c0 as well as h0; got c0=None")
case("torch-c0-extra", "carry_from_torch", "c0", "only an LSTM takes c0",
     lambda h: sj_torch.carry_from_torch(GRU, h, h), F32((1, 3, 4)),
     match=r"carry_from_torch: c0 is the LSTM cell state; got one for GRUCell\(3, 4\)")
case("torch-c0-shape", "carry_from_torch", "c0", "the shape of h0",
     lambda h, c: sj_torch.carry_from_torch(LSTM, h, c), F32((1, 3, 4)), F32((1, 2, 4)),
     match=r"carry_from_torch: c0 must have the shape of h0, \(1, 3, 4\); got shape \(1, 2, 4\)")
case("torch-c0-proj-shape", "carry_from_torch", "c0", "h0's shape but its last axis (C)",
     lambda h, c: sj_torch.carry_from_torch(sj.LSTMProjCell(3, 2, 4), h, c), F32((1, 3, 2)),
     F32((1, 2, 4)),
     match=r"carry_from_torch: c0 must have the shape of h0 but for its last axis \(C\), \(1, 3\) "
           r"\+ \(C,\); got shape \(1, 2, 4\)")
case("torch-carry-type", "carry_to_torch", "carry", "an LSTMCarry per LSTM",
     lambda c: sj_torch.carry_to_torch(LSTM, c), F32((3, 4)), error=TypeError,
     match=r"carry_to_torch: each LSTM carry must be an LSTMCarry\(h, c\); got \['\w+'\]")

# ============================================================================= interop: flax
section("seqjax.interop.flax_nnx")


def _nnx():
    from flax import nnx

    return nnx


def _abstract(make):
    """An NNX module built without drawing its parameters (the checks read no values)."""
    return _nnx().eval_shape(lambda: make(_nnx().Rngs(0)))


_ZONEOUT = sj.ZoneoutCell(LSTM, hidden_rate=0.1)


def _NOISY():  # noqa: N802 (reads as the module it makes)
    return flax_nnx.Recurrent(_ZONEOUT, params=zeros_params(_ZONEOUT))

_GRU_B = GRU_P._replace(b_h=np.ones(12, np.float32))


def _abstract_gru():
    return _abstract(lambda r: _nnx().GRUCell(3, 4, rngs=r))

case("nnx-no-params", "Recurrent", "rngs", "rngs or params",
     lambda: flax_nnx.Recurrent(LSTM),
     match=r"Recurrent: pass rngs \(to draw new parameters with layer\.init\) or params .*; got "
           r"neither")
case("nnx-params-structure", "Recurrent", "params", "the structure of layer.init's",
     lambda: flax_nnx.Recurrent(LSTM, params=GRU_P),
     match=r"Recurrent: params must have the structure of LSTMCell\.init's, .*; got "
           r"PyTreeDef\(CustomNode\(namedtuple\[GRUParams\]")
case("nnx-params-shape", "Recurrent", "params", "the leaf shapes of layer.init's",
     lambda: flax_nnx.Recurrent(LSTM, params=zeros_params(sj.LSTMCell(3, 5))),
     match=r"Recurrent: params leaf w_x must have shape \(3, 16\); got \(3, 20\)")
case("nnx-load-params", "Recurrent.load_params", "params", "the layer's params",
     lambda: flax_nnx.Recurrent(LSTM, params=LSTM_P).load_params(GRU_P),
     match=r"Recurrent\.load_params: params must have the structure of LSTMCell\.init's")
case("nnx-sharding-rank", "Recurrent", "sharding", "one axis name per dimension",
     lambda: flax_nnx.Recurrent(
         LSTM, params=LSTM_P, sharding=sj.LSTMParams((None,), (None, "m"), ("m",))),
     match=r"sharding: each spec must name one axis \(or None\) per dimension of its parameter, "
           r"shape \(3, 16\); got \(None,\)")
case("nnx-sharding-structure", "Recurrent", "sharding", "the structure of the params",
     lambda: flax_nnx.Recurrent(LSTM, params=LSTM_P, sharding={"w_x": (None, "m")}),
     match=r"sharding must have the structure of the params .*; got \{'w_x': \(None, 'm'\)\}")
case("nnx-noise-rngs", "Recurrent", "rngs", "a noisy layer needs rngs unless deterministic",
     lambda xs: _NOISY()(xs), XS,
     match=r"Recurrent: the layer has regularisers and deterministic is False, so it needs "
           r"randomness: .*got no rngs")
case("nnx-noise-xs", "Recurrent", "xs", "floating dtype (a noisy layer reads its batch shape)",
     lambda xs: _NOISY()(xs, rngs=KEY), I32((5, 2, 3)),
     error=TypeError, match=r"Recurrent: xs must have a floating dtype .*; got dtype int32")
case("nnx-noise-time-axis", "Recurrent", "time_axis", "a non-feature axis of xs",
     lambda xs: _NOISY()(xs, time_axis=5, rngs=KEY), XS,
     match=r"Recurrent: time_axis must name a non-feature axis of xs .*; got time_axis=5")
case("nnx-step-layer", "Recurrent.step", "layer",
     "a cell (a Bidirectional layer needs the sequence)",
     lambda: flax_nnx.Recurrent(_BI, params=zeros_params(_BI)).step(None, F32((3,))),
     error=TypeError,
     match=r"Recurrent\.step: step needs a cell \(or a Stack of cells\) as its layer; got a "
           r"Bidirectional, which needs the whole sequence")
case("nnx-cell-layer", "RecurrentCell", "cell", "a cell or a Stack of cells",
     lambda: flax_nnx.RecurrentCell(_BI, params=zeros_params(_BI)), error=TypeError,
     match=r"RecurrentCell: cell must be a seqjax cell or a Stack of cells; got a Bidirectional")
case("nnx-carry-init", "RecurrentCell.initialize_carry", "carry_init",
     "None (the cell's init_carry)",
     lambda: flax_nnx.RecurrentCell(LSTM, params=LSTM_P).initialize_carry(
         (2, 3), carry_init=jnp.zeros),
     match=r"RecurrentCell\.initialize_carry: carry_init must be None .*; got a carry_init")
case("nnx-cell-from", "cell_from_nnx", "flax_cell", "an nnx LSTM, GRU or Simple cell",
     lambda: flax_nnx.cell_from_nnx(LSTM), error=TypeError,
     match=r"cell_from_nnx: flax_cell must be an nnx\.LSTMCell, OptimizedLSTMCell, GRUCell or "
           r"SimpleCell; got <class")
case("nnx-residual", "cell_from_nnx", "flax_cell", "not a residual SimpleCell",
     lambda: flax_nnx.cell_from_nnx(
         _abstract(lambda r: _nnx().SimpleCell(3, 4, residual=True, rngs=r))),
     match=r"cell_from_nnx: flax_cell must not be a residual SimpleCell .*; got residual=True")
case("nnx-gate-fn", "cell_from_nnx", "gate_fn", "sigmoid gates and tanh",
     lambda: flax_nnx.cell_from_nnx(
         _abstract(lambda r: _nnx().GRUCell(3, 4, gate_fn=_nnx().hard_sigmoid, rngs=r))),
     match=r"cell_from_nnx: seqjax's GRUCell uses gate_fn=sigmoid and activation_fn=tanh; got")
case("nnx-pair-sizes", "params_from_nnx", "cell", "the Flax cell's kind and sizes",
     lambda: flax_nnx.params_from_nnx(
         sj.LSTMCell(3, 5), _abstract(lambda r: _nnx().LSTMCell(3, 4, rngs=r))),
     match=r"params_from_nnx: the Flax cell is a LSTMCell\(3, 4\), which converts to a LSTMCell "
           r"of those sizes; got LSTMCell\(")
case("nnx-pair-kind", "params_from_nnx", "cell", "an LSTM, GRU or Elman cell",
     lambda: flax_nnx.params_from_nnx(sj.MinGRUCell(3, 4), None), error=TypeError,
     match=r"params_from_nnx: cell must be an LSTMCell, GRUCell or ElmanCell; got <class")
case("nnx-pair-reset", "params_from_nnx", "cell", "GRUCell(reset_after=True)",
     lambda: flax_nnx.params_from_nnx(sj.GRUCell(3, 4, reset_after=False), None),
     match=r"params_from_nnx: cell must be a GRUCell\(reset_after=True\): .*; got "
           r"reset_after=False")
case("nnx-to-params", "params_to_nnx", "params", "the cell's params",
     lambda: flax_nnx.params_to_nnx(GRU, LSTM_P, _abstract_gru()),
     match=r"params_to_nnx: params must have the structure of GRUCell\.init's")
case("nnx-to-gru-bias", "params_to_nnx", "params", "no recurrent candidate bias (NNX has none)",
     lambda: flax_nnx.params_to_nnx(GRU, _GRU_B, _abstract_gru()),
     match=r"params_to_nnx: Flax NNX's GRUCell has no recurrent candidate bias .*got nonzero "
           r"values \(max \|b_hn\| = 1\)",
     traced="traced GRU params raise the TypeError of nnx-to-gru-traced")
case("nnx-to-gru-traced", "params_to_nnx", "params",
     "concrete GRU params (the bias check needs values)",
     lambda p: jax.jit(
         lambda p: flax_nnx.params_to_nnx(GRU, p, _abstract_gru()))(p),
     GRU_P, error=TypeError,
     match=r"params_to_nnx: a GRU's recurrent candidate bias must be checked to be zero, .*\(got "
           r"traced params\)")

section("seqjax.interop.flax_linen")


def _linen():
    import flax.linen as nn

    return nn


_LINEN_ELMAN = {
    "params": {"i": {"kernel": F32((3, 4)), "bias": F32((4,))}, "h": {"kernel": F32((4, 4))}}
}
case("linen-from-cell", "params_from_linen", "cell", "an LSTM, GRU or Elman cell",
     lambda: flax_linen.params_from_linen(sj.MinGRUCell(3, 4), {}), error=TypeError,
     match=r"params_from_linen: cell must be an LSTMCell, GRUCell or ElmanCell; got <class")
case("linen-from-kernel", "params_from_linen", "variables", "every kernel present",
     lambda: flax_linen.params_from_linen(ELMAN, {"params": {"i": {"bias": F32((4,))}}}),
     match=r"params_from_linen: variables must hold i/kernel; got keys \['i'\]")
case("linen-from-shape", "params_from_linen", "variables", "kernels of the cell's sizes",
     lambda: flax_linen.params_from_linen(sj.ElmanCell(2, 4), _LINEN_ELMAN),
     match=r"params_from_linen: variables' i/kernel must have shape \(2, 4\) \(in, out\); got "
           r"\(3, 4\)")
case("linen-from-reset", "params_from_linen", "cell", "GRUCell(reset_after=True)",
     lambda: flax_linen.params_from_linen(sj.GRUCell(3, 4, reset_after=False), {}),
     match=r"params_from_linen: cell must be a GRUCell\(reset_after=True\): .*; got "
           r"reset_after=False")
case("linen-to-reset", "params_to_linen", "cell", "GRUCell(reset_after=True)",
     lambda: flax_linen.params_to_linen(sj.GRUCell(3, 4, reset_after=False), None),
     match=r"params_to_linen: cell must be a GRUCell\(reset_after=True\), .*; got "
           r"reset_after=False")
case("linen-to-cell", "params_to_linen", "cell", "an LSTM, GRU or Elman cell",
     lambda: flax_linen.params_to_linen(sj.LRUCell(3, 4), None), error=TypeError,
     match=r"params_to_linen: cell must be an LSTMCell, GRUCell or ElmanCell; got <class")
case("linen-cell-from", "cell_from_linen", "flax_cell", "a linen LSTM, GRU or Simple cell",
     lambda: flax_linen.cell_from_linen(LSTM, {}), error=TypeError,
     match=r"cell_from_linen: flax_cell must be a linen LSTMCell, OptimizedLSTMCell, GRUCell or "
           r"SimpleCell; got <class")
case("linen-cell-kernel", "cell_from_linen", "variables", "the first input kernel",
     lambda: flax_linen.cell_from_linen(_linen().GRUCell(4), {"params": {}}),
     match=r"cell_from_linen: variables must hold ir/kernel; got keys \[\]")
case("linen-cell-residual", "cell_from_linen", "flax_cell", "not a residual SimpleCell",
     lambda: flax_linen.cell_from_linen(_linen().SimpleCell(4, residual=True), _LINEN_ELMAN),
     match=r"cell_from_linen: flax_cell must not be a residual SimpleCell .*; got residual=True")
case("linen-wrap-params", "wrap_params", "params", "the layer's params",
     lambda: flax_linen.wrap_params(LSTM, GRU_P),
     match=r"wrap_params: params must have the structure of LSTMCell\.init's")
case("linen-unwrap-params", "unwrap_params", "tree", "every parameter of the layer",
     lambda: flax_linen.unwrap_params(LSTM, {"cell": {"w_x": F32((3, 16))}}),
     match=r"unwrap_params: the stored parameters \(tree\) must hold w_h, which LSTMCell needs; "
           r"got keys \['w_x'\]")
case("linen-recurrent-cell", "RecurrentCell", "cell", "a cell or a Stack of cells",
     lambda: flax_linen.RecurrentCell(_BI).init(KEY, _BI.init_carry((2,)), F32((2, 3))),
     error=TypeError,
     match=r"RecurrentCell: cell must be a seqjax cell or a Stack of cells; got a Bidirectional")
case("linen-step-layer", "Recurrent.step", "layer",
     "a cell (a Bidirectional layer needs the sequence)",
     lambda: flax_linen.Recurrent(_BI).apply(
         {"params": flax_linen.wrap_params(_BI, zeros_params(_BI))}, None, F32((2, 3)),
         method=flax_linen.Recurrent.step),
     error=TypeError,
     match=r"Recurrent\.step: step needs a cell \(or a Stack of cells\) as its layer; got a "
           r"Bidirectional, which needs the whole sequence")


# fmt: on


# ================================================================ inputs with a meaning
@dataclass(frozen=True)
class Meaning:
    """An input that looks wrong but is accepted on purpose, and what it means.

    Attributes:
        label: a short unique id (the test id).
        module, target, argument: as for :class:`Case`.
        meaning: what the input means (the table's column).
        test: asserts that meaning.
    """

    label: str
    module: str
    target: str
    argument: str
    meaning: str
    test: Callable[[], None] = field(repr=False)


MEANINGS: list[Meaning] = []


def meaning(label, module, target, argument, text):
    def register(test):
        MEANINGS.append(Meaning(label, module, target, argument, text, test))
        return test

    return register


@meaning(
    "empty-sequence",
    "seqjax.unroll",
    "unroll",
    "xs",
    "T = 0 (with any method, Remat included) returns the initial carry and empty outputs",
)
def _empty_sequence():
    carry = LSTM.init_carry((2,))
    for method in (None, sj.Remat(2), sj.Remat((2, 2)), "deer"):
        final, ys = sj.unroll(LSTM, LSTM_P, F32((0, 2, 3)), carry, method=method)
        assert ys.shape == (0, 2, 4), method
        assert all(bool((a == b).all()) for a, b in zip(final, carry, strict=True)), method


@meaning(
    "zero-length",
    "seqjax.unroll",
    "unroll",
    "lengths",
    "a length of 0 returns that sequence's initial carry and zero outputs",
)
def _zero_length():
    cell = sj.ElmanCell(1, 2)
    params = sj.ElmanParams(jnp.ones((1, 2), jnp.float32), jnp.eye(2, dtype=jnp.float32), F32(2))
    carry = jnp.ones((2, 2), jnp.float32)
    run = jax.jit(
        lambda n: sj.unroll(cell, params, jnp.ones((3, 2, 1), jnp.float32), carry, lengths=n)
    )
    final, ys = run(jnp.array([3, 0], jnp.int32))
    assert not bool(ys[:, 1].any()) and bool((final[1] == 1).all()) and bool(ys[:, 0].any())


@meaning(
    "traced-lengths",
    "seqjax.unroll",
    "unroll",
    "lengths",
    "traced lengths cannot be checked: they are clipped to [0, T] (past T reads as T), in "
    "unroll, last_valid, mean_valid and the models",
)
def _traced_lengths():
    ys = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 2, 2)
    bad, clipped = jnp.array([7, -2], jnp.int32), jnp.array([3, 0], jnp.int32)
    for fn in (jax.jit(sj.last_valid), jax.jit(sj.mean_valid)):
        np.testing.assert_array_equal(fn(ys, bad), fn(ys, clipped))


@meaning(
    "truncate-long",
    "seqjax.unroll",
    "unroll",
    "truncate",
    "a window k >= T cuts nothing: the gradient of full BPTT",
)
def _truncate_long():
    cell = sj.ElmanCell(1, 2)
    xs = jax.random.normal(KEY, (3, 1), jnp.float32)

    @jax.jit
    def grads(params):
        def loss(p, truncate):
            return sj.unroll(cell, p, xs, truncate=truncate)[1].sum()

        return jax.grad(loss)(params, 3), jax.grad(loss)(params, None)

    long, full = grads(cell.init(KEY))
    np.testing.assert_allclose(long.w_h, full.w_h, rtol=1e-6, atol=1e-7)


@meaning(
    "numpy-ints",
    "seqjax.cells",
    "LSTMCell",
    "input_size",
    "a NumPy integer is an int wherever an int is asked (sizes, beam_width, truncate, ...)",
)
def _numpy_ints():
    assert sj.LSTMCell(np.int64(3), np.int32(4)) == LSTM
    assert type(sj.Dense(np.int64(4), 2).input_size) is int
    assert sj.Remat(np.int64(2)).chunks == (2,) and sj.UnrollOptions(truncate=np.int64(2))
    # Traced only (eval_shape): the arguments are accepted, nothing is compiled.
    beams = jax.eval_shape(
        lambda t: sj.beam_search(step_fn, None, (), t, np.int64(2), np.int64(3)), I32((1,))
    )
    assert beams.tokens.shape == (3, 1, 2)
    assert jax.eval_shape(lambda: sj.unroll(LSTM, LSTM_P, XS, truncate=np.int64(2)))[1].shape == (
        5,
        2,
        4,
    )


@meaning(
    "ce-padding-ids",
    "seqjax.losses",
    "cross_entropy",
    "targets",
    "targets at masked positions may hold anything (a padding id such as -100)",
)
def _ce_padding_ids():
    targets = jnp.array([0, 1, -100], jnp.int32)
    loss = jax.jit(sj.cross_entropy)(F32((3, 4)), targets, jnp.array([True, True, False]))
    assert np.isfinite(float(loss))


@meaning(
    "ce-traced-targets",
    "seqjax.losses",
    "cross_entropy",
    "targets",
    "traced targets outside [0, V) give a NaN loss and gradient, never another class's score",
)
def _ce_traced_targets():
    logits = F32((3, 4))
    loss, grad = jax.jit(jax.value_and_grad(sj.cross_entropy))(
        logits, jnp.array([0, 1, 4], jnp.int32)
    )
    assert np.isnan(float(loss)) and np.isnan(np.asarray(grad[2])).all()


@meaning(
    "embedding-ids",
    "seqjax.layers",
    "Embedding",
    "ids",
    "a negative id counts from the end; an id outside [-V, V) gives a NaN row, under jit too "
    "(embedded_unroll reads ids the same way)",
)
def _embedding_ids():
    embed = sj.Embedding(5, 2)
    params = sj.EmbeddingParams(jnp.arange(10.0, dtype=jnp.float32).reshape(5, 2))
    rows = jax.jit(embed)(params, jnp.array([-1, 5, -6], jnp.int32))
    np.testing.assert_array_equal(rows[0], params.table[4])
    assert np.isnan(np.asarray(rows[1:])).all()


@meaning(
    "mask-lengths-outside",
    "seqjax.losses",
    "sequence_mask",
    "lengths",
    "lengths are not checked against num_steps: past it marks every step, negative none",
)
def _mask_lengths_outside():
    mask = sj.sequence_mask(jnp.array([9, -1], jnp.int32), 3)
    np.testing.assert_array_equal(mask, [[True, False]] * 3)


@meaning(
    "mase-constant-history",
    "seqjax.losses",
    "mase",
    "history",
    "a history that never changes has no naive error: the result is inf (NaN if exact)",
)
def _mase_constant():
    history = jnp.ones((4, 1), jnp.float32)
    mase = jax.jit(losses.mase)
    assert np.isposinf(float(mase(jnp.ones((1, 1), jnp.float32), F32((1, 1)), history)))
    assert np.isnan(float(mase(F32((1, 1)), F32((1, 1)), history)))


@meaning(
    "esn-traced-init",
    "seqjax.cells",
    "EchoStateCell.init",
    "key",
    "under a trace a reservoir without a cycle cannot raise: its weights are NaN",
)
def _esn_traced_init():
    cell = sj.EchoStateCell(1, 10, connectivity=0.01, sparse=False)
    assert np.isnan(np.asarray(jax.jit(cell.init)(jax.random.key(1)).w)).any()


@meaning(
    "traced-hyperparameters",
    "seqjax.reservoir",
    "ridge_regression",
    "ridge",
    "traced values (vmapped over, say) are used as given, unchecked; so are rls_regression's "
    "and force_train's alpha and forgetting",
)
def _traced_hyperparameters():
    x, y = F32((6, 2)), F32((6, 1))
    ridges = jnp.array([0.0, 1e-3], jnp.float32)
    fit = jax.vmap(lambda r: reservoir.ridge_regression(x, y, ridge=r).w)
    assert jax.eval_shape(fit, ridges).shape == (2, 2, 1)  # accepted; nothing compiled
    rls = jax.vmap(lambda a, f: reservoir.rls_regression(x, y, alpha=a, forgetting=f)[1])
    assert jax.eval_shape(rls, ridges, ridges).shape == (2, 6, 1)


# ============================================================================ running cases
class NoError(AssertionError):
    """The case raised nothing."""


def _strict():
    """The test suite's numerics (conftest), also for the table's generator outside pytest."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_dtype_promotion("strict"))
    stack.enter_context(jax.numpy_rank_promotion("raise"))
    return stack


@functools.cache
def outcome(label: str) -> BaseException:
    """What the case raised (run once per process; the tests and the table share it)."""
    the_case = BY_LABEL[label]
    with _strict():
        try:
            the_case.call()
        except Exception as err:  # noqa: BLE001 (the tests check the type)
            return err
    return NoError(f"{label}: no error raised")


def message(label: str) -> str:
    return str(outcome(label))


BY_LABEL = {c.label: c for c in CASES}
MEANING_BY_LABEL = {m.label: m for m in MEANINGS}


def test_targets_are_public():
    """Every row names a public module (``seqjax.SUBMODULES``) and a name in its ``__all__``."""
    for entry in [*CASES, *MEANINGS]:
        assert entry.module in sj.SUBMODULES, entry
        module = importlib.import_module(entry.module)
        head, *rest = entry.target.split(".")
        assert head in module.__all__, entry
        obj = getattr(module, head)
        for name in rest:
            obj = getattr(obj, name)


def test_labels_are_unique():
    assert len(BY_LABEL) == len(CASES), [
        c.label for c in CASES if list(BY_LABEL).count(c.label) > 1
    ]
    assert len(MEANING_BY_LABEL) == len(MEANINGS)


@pytest.mark.parametrize("label", list(BY_LABEL))
def test_bad_input_raises(label):
    the_case = BY_LABEL[label]
    err = outcome(label)
    assert isinstance(err, the_case.error), (type(err), err)
    assert re.search(the_case.match, str(err)), (the_case.match, str(err))


@pytest.mark.parametrize("label", [c.label for c in CASES if c.traced is None])
def test_bad_input_raises_at_trace_time(label):
    """Static and shape-level checks fire while tracing: no value is needed."""
    the_case = BY_LABEL[label]
    with pytest.raises(the_case.error, match=the_case.match):
        jax.jit(the_case.fn).trace(*the_case.args)


@pytest.mark.parametrize("label", list(BY_LABEL))
def test_message_names_the_argument_and_what_came(label):
    """The project's rule: the argument by name (or an item of it: "layer 1" of layers), what
    was expected, and what came ("got")."""
    text = message(label)
    name = BY_LABEL[label].argument
    assert name in text or re.search(rf"\b{name[:-1]} \d", text), (name, text)
    assert "got" in text, text


@pytest.mark.parametrize("label", list(MEANING_BY_LABEL))
def test_documented_meaning(label):
    with _strict():
        MEANING_BY_LABEL[label].test()


# ========================================================================= every check covered
# Checks no public call reaches, each with the reason (a site matches when its source holds
# the text). A reached site listed here fails the coverage test: the list cannot go stale.
UNREACHED = {
    (
        "seqjax/methods/_sequence_parallel.py",
        "devices of mesh axis",
    ): "needs a mesh axis of 2+ devices; tests/test_sequence_parallel.py checks it on 2 and 4",
    (
        "seqjax/methods/_sequence_parallel.py",
        "needs a batch axis 1 of xs",
    ): "needs a mesh axis of 2+ devices; tests/test_sequence_parallel.py checks it on 2 and 4",
    (
        "seqjax/_kernels/pallas_rnn.py",
        "recurrence({kind.name})",
    ): "a private kernel; Pallas.check and unroll check its inputs first",
    (
        "seqjax/embedded.py",
        "lookup cell has no params",
    ): "embedded_unroll's internal cell; nothing public calls its init",
    (
        "seqjax/methods/_newton.py",
        "every carry leaf must be [*B, H]",
    ): "unroll checks the carry against init_carry first, and every cell's leaves are [*B, H]",
    (
        "seqjax/interop/_flax_common.py",
        "differs from the",
    ): "cell_from_* builds the ElmanCell from the Flax cell's own activation",
    (
        "seqjax/interop/_flax_common.py",
        "{name} must have shape {shape}",
    ): "check_shape: params_to_nnx checks kinds, sizes and params first; a guard before writing",
}

_HELPER_MODULE = ROOT / "seqjax" / "_checks.py"


def _raising_helpers() -> frozenset[str]:
    """The functions of seqjax._checks that raise (their call sites are checks too)."""
    tree = ast.parse(_HELPER_MODULE.read_text())
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(n, ast.Raise) for n in ast.walk(node))
    )


def check_sites() -> dict[tuple[str, int], str]:
    """``(path, line) -> source`` of every ``raise ValueError/TypeError`` and every call of a
    raising ``_checks`` helper in the core."""
    helpers = _raising_helpers()
    sites = {}
    for path in sorted((ROOT / "seqjax").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(EXCLUDED):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if getattr(exc, "id", getattr(exc, "attr", None)) in ("ValueError", "TypeError"):
                    sites[rel, node.lineno] = ast.get_source_segment(source, node)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "_checks"
                and node.func.attr in helpers
            ):
                sites[rel, node.lineno] = ast.get_source_segment(source, node)
    return sites


def reached_lines(err: BaseException) -> set[tuple[str, int]]:
    """``(path, line)`` of every frame of the core in the traceback of ``err``."""
    reached = set()
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            path = pathlib.Path(tb.tb_frame.f_code.co_filename)
            if ROOT / "seqjax" in path.parents:
                reached.add((path.relative_to(ROOT).as_posix(), tb.tb_lineno))
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return reached


def test_every_check_has_a_case():
    sites = check_sites()
    reached = set().union(*(reached_lines(outcome(label)) for label in BY_LABEL))
    exempt = {
        site: reason
        for site, source in sites.items()
        for (path, text), reason in UNREACHED.items()
        if site[0] == path and text in source
    }
    unused = [
        key for key in UNREACHED if not any(s[0] == key[0] and key[1] in sites[s] for s in sites)
    ]
    assert not unused, f"UNREACHED entries that match no check: {unused}"
    stale = sorted(site for site in exempt if site in reached)
    assert not stale, f"checks listed in UNREACHED that a case reaches: {stale}"
    missing = sorted(site for site in sites if site not in reached and site not in exempt)
    assert not missing, "checks without a case:\n" + "\n".join(
        f"{path}:{line}: {' '.join(sites[path, line].split())[:120]}" for path, line in missing
    )


# ============================================================================ the docs table
def _error_table():
    spec = importlib.util.spec_from_file_location(
        "error_table", ROOT / "docs" / "tools" / "error_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_error_table_is_current():
    """docs/errors.md is what docs/tools/error_table.py renders now: the table cannot drift."""
    table = _error_table().render(CASES, MEANINGS, message, sj.SUBMODULES)
    written = (ROOT / "docs" / "errors.md").read_text()
    assert written == table, "docs/errors.md is out of date: run python docs/tools/error_table.py"

"""A quick benchmark of seqjax's recurrent layers against the peer libraries installed here.

``seqjax bench`` (or :func:`main`) times one layer, forward and forward+backward, on whatever
backend JAX finds (CPU, GPU, TPU), and prints a table of median times and ratios. Peers:
Flax linen ``nn.RNN`` (always installed, a core dependency) and PyTorch ``nn.LSTM / nn.GRU /
nn.RNN`` when PyTorch is installed (cuDNN on a CUDA device, oneDNN on CPU). The full suite,
with Flax NNX, Equinox, Haiku and ``jax.experimental.rnn``, sweeps and plots, is
``benchmarks/suite.py`` in the source tree; it builds on the pieces here.

How it measures (the same rules as ``benchmarks/_harness.py``):

* Every peer gets the same weights: they are converted from seqjax's parameters by a
  differentiable function (``convert``), so a peer's parameter gradients map back to seqjax's
  through ``jax.vjp(convert)``. Before any timing, each peer's outputs (forward) or loss and
  every gradient (forward+backward) are compared with seqjax's; a peer that computes a
  different function is reported as a mismatch and not timed.
* The loss is ``mean(ys ** 2)``; forward+backward returns it with the gradients for every
  parameter and the input.
* JAX contenders are lowered and compiled ahead of time and the compile time is reported
  apart; PyTorch runs eagerly (its first call is reported instead). Every call is blocked on
  (``jax.block_until_ready``; ``torch.cuda.synchronize`` on a GPU).
* Repeats are interleaved: each round times every contender once, starting at the next one,
  so a burst of machine noise lands on all alike. Reported: median and quartiles per call.
* Memory: for JAX, XLA's buffer sizes of the compiled executable (arguments + outputs +
  temporaries, ``memory_analysis``); on a GPU also the device's high-water mark; for PyTorch
  on a GPU, ``torch.cuda.max_memory_allocated`` during one call.

Example:
    >>> from seqjax.apps import bench
    >>> rows = bench.run_bench(cells=("elman",), modes=("fwd",), batch_size=2, num_steps=3,
    ...                        input_size=2, hidden_size=3, repeats=1, peers=("seqjax",))
    >>> [(r["library"], r["status"]) for r in rows]
    [('seqjax', 'ok')]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.apps import harness
from seqjax.cells import BY_NAME, ElmanCell, GRUCell, LSTMCell
from seqjax.unroll import unroll

__all__ = [
    "CELL_TYPES",
    "MODES",
    "PEERS",
    "Peer",
    "PeerUnavailable",
    "add_arguments",
    "flax_linen_lstm_peer",
    "flax_linen_peer",
    "format_table",
    "jax_contender",
    "loss_and_grads",
    "main",
    "max_relative_difference",
    "reference_result",
    "run_bench",
    "run_group",
    "seqjax_peer",
    "tolerance",
    "torch_peer",
]

#: The cells ``--cells`` chooses from, :data:`seqjax.cells.BY_NAME`.
CELL_TYPES = BY_NAME
#: What is timed, the forward pass alone and forward plus backward.
MODES = ("fwd", "fwd+bwd")


def tolerance() -> float:
    """Largest accepted ``max|peer - seqjax| / max|seqjax|`` per compared array.

    float32 on CPU agrees to ~1e-6; GPUs run float32 matmuls in TF32 by default (JAX, cuDNN
    through PyTorch and ``jax.experimental.rnn`` alike), whose 10-bit mantissa leaves ~1e-3
    per step, compounding over the recurrence, hence the looser bound there.
    """
    return 1e-3 if jax.default_backend() == "cpu" else 3e-2


class PeerUnavailable(Exception):
    """A peer that cannot run here: library missing, backend or cell unsupported."""


@dataclass
class Peer:
    """One timed function of the benchmark, with what is needed to check what it computes.

    Attributes:
        library: the peer's name, unique within a group (``seqjax``, ``torch``, ...).
        prepare: compiles (JAX) or builds (PyTorch) the computation; returns ``(call, info)``
            where ``call()`` runs it once and returns its result blocked until ready, and
            ``info`` holds ``lower_s``/``compile_s`` and memory fields.
        to_reference: maps the result of one call to seqjax's layout: ``ys [T, B, H]``
            (forward) or ``(loss, params_grads, xs_grad)`` (forward+backward).
        reference_cell: the seqjax cell computing the same function, when it is not the cell
            being benchmarked (Haiku's reset-before GRU, its ReLU Elman cell).
        skip_grads: seqjax parameter fields the peer cannot represent, left out of the check.
        meta: fields copied into the result row.
    """

    library: str
    prepare: Callable[[], tuple[Callable[[], Any], dict]]
    to_reference: Callable[[Any], Any]
    reference_cell: Any = None
    skip_grads: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- JAX contenders


def _xla_memory(compiled) -> dict:
    sizes = harness.memory_analysis(compiled)
    if sizes and all(isinstance(v, int) for v in sizes.values()):
        sizes["peak_bytes"] = sum(sizes.values())
        sizes["peak_source"] = "xla memory_analysis (arguments + outputs + temporaries)"
    return sizes


def _device_high_water() -> dict:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if not stats or "peak_bytes_in_use" not in stats:
        return {}
    # The device never resets its high-water mark: this is the process's peak so far.
    return {"device_peak_bytes_so_far": int(stats["peak_bytes_in_use"])}


def loss_and_grads(forward: Callable) -> Callable:
    """``(peer_params, xs) -> (mean(ys**2), (d/dpeer_params, d/dxs))`` for ``forward``."""
    return jax.value_and_grad(lambda p, xs: jnp.mean(forward(p, xs) ** 2), argnums=(0, 1))


def jax_contender(
    library: str,
    convert: Callable,
    forward: Callable,
    params,
    xs,
    mode: str,
    *,
    batch_major: bool = False,
    **extra,
) -> Peer:
    """A contender running ``forward(convert(params), xs) -> ys [T, B, H]`` under ``jax.jit``.

    Args:
        library: the peer's name.
        convert: seqjax params -> the peer's parameters (jnp operations only, so that
            gradients map back through ``jax.vjp``).
        forward: ``(peer_params, xs [T, B, I]) -> ys [T, B, H]``.
        params: seqjax parameters.
        xs: ``[T, B, I]`` inputs.
        mode: ``"fwd"`` or ``"fwd+bwd"``.
        batch_major: ``forward`` takes ``xs [B, T, I]`` and returns ``ys [B, T, H]``; the
            inputs are transposed once before timing, the results back for the check.
        **extra: further :class:`Peer` fields.
    """
    peer_params = convert(params)
    fn = forward if mode == "fwd" else loss_and_grads(forward)
    if batch_major:
        xs = jnp.swapaxes(xs, 0, 1)
    to_time_major = (lambda a: jnp.swapaxes(a, 0, 1)) if batch_major else (lambda a: a)

    def prepare():
        t0 = time.perf_counter()
        lowered = jax.jit(fn).lower(peer_params, xs)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        info = {"lower_s": t1 - t0, "compile_s": t2 - t1, **_xla_memory(compiled)}
        return (lambda: jax.block_until_ready(compiled(peer_params, xs))), info

    def to_reference(out):
        if mode == "fwd":
            return to_time_major(out)
        loss, (grads, grad_xs) = out
        (grads_seqjax,) = jax.vjp(convert, params)[1](grads)
        return loss, grads_seqjax, to_time_major(grad_xs)

    return Peer(library, prepare, to_reference, **extra)


def seqjax_peer(cell, params, xs, mode: str) -> Peer:
    """``seqjax.unroll`` with its defaults, as a user calls it."""
    return jax_contender(
        "seqjax", lambda p: p, lambda p, x: unroll(cell, p, x)[1], params, xs, mode
    )


def _linen_peer(cell, params, xs, mode: str, *, optimized: bool) -> Peer:
    import flax.linen as nn

    from seqjax.interop.flax_linen import params_to_linen

    hidden = cell.hidden_size
    flax_cell: nn.RNNCellBase
    if isinstance(cell, LSTMCell):
        flax_cell = nn.OptimizedLSTMCell(hidden) if optimized else nn.LSTMCell(hidden)
    elif optimized:
        if isinstance(cell, GRUCell):
            flax_cell = nn.GRUCell(hidden)
        else:
            flax_cell = nn.SimpleCell(hidden, activation_fn=cell.activation)
    else:
        raise PeerUnavailable("nn.LSTMCell only: the plain and optimised GRU/Simple are one")
    model = nn.RNN(flax_cell, time_major=True)

    def convert(p):
        return {"params": {"cell": params_to_linen(cell, p)["params"]}}

    name = "flax.linen" if optimized else "flax.linen(LSTMCell)"
    return jax_contender(
        name, convert, model.apply, params, xs, mode,
        meta={"peer_cell": type(flax_cell).__name__},
    )  # fmt: skip


def flax_linen_peer(cell, params, xs, mode: str) -> Peer:
    """Flax linen ``nn.RNN(OptimizedLSTMCell | GRUCell | SimpleCell, time_major=True)``."""
    return _linen_peer(cell, params, xs, mode, optimized=True)


def flax_linen_lstm_peer(cell, params, xs, mode: str) -> Peer:
    """Flax linen ``nn.RNN(nn.LSTMCell)`` (one ``Dense`` per gate); LSTM only."""
    if not isinstance(cell, LSTMCell):
        raise PeerUnavailable("LSTM only")
    return _linen_peer(cell, params, xs, mode, optimized=False)


# --------------------------------------------------------------------------- PyTorch


def torch_peer(cell, params, xs, mode: str) -> Peer:
    """PyTorch ``nn.LSTM / nn.GRU / nn.RNN`` (cuDNN on a CUDA device, else oneDNN/native)."""
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("torch is not installed")
    import torch

    from seqjax.interop.torch import cell_params_to_torch

    if isinstance(cell, GRUCell) and not cell.reset_after:
        raise PeerUnavailable("nn.GRU is the reset-after GRU")
    cuda = torch.cuda.is_available() and jax.default_backend() == "gpu"
    device = torch.device("cuda" if cuda else "cpu")
    module_type: dict[type, Any] = {
        LSTMCell: torch.nn.LSTM,
        GRUCell: torch.nn.GRU,
        ElmanCell: torch.nn.RNN,
    }
    options = {}
    if isinstance(cell, ElmanCell):
        if cell.activation not in (jnp.tanh, jax.nn.relu):
            raise PeerUnavailable("nn.RNN has only tanh and relu")
        options["nonlinearity"] = "relu" if cell.activation is jax.nn.relu else "tanh"
    module = module_type[type(cell)](cell.input_size, cell.hidden_size, **options).to(device)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    gate_blocks: dict[type, int] = {LSTMCell: 4, GRUCell: 3, ElmanCell: 1}
    gates = gate_blocks[type(cell)]

    def convert(p):
        # jnp mirror of seqjax.interop.torch.cell_params_to_torch, so gradients map back.
        if isinstance(cell, GRUCell):
            bias_ih, bias_hh = p.b_x, p.b_h
        else:
            bias_ih, bias_hh = p.b, jnp.zeros_like(p.b)
        return dict(zip(names, (p.w_x.T, p.w_h.T, bias_ih, bias_hh), strict=True))

    exported = cell_params_to_torch(cell, params)  # the package's converter sets the weights
    with torch.no_grad():
        for name in names:
            getattr(module, name + "_l0").copy_(torch.from_numpy(exported[name]))
    x = torch.from_numpy(np.array(xs)).to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def forward():
        with torch.no_grad():
            ys = module(x)[0]
        sync()
        return ys

    def forward_backward():
        module.zero_grad(set_to_none=True)
        x_grad = x.detach().requires_grad_(True)
        loss = module(x_grad)[0].pow(2).mean()
        loss.backward()
        sync()
        return loss, x_grad

    call = forward if mode == "fwd" else forward_backward

    def prepare():
        info: dict = {"lower_s": None, "compile_s": None}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            call()
            info["peak_bytes"] = int(torch.cuda.max_memory_allocated())
            info["peak_source"] = "torch.cuda.max_memory_allocated"
        return call, info

    def to_reference(out):
        if mode == "fwd":
            return jnp.asarray(out.cpu().numpy())
        loss, x_grad = out
        grads = {n: jnp.asarray(getattr(module, n + "_l0").grad.cpu().numpy()) for n in names}
        (grads_seqjax,) = jax.vjp(convert, params)[1](grads)
        return jnp.asarray(loss.item()), grads_seqjax, jnp.asarray(x_grad.grad.cpu().numpy())

    kernel = "cuDNN" if cuda else "CPU (oneDNN where it applies)"
    meta = {
        "peer_cell": module_type[type(cell)].__name__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": str(device),
        "torch_kernel": kernel,
        "gates": gates,
    }
    return Peer("torch", prepare, to_reference, meta=meta)


#: The contenders by name, each a function that builds its :class:`Peer`.
PEERS: dict[str, Callable[..., Peer]] = {
    "seqjax": seqjax_peer,
    "flax.linen": flax_linen_peer,
    "flax.linen(LSTMCell)": flax_linen_lstm_peer,
    "torch": torch_peer,
}


# --------------------------------------------------------------------------- checking


def max_relative_difference(reference, got, skip_grads: Sequence[str] = ()) -> float:
    """Largest ``max|got - reference| / max|reference|`` over the arrays of two results."""
    if skip_grads and isinstance(reference, tuple):
        loss, grads, grad_xs = reference
        loss_got, grads_got, grad_xs_got = got
        kept = [f for f in grads._fields if f not in skip_grads]
        reference = (loss, [getattr(grads, f) for f in kept], grad_xs)
        got = (loss_got, [getattr(grads_got, f) for f in kept], grad_xs_got)
    worst = 0.0
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b))), 1e-30)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def _describe(cell) -> str:
    """``GRUCell(reset_after=False)``, ``ElmanCell(relu)``: the cell's name and variant."""
    if getattr(cell, "reset_after", True) is False:
        return f"{type(cell).__name__}(reset_after=False)"
    activation = getattr(cell, "activation", jnp.tanh)
    if activation is not jnp.tanh:
        return f"{type(cell).__name__}({getattr(activation, '__name__', activation)})"
    return type(cell).__name__


def reference_result(cell, params, xs, mode: str):
    """seqjax's result for ``cell`` in the layout ``Peer.to_reference`` returns."""
    forward = jax.jit(lambda p, x: unroll(cell, p, x)[1])
    if mode == "fwd":
        return forward(params, xs)
    loss, (grads, grad_xs) = jax.jit(loss_and_grads(lambda p, x: unroll(cell, p, x)[1]))(params, xs)
    return loss, grads, grad_xs


# --------------------------------------------------------------------------- timing


def run_group(
    cell,
    params,
    xs,
    mode: str,
    contenders: Sequence[Peer],
    *,
    repeats: int,
    warmup: int = 1,
    min_sample_s: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Check, then time ``contenders`` interleaved; one row per contender.

    Rows have ``status``: ``ok`` (timed), ``mismatch`` (a different function: not timed) or
    ``error: ...`` (it failed to build or run here). The reference is seqjax's result for the
    cell (or the contender's ``reference_cell``).
    """
    tol = tolerance()
    references: dict = {}
    rows: list[dict[str, Any]] = []
    calls: list[Callable[[], Any] | None] = []
    for c in contenders:
        row = {"library": c.library, **c.meta}
        try:
            call, info = c.prepare()
            t0 = time.perf_counter()
            first = call()
            row.update(info, first_call_s=time.perf_counter() - t0, **_device_high_water())
            ref_cell = c.reference_cell or cell
            if c.library == "seqjax" and c.reference_cell is None:
                references[cell] = c.to_reference(first)  # no second compile of seqjax
            elif ref_cell not in references:
                references[ref_cell] = reference_result(ref_cell, params, xs, mode)
            diff = max_relative_difference(
                references[ref_cell], c.to_reference(first), c.skip_grads
            )
        except Exception as err:  # a peer that fails here is reported, not fatal
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            calls.append(None)
            continue
        row["max_rel_diff"] = diff
        row["reference"] = _describe(ref_cell)
        ok = diff <= tol
        row["status"] = "ok" if ok else "mismatch"
        rows.append(row)
        calls.append(call if ok else None)

    live = [i for i, call in enumerate(calls) if call is not None]
    numbers, samples = harness.interleave(
        [call for call in calls if call is not None],
        repeats=repeats,
        warmup=warmup,
        min_sample_s=min_sample_s,
    )
    for i, number, seconds in zip(live, numbers, samples, strict=True):
        rows[i].update(harness.stats_ms(seconds), number=number)
    if log is not None:
        for row in rows:
            timing = f"{row['median_ms']:10.3f} ms" if "median_ms" in row else row["status"]
            log(f"  {row['library']:<22} {timing}")
    return rows


# --------------------------------------------------------------------------- the quick run


def run_bench(
    *,
    cells: Sequence[str] = ("lstm", "gru", "elman"),
    modes: Sequence[str] = MODES,
    batch_size: int = 16,
    num_steps: int = 128,
    input_size: int = 64,
    hidden_size: int = 128,
    repeats: int = 10,
    peers: Sequence[str] | None = None,
    min_sample_s: float = 0.02,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time seqjax against the installed peers at one shape; one row per contender.

    Args:
        cells: names among ``lstm``, ``gru``, ``elman``.
        modes: among ``fwd`` and ``fwd+bwd``.
        batch_size, num_steps, input_size, hidden_size: ``B, T, I, H`` (float32, time-major).
        repeats: interleaved timing rounds.
        peers: names from :data:`PEERS` (``seqjax`` is always included); all by default.
        min_sample_s: inner loop so that one sample lasts at least this long.
        seed: for the parameters and inputs.
        log: called with progress lines (e.g. ``print``).

    Returns:
        Rows with ``cell, mode, library, status``, timings (``median_ms, q1_ms, q3_ms``...),
        ``compile_s``, memory fields, ``max_rel_diff`` and ``ratio`` (seqjax's median /
        the row's, as in the README's tables: below 1, seqjax is faster).
        Peers not available here are rows with ``status`` ``skipped: <reason>``.
    """
    unknown = [c for c in cells if c not in CELL_TYPES]
    if unknown:
        raise ValueError(f"run_bench: cells must be among {sorted(CELL_TYPES)}; got {unknown}")
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise ValueError(f"run_bench: modes must be among {MODES}; got {bad_modes}")
    names = list(PEERS) if peers is None else ["seqjax", *(p for p in peers if p != "seqjax")]
    missing = [p for p in names if p not in PEERS]
    if missing:
        raise ValueError(f"run_bench: peers must be among {list(PEERS)}; got {missing}")
    key = jax.random.key(seed)
    shape = (num_steps, batch_size, input_size)
    xs = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32)
    rows: list[dict[str, Any]] = []
    for name in cells:
        cell = CELL_TYPES[name](input_size, hidden_size)
        params = cell.init(jax.random.fold_in(key, 2), jnp.float32)
        for mode in modes:
            if log is not None:
                log(f"[B{batch_size} T{num_steps} I{input_size} H{hidden_size}] {name} {mode}")
            contenders, skipped = [], []
            for peer in names:
                try:
                    contenders.append(PEERS[peer](cell, params, xs, mode))
                except PeerUnavailable as why:
                    skipped.append({"library": peer, "status": f"skipped: {why}"})
            group = run_group(
                cell, params, xs, mode, contenders,
                repeats=repeats, min_sample_s=min_sample_s, log=log,
            )  # fmt: skip
            base = group[0].get("median_ms")  # seqjax's
            for row in group:
                if base and row.get("median_ms"):
                    row["ratio"] = base / row["median_ms"]
            common = dict(
                cell=name, mode=mode, B=batch_size, T=num_steps, I=input_size, H=hidden_size,
                dtype="float32", backend=jax.default_backend(),
            )  # fmt: skip
            rows.extend({**common, **row} for row in group + skipped)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of :func:`run_bench` rows: median (q1-q3) ms and seqjax / peer."""
    lines = [
        "| cell | mode | library | median ms (q1-q3) | seqjax / peer | compile s | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        timing = (
            f"{r['median_ms']:.3f} ({r['q1_ms']:.3f}-{r['q3_ms']:.3f})" if "median_ms" in r else ""
        )
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        compile_s = f"{r['compile_s']:.2f}" if r.get("compile_s") is not None else ""
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r['library']} | {timing} | {ratio} | "
            f"{compile_s} | {r['status']} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``seqjax bench``."""
    parser.add_argument("--cells", nargs="+", choices=list(CELL_TYPES), default=list(CELL_TYPES))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), help="default: all installed")
    parser.add_argument("-B", "--batch-size", type=int, default=16)
    parser.add_argument("-T", "--num-steps", type=int, default=128)
    parser.add_argument("-I", "--input-size", type=int, default=64)
    parser.add_argument("-H", "--hidden-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds")


def main(args: argparse.Namespace) -> None:
    """Run :func:`run_bench` with the options of :func:`add_arguments` and print the table."""
    for name in ("batch_size", "num_steps", "input_size", "hidden_size", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    dev = jax.devices()[0]
    print(f"seqjax bench on {dev.platform} ({dev.device_kind}), jax {jax.__version__}")
    rows = run_bench(
        cells=args.cells, modes=args.modes, peers=args.peers, batch_size=args.batch_size,
        num_steps=args.num_steps, input_size=args.input_size, hidden_size=args.hidden_size,
        repeats=args.repeats, log=print,
    )  # fmt: skip
    print(
        f"\nB{args.batch_size} T{args.num_steps} I{args.input_size} H{args.hidden_size} float32, "
        "loss mean(ys**2); seqjax / peer = seqjax median / peer median "
        "(below 1: seqjax is faster, as in the README)\n"
    )
    print(format_table(rows))

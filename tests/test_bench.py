"""`seqjax bench` and the suite's peers: each peer computes seqjax's function on its weights.

Tiny shapes, one timing round: only that the rows are complete and that every peer's
outputs, loss and gradients match seqjax's (the check the benchmarks run before timing).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from seqjax import ElmanCell, GRUCell, LSTMCell
from seqjax.apps import bench, cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _peers  # noqa: E402


def test_run_bench_rows_and_check():
    rows = bench.run_bench(
        cells=("lstm",), modes=("fwd+bwd",), batch_size=2, num_steps=3, input_size=2,
        hidden_size=3, repeats=1, peers=("flax.linen", "torch"),
    )  # fmt: skip
    by = {(r["mode"], r["library"]): r for r in rows}
    for mode in ("fwd+bwd",):
        assert by[(mode, "seqjax")]["status"] == "ok" and by[(mode, "seqjax")]["ratio"] == 1.0
        assert by[(mode, "flax.linen")]["status"] == "ok"
        assert by[(mode, "flax.linen")]["max_rel_diff"] < 1e-5
        assert by[(mode, "flax.linen")]["median_ms"] > 0
        torch_row = by[(mode, "torch")]
        if importlib.util.find_spec("torch") is None:
            assert torch_row["status"].startswith("skipped")
        else:
            assert torch_row["status"] == "ok" and torch_row["max_rel_diff"] < 1e-5
    table = bench.format_table(rows)
    assert "| lstm | fwd+bwd | flax.linen |" in table


def test_cli_bench_prints_table(capsys):
    argv = ["bench", "--cells", "elman", "--modes", "fwd", "--peers", "flax.linen"]
    argv += ["-B", "2", "-T", "3", "-I", "2", "-H", "3", "--repeats", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| elman | fwd | seqjax |" in out and "| elman | fwd | flax.linen |" in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="cells"):
        bench.run_bench(cells=("transformer",))
    with pytest.raises(ValueError, match="peers"):
        bench.run_bench(cells=("lstm",), peers=("keras",))
    assert cli.main(["bench", "-T", "0"]) == 2


def _nonzero_biases(cell, params):
    """Biases off zero, so that folded and reordered biases are exercised."""
    if isinstance(cell, GRUCell):
        return params._replace(b_x=params.b_x + 0.1, b_h=params.b_h.at[:-1].set(0.2))
    return params._replace(b=params.b + 0.1)


@pytest.mark.parametrize(
    ("cell", "mode"),
    [
        (LSTMCell(3, 4), "fwd+bwd"),
        (GRUCell(3, 4), "fwd+bwd"),
        (ElmanCell(3, 4), "fwd"),
        (ElmanCell(3, 4, activation=jax.nn.relu), "fwd+bwd"),
    ],
    ids=["lstm", "gru", "elman", "elman_relu"],
)
def test_peers_compute_seqjax_function(cell, mode):
    """Every installed peer matches seqjax to float32 rounding, gradients included."""
    params = _nonzero_biases(cell, cell.init(jax.random.key(0), jnp.float32))
    if isinstance(cell, GRUCell):
        # NNX's GRU has no recurrent n bias: keep it zero so that it can represent the cell.
        params = params._replace(b_h=params.b_h.at[2 * cell.hidden_size :].set(0.0))
    xs = jax.random.normal(jax.random.key(1), (4, 2, 3), jnp.float32)
    contenders = []
    with jax.numpy_dtype_promotion("standard"):
        for name in ("seqjax", "flax.linen", "flax.nnx", "equinox", "haiku", "torch"):
            try:
                contenders.append(_peers.PEERS[name](cell, params, xs, mode))
            except bench.PeerUnavailable:
                continue
    # The peers' own code mixes dtypes under the suite's float64 mode (Haiku's zero state is
    # float64 there): run them with standard promotion, as their users do.
    with jax.numpy_dtype_promotion("standard"):
        rows = bench.run_group(cell, params, xs, mode, contenders, repeats=1)
    assert len(rows) >= 2  # flax.nnx is a core dependency: always one peer
    for row in rows:
        assert row["status"] == "ok", row
        # float32 rounding of reordered sums; a wrong gate order or bias is O(1).
        assert row["max_rel_diff"] < 1e-5, row


def test_mismatch_is_reported_not_timed():
    cell = LSTMCell(2, 3)
    params = cell.init(jax.random.key(0), jnp.float32)
    xs = jnp.ones((3, 1, 2), jnp.float32)
    wrong = bench.jax_contender(
        "wrong", lambda p: p, lambda p, x: 2.0 * bench.unroll(cell, p, x)[1], params, xs, "fwd"
    )
    rows = bench.run_group(
        cell, params, xs, "fwd", [bench.seqjax_peer(cell, params, xs, "fwd"), wrong], repeats=1
    )
    assert rows[1]["status"] == "mismatch" and "median_ms" not in rows[1]

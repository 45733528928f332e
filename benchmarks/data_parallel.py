"""Does splitting the batch over host CPU devices make the recurrence use every core?

Question: one XLA:CPU device runs a scan's steps one after another (each step's matmul
threaded, the rest of the step on one thread). With the cores exposed as host
devices (``--devices``, default 2, set before JAX initialises) and the batch split over them
(:mod:`seqjax.sharding`), how do forward, forward+backward and a whole training step compare
with the same computation on one device?

Contenders, per group, in one process holding ``--devices`` host devices:

* ``single``: plain ``jax.jit`` on device 0 (the batch unsplit);
* ``jit``: ``sharding.data_parallel`` (jit with the batch sharded, params replicated; XLA
  inserts the gradient all-reduce);
* ``shard_map``: ``data_parallel(..., use_shard_map=True)`` / ``shard_map_bptt_step`` (each
  device runs its shard, explicit ``psum`` of the loss and gradients).

Groups: LSTM forward and forward+backward (``mean(ys**2)``, gradients for the params and the
input) at ``B32 T128 I64 H256`` and ``B8 T1024 I64 H128``; then the char-LM's training step
(``seqjax.apps.char_lm.CharLM``: embedding 64, LSTM 256, readout 256, 32 streams x 64 steps,
cross-entropy, clipped Adam, ``tbptt_step``) and its parts on their own: the LSTM
forward+backward inside it, the readout+loss forward+backward on stand-in LSTM outputs,
and the optimizer update.

Run ``--devices 1`` to time ``single`` in a process with one host device only (a check that
the second device does not slow the single-device run).

Usage::

    python benchmarks/data_parallel.py                 # 2 host devices
    python benchmarks/data_parallel.py --quick --out /tmp/bench
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness as h
import jax
import jax.numpy as jnp

import seqjax as sj
from seqjax import sharding
from seqjax.apps import char_lm

# Importing JAX does not start its backends: the host device count can still be set here.
if __name__ == "__main__":  # host devices must exist before JAX initialises
    jax.config.update("jax_num_cpu_devices", int(h.early_option("--devices", "2")))

SCRIPT = "data_parallel"
TITLE = "Batch split over host devices (seqjax.sharding) against one device"

FULL = [(32, 128, 64, 256), (8, 1024, 64, 128)]
QUICK = [(4, 8, 3, 8)]
FULL_LM = dict(batch=32, window=64, embed=64, hidden=256)
QUICK_LM = dict(batch=4, window=8, embed=8, hidden=16)


def parse(argv):
    return h.parse_args(__doc__.splitlines()[0], argv, repeats=20, devices=2)


def lstm_groups(mesh, cfg):
    b, t, i, hid = cfg
    cell = sj.LSTMCell(i, hid)
    key = jax.random.key(0)
    params = cell.init(key, jnp.float32)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (t, b, i), jnp.float32)
    n = mesh.size
    xs_sh = sharding.shard_batch(xs, mesh, axis=1)
    p_rep = sharding.replicate(params, mesh)
    count = float(t * b * hid)

    def forward(p, x):
        return sj.unroll(cell, p, x)[1]

    def loss(p, x):
        return jnp.mean(forward(p, x) ** 2)

    fwd_bwd = jax.value_and_grad(loss, argnums=(0, 1))

    def local_fwd_bwd(p, x):  # per shard: sums, then psum; the mean over the global batch
        value, (gp, gx) = jax.value_and_grad(
            lambda p, x: jnp.sum(forward(p, x) ** 2) / count, argnums=(0, 1)
        )(p, x)
        value, gp = jax.lax.psum((value, gp), "batch")
        return value, (gp, gx)

    groups = {
        "fwd": [
            h.Contender("single", forward, (params, xs), {"strategy": "single"}),
            h.Contender(
                "jit",
                sharding.data_parallel(forward, mesh, (None, 1), 1),
                (p_rep, xs_sh),
                {"strategy": "jit"},
            ),
            h.Contender(
                "shard_map",
                sharding.data_parallel(forward, mesh, (None, 1), 1, use_shard_map=True),
                (p_rep, xs_sh),
                {"strategy": "shard_map"},
            ),
        ],
        "fwd+bwd": [
            h.Contender("single", fwd_bwd, (params, xs), {"strategy": "single"}),
            h.Contender(
                "jit",
                sharding.data_parallel(fwd_bwd, mesh, (None, 1), (None, (None, 1))),
                (p_rep, xs_sh),
                {"strategy": "jit"},
            ),
            h.Contender(
                "shard_map",
                sharding.data_parallel(
                    local_fwd_bwd, mesh, (None, 1), (None, (None, 1)), use_shard_map=True
                ),
                (p_rep, xs_sh),
                {"strategy": "shard_map"},
            ),
        ],
    }
    if n == 1:
        groups = {k: v[:1] for k, v in groups.items()}
    return groups


def lm_groups(mesh, sizes):
    config = char_lm.CharLMConfig(
        hidden_size=sizes["hidden"], embed_size=sizes["embed"], batch_size=sizes["batch"],
        window=sizes["window"],
    )  # fmt: skip
    model = char_lm.CharLM(config)
    key = jax.random.key(0)
    params = model.init(key)
    optimizer = sj.default_optimizer(config.learning_rate, max_norm=config.max_norm)
    opt_state = optimizer.init(params)
    b, t = sizes["batch"], sizes["window"]
    ids = jax.random.randint(jax.random.fold_in(key, 1), (t + 1, b), 0, 256, jnp.int32)
    window = (ids[:-1], ids[1:], None)
    carry = model.init_carry((b,))
    step = sj.tbptt_step(sj.window_loss(model, sj.cross_entropy, k1=t), optimizer)
    rep = sharding.replicate
    window_sh = sharding.shard_batch(window, mesh, axis=1)
    carry_sh = sharding.shard_batch(carry, mesh, axis=0)

    # The parts: LSTM alone (on embedded inputs), everything but the LSTM, the update alone.
    embedded = model.embed(params.embed, ids[:-1])  # [T, B, E]
    hidden = jax.random.normal(key, (t, b, sizes["hidden"]), jnp.float32)

    def lstm_part(p, x):
        return jax.value_and_grad(lambda p, x: jnp.mean(model.rnn(p, x)[1] ** 2), (0, 1))(p, x)

    def head_part(p, ys, targets):
        return jax.value_and_grad(lambda p: sj.cross_entropy(model.head(p, ys), targets))(p)

    def update_part(p, s, g):
        updates, s = optimizer.update(g, s, p)
        return jax.tree.map(jnp.add, p, updates), s

    groups = {
        "train step": [
            h.Contender("single", step, (params, opt_state, carry, window), {"strategy": "single"}),
            h.Contender(
                "jit",
                sharding.data_parallel(step, mesh, (None, None, 0, 1), (None, None, 0, None)),
                (rep(params, mesh), rep(opt_state, mesh), carry_sh, window_sh),
                {"strategy": "jit"},
            ),
        ],
        "part: LSTM fwd+bwd": [
            h.Contender("single", lstm_part, (params.rnn, embedded), {"strategy": "single"}),
            h.Contender(
                "jit",
                sharding.data_parallel(lstm_part, mesh, (None, 1), (None, (None, 1))),
                (rep(params.rnn, mesh), sharding.shard_batch(embedded, mesh, axis=1)),
                {"strategy": "jit"},
            ),
        ],
        "part: readout+loss fwd+bwd": [
            h.Contender(
                "single", head_part, (params.head, hidden, window[1]), {"strategy": "single"}
            ),
            h.Contender(
                "jit",
                sharding.data_parallel(head_part, mesh, (None, 1, 1), None),
                (rep(params.head, mesh), sharding.shard_batch(hidden, mesh, axis=1), window_sh[1]),
                {"strategy": "jit"},
            ),
        ],
        "part: optimizer update": [
            h.Contender("single", update_part, (params, opt_state, params), {"strategy": "single"}),
            h.Contender(
                "jit (replicated)",
                sharding.data_parallel(update_part, mesh, (None, None, None), None),
                (rep(params, mesh), rep(opt_state, mesh), rep(params, mesh)),
                {"strategy": "jit"},
            ),
        ],
    }
    if mesh.size == 1:
        groups = {k: v[:1] for k, v in groups.items()}
    return groups


def run(args) -> h.Recorder:
    rec = h.Recorder(SCRIPT, args)
    mesh = sharding.batch_mesh()
    timing = dict(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3)
    for cfg in QUICK if args.quick else FULL:
        name = f"B{cfg[0]} T{cfg[1]} I{cfg[2]} H{cfg[3]}"
        for mode, group in lstm_groups(mesh, cfg).items():
            print(f"[{name}] LSTM {mode}, {mesh.size} device(s)")
            rows = h.measure_group(group, **timing)
            rec.add(rows, config=name, B=cfg[0], T=cfg[1], I=cfg[2], H=cfg[3], dtype="float32",
                    mode=mode, model="LSTM", devices=mesh.size)  # fmt: skip
    sizes = QUICK_LM if args.quick else FULL_LM
    name = f"B{sizes['batch']} T{sizes['window']} I{sizes['embed']} H{sizes['hidden']}"
    for mode, group in lm_groups(mesh, sizes).items():
        print(f"[char-LM {name}] {mode}, {mesh.size} device(s)")
        rows = h.measure_group(group, **timing)
        rec.add(rows, config=name, B=sizes["batch"], T=sizes["window"], I=sizes["embed"],
                H=sizes["hidden"], dtype="float32", mode=mode, model="char-LM",
                devices=mesh.size)  # fmt: skip
    return rec


def summarize(rows: Sequence[dict]) -> str:
    base = {}
    for r in rows:
        if r["strategy"] == "single":
            base[(r["model"], r["config"], r["mode"])] = r["median_ms"]
    for r in rows:
        r["vs_single"] = r["median_ms"] / base[(r["model"], r["config"], r["mode"])]
    return "\n".join(
        [
            "`vs single` = median / the single-device median of the same group (< 1: the "
            "split is faster). All contenders run in one process holding "
            f"{rows[0]['devices']} host device(s).",
            "",
            h.markdown_table(
                rows,
                [
                    ("model", "model"),
                    ("config", "config"),
                    ("mode", "mode"),
                    ("strategy", "label"),
                    (
                        "ms median (q1-q3)",
                        lambda r: f"{r['median_ms']:.3f} ({r['q1_ms']:.3f}-{r['q3_ms']:.3f})",
                    ),
                    ("vs single", "vs_single"),
                    ("compile s", "compile_s"),
                ],
            ),  # fmt: skip
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if jax.device_count() != args.devices:
        print(
            f"note: {jax.device_count()} device(s) present, --devices {args.devices} asked "
            "(set only when run as a script, before JAX initialises)"
        )
    rec = run(args)
    body = summarize(rec.rows)
    rec.write(body, TITLE)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

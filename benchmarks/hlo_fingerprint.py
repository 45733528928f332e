"""Is the hot path the same program? A hash of the optimised HLO of every hot path.

A change meant to leave speed alone (a refactor, a rename) should leave every hash here
unchanged: then no benchmark needs rerunning. Programs: LSTM and GRU ``unroll`` forward and
forward+backward (loss ``mean(ys**2)``, gradients for params and ``xs``) at the four
configurations of ``unroll_backward.py`` with the defaults; the autodiff derivative and
``Remat(16)`` at two of them; the char-LM's first layer (``embedded_unroll`` folded, with
resets). The text hashed is XLA's optimised module with its source locations (file and
function names, line numbers, metadata) removed, so moving code does not change it.

The hashes depend on the jax/jaxlib version and the machine: compare two commits on one
machine, e.g.::

    git worktree add /tmp/base <commit>
    (cd /tmp/base && PYTHONPATH=/tmp/base python $OLDPWD/benchmarks/hlo_fingerprint.py \
        --out /tmp/before)
    python benchmarks/hlo_fingerprint.py --out /tmp/after
    diff /tmp/before/*.md /tmp/after/*.md

(the markdown tables differ only in their header when the programs are the same).

Works with the API before the methods (``backward=``, ``remat=``) and after.
"""

from __future__ import annotations

import hashlib
import re

import _harness as h
import jax
import jax.numpy as jnp

import seqjax as sj

SCRIPT = "hlo_fingerprint"
CONFIGS = [(32, 128, 64, 256), (8, 1024, 64, 128), (1, 1024, 32, 64), (128, 64, 128, 512)]
QUICK_CONFIGS = [(32, 128, 3, 4), (8, 1024, 3, 4)]  # the shapes that select the variants
NEW_API = hasattr(sj, "Scan")


def clean(text: str) -> str:
    """The optimised HLO text without source locations (only the program counts)."""
    text = re.sub(
        r"\n(FileNames|FunctionNames|FileLocations|StackFrames)\n(?:[^\n]+\n)*", "\n", text
    )
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    text = re.sub(r", stack_frame_id=\d+", "", text)
    return re.sub(r"^HloModule \S+", "HloModule m", text, flags=re.M)


def options(kind: str) -> dict:
    if kind == "autodiff":
        return {"method": sj.Scan(derivative="autodiff")} if NEW_API else {"backward": "autodiff"}
    if kind == "remat":
        return {"method": sj.Remat(16)} if NEW_API else {"remat": 16}
    return {}


def programs(configs):
    """``(name, function, args)`` of every hot path."""
    for name, make in (("lstm", sj.LSTMCell), ("gru", sj.GRUCell)):
        for b, t, i, hid in configs:
            for kind in ("default", "autodiff", "remat"):
                if kind != "default" and (b, t) not in ((32, 128), (8, 1024)):
                    continue
                cell = make(i, hid)
                params = cell.init(jax.random.key(0))
                xs = jax.random.normal(jax.random.key(1), (t, b, i))

                chosen = options(kind)

                def loss(p, x, cell=cell, chosen=chosen):
                    return jnp.mean(sj.unroll(cell, p, x, **chosen)[1] ** 2)

                tag = f"{name} B{b} T{t} {kind}"
                if kind == "default":
                    yield f"{tag} fwd", loss, (params, xs)
                yield f"{tag} fwd+bwd", jax.value_and_grad(loss, argnums=(0, 1)), (params, xs)
    cell = sj.LSTMCell(64, 256)
    params = cell.init(jax.random.key(0))
    table = jax.random.normal(jax.random.key(2), (256, 64))
    ids = jax.random.randint(jax.random.key(3), (64, 32), 0, 256)
    resets = jax.random.bernoulli(jax.random.key(4), 0.01, (64, 32))

    def lm(p, tbl):
        return jnp.mean(sj.embedded_unroll(cell, p, tbl, ids, resets=resets, fold=True)[1] ** 2)

    yield "char-LM embedded_unroll fwd+bwd", jax.value_and_grad(lm, argnums=(0, 1)), (params, table)


def main(argv=None) -> None:
    args = h.parse_args(__doc__.splitlines()[0], argv)
    rec = h.Recorder(SCRIPT, args)
    rows = []
    for name, fn, fn_args in programs(QUICK_CONFIGS if args.quick else CONFIGS):
        text = clean(jax.jit(fn).lower(*fn_args).compile().as_text())
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        print(f"{digest}  {name}", flush=True)
        rows.append({"program": name, "hlo_sha1": digest, "hlo_lines": text.count("\n")})
    rec.add(rows)
    table = h.markdown_table(
        rec.rows,
        [("program", "program"), ("optimised HLO sha1", "hlo_sha1"), ("lines", "hlo_lines")],
    )
    rec.write(table, "Optimised HLO of the hot paths (equal hashes: the same programs)")


if __name__ == "__main__":
    main()

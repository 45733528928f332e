#!/usr/bin/env bash
# Everything issue 25 asks to measure on a GPU, as one command for one device call.
#
# Usage (from the repository root, on the lent machine; results land in $OUT):
#     bash benchmarks/gpu_session.sh            # ~9 minutes on an H100
#     QUICK=1 bash benchmarks/gpu_session.sh    # toy sizes: check that it runs at all
#
# The image there has jax, flax, optax, orbax, equinox and PyTorch (cuDNN); seqjax runs from
# the checkout (PYTHONPATH), nothing is installed. Each step is bounded by `timeout` and a
# failing step does not stop the others; the log says which failed.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# The device tool returns at most 8 files from $OUT: work elsewhere, pack one archive at the end.
DEST="${OUT:-$PWD}"
OUT="$(mktemp -d)/gpu-session"
mkdir -p "$OUT"
quick=()
[ -n "${QUICK:-}" ] && quick=(--quick)
py=python3

scale=1
[ -n "${QUICK:-}" ] && scale=4  # a quick run on a CPU interprets the kernel: far slower

step() {  # step SECONDS NAME COMMAND...
    local limit=$(($1 * scale)) name=$2
    shift 2
    echo "=== $name ($(date +%T))"
    if ! timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
        echo "!!! $name failed or timed out (see $name.log)"
    fi
    tail -n 3 "$OUT/$name.log"
}

$py -c "import jax, seqjax; print(jax.__version__, jax.devices())" | tee "$OUT/env.log"
# 1. The kernel compiles and agrees with the scan on the GPU (values and gradients).
step 120 pallas_tests $py -m pytest -q -p no:cacheprovider -n 0 -o addopts="" \
    tests/test_pallas_rnn.py tests/test_pallas_method.py
# 2. The four configurations: seqjax's scan, its Pallas kernel, cuDNN (PyTorch and JAX), Flax.
step 150 suite $py benchmarks/suite.py "${quick[@]}" --cells lstm gru --modes fwd+bwd \
    --peers seqjax.pallas torch jax.cudnn flax.linen --out "$OUT" --repeats 10
# 3. DeepBench's training shapes, same contenders.
step 150 deepbench $py benchmarks/suite.py "${quick[@]}" --deepbench --modes fwd+bwd \
    --peers seqjax.pallas torch jax.cudnn --out "$OUT" --repeats 5
# 4. The structured derivative against autodiff and cuDNN (issue 7's table), one device.
step 90 unroll_backward $py benchmarks/unroll_backward.py "${quick[@]}" --devices 1 \
    --repeats 10 --out "$OUT"
# 5. Parallel-in-time methods against the scan at long T.
step 60 parallel_sweep $py benchmarks/parallel_sweep.py "${quick[@]}" --gpu-sweep --out "$OUT"
echo "=== done ($(date +%T))"
ls -la "$OUT"
mkdir -p "$DEST" && tar -czf "$DEST/gpu-session.tgz" -C "$(dirname "$OUT")" gpu-session && echo "packed $DEST/gpu-session.tgz"

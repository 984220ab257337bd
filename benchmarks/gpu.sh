#!/usr/bin/env bash
# Benchmarks 1-4 on CUDA in one go (within 10 minutes on one GPU); results in benchmarks/results/gpu/, apart
# from the CPU ones. Usage: benchmarks/gpu.sh [device]   (default cuda; PY=python to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${1:-cuda}
OUT=benchmarks/results/gpu
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: torch sees no CUDA device')"
if [ ! -f artifacts/testbed/base/config.json ]; then
  echo "building the testbed first (not counted in the 10 minutes)"
  "$PY" -m tasks testbed
fi

start=$SECONDS
run() {  # one benchmark with what is left of the 600 s
  left=$((600 - (SECONDS - start)))
  if [ "$left" -le 0 ]; then echo "gpu.sh: out of time before $1" >&2; exit 1; fi
  timeout "$left" "$PY" -m "benchmarks.$1" --device "$DEVICE" --out "$OUT" "${@:2}"
}
run capture_overhead --samples 256 --layers 4 --repeats 5
run init_cost
run solve_scale
run train_parity
echo "gpu.sh: benchmarks 1-4 took $((SECONDS - start)) s; results in $OUT/"

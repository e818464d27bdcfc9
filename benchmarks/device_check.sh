#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network), in under 8 minutes:
#   1. build for the local card:   pip install --no-build-isolation --no-deps .
#   2. the test suite, with the cuda backend present (kernel tests run on emu AND cuda)
#   3. compute-sanitizer memcheck and racecheck over the cuda kernel tests, small sizes
#   4. every benchmark script
# Logs and results go to OUTDIR (benchmarks/results/* are copied there too).
#
# Usage: benchmarks/device_check.sh OUTDIR
set -uo pipefail
OUT="${1:?usage: benchmarks/device_check.sh OUTDIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
export CUDAARCHS="${CUDAARCHS:-native}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
PY="${PYTHON:-python3}"
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME TIMEOUT CMD...: runs CMD with a time limit, logs to OUT/NAME.log
  local name="$1" limit="$2"; shift 2
  local s=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: rc=$rc in $(( $(date +%s) - s ))s ($(tail -n 1 "$OUT/$name.log" | cut -c1-160))"
  return $rc
}

log "device check of commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) on $(hostname)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"

step build 300 "$PY" -m pip install --no-build-isolation --no-deps -v . || { log "build failed; stopping"; exit 1; }
"$PY" -c "import alexnet_cuda as a; print('backends:', a.available_backends()); print(a.get_backend('cuda')._mod.device_properties())" \
  2>&1 | tee -a "$OUT/summary.txt"

# 2. tests (ALEXNET_CUDA_SYNC=1: every launch synchronous, so a fault names its launch)
ALEXNET_CUDA_SYNC=1 step tests 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests --durations=15

# 3. sanitizers over the cuda kernel tests (tests select small sizes; -k cuda keeps emu out)
KTESTS=$(ls tests/test_elementwise.py tests/test_emu.py tests/test_kernels_*.py 2>/dev/null)
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 3 --target-processes all \
      "$PY" -m pytest -q -x -p no:cacheprovider -o addopts="" $KTESTS -k "cuda and not alexnet_size"
  done
else
  log "compute-sanitizer not found"
fi

# 4. benchmarks
for b in benchmarks/bench_*.py; do
  name=$(basename "$b" .py)
  [ "$name" = "bench_data" ] && continue  # CPU data loader: measured on the CPU machines
  step "$name" 120 "$PY" "$b"
done
mkdir -p "$OUT/results" && cp -r benchmarks/results/. "$OUT/results/" 2>/dev/null
log "done"

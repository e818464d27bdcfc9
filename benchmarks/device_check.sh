#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network), in under 8 minutes:
#   1. build for the local card:   pip install --no-build-isolation --no-deps .
#      (if pip cannot build here, a direct CMake build into build/device, used through
#      ALEXNET_CUDA_EXT_DIR, so the rest of the check still runs; the summary says which)
#   2. the cuda backend's tests (-k cuda; the numpy and emu ones run in CI)
#   3. every benchmark script (bench_data and bench_storage are CPU benchmarks: skipped; bench_train
#      at fp32, bf16 and tf32; precision_curve: the full preset's first 1000 steps at fp32 and bf16),
#      bench_dataparallel (needs NCCL: pip install nvidia-nccl-cu13 if cupy cannot load it) and
#      feed_check.py (the pinned-memory upload of the next batch: equal batches, ms per batch)
#   4. with DEVICE_CHECK_TRAIN=1: the full preset's no-argument `alexnet-cuda train` (built-in
#      data, 90 epochs; about 4230 steps), its metrics.jsonl and curves.png kept, the checkpoint
#      not (give it time: DEVICE_CHECK_SECONDS=600 and DEVICE_CHECK_BENCH=0 leave it ~7 minutes)
#   5. compute-sanitizer memcheck and racecheck over the cuda kernel tests, small sizes
# Each step has its own time limit and the whole check a deadline (DEVICE_CHECK_SECONDS,
# default 420): a step that would pass the deadline is cut short, and the summary says so.
# Logs and results go to OUTDIR (benchmarks/results/* are copied there too).
#
# Usage: [ALEXNET_COMMIT=sha] benchmarks/device_check.sh OUTDIR
set -uo pipefail
OUT="${1:?usage: benchmarks/device_check.sh OUTDIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
export CUDAARCHS="${CUDAARCHS:-native}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export ALEXNET_COMMIT="${ALEXNET_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
PY="${PYTHON:-python3}"
t0=$(date +%s)
deadline=$(( t0 + ${DEVICE_CHECK_SECONDS:-420} ))
log() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME LIMIT CMD...: runs CMD with min(LIMIT, time to the deadline), logs to OUT/NAME.log
  local name="$1" limit="$2"; shift 2
  local s=$(date +%s)
  local left=$(( deadline - s ))
  if (( left < 15 )); then log "$name: skipped (deadline reached)"; return 124; fi
  (( limit > left )) && limit=$left
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local why=""; (( rc == 124 )) && why=" TIMED OUT after ${limit}s;"
  log "$name: rc=$rc in $(( $(date +%s) - s ))s;$why $(tail -n 1 "$OUT/$name.log" | cut -c1-160)"
  return $rc
}

log "device check of commit $ALEXNET_COMMIT on $(hostname), $(nproc) cores"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"
"$PY" -c "import sys, numpy, torch, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'cupy', cupy.__version__)" 2>&1 | tee -a "$OUT/summary.txt"

# 1. build
if ! step build 150 "$PY" -m pip install --no-build-isolation --no-deps -v .; then
  log "pip build failed (see build.log); building with CMake directly"
  step build_cmake 200 bash -c "cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -Dpybind11_DIR=\$($PY -m pybind11 --cmakedir) -DCMAKE_CUDA_ARCHITECTURES=native \
      -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$PWD/build/device/ext && cmake --build build/device -j $(nproc)" \
    || { log "build failed; stopping"; exit 1; }
  export ALEXNET_CUDA_EXT_DIR="$PWD/build/device/ext"
else
  # tests and benchmarks run from the checkout, whose alexnet_cuda/ has no built extensions:
  # point it at the installed ones
  export ALEXNET_CUDA_EXT_DIR="$(cd / && "$PY" -c 'import alexnet_cuda, os; print(os.path.dirname(alexnet_cuda.__file__))')"
fi
log "extensions from $ALEXNET_CUDA_EXT_DIR"
"$PY" -c "import alexnet_cuda as a; print('backends:', a.available_backends()); print(a.get_backend('cuda')._mod.device_properties())" \
  2>&1 | tail -n 3 | tee -a "$OUT/summary.txt"

# 2. tests of the cuda backend (CI runs the numpy and emu ones on every commit; ALEXNET_CUDA_SYNC=1:
# every launch synchronous, so a fault names its launch)
ALEXNET_CUDA_SYNC=1 step tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests -k cuda \
  --durations=15 -rf

# 3. benchmarks, most useful first (the headline ratio, where the time goes, the code paths only a
# card runs); DEVICE_CHECK_BENCH=0 skips them
[ "${DEVICE_CHECK_BENCH:-1}" = 0 ] && log "benchmarks skipped (DEVICE_CHECK_BENCH=0)" || {
step bench_train 60 "$PY" benchmarks/bench_train.py
step bench_train_bf16 60 "$PY" benchmarks/bench_train.py --precision bf16
step time_full 40 "$PY" -m alexnet_cuda time --backend cuda --preset full
step time_full_bf16 40 "$PY" -m alexnet_cuda time --backend cuda --preset full --precision bf16
# one epoch of the small preset on the built-in set through each training path only a card runs
train_paths() {
  cd "$OUT" && export ALEXNET_CUDA_CACHE="$OUT/cache-small" || return 1
  local opts
  for opts in "" "--devices 0,0" "--precision bf16" "--precision tf32"; do
    echo "== train $opts"
    "$PY" -m alexnet_cuda train --backend cuda --preset small --epochs 1 --out "run-small${opts// /}" $opts \
      2>&1 | tail -n 3
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
  done
}
export -f train_paths; export OUT PY
step train_paths 90 bash -c train_paths
step bench_conv 90 "$PY" benchmarks/bench_conv.py
step bench_linear 40 "$PY" benchmarks/bench_linear.py
step bench_linear_tf32 30 "$PY" benchmarks/bench_linear.py --precision tf32 --versions 1
step bench_linear_bf16 40 "$PY" benchmarks/bench_linear.py --precision bf16 --versions 1,2
step bench_conv_tf32 40 "$PY" benchmarks/bench_conv.py --precision tf32 --versions 1
step bench_conv_bf16 40 "$PY" benchmarks/bench_conv.py --precision bf16 --versions 1
# the first 1000 steps of the full preset at fp32 and bf16 on the same batches (built-in data at 256)
step precision_curve 200 bash -c "ALEXNET_CUDA_CACHE='$OUT/cache' '$PY' benchmarks/precision_curve.py --backend cuda"
step bench_train_tf32 60 "$PY" benchmarks/bench_train.py --precision tf32
step bench_dataparallel 40 "$PY" benchmarks/bench_dataparallel.py
step bench_transfer 60 "$PY" benchmarks/bench_transfer.py
step feed_check 40 "$PY" benchmarks/feed_check.py
step bench_layers 50 "$PY" benchmarks/bench_layers.py
mkdir -p "$OUT/results" && cp -r benchmarks/results/. "$OUT/results/" 2>/dev/null
}

# 4. the full preset's no-argument training run, on the built-in data (rendered and prepared at 256
# into a cache inside OUT, removed afterwards); an epoch cut short by the limit is simply missing
if [ "${DEVICE_CHECK_TRAIN:-0}" = 1 ]; then
  step train_full 480 bash -c "cd '$OUT' && ALEXNET_CUDA_CACHE='$OUT/cache' '$PY' -m alexnet_cuda train --out '$OUT/run-full'"
  cp "$OUT/run-full/metrics.jsonl" "$OUT/run-full/config.json" "$OUT/run-full/curves.png" "$OUT/" 2>/dev/null
  rm -rf "$OUT/cache" "$OUT/run-full/checkpoint.safetensors"
fi

# 5. sanitizers over the cuda kernel tests (tests select small sizes; -k cuda keeps emu out)
# (test_emu.py is left out: its kernels test the emulator, and under the sanitizers its large
# reductions and atomics cases alone took the whole time limit on an H200)
KTESTS=$(ls tests/test_kernels_*.py tests/test_elementwise.py tests/test_conv_winograd.py 2>/dev/null)
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 3 --target-processes all \
      "$PY" -m pytest -q -x -p no:cacheprovider -o addopts="" $KTESTS -k "cuda and not alexnet_size and not 1500001"
  done
else
  log "compute-sanitizer not found"
fi
log "done"
rm -rf "$OUT/cache" "$OUT/cache-small"  # rendered and prepared images: not results
# one archive of everything, for transports that bring back only a few files
tar czf "$OUT/device_check.tgz" -C "$OUT" --exclude device_check.tgz . 2>/dev/null || true

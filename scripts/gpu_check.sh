#!/usr/bin/env bash
# The one prepared command for a GPU machine (see the README): builds the extension with its
# CUDA kernels, runs the test suite (CUDA cases included), runs compute-sanitizer on the CUDA
# op tests, and runs the GPU benchmarks. Logs and JSON go under $OUT (default: a temp dir).
# Usage: OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: runs COMMAND, logs to $OUT/NAME.log, records failure
  local name=$1; shift
  echo "== $name: $*"
  if "$@" >"$OUT/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (see $name.log)"; status=1; fi
  tail -n 5 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
step build python -m pip install --no-build-isolation --no-deps -e .
export FASTMTL_REQUIRE_NATIVE=1
step tests python -m pytest tests -q -p no:cacheprovider
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 \
  python -m pytest tests/test_ops.py -q -p no:cacheprovider -k cuda
step sanitizer_fd compute-sanitizer --tool memcheck --error-exitcode 1 \
  python -m pytest tests/test_metrics.py -q -p no:cacheprovider -k "cuda and fd_op"
step sanitizer_graddrop compute-sanitizer --tool memcheck --error-exitcode 1 \
  python -m pytest tests/test_graddrop.py -q -p no:cacheprovider -k "cuda or cpu_and_cuda"
step sanitizer_fused compute-sanitizer --tool memcheck --error-exitcode 1 \
  python -m pytest tests/test_fused.py -q -p no:cacheprovider -k cuda
step bench_step python -m fastmtl bench step --device cuda --json "$OUT/bench_step_cuda.json"
step bench python -m fastmtl bench combine --device cuda --T 2,10,40 --P 1e7,1e8 \
  --repeats 10 --no-peers --json "$OUT/bench_cuda.json"
step bench_fd python -m fastmtl bench fd --device cuda --json "$OUT/bench_fd_cuda.json"
echo "logs in $OUT"
exit $status

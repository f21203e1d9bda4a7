#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine (docs/cuda.md, "Verification"): build with the machine's own
# Python and packages (no registry needed), run the GPU tests, compute-sanitizer on small models, then the
# GPU benchmark. Everything is logged, unbuffered, to OUTDIR/gpu_check.log as it goes; results land in
# OUTDIR (pytest's junit XML, bench.json). Budget: under 8 minutes on an H200 with 16 cores.
#
#   scripts/gpu_check.sh OUTDIR [quick]      quick: tests and sanitizer only, no benchmark
#
# Each step has its own time limit and the script goes on after a failed step, so one run reports on all of
# them; its exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: scripts/gpu_check.sh OUTDIR [quick]}
MODE=${2:-full}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
FAILED=0
START=$(date +%s)
step() {  # step NAME SECONDS CMD...: run with a time limit, log its duration and status
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "=== [$(date +%T)] $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== [$(date +%T)] $name: rc=$rc in $(($(date +%s) - t0))s (total $(($(date +%s) - START))s)"
  [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
$PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' || true
nvcc --version | tail -2 || true

# Build: the image's Python has scikit-build-core, pybind11, cmake and ninja; sm_90 only (this machine).
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
step build 300 $PY -m pip install --no-build-isolation --no-deps --no-index -q -e . \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C build-dir=build/gpu-check || exit 99
$PY -c 'from robuq import _C; print("cuda_available", _C.cuda_available(), _C.cuda_unavailable_reason())'

# GPU tests: the first run of a kernel on hardware, so launches are synchronous (a fault names its launch).
CUDA_LAUNCH_BLOCKING=1 step tests ${TESTS_LIMIT:-300} $PY -m pytest -q -m gpu -p no:cacheprovider --timeout=${TEST_TIMEOUT:-200} \
  --junitxml="$OUTDIR/gpu_tests.xml" tests/test_cuda_gpu.py -rfE

# compute-sanitizer on small models, in processes without torch: the digits model (general GEMM, hidden 96)
# and a hidden-128 model (the fast ternary GEMM), forward and a short sampling run.
SAN=${TMPDIR:-/tmp}/robuq-gpu-check-models
mkdir -p "$SAN"
step make-models 120 $PY - "$SAN" <<'PYEOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
import conftest
for name in ("h128", "mix"):
    conftest.build_tiny(name, Path(sys.argv[1]))
PYEOF
cat > "$SAN/run.py" <<'PYEOF'
import sys
import numpy as np
from robuq.engine import Engine
for path in sys.argv[1:]:
    e = Engine(path, device="cuda")
    c = e.info["model_config"]
    x = np.random.default_rng(0).standard_normal((3, c["in_channels"], c["input_size"], c["input_size"]))
    out = e.forward(x.astype(np.float32), np.array([1, 500, 999]), np.array([1, 2, 0]))
    s = e.sample([1, 2], steps="3", output="latent")
    print(path, "forward", float(np.abs(out).mean()), "sample", float(np.abs(s).mean()))
PYEOF
DIGITS=python/robuq/assets/digits-w158a2.rq
if command -v compute-sanitizer >/dev/null; then
  step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 \
    $PY "$SAN/run.py" "$DIGITS" "$SAN/h128.rq" "$SAN/mix.rq"
  step racecheck 150 compute-sanitizer --tool racecheck --error-exitcode 1 --print-limit 20 \
    $PY "$SAN/run.py" "$SAN/h128.rq"
else
  echo "compute-sanitizer not found"
fi

if [ "$MODE" != quick ]; then
  step bench ${BENCH_LIMIT:-240} $PY -m robuq.bench.gpu --model XL/2 --batches 2,32 --gemm-variants --warmup 3 --repeats 10 \
    --workdir /tmp/robuq-gpu-bench --json "$OUTDIR/bench.json" --no-trt
  [ "${COMPILE:-0}" = 1 ] && step bench-compile ${COMPILE_LIMIT:-300} $PY -m robuq.bench.gpu --model XL/2 --batches 2,32 \
    --skip gemm --compile --warmup 3 --repeats 10 --workdir /tmp/robuq-gpu-bench --json "$OUTDIR/bench_compile.json" --no-trt
fi
echo "=== gpu_check done in $(($(date +%s) - START))s, failed steps: $FAILED"
exit $FAILED

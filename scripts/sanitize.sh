#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run (docs/reliability.md, "Sanitizers"): builds the engine
# and the Python extension robuq._C with gcc -fsanitize=address,undefined -fno-sanitize-recover=all in
# build-asan (never build/), then runs the kernel tests, the loader on every corrupt-file variant of
# tests/test_engine.py, the thread / determinism tests of tests/test_reliability.py, and a small end-to-end
# sample (engine forward and Engine.sample through robuq-infer on the shipped W1.58A2 model, on every
# kernel tier) with that extension. Any report aborts the process, so a clean exit means no reports.
#
#   scripts/sanitize.sh [extra pytest args]
#
# The interpreter is not instrumented, so the ASan runtime is LD_PRELOADed (it must come first in the
# process), and leak detection is off: CPython keeps interned objects and arenas alive until exit by
# design, which LeakSanitizer would list as leaks; memory errors, use-after-free and UB are all reported.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
B=build-asan
# pybind11's CMake files: a build requirement (pyproject.toml), which an isolated `pip install -e .` does
# not leave in the venv
python -c "import pybind11" 2>/dev/null || python -m pip install -q "pybind11>=2.12"
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DROBUQ_SANITIZE=address,undefined -DROBUQ_WERROR=ON \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >/dev/null
cmake --build "$B" -j2 --target _C
SO="$(ls "$PWD/$B"/_C*.so)"

# robuq._C comes from build-asan: a meta-path finder in a sitecustomize module put ahead of the editable
# install's finder; the rest of the package is the working tree as usual.
mkdir -p "$B/site"
cat >"$B/site/sitecustomize.py" <<PY
import importlib.util
import sys


class _AsanExtension:
    @staticmethod
    def find_spec(name, path=None, target=None):
        return importlib.util.spec_from_file_location(name, "$SO") if name == "robuq._C" else None


sys.meta_path.insert(0, _AsanExtension)
PY

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$PWD/$B/site${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

python - "$SO" <<'PY'
import sys

import robuq._C

assert robuq._C.__file__ == sys.argv[1], f"robuq._C came from {robuq._C.__file__}, not the ASan build"
print("sanitize.sh: robuq._C is the ASan/UBSan build", robuq._C.__file__)
PY

# the kernel tests; the loader over every corrupt-file variant; the engine shared by Python threads
python -m pytest -q -p no:cacheprovider tests/test_kernels_ref.py tests/test_kernels_avx2.py \
  tests/test_engine_kernels.py tests/test_engine.py::test_corrupt_files_raise_format_error \
  tests/test_engine.py::test_misaligned_tensors_are_copied tests/test_engine.py::test_read_fallback_when_not_mapped \
  tests/test_reliability.py -k "not payload and not processes and not weights_only" "$@"

# End to end: the shipped W1.58A2 model, forward and sample (CFG, DDIM) on every kernel tier, 2 threads.
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
tiers="reference generic avx2"
if python -c "import sys, robuq._C as c; sys.exit(0 if c.tier_available('avx512') else 1)"; then
  tiers="$tiers avx512"
  # the avx512 tier's own kernel tests, under the sanitizers too
  python -m pytest -q -p no:cacheprovider tests/test_kernels_avx512.py "$@"
fi
if python -c "import sys, robuq._C as c; sys.exit(0 if c.tier_available('amx') else 1)"; then
  tiers="$tiers amx"
  # the amx tier's own kernel tests (both GEMM schedules), under the sanitizers too
  python -m pytest -q -p no:cacheprovider tests/test_kernels_amx.py "$@"
fi
for tier in $tiers; do
  ROBUQ_KERNEL_TIER=$tier robuq-infer --class 3 --class 7 --steps ddim4 --threads 2 --no-progress \
    -o "$out/$tier.npy"
done
python - "$out" $tiers <<'PY'
import sys

import numpy as np

import robuq
from robuq.infer import default_model_path

eng = robuq.Engine(default_model_path(), threads=2)
c = eng.info["model_config"]
x = np.random.default_rng(0).standard_normal((2, c["in_channels"], c["input_size"], c["input_size"]))
out = eng.forward(x.astype(np.float32), np.array([10, 900]), np.array([1, c["num_classes"]]))
assert np.isfinite(out).all()
for tier in sys.argv[2:]:
    s = np.load(f"{sys.argv[1]}/{tier}.npy")
    assert s.shape[0] == 2 and s.dtype == np.uint8, (tier, s.shape, s.dtype)
print("sanitize.sh: end-to-end forward and sampling ran clean on every tier")
PY
echo "sanitize.sh: no AddressSanitizer / UndefinedBehaviorSanitizer reports"

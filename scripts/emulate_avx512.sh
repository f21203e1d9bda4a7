#!/usr/bin/env bash
# Checks the avx512 tier's Hadamard transform, quantizer and LayerNorm + modulate for bit identity on a CPU
# WITHOUT AVX-512: kernels/avx512/hadamard_avx512.cpp is compiled against SIMDe's portable AVX-512 (the
# native intrinsic names mapped onto plain C / AVX2, scripts/avx512_emulation/immintrin.h) and run against the
# avx2 tier of a normal build. Correctness only: emulated code says nothing about speed, and the files with
# inline assembly (the avx512 GEMM and attention) cannot be emulated this way. On an AVX-512 machine the test
# suite runs the real tier instead (tests/test_kernels_avx512.py).
#
# Needs SIMDe's headers: `apt-get install libsimde-dev` (Debian / Ubuntu), or SIMDE_INCLUDE=/path/to/simde's
# parent directory. Usage: scripts/emulate_avx512.sh [BUILD_DIR]   (default build/emulate; configured if missing, rebuilt)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/emulate}
simde=${SIMDE_INCLUDE:-/usr/include}
if [[ ! -f "$simde/simde/x86/avx512.h" ]]; then
  echo "emulate_avx512: SIMDe headers not found under $simde (apt-get install libsimde-dev, or set SIMDE_INCLUDE)" >&2
  exit 2
fi
# the avx2 side must be the current source's: configure once, then always an (incremental) build
[[ -f "$build/CMakeCache.txt" ]] ||
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DROBUQ_CUDA=OFF -DROBUQ_PYTHON=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target robuq_core >/dev/null
out="$build/avx512_emulation"
mkdir -p "$out"
# The project's float flags (-ffp-contract=off: no multiply-add is fused unless the code says so; SIMDe's
# fused multiply-add maps onto FMA with -mfma).
flags=(-std=c++17 -O2 -mavx2 -mfma -mf16c -ffp-contract=off -Wno-psabi -Ikernels/include -Ikernels)
extra=()
[[ "$simde" == /usr/include ]] || extra=(-isystem "$simde")
g++ "${flags[@]}" "${extra[@]}" -Iscripts/avx512_emulation -c kernels/avx512/hadamard_avx512.cpp \
  -o "$out/hadamard_avx512_emulated.o"
g++ "${flags[@]}" -fopenmp scripts/avx512_emulation/check_hadamard_quant.cpp "$out/hadamard_avx512_emulated.o" \
  "$build/librobuq_core.a" -o "$out/check_hadamard_quant"
"$out/check_hadamard_quant"

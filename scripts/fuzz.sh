#!/usr/bin/env bash
# Build the libFuzzer harnesses of tests/fuzz with clang (-fsanitize=fuzzer,address,undefined) in
# build-fuzz, generate the seed corpora, and fuzz each harness for SECONDS (default 60). docs/reliability.md.
#
#   scripts/fuzz.sh [SECONDS] [WORKDIR]      WORKDIR (default build-fuzz/run) keeps corpora between runs
#   FUZZ_HARNESSES="loader" scripts/fuzz.sh   only some harnesses (default: loader metadata)
#
# Exits non-zero when a harness finds a crash, hang, leak or sanitizer report; the input that did it is
# left in WORKDIR/artifacts. Needs clang with the libFuzzer runtime (Debian: clang, libclang-rt-14-dev)
# and the .venv (the seeds are exported by robuq-export).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_HARNESS="${1:-60}"
WORK="${2:-build-fuzz/run}"
CXX="${CXX_FUZZ:-clang++}"
command -v "$CXX" >/dev/null || { echo "fuzz.sh: $CXX not found (apt-get install clang)" >&2; exit 2; }

cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$CXX" -DROBUQ_PYTHON=OFF \
  -DROBUQ_FUZZ=ON -DROBUQ_SANITIZE=address,undefined -DROBUQ_WERROR=OFF >/dev/null
cmake --build build-fuzz -j2 --target fuzz_rq_loader fuzz_rq_metadata

mkdir -p "$WORK/artifacts"
if [ ! -d "$WORK/seeds" ]; then
  . .venv/bin/activate
  python tests/fuzz/make_corpus.py "$WORK/seeds"
fi
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
for h in ${FUZZ_HARNESSES:-loader metadata}; do
  mkdir -p "$WORK/corpus-$h"
  # The seeds stay as generated; new coverage goes into corpus-$h. -max_len: the largest seed (the 2.9 MB
  # full-precision asset) must fit whole. -timeout=10: an input taking 10 s counts as a hang.
  set +e
  OMP_NUM_THREADS=1 "build-fuzz/tests/fuzz/fuzz_rq_$h" "$WORK/corpus-$h" "$WORK/seeds/$h" \
    -dict=tests/fuzz/rq.dict -max_total_time="$SECONDS_PER_HARNESS" -timeout=10 -rss_limit_mb=2048 \
    -max_len=3000000 -artifact_prefix="$WORK/artifacts/$h-" -print_final_stats=1 >"$WORK/$h.log" 2>&1
  rc=$?
  set -e
  grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|ERROR|SUMMARY|stat::(number_of_executed_units|average_exec)" "$WORK/$h.log" || true
  echo "fuzz_rq_$h: corpus-$h holds $(find "$WORK/corpus-$h" -type f | wc -l) inputs"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: fuzz_rq_$h found a problem (exit $rc; see $WORK/$h.log and $WORK/artifacts)" >&2
    exit 1
  fi
done
echo "fuzz.sh: no crashes, hangs or sanitizer reports in ${SECONDS_PER_HARNESS} s per harness"

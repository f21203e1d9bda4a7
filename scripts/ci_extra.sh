#!/usr/bin/env bash
# CI steps beyond the README test command (.ci/run runs this after ./scripts/test.sh), docs/reliability.md:
#   1. a short libFuzzer run of the .rq loader and metadata harnesses (scripts/fuzz.sh, 60 s each), and
#   2. the AddressSanitizer + UndefinedBehaviorSanitizer build running the kernel tests and an end-to-end
#      sample (scripts/sanitize.sh).
# About 10 minutes on 2 cores. clang (with the libFuzzer runtime) is installed when missing: CI machines
# start fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"

if ! command -v clang++ >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "ci_extra.sh: installing clang (Debian: clang + libclang-rt-dev, the libFuzzer runtime)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
  else
    echo "ci_extra.sh: clang++ is missing and cannot be installed here (needs root and apt-get)" >&2
    exit 1
  fi
fi

t0=$SECONDS
rm -rf build-fuzz/ci  # a fresh corpus each time: the run is reproducible from the generated seeds
./scripts/fuzz.sh "$FUZZ_SECONDS" build-fuzz/ci
echo "ci_extra.sh: fuzzing done in $((SECONDS - t0)) s"
t1=$SECONDS
./scripts/sanitize.sh
echo "ci_extra.sh: sanitizer run done in $((SECONDS - t1)) s"

#!/usr/bin/env bash
# What an AVX-512 host owes the avx512 tier after sessions on AVX2-only hosts changed it with its bits proven
# by scripts/emulate_avx512.sh but its speed unmeasured. Run it first thing on such a host (about 12 minutes
# on 2 cores): it builds HEAD and HEAD with each pending commit's kernel changes reverted (target _C, Release,
# no CUDA), checks that the two give the same bits on every tier (scripts/compare_builds.py), times them on
# the avx512 tier with scripts/time_builds.py (1 and 2 threads, random DiT-XL/2 and DiT-S/2 files) and runs
# the avx512 kernel tests. Keep a pending commit only where its part (for 25a5456: hadamard_quantize) is not
# slower; revert it otherwise, and say which in docs/performance.md. Then drop it from PENDING below (a later
# blind change to an avx512 file adds itself there).
#
# Usage: scripts/avx512_pending.sh [WORKDIR]   (default /tmp/avx512_pending; needs .venv from scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
# commit: the Engine.profile part it should make faster
PENDING=()  # 25a5456 (hadamard_quantize) was timed on Zen 4 on 2026-12-07 and kept
work=${1:-/tmp/avx512_pending}
py=.venv/bin/python
if ! grep -qw avx512vbmi /proc/cpuinfo || ! grep -qw avx512_vnni /proc/cpuinfo; then
  echo "avx512_pending: this CPU lacks AVX-512 VBMI / VNNI, so the avx512 tier cannot run here" >&2
  exit 2
fi
[[ -x $py ]] || { echo "avx512_pending: no .venv (run scripts/setup.sh first)" >&2; exit 2; }
mkdir -p "$work"
pybind=$($py -m pybind11 --cmakedir)
build() {  # build SRC DIR: target _C of the tree at SRC into DIR
  cmake -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=Release -DROBUQ_CUDA=OFF -DPython_EXECUTABLE="$PWD/$py" \
    -Dpybind11_DIR="$pybind" >/dev/null
  cmake --build "$2" -j"$(nproc)" --target _C >/dev/null
}
for m in S XL; do
  [[ -f $work/$m.rq ]] || .venv/bin/robuq-export --random "DiT-$m/2" --bits W1.58A2 --rank 8 --seed 0 -q -o "$work/$m.rq"
done
build . "$work/head"
$py scripts/compare_builds.py dump "$work/head" "$work/head.npz" "$work/S.rq" "$work/XL.rq"
status=0
(( ${#PENDING[@]} )) || echo "avx512_pending: no pending commits; building HEAD and running the avx512 tests only"
for entry in "${PENDING[@]}"; do
  commit=${entry%%:*} part=${entry#*:}
  tree=$work/without-$commit
  rm -rf "$tree"
  git worktree prune
  git worktree add -f --detach "$tree" HEAD >/dev/null
  git show "$commit" -- kernels/ | git -C "$tree" apply -R  # the commit's kernel changes only (not its docs)
  build "$tree" "$work/without-$commit.build"
  $py scripts/compare_builds.py dump "$work/without-$commit.build" "$work/without-$commit.npz" "$work/S.rq" "$work/XL.rq"
  $py scripts/compare_builds.py diff "$work/without-$commit.npz" "$work/head.npz" || status=1
  for threads in 1 2; do
    echo "== $commit ($part should fall): A = without it, B = HEAD, DiT-XL/2, $threads thread(s)"
    $py scripts/time_builds.py "$work/without-$commit.build" "$work/head" "$work/XL.rq" --tier avx512 \
      --threads "$threads" --forwards 3 --rounds 3
  done
  echo "== $commit: DiT-S/2, 1 thread"
  $py scripts/time_builds.py "$work/without-$commit.build" "$work/head" "$work/S.rq" --tier avx512 --forwards 20 --rounds 4
  git worktree remove --force "$tree"
done
$py -m pytest -q tests/test_kernels_avx512.py || status=1
exit $status

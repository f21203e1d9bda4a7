#!/bin/sh
# Compiler launcher of the CUDA sources (CMakeLists.txt, CUDA_COMPILER_LAUNCHER):
#   sh ptxas_report.sh REPORT_DIR nvcc ARGS...
# Runs the compile command, writes ptxas's resource report (-Xptxas=-v: registers, stack frame, spill
# stores / loads of every kernel, per architecture) to REPORT_DIR/<object name>.txt for
# tests/test_cuda_build.py, and passes every other line of the compiler's stderr through unchanged.
report_dir=$1
shift
obj=unknown
prev=
for a in "$@"; do
  if [ "$prev" = "-o" ]; then obj=$a; fi
  prev=$a
done
name=$(basename "$obj")
mkdir -p "$report_dir"
err=$(mktemp)
"$@" 2>"$err"
rc=$?
grep -E '^ptxas info|^    [0-9]+ bytes stack frame|^ptxas +info' "$err" >"$report_dir/$name.txt.tmp"
mv "$report_dir/$name.txt.tmp" "$report_dir/$name.txt"
grep -v -E '^ptxas info|^    [0-9]+ bytes stack frame|^ptxas +info' "$err" >&2
rm -f "$err"
exit $rc

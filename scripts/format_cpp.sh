#!/usr/bin/env bash
# clang-format (.clang-format) over every tracked C / C++ / CUDA source: formats them in place, or with
# --check reports the files that differ and exits 1 (scripts/test.sh). Needs the clang-format of the `test`
# extra (pyproject.toml pins the version; another version formats differently).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format_cpp.sh: clang-format not found (pip install -e '.[test]')" >&2; exit 1; }
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cpp' '*.cu' '*.cuh')
if [ "${1:-}" = "--check" ]; then
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
  clang-format --dry-run --Werror "${files[@]}" 2>"$log" || {
    grep -o '^[^:]*:[0-9]*:[0-9]*: error' "$log" | cut -d: -f1 | sort -u | sed 's/^/needs clang-format: /' >&2
    echo "format_cpp.sh: run scripts/format_cpp.sh to format them" >&2
    exit 1
  }
  echo "clang-format: ${#files[@]} files formatted"
else
  clang-format -i "${files[@]}"
fi

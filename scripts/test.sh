#!/usr/bin/env bash
# The project's test command: set up (scripts/setup.sh), lint, format-check and type-check the Python code,
# format-check the C++, then
# run the test suite (the C++ was built warning-clean by the setup step). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
pyright  # [tool.pyright] in pyproject.toml: robuq/quant and the exporter, basic
scripts/format_cpp.sh --check  # clang-format (.clang-format) over the C / C++ / CUDA sources
python -m pytest -q "$@"

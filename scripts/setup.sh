#!/usr/bin/env bash
# Create .venv and install robuq (editable, C++ extension built with -Wall -Wextra -Werror) with the
# test tools. torch is installed first, pinned to the CPU build that lies on our machines' disk, so no
# later requirement can pull a CUDA build (see DEVELOPERS.md for other machines).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# the build requirements (pyproject.toml [build-system]) in the venv too, so that a rebuild after C++ edits
# can skip build isolation: ROBUQ_WERROR=ON pip install --no-build-isolation -e . (DEVELOPERS.md)
python -m pip install -q "scikit-build-core>=0.11" "pybind11>=2.12"
ROBUQ_WERROR=ON python -m pip install -q -e ".[test]"

#!/usr/bin/env bash
# Creates .venv and installs lightning-topo with its test and offline extras.
# torch is installed first from the pinned CPU wheel: resolving it through the other
# dependencies would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev,offline]"

#!/usr/bin/env bash
# Set up .venv: the CPU build of torch first (a plain `torch` would pull a multi-GB CUDA build),
# then dynmon in editable mode with the given extras (default: all). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "${DYNMON_TORCH:-torch==2.13.0}"
"${pip[@]}" -e ".[$extras]"

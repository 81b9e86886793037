#!/usr/bin/env bash
# Set up with the dev extras and run the test suite (slow tests excluded; add `-m slow` for them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
.venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The main job: set up, run the quick grokking pack with the monitor, and draw its report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
.venv/bin/dynmon run grokking --preset quick --out "${1:-runs/quickstart}" --overwrite

#!/usr/bin/env bash
# Set up with the dev extras and run the test suite (slow tests excluded; add `-m slow` for them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Debian's Chromium for the browser tests (tests/test_browser.py), when we may install it
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || true
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
.venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The GPU checks of dynmon in one command: CUDA paths, float32 and bfloat16, ratios printed.
# Run on a machine with an NVIDIA GPU after `bash scripts/setup.sh dev` (or with any Python that
# has dynmon, torch with CUDA and transformers): `bash benchmarks/gpu.sh [PYTHON]`.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
"$py" - <<'PY'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs a CUDA device"
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
echo "== CUDA tests (no host sync between looks, device tensors end to end)"
"$py" -m pytest -q -p no:cacheprovider tests/test_streamed_look.py tests/test_spectral.py
for dtype in float32 bfloat16; do
  echo "== bench_scale on CUDA, $dtype"
  "$py" benchmarks/bench_scale.py --device cuda --dtype "$dtype" --looks 6
done
echo "== bench_spectra (factored vs dense) on CUDA"
"$py" benchmarks/bench_spectra.py --device cuda
echo "== bench_look (GPT-2-small look / forward+backward) on CUDA"
"$py" benchmarks/bench_look.py --device cuda

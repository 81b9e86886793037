#!/usr/bin/env bash
# Build benchmarks/.peers-venv for bench_peers.py: the peers dynmon is compared with
# (weightwatcher, pyhessian, curvlinops-for-pytorch, devinterp), kept out of dynmon's own
# dependencies and of .venv. The CPU torch goes in first; packages that would pull torchvision
# (and with it another torch build) are installed with --no-deps, their light dependencies by
# hand. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/.peers-venv
python="${PYTHON:-python3.11}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "${DYNMON_TORCH:-torch==2.13.0}"
"${pip[@]}" --no-deps -e .                      # dynmon itself (numpy, scipy below)
"${pip[@]}" numpy scipy pandas matplotlib tqdm einops powerlaw scikit-learn pydantic \
    datasets xarray zarr transformers  # devinterp's sampler (none of them pulls torch)
"${pip[@]}" --no-deps weightwatcher pyhessian curvlinops-for-pytorch devinterp
# the peers' own remaining light imports, found by importing them
"${pip[@]}" --no-deps einconv backpack-for-pytorch unfoldNd seaborn safetensors linear_operator jaxtyping wadler-lindig
"$venv/bin/python" - <<'PY'
import importlib, torch
print("torch", torch.__version__)
for name in ("weightwatcher", "pyhessian", "curvlinops", "devinterp"):
    try:
        importlib.import_module(name)
        print(name, "ok")
    except Exception as exc:  # report, so the missing dependency can be added above
        print(name, "FAILED:", repr(exc))
PY

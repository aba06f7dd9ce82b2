#!/usr/bin/env bash
# The GPU checks that run without RAPIDS, in one go (under 7 minutes), on a lent GPU machine whose Python
# has CUDA, CuPy, pandas and scikit-learn but no Dask, dask-cuda, RMM, Optuna or pydantic and no network.
# What it checks: bench/gpu_check.py's docstring. Results: $OUT/gpu_check.json and the printed PASS/FAIL
# lines. Exit status 0 when every check passed.
#
# The missing packages travel as wheels in .whl/ (git-ignored; Python 3.12, x86-64), fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     dask==2026.7.1 distributed==2026.7.1 "dask-cuda==26.10.*" "rmm-cu13==26.10.*" "librmm-cu13==26.10.*" \
#     "rapids-logger==0.3.*" optuna==5.1.0 colorlog pydantic==2.14.4 pydantic_core==2.50.5 annotated-types \
#     typing-inspection tornado tblib zict partd locket pytz
# and, installed only where the machine's own cuda-core lacks cuda.core.Device (dask-cuda imports it):
#     ... -d .whl/optional "cuda-core>=0.5.1,<1"
# (RMM for CUDA 13: the machine's driver is CUDA 13; the RAPIDS image the project ships is CUDA 12.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
  if ! python3 -c "from cuda.core import Device" 2>/dev/null && [ -d .whl/optional ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/optional/*.whl || exit 1
  fi
else
  export PYTHONPATH="$PWD"
fi
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
  python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "pandas", "sklearn", "cupy", "rmm", "dask", "distributed", "dask_cuda", "optuna", "pydantic", "cuda.core"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
EOF
} 2>&1 | tee "$OUT/environment.txt"
timeout 390 python3 bench/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"

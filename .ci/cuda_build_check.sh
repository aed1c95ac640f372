#!/usr/bin/env bash
# Build the CUDA extension fastgpt._C and check that it registers every op.
#
# Uses its own venv (.venv-cuda in the repo root, gitignored) with a CUDA build of torch, builds
# out of tree (setup.py build_ext --build-lib into a temp dir), so no fastgpt/_C*.so is left in
# the working tree for the CPU venv's tests to import against a different torch. Exits 0 with a
# message when nvcc is missing; non-zero when the build or the check fails.
#
# Environment: CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"),
# MAX_JOBS (default 2), FASTGPT_CUDA_TORCH (default torch==2.14.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
if [[ ! -x "$NVCC" ]]; then
  echo "cuda_build_check: skipped: no nvcc at $NVCC (set CUDA_HOME to build the CUDA extension)"
  exit 0
fi

VENV="$ROOT/.venv-cuda"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "cuda_build_check: creating $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel ninja
  "$VENV/bin/pip" install -q "${FASTGPT_CUDA_TORCH:-torch==2.14.1}" numpy
fi
# importing fastgpt (for the registration check) reads configs with PyYAML
"$VENV/bin/python" -c "import yaml" 2>/dev/null || "$VENV/bin/pip" install -q pyyaml

OUT="$(mktemp -d "${TMPDIR:-/tmp}/fastgpt-cuda-build.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

echo "cuda_build_check: building fastgpt._C with $("$NVCC" --version | tail -1) into $OUT"
start=$(date +%s)
(
  cd "$ROOT"
  FASTGPT_FORCE_CUDA_BUILD=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
    "$VENV/bin/python" setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp"
)
echo "cuda_build_check: built in $(( $(date +%s) - start )) s"

# Import the built module as fastgpt._C without installing it: put its folder on the package path.
cd "$OUT"
PYTHONPATH="$ROOT" "$VENV/bin/python" - "$OUT/lib/fastgpt" <<'PY'
import sys

import fastgpt

fastgpt.__path__.append(sys.argv[1])
import torch  # noqa: E402

import fastgpt._C  # noqa: E402,F401
from fastgpt.ops.cuda import OPS  # noqa: E402

found = [op for op in OPS if hasattr(torch.ops.fastgpt, op)]
for op in found:
    print(f"cuda_build_check: torch.ops.fastgpt.{op}: {getattr(torch.ops.fastgpt, op).default._schema}")
missing = sorted(set(OPS) - set(found))
if missing:
    sys.exit(f"cuda_build_check: FAILED: fastgpt._C does not register {missing}")
print(f"cuda_build_check: OK ({len(found)} ops, torch {torch.__version__}, CUDA {torch.version.cuda})")
PY

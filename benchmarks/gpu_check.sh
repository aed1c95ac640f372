#!/usr/bin/env bash
# Everything a first session on a lent GPU (H100/H200, sm_90) should run, in one call under
# 9 minutes, without network or `datasets`:
#   1. build fastgpt._C (FASTGPT_FORCE_CUDA_BUILD=1, pip install --no-build-isolation -e . into
#      the python that has torch)
#   2. the op tests, with counts run/skipped (pytest tests/ops -q -ra)
#   3. compute-sanitizer memcheck, racecheck and synccheck over small cases (FASTGPT_SANITIZE=1)
#   4. the emulator's self-test kernel (csrc/emu/selftest.cu) compiled with nvcc and run on the
#      GPU, compared with the exact integer product and with the emulator's own result, so a
#      misreading of the PTX fragment layouts shared by the emulator and the kernels cannot hide
#   5. python benchmarks/run_all.py under a time budget
# Each step's output goes to $OUT/<step>.log and one line per step (exit status, seconds) to
# $OUT/summary.txt; a failed step does not stop the later ones. Exit status: 0 when every step
# passed, 1 otherwise.
#
# Usage: bash benchmarks/gpu_check.sh      (from anywhere; OUT defaults to ./gpu_check_out)
# Environment: OUT, PYTHON (default python3), CUDA_HOME (default /usr/local/cuda),
# TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default: the core count),
# GPU_CHECK_BENCH_SECONDS (run_all's --total, default 70).
# Every step has a time limit; typical total on one H100 ~7 minutes (estimate: not yet run on a GPU).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${OUT:-$PWD/gpu_check_out}" && cd "${OUT:-$PWD/gpu_check_out}" && pwd)"
PY="${PYTHON:-python3}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export FASTGPT_CACHE_DIR="$OUT/cache"
BENCH_SECONDS="${GPU_CHECK_BENCH_SECONDS:-70}"
FAILED=0
cd "$ROOT"
: > "$OUT/summary.txt"

say() { echo "gpu_check: $*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS CMD...: run CMD with a time limit, its output in $OUT/NAME.log
step() {
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local note=""
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then note=" (timed out after ${limit} s)"; fi
  say "$name: exit $rc in $((SECONDS - start)) s$note; last line: $(tail -n 1 "$OUT/$name.log")"
  if [[ $rc -ne 0 ]]; then FAILED=1; fi
  return $rc
}

{
  nvidia-smi
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -n 1
  git -C "$ROOT" rev-parse HEAD
} > "$OUT/machine.txt" 2>&1
say "machine: $(grep -m1 '^torch' "$OUT/machine.txt")"

# 1. the real extension
step build 200 env FASTGPT_FORCE_CUDA_BUILD=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
step registers 60 "$PY" -c "import fastgpt.ops.cuda as c, torch; print([getattr(torch.ops.fastgpt, o) for o in c.OPS])"

# 2. the op tests (the out-of-tree rebuild and the CPU-emulator mutation check are left out: the
# build step above built the extension, and the mutation check needs no GPU)
step op_tests 120 "$PY" -m pytest tests/ops -q -ra -p no:cacheprovider \
  --ignore=tests/ops/test_cuda_mutations.py -k "not builds_and_registers"
say "op tests: $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/op_tests.log" | tail -n 1)"

# 3. compute-sanitizer over small cases (FASTGPT_SANITIZE=1 drops the long sequences)
SAN="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
SMALL="(flash_attention_matches_reference and torch.float16 and (64-17 or 128-113))"
SMALL+=" or (rms_norm_matches_reference and torch.bfloat16 and (1000 or 4096-weight))"
for tool in memcheck racecheck synccheck; do
  step "sanitizer_$tool" 60 env FASTGPT_SANITIZE=1 "$SAN" --tool "$tool" --error-exitcode 1 \
    "$PY" -m pytest -x -q -p no:cacheprovider tests/ops/test_cuda_extension.py -k "$SMALL"
done

# 4. the emulator's self-test kernel on the GPU against the exact product and the emulator
step selftest_nvcc 60 nvcc -O2 -std=c++17 -arch=sm_90 -I csrc csrc/emu/selftest.cu csrc/emu/selftest_main.cu \
  -o "$OUT/selftest"
step selftest_gpu 20 "$OUT/selftest"
step selftest_compare 150 env FASTGPT_CUDA_EMULATE=1 "$PY" - "$OUT/selftest_gpu.log" <<'PY'
"""Compare the GPU's self-test results with the exact product and with the emulator's."""
import sys

import torch

i = torch.arange(16).unsqueeze(1)
j = torch.arange(16).unsqueeze(0)
A = ((7 * i + 3 * j) % 11 - 5).float()
B = ((5 * i + 2 * j) % 9 - 4).float()
rows = {}
for line in open(sys.argv[1]):
    name, mode, *vals = line.split()
    rows[(name, int(mode))] = torch.tensor([float(v) for v in vals]).reshape(16, 16)
assert len(rows) == 8, f"expected 8 result lines (2 dtypes x 4 modes), got {len(rows)}"
try:
    import fastgpt.ops.cuda  # noqa: F401  (FASTGPT_CUDA_EMULATE=1: builds and loads the emulator)

    emulator = torch.ops.fastgpt_emu.mma_selftest
except Exception as exc:  # the comparison with the exact product still counts
    print(f"emulator unavailable here ({exc}); comparing the GPU with the exact product only")
    emulator = None
bad = 0
for (name, mode), gpu in sorted(rows.items()):
    exact = (A * (i < 12) if mode == 3 else A) @ B
    ok = torch.equal(gpu, exact)
    line = f"{name} mode {mode}: GPU {'==' if ok else '!='} exact product"
    if emulator is not None:
        emu = emulator(A.to(getattr(torch, name)), B.to(getattr(torch, name)), mode)
        same = torch.equal(emu, gpu)
        ok = ok and same
        line += f", emulator {'==' if same else '!='} GPU"
    print(line)
    bad += not ok
sys.exit(f"{bad} self-test results differ" if bad else 0)
PY

# 5. the benchmarks, within a time budget
step benchmarks $((BENCH_SECONDS + 60)) "$PY" benchmarks/run_all.py --total "$BENCH_SECONDS" --out "$OUT/bench"

say "done: $([[ $FAILED -eq 0 ]] && echo 'every step passed' || echo 'some step failed') (logs in $OUT)"
exit $FAILED

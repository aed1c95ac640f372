"""What the compiler makes of our kernels, without a GPU: registers, local memory (spills), shared
memory and tensor-core instructions of every Triton kernel configuration, and of every CUDA kernel
in a built extension, for one GPU architecture.

    python benchmarks/resources.py [--arch 90] [--quick] [--cuda-so fastgpt/_C*.so] [--out DIR]

Triton compiles each kernel ahead of time for ``GPUTarget("cuda", arch, 32)`` with the ptxas it
ships, so this runs on a machine without a GPU; cuobjdump (shipped with Triton's NVIDIA backend,
or under CUDA_HOME/bin) reads the cubins. Launch arguments are specialized as the launcher does
at run time: unit head-dim strides as constants, pointers and other strides 16-divisible.

Columns: registers per thread, local memory per thread in bytes (spills and stack), shared
memory per block in bytes (for the CUDA kernels only the static part: their tiles are dynamic,
sized in csrc/), and the HGMMA (wgmma, sm_90) and HMMA (mma.sync) instructions in the SASS.
Flags: ``smem`` when a configuration needs more shared memory than the architecture gives a block
(the autotuner would have to skip it), ``spill`` when ptxas used local memory.
The numbers are this machine's Triton version's (the GPU machine may run another).
Writes ``resources_sm<arch>_triton<version>.json`` under --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, never interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default before 3.10 (its 3.9 warns)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastgpt.ops.triton import flash_attention, fused_adamw, rms_norm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMEM_PER_BLOCK = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # bytes, opt-in maximum per block
POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
TL_DTYPE = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}


def _source(fn: Any, pointers: dict[str, str], floats: tuple[str, ...], constexprs: dict[str, Any]) -> ASTSource:
    """fn's launch signature: the named pointers, fp32 scalars, int32 for the rest; unit strides
    (``stride_*d``) become constants and other strides and pointers 16-divisible, as at run time."""
    signature, consts, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name], consts[name] = "constexpr", constexprs[name]
        elif name in pointers:
            signature[name], attrs[(i,)] = pointers[name], [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        elif name.startswith("stride") and name.endswith("d"):
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if name.startswith("stride"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)


def flash_jobs(quick: bool) -> list[dict[str, Any]]:
    """Every autotuning candidate of the three attention kernels, per head dim, dtype and mask."""
    jobs = []
    for kernel in ("fwd", "dkdv", "dq"):
        for dtype in ("fp16", "bf16", "fp32"):
            table = flash_attention._CONFIGS_FP32 if dtype == "fp32" else flash_attention._CONFIGS
            for head_dim, configs in table[kernel].items():
                for causal in (True, False):
                    for block_m, block_n, warps, stages in configs:
                        jobs.append(dict(op="flash_attention", kernel=kernel, size=head_dim, dtype=dtype,
                                         causal=causal, config=(block_m, block_n, warps, stages)))
                        if quick:
                            return jobs
    return jobs


def rms_norm_jobs() -> list[dict[str, Any]]:
    return [dict(op="rms_norm", kernel=kernel, size=n, dtype=dtype, causal=None, config=rms_norm._blocking(n))
            for kernel in ("fwd", "bwd") for n in (1024, 4096, 8192, 16384) for dtype in ("fp16", "bf16", "fp32")]


def adamw_jobs() -> list[dict[str, Any]]:
    return [dict(op="adamw", kernel="step", size=fused_adamw._BLOCK, dtype=dtype, causal=None,
                 config=(fused_adamw._BLOCK, 8))
            for dtype in ("fp32", "bf16", "fp16")]


def _compile(job: dict[str, Any], arch: int) -> Any:
    dtype, op, kernel = job["dtype"], job["op"], job["kernel"]
    ptr = POINTER[dtype]
    if op == "flash_attention":
        block_m, block_n, warps, stages = job["config"]
        fn = flash_attention._KERNELS[kernel]
        names = {"fwd": ("Q", "K", "V", "Out"), "dkdv": ("Q", "K", "V", "DOut", "DK", "DV"),
                 "dq": ("Q", "K", "V", "DOut", "DQ")}[kernel]
        pointers = {**dict.fromkeys(names, ptr), "Lse": "*fp32", "Delta": "*fp32"}
        consts = dict(GROUP=1, HEAD_DIM=job["size"], BLOCK_D=job["size"], CAUSAL=job["causal"],
                      DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", BLOCK_M=block_m, BLOCK_N=block_n)
        src = _source(fn, pointers, ("qk_scale", "sm_scale"), consts)
    elif op == "rms_norm":
        block, single, warps = job["config"]
        stages = 3
        if kernel == "fwd":
            fn, names = rms_norm._rms_norm_fwd_kernel, ("X", "R", "W", "Y", "H")
            consts = dict(BLOCK_N=block, SINGLE_BLOCK=single, HAS_WEIGHT=True, HAS_RESIDUAL=True)
            pointers = {**dict.fromkeys(names, ptr), "Rstd": "*fp32"}
        else:
            fn, names = rms_norm._rms_norm_bwd_kernel, ("DY", "H", "W", "DH", "DX")
            consts = dict(BLOCK_N=block, SINGLE_BLOCK=single, HAS_WEIGHT=True, HAS_DH=True)
            pointers = {**dict.fromkeys(names, ptr), "Rstd": "*fp32", "DWPartial": "*fp32"}
        src = _source(fn, pointers, ("eps",), consts)
    else:
        block, warps = job["config"]
        stages = 3
        pointers = {"Ptrs": "*i64", "Numels": "*i64", "ChunkTensor": "*i32", "ChunkStart": "*i64", "Lr": "*fp32"}
        floats = ("lr", "one_minus_beta1", "one_minus_beta2", "beta2", "log_beta1", "log_beta2", "eps", "weight_decay")
        consts = dict(P_DTYPE=TL_DTYPE[dtype], G_DTYPE=TL_DTYPE[dtype], LR_IS_TENSOR=True, MAXIMIZE=False, BLOCK=block)
        src = _source(fused_adamw._fused_adamw_kernel, pointers, floats, consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


def cuobjdump() -> str:
    """The cuobjdump that ships with Triton's NVIDIA backend, else CUDA_HOME's."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.exists():
        return str(bundled)
    return str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump")


def inspect_cubin(path: str) -> dict[str, dict[str, int]]:
    """Per kernel: REG, STACK, LOCAL (bytes/thread) from -res-usage, and tensor-core SASS counts."""
    usage = subprocess.run([cuobjdump(), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    kernels: dict[str, dict[str, int]] = {}
    for name, fields in re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage):
        kernels[name] = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", fields)}
    sass = subprocess.run([cuobjdump(), "-sass", path], capture_output=True, text=True, check=True).stdout
    current = None
    for line in sass.splitlines():
        match = re.match(r"\s*Function : (\S+)", line)
        if match:
            current = kernels.setdefault(match.group(1), {})
            current.update(hgmma=0, hmma=0)
        elif current is not None:
            current["hgmma"] += "HGMMA." in line
            current["hmma"] += "HMMA." in line
    return kernels


def measure(job: dict[str, Any], arch: int) -> dict[str, Any]:
    """Compile one job and read its cubin (runs in a worker process)."""
    try:
        compiled = _compile(job, arch)
    except Exception as exc:  # a configuration the compiler rejects is a finding, not a crash
        return {**job, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        (usage,) = inspect_cubin(f.name).values()
    return {**job, "regs": usage.get("reg"), "local": usage.get("local", 0) + usage.get("stack", 0),
            "smem": compiled.metadata.shared, "hgmma": usage.get("hgmma", 0), "hmma": usage.get("hmma", 0)}


def cuda_rows(so: Path) -> list[dict[str, Any]]:
    """One row per kernel in the built extension (every architecture it was built for)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # cuobjdump -xelf extracts one cubin per architecture
        subprocess.run([cuobjdump(), "-xelf", "all", str(so.resolve())], cwd=tmp, capture_output=True, check=True)
        for cubin in sorted(Path(tmp).glob("*.cubin")):
            arch = re.search(r"sm_(\d+)", cubin.name)
            for name, usage in inspect_cubin(str(cubin)).items():
                rows.append(dict(op="cuda", kernel=_short(name), arch=int(arch.group(1)) if arch else None,
                                 regs=usage.get("reg"), local=usage.get("local", 0) + usage.get("stack", 0),
                                 smem=usage.get("shared", 0), hgmma=usage.get("hgmma", 0), hmma=usage.get("hmma", 0)))
    return rows


def _short(mangled: str) -> str:
    """The kernel's name and template arguments (c++filt, when there is one), for the table."""
    try:
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return mangled
    name = re.sub(r"^void |\([^()]*\)$", "", name)  # drop the return type and the parameter list
    return name.replace("fastgpt::", "").replace("(anonymous namespace)::", "")


def flags(row: dict[str, Any], arch: int) -> str:
    out = []
    if row.get("error"):
        out.append("error")
    if row.get("smem") and row["smem"] > SMEM_PER_BLOCK.get(arch, 232448):
        out.append("smem")
    if row.get("local"):
        out.append("spill")
    return ",".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 = A100, 90 = H100)")
    parser.add_argument("--quick", action="store_true", help="one attention configuration only (CI)")
    parser.add_argument("--cuda-so", type=Path, help="a built fastgpt/_C*.so to inspect as well")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.cuda_so is not None and not args.cuda_so.is_file():
        print(f"error: --cuda-so {args.cuda_so} is not a file", file=sys.stderr)
        return 2
    jobs = flash_jobs(args.quick) + ([] if args.quick else rms_norm_jobs() + adamw_jobs())
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(measure, jobs, [args.arch] * len(jobs)))
    if args.cuda_so is not None:
        rows += cuda_rows(args.cuda_so)
    print(f"{'op':<16}{'kernel':<52}{'size':>6} {'dtype':<6}{'causal':<7}{'config':<18}"
          f"{'regs':>5}{'local':>6}{'smem':>8}{'hgmma':>6}{'hmma':>6}  flags")
    for row in rows:
        causal = "" if row.get("causal") is None else str(row["causal"])
        print(f"{row['op']:<16}{row['kernel']:<52}{row.get('size', row.get('arch', '')) or '':>6} "
              f"{row.get('dtype', ''):<6}{causal:<7}{str(row.get('config', '')):<18}{row.get('regs') or '-':>5}"
              f"{row.get('local', '-'):>6}{row.get('smem', '-'):>8}{row.get('hgmma', '-'):>6}{row.get('hmma', '-'):>6}"
              f"  {flags(row, args.arch)} {row.get('error', '')}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {"arch": args.arch, "triton": triton.__version__, "commit": commit.stdout.strip() or None,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
              "rows": [{**row, "flags": flags(row, args.arch)} for row in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"resources_sm{args.arch}_triton{triton.__version__}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

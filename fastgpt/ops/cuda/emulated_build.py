"""The emulated build of csrc/: the CUDA kernels compiled as host C++ to run on CPU tensors.

With ``FASTGPT_CUDA_EMULATE=1``, ``backend="cuda"`` runs the very sources in ``csrc/`` on CPU
tensors: g++ compiles them with the shim headers of ``csrc/emu/include`` first on the include
path (``cuda_fp16.h``, ``cuda_bf16.h``, ``cuda_runtime_api.h``, ``c10/cuda/*``) and the
emulator's runtime (``csrc/emu/``: fibers, barriers, warp collectives, the PTX of
``csrc/common/mma.cuh``) into one shared library registering the same ``torch.ops.fastgpt.*`` ops
on the CPU dispatch key, plus the emulator's own test ops under ``torch.ops.fastgpt_emu``.

The build runs on first use and is cached under ``FASTGPT_CACHE_DIR`` (default
``~/.cache/fastgpt``): every object file by a hash of its translation unit, of the csrc/ headers
it includes, of the emulator's files, of the compiler flags, g++ version and torch version; the
library by the hashes of its objects. An edit to csrc/ therefore rebuilds exactly the translation
units that see it, and nothing is ever run against a stale build. A file lock serializes builds
of one cache, and every file appears under its final name only when complete (``os.replace``).

Before compiling, each ``.cu``/``.cuh`` file is rewritten into a build folder (never in csrc/):
``kernel<<<grid, block, smem, stream>>>(args)`` becomes ``fastgpt_emu::launch("kernel", kernel,
grid, block, smem, stream)(args)``, a static ``__shared__`` declaration a reference to the
block's window for it, ``extern __shared__ T name[]`` a pointer to the block's dynamic window.
Lines are kept, and ``#line`` points diagnostics at the original file.

Environment: ``FASTGPT_CUDA_EMULATE_CSRC`` builds another copy of csrc/ (the mutation check),
``CXX`` the compiler (default g++), ``MAX_JOBS`` parallel compiles (default: the core count).
``FASTGPT_CUDA_EMULATE_SCHEDULE`` (read by the emulator at every launch) picks the schedule.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from fastgpt.cache_dir import cache_dir as cache_root

TRANSFORM_VERSION = "1"
# -fno-strict-aliasing: the kernels reinterpret shared and global memory freely, as nvcc allows
_FLAGS = tuple(os.environ.get("FASTGPT_CUDA_EMULATE_CXXFLAGS", "-O2").split()) + (
    "-std=c++20", "-fPIC", "-pthread", "-fno-strict-aliasing", "-Wno-unknown-pragmas")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_LAUNCH = re.compile(r"^(\s*)(\S.*?)<<<(.+?)>>>\((.*)$")
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(.+?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"(?<!extern )__shared__\s+(.+?)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;")


def enabled() -> bool:
    """True when ``FASTGPT_CUDA_EMULATE=1``: ``backend="cuda"`` runs the emulated build on CPU."""
    return os.environ.get("FASTGPT_CUDA_EMULATE", "0") == "1"


def csrc_dir() -> Path:
    """The csrc/ tree to build: FASTGPT_CUDA_EMULATE_CSRC, the checkout's csrc/, or the installed copy."""
    override = os.environ.get("FASTGPT_CUDA_EMULATE_CSRC")
    if override:
        path = Path(override)
        if not (path / "ops.cpp").is_file():
            raise FileNotFoundError(f"FASTGPT_CUDA_EMULATE_CSRC={override} has no ops.cpp (name a copy of csrc/)")
        return path
    package = Path(__file__).resolve().parents[2]  # fastgpt/
    for path in (package.parent / "csrc", package / "_csrc"):
        if (path / "ops.cpp").is_file():
            return path
    raise FileNotFoundError(f"csrc/ not found next to {package} nor installed as {package / '_csrc'}")


def cache_dir() -> Path:
    return cache_root("cuda-emu")


def transform(text: str, origin: str) -> str:
    """CUDA source -> host C++ for the emulator: launches, shared memory, a #line to the origin."""
    out = []
    for line in text.split("\n"):
        if line.lstrip().startswith(("//", "*", "/*")):
            out.append(line)
            continue
        m = _LAUNCH.match(line)
        if m:
            indent, kernel, config, rest = m.groups()
            line = f'{indent}::fastgpt_emu::launch("{kernel}", {kernel}, {config})({rest}'
        line = _DYNAMIC_SHARED.sub(r"\1* \2 = static_cast<\1*>(::fastgpt_emu::dynamic_shared());", line)
        line = _STATIC_SHARED.sub(_static_shared, line)
        out.append(line)
    return f'#line 1 "{origin}"\n' + "\n".join(out)


def _static_shared(m: re.Match) -> str:
    ty, name, dims = m.groups()
    t, key = f"fastgpt_emu_{name}_t", f"fastgpt_emu_{name}_key"
    return (
        f"using {t} = {ty}{dims}; static char {key}; "
        f"{t}& {name} = *static_cast<{t}*>(::fastgpt_emu::static_shared(&{key}, sizeof({t})));"
    )


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


@functools.cache
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]


def _flags(src: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [*_FLAGS, "-DFASTGPT_CUDA_EMULATE", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += [f"-I{src / 'emu' / 'include'}", f"-I{src}"]
    for inc in [*include_paths(), sysconfig.get_paths()["include"]]:
        flags += ["-isystem", inc]
    return flags


def _read_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".cpp", ".cu", ".cuh", ".h")
    }


def _closure(rel: str, files: dict[str, str]) -> list[str]:
    """``rel`` and every csrc file it includes with "...", transitively (sorted)."""
    seen: set[str] = set()
    todo = [rel]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        here = Path(cur).parent
        for inc in _INCLUDE.findall(files[cur]):
            for cand in ((here / inc).as_posix(), inc, f"emu/include/{inc}"):
                if cand in files:
                    todo.append(cand)
                    break
    return sorted(seen)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def build(csrc: Path | None = None) -> Path:
    """Build (or find in the cache) the emulated library of ``csrc`` and return its path."""
    csrc = csrc_dir() if csrc is None else csrc
    files = _read_tree(csrc)
    # emu/*_main.cu are standalone programs for a real GPU (benchmarks/gpu_check.sh)
    sources = sorted(r for r in files if r.endswith((".cpp", ".cu")) and not r.endswith("_main.cu"))
    cxx = _compiler()
    root = cache_dir()
    common = _sha(TRANSFORM_VERSION, torch.__version__, sys.version, _compiler_version(cxx), *_FLAGS,
                  *(f"{r}\n{t}" for r, t in files.items() if r.startswith("emu/")))
    keys = {r: _sha(common, r, *(f"{d}\n{files[d]}" for d in _closure(r, files))) for r in sources}
    lib = root / "lib" / f"fastgpt_emu_{_sha(*keys.values())}.so"
    if lib.is_file():
        return lib
    with _locked(root / "build.lock"):
        if lib.is_file():
            return lib
        mirror = root / "src" / lib.stem
        for rel, text in files.items():
            dst = mirror / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            cuda = rel.endswith((".cu", ".cuh"))
            dst.write_text(transform(text, str(csrc / rel)) if cuda else f'#line 1 "{csrc / rel}"\n{text}')
        flags = _flags(mirror)
        objdir = root / "obj"
        objdir.mkdir(parents=True, exist_ok=True)

        def compile_one(rel: str) -> Path:
            obj = objdir / f"{keys[rel]}.o"
            if obj.is_file():
                return obj
            src = mirror / rel
            extra = ["-x", "c++", "-include", "emu/prelude.h"] if rel.endswith(".cu") else []
            with tempfile.NamedTemporaryFile(dir=objdir, suffix=".o.tmp", delete=False) as tmp:
                pass
            cmd = [cxx, *flags, *extra, "-c", str(src), "-o", tmp.name]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                os.unlink(tmp.name)
                raise RuntimeError(f"compiling {csrc / rel} for the CUDA emulator failed:\n{res.stderr[-4000:]}")
            os.replace(tmp.name, obj)
            return obj

        jobs = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            objs = list(pool.map(compile_one, sources))
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp_lib = lib.with_suffix(".so.tmp")
        torch_lib = Path(torch.__file__).parent / "lib"
        cmd = [cxx, "-shared", "-pthread", *map(str, objs), f"-L{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch",
               "-o", str(tmp_lib)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"linking the CUDA emulator failed:\n{res.stderr[-4000:]}")
        os.replace(tmp_lib, lib)
    return lib


_LOADED: list[Path] = []


@functools.cache
def load() -> Path:
    """Build if needed and load the emulated library (registers torch.ops.fastgpt.* on CPU)."""
    lib = build()
    torch.ops.load_library(str(lib))
    _LOADED.append(lib)
    return lib


def loaded_library() -> Path | None:
    """The emulated library this process loaded (its name holds the hash of its objects), or None."""
    return _LOADED[-1] if _LOADED else None


@functools.cache
def error() -> str | None:
    """Why the emulated build cannot be used (None once it is loaded)."""
    try:
        load()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"the emulated CUDA build (FASTGPT_CUDA_EMULATE=1) is unusable: {exc}"
    return None

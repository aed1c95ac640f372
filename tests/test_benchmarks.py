"""The benchmark scripts run (--quick: tiny sizes, reference + Triton-interpreter providers on CPU)
and write well-formed JSON, CSV and PNG files; summary.py merges them. A crash of one of our
providers (triton, cuda) fails the run; only "cannot run here" is a note.

The four scripts start together as subprocesses (each pays for its own torch import, so running
them side by side keeps the whole file near the slowest one).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgpt.ops import BackendUnavailable

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
BENCHES = ("attn", "rms_norm", "adamw", "train")
SUMMARY_KEYS = {
    "attn": {"attn_fwd_bwd_vs_sdpa", "attn_fwd_fraction_of_matmul_peak"},
    "rms_norm": {"rms_norm_fraction_of_bandwidth", "rms_norm_vs_torch_compile"},
    "adamw": {"adamw_fraction_of_bandwidth", "adamw_vs_torch_fused"},
    "train": {"train_mfu", "train_vs_torch_compile"},
}
ROW_FIELDS = {"bench", "provider", "ours", "mode", "ms", "value", "unit", "fraction_of_ceiling", "vs_best_baseline"}
STAMP_FIELDS = {"device", "driver", "torch", "triton", "cuda", "commit", "date", "rows", "summary", "ceilings",
                "skipped", "failures", "quick"}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    out = tmp_path_factory.mktemp("bench")
    logs = tmp_path_factory.mktemp("bench-logs")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {}
    for name in BENCHES:
        # output to files, not pipes: four children must never block on a full pipe
        with open(logs / f"{name}.log", "w") as log:
            cmd = [sys.executable, str(BENCH_DIR / f"{name}.py"), "--quick", "--out", str(out)]
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    done = {}
    for name, proc in procs.items():
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, (logs / f"{name}.log").read_text(), "")
    return out, done


def _only(out: Path, pattern: str) -> Path:
    found = sorted(out.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {out}, found {[p.name for p in found]}"
    return found[0]


@pytest.mark.parametrize("name", BENCHES)
def test_quick_run_writes_results(quick_runs, name: str) -> None:
    out, runs = quick_runs
    run = runs[name]
    assert run.returncode == 0, f"{name}.py --quick failed:\n{run.stdout[-4000:]}"
    doc = json.loads(_only(out, f"{name}-*-quick.json").read_text())
    assert STAMP_FIELDS <= doc.keys()
    assert doc["bench"] == name and doc["quick"] is True
    assert doc["failures"] == []
    assert doc["ceilings"]["matmul_tflops"] > 0 and doc["ceilings"]["copy_gbps"] > 0
    assert set(doc["summary"]) == SUMMARY_KEYS[name]
    rows = doc["rows"]
    assert rows, f"{name}: no measurements; skipped: {doc['skipped']}"
    for row in rows:
        assert ROW_FIELDS <= row.keys(), f"{name}: row lacks {ROW_FIELDS - row.keys()}: {row}"
        assert row["bench"] == name and row["ms"] > 0 and row["value"] > 0
    providers = {r["provider"] for r in rows}
    # the eager reference (or the stock-PyTorch baseline for train) always runs
    assert providers & {"reference", "baseline"}, providers
    with open(_only(out, f"{name}-*-quick.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and ROW_FIELDS <= set(table[0])
    assert _only(out, f"{name}-*-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_runs_time_the_triton_interpreter(quick_runs) -> None:
    """Without CUDA, --quick runs our Triton kernels in the interpreter (when Triton is installed)."""
    pytest.importorskip("triton")
    out, runs = quick_runs
    for name in BENCHES:
        matches = list(out.glob(f"{name}-*-quick.json"))
        if runs[name].returncode or not matches:
            pytest.fail(f"{name}.py --quick did not write its results")
        doc = json.loads(matches[0].read_text())
        ours = [r for r in doc["rows"] if r["provider"] == "triton"]
        assert ours or any(s["provider"] == "triton" for s in doc["skipped"]), f"{name}: triton neither ran nor noted"
        for note in doc["skipped"]:  # a note on one of ours says only that it cannot run here
            if note["provider"].split("-")[0] in ("triton", "cuda"):
                assert not note["reason"].startswith(("RuntimeError", "InterpreterError", "TypeError")), note


def test_dispatch_measures_auto_beside_a_direct_call(tmp_path: Path) -> None:
    # its choices go to tmp_path; the emulator stays out (its build would be redone there)
    env = dict(os.environ, FASTGPT_CACHE_DIR=str(tmp_path), FASTGPT_CUDA_EMULATE="0")
    res = subprocess.run([sys.executable, str(BENCH_DIR / "dispatch.py"), "--calls", "3", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(_only(tmp_path, "dispatch-*.json").read_text())
    rows = {(r["op"].split()[0], r["provider"]): r for r in doc["rows"]}
    assert set(rows) == {(op, p) for op in ("rms_norm", "flash_attention") for p in ("direct", "torch", "auto")}
    assert all(r["us_per_call"] > 0 for r in rows.values())
    assert rows["rms_norm", "direct"]["vs_direct"] == 1.0
    assert len(doc["choices"]) == 2  # auto measured both ops (FASTGPT_AUTO_SLOW on CPU)
    bad = subprocess.run([sys.executable, str(BENCH_DIR / "dispatch.py"), "--calls", "0", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: argument --calls: must be a whole number of at least 1" in bad.stderr


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import common

    return common


def _env(common, tmp_path: Path):
    return common.Env(device=torch.device("cpu"), quick=True, full=False, compile=False, out=tmp_path,
                      interpreted=True)


def _raise(exc: Exception):
    def fn():
        raise exc

    return fn


def test_a_crash_of_our_provider_fails_the_run(common, tmp_path: Path, capsys) -> None:
    env = _env(common, tmp_path)
    for provider in ("triton", "cuda", "triton-eager"):
        assert common.guarded(env, provider, "T=24", _raise(RuntimeError("illegal memory access"))) is None
    assert [f["provider"] for f in env.failures] == ["triton", "cuda", "triton-eager"] and not env.skipped
    with pytest.raises(SystemExit) as stop:
        common.exit_if_failed(env)
    assert stop.value.code == 1
    assert "our providers crashed: triton at T=24, cuda at T=24" in capsys.readouterr().err


def test_cannot_run_here_is_a_note(common, tmp_path: Path) -> None:
    env = _env(common, tmp_path)
    notes = [
        ("cuda", BackendUnavailable("backend 'cuda' is unavailable: the CUDA extension fastgpt._C is not built")),
        ("cuda", ValueError("flash_attention (cuda): dtype torch.float32 is not supported (float16, bfloat16)")),
        ("triton", ValueError("fused_adamw_ (triton): params[0] has dtype torch.float64")),
        ("reference-compile", RuntimeError("a baseline's own failure")),
        ("liger", ImportError("No module named 'liger_kernel'")),
    ]
    for provider, exc in notes:
        assert common.guarded(env, provider, "T=24", _raise(exc)) is None
    assert env.failures == [] and len(env.skipped) == len(notes)
    common.exit_if_failed(env)  # returns
    # a ValueError that is not our kernels' refusal is a crash
    common.guarded(env, "triton", "T=24", _raise(ValueError("operands could not be broadcast together")))
    assert len(env.failures) == 1


def test_summary_merges_latest_results(quick_runs) -> None:
    out, _ = quick_runs
    res = subprocess.run([sys.executable, str(BENCH_DIR / "summary.py"), "--results", str(out), "--include-quick"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    merged = json.loads((out / "summary.json").read_text())
    assert set(merged["keys"]) == set().union(*SUMMARY_KEYS.values())
    assert set(merged["sources"]) == set(BENCHES)
    assert "| key | value | target | met? |" in res.stdout
    if not torch.cuda.is_available():  # the targets are GPU numbers: CPU runs are not judged
        assert all(entry["met"] is None for entry in merged["keys"].values())
        assert "The targets apply to GPUs" in res.stdout and "| no |" not in res.stdout
    # without --include-quick the quick runs are ignored: nothing measured
    res = subprocess.run([sys.executable, str(BENCH_DIR / "summary.py"), "--results", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and json.loads((out / "summary.json").read_text())["sources"] == {}


def test_resource_report_compiles_a_kernel_for_sm90_without_a_gpu(tmp_path: Path) -> None:
    """resources.py --quick: Triton compiles one attention configuration ahead of time for sm_90
    and cuobjdump reads its registers, spills and tensor-core instructions."""
    pytest.importorskip("triton")
    res = subprocess.run([sys.executable, str(BENCH_DIR / "resources.py"), "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(_only(tmp_path, "resources_sm90_triton*_quick.json").read_text())
    assert doc["arch"] == 90 and doc["triton"] and doc["quick"] is True
    (row,) = doc["rows"]
    assert "error" not in row, row["error"]
    assert 0 < row["regs"] <= 255 and row["smem"] > 0
    assert row["hgmma"] > 0, "an fp16 attention tile on sm_90 should use wgmma"
    assert row["flags"] == "", row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU wording")
def test_cpu_summaries_say_the_targets_apply_to_gpus(quick_runs) -> None:
    _, runs = quick_runs
    for name, run in runs.items():
        summary = run.stdout.split("## summary")[-1]
        assert "not met" not in summary and "the target applies to GPUs" in summary, f"{name}: {summary}"


def test_generate_quick(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(BENCH_DIR / "generate.py"), "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads(_only(tmp_path, "generate-*-quick.json").read_text())
    assert doc["quick"] is True and doc["preset"] == "toygpt-small" and doc["new_tokens"] == 16
    assert doc["cached_tokens_per_s"] > 0 and doc["uncached_tokens_per_s"] > 0


def test_shakespeare_char_reads_the_embedded_corpus_by_default(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import shakespeare_char

    from fastgpt.data.sources import shakespeare_documents

    text = shakespeare_char.write_corpus(tmp_path / "a.txt", None, 1000).read_text()
    assert text == "\n".join(shakespeare_documents())[:1000]
    (tmp_path / "mine.txt").write_text("my own text")
    assert shakespeare_char.write_corpus(tmp_path / "b.txt", tmp_path / "mine.txt", None).read_text() == "my own text"
    res = subprocess.run([sys.executable, str(BENCH_DIR / "shakespeare_char.py"), "--data", str(tmp_path / "no.txt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "error: --data" in res.stderr and "does not exist" in res.stderr


def test_shakespeare_char_trains_the_make_train_recipe(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(BENCH_DIR / "shakespeare_char.py"), "--quick", "--recipe",
                          "--no-baseline", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "shakespeare_char_cpu_recipe_quick.json").read_text())
    assert doc["fastgpt_trains"] == "make train's CPU recipe"
    (run,) = doc["fastgpt"]["runs"]
    assert run["evals"][-1]["iter"] == 20 and run["full_val_loss"] > 0 and run["median_step_ms"] > 0
    assert (tmp_path / "shakespeare_char_cpu_recipe_quick.png").read_bytes()[:4] == b"\x89PNG"


def test_cpu_times_fastgpt_in_each_dtype_against_nanogpt(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(BENCH_DIR / "cpu.py"), "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "cpu_quick.json").read_text())
    rows = {r["name"]: r for r in doc["variants"]}
    assert set(rows) == {"nanogpt", "fastgpt fp32", "fastgpt bf16"}  # --quick compiles nothing
    assert rows["nanogpt"]["vs_nanogpt"] == 1.0 and doc["auto_dtype"] in ("float32", "bfloat16")
    for r in rows.values():
        assert len(r["step_times_s"]) == doc["steps"] == 2 and r["tokens_per_s"] > 0 and 0 < r["val_loss"] < 10
    assert doc["shape_settings"]["n_embd"] == 128 and doc["cpu"]["threads"] >= 1 and "flags" in doc["cpu"]
    assert (tmp_path / "cpu_quick.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(BENCH_DIR / "cpu.py"), "--steps", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("error: --steps and --batch must be "
                                                                                "at least 1")


def test_probe_quick_finds_nothing() -> None:
    res = subprocess.run([sys.executable, str(BENCH_DIR / "probe.py"), "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split("|") for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[1].strip() for r in rows] == ["malicious files", "fuzzed CLI"]
    assert all(int(r[2]) > 0 and int(r[3]) == 0 for r in rows), res.stdout

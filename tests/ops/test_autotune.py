"""``backend="auto"``: falls back for every input a kernel refuses, checks then times, remembers.

On CPU with FASTGPT_AUTO_SLOW=1 the Triton interpreter and the CUDA emulator compete with torch:
torch must win (it is the fastest here), a planted wrong kernel must be rejected with a warning,
and the choices must reach a JSON file that a new process reads. Tiny shapes: the candidates are slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from fastgpt import ops
from fastgpt.device import device_name
from fastgpt.ops import _autotune_cache, autotune, reference


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty choices cache under tmp_path (the CUDA emulator, loaded first, keeps its shared build)."""
    _autotune_cache.stamp(torch.device("cpu"))  # loads the emulated build from the usual cache dir
    monkeypatch.setenv("FASTGPT_CACHE_DIR", str(tmp_path))
    autotune.forget()
    yield tmp_path
    autotune.forget()  # the choices made here came from tmp_path's file


def test_auto_falls_back_for_inputs_the_kernels_refuse(device, monkeypatch):
    """Every argument reaches the support check: these raise on an explicit kernel, never under auto."""
    monkeypatch.setenv("FASTGPT_AUTOTUNE", "0")  # the fixed order takes any kernel that says yes
    x = torch.randn(3, 16, device=device, dtype=torch.float16)
    w = torch.ones(16, device=device)
    r = torch.randn(3, 16, device=device)  # fp32 residual for an fp16 x
    y, h = ops.rms_norm(x, w, None, r, backend="auto")
    want_y, want_h = reference.rms_norm(x, w, None, r)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(h, want_h)

    p = torch.randn(4, 4, device=device)
    g = torch.randn(4, 4, device=device).t()  # non-contiguous grad
    steps = [torch.tensor(1.0, dtype=torch.float64, device=device)]  # fp64 step counter
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    pw, mw, vw = p.clone(), m.clone(), v.clone()
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    ops.fused_adamw_([p], [g], [m], [v], steps, **hyper, backend="auto")
    reference.fused_adamw_([pw], [g], [mw], [vw], steps, **hyper)
    torch.testing.assert_close(p, pw)


def test_kernels_see_every_argument(device, backend_or_skip):
    """The kernels' support checks name the arguments beyond the first ones."""
    from fastgpt.ops._registry import kernel

    name = backend_or_skip("cuda")
    x = torch.randn(3, 16, device=device)
    assert "residual" in kernel(name, "rms_norm").unsupported_reason(x, None, None, x.half())
    assert "eps" in kernel(name, "rms_norm").unsupported_reason(x, None, float("nan"), None)
    p = torch.randn(4, 4, device=device)
    lists = ([p], [torch.randn(4, 4, device=device).t()], [torch.zeros_like(p)], [torch.zeros_like(p)])
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    assert "grads[0]" in kernel(name, "fused_adamw").unsupported_reason(*lists, [torch.ones((), device=device)],
                                                                         **hyper)
    step64 = [torch.ones((), dtype=torch.float64, device=device)]
    assert "steps[0]" in kernel(name, "fused_adamw").unsupported_reason(lists[0], [p.clone()], *lists[2:], step64,
                                                                         **hyper)


def _slow_auto(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the CPU candidates (interpreter, emulator) are for machines without a GPU")
    monkeypatch.setenv("FASTGPT_AUTO_SLOW", "1")
    monkeypatch.setenv("FASTGPT_AUTOTUNE", "1")
    cands = autotune.kernel_candidates(torch.device("cpu"))
    if not cands:
        pytest.skip("neither the Triton interpreter nor the CUDA emulator is usable here")
    return cands


def test_auto_on_cpu_checks_times_and_chooses_torch(fresh_cache, monkeypatch):
    cands = _slow_auto(monkeypatch)
    # big enough that the emulator's and interpreter's overheads dwarf noise (at 4 x 16 the emulator is close)
    x = torch.randn(64, 128)
    w = 1 + 0.1 * torch.randn(128)
    torch.testing.assert_close(ops.rms_norm(x, w, backend="auto"), reference.rms_norm(x, w))
    (key, choice), = ops.autotune_choices().items()
    assert key == f"rms_norm {device_name(torch.device('cpu'))} float32 N<=128 weight=float32 residual=False"
    assert choice == "torch"
    record = _autotune_cache.records()[key]
    assert set(record["ms"]) == {"torch", *cands}, record  # every candidate passed its check and was timed
    assert record["rejected"] == {}
    assert key in ops.autotune_summary()
    (file,) = (fresh_cache / "autotune").glob("*.json")
    assert json.loads(file.read_text())["choices"][key]["backend"] == "torch"


def _fastgpt_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "fastgpt auto" in str(w.message)]


def test_auto_rejects_a_wrong_kernel(fresh_cache, monkeypatch):
    """A candidate planted 1% off is rejected with one warning naming op, backend, dtype and error."""
    cands = _slow_auto(monkeypatch)
    wrong = cands[0]
    from fastgpt.ops._registry import kernel

    module = kernel(wrong, "rms_norm")
    right = module.rms_norm_fwd

    def off_by_a_bit(x, weight, residual, eps):
        y, h, rstd = right(x, weight, residual, eps)
        return y * 1.01, h, rstd

    monkeypatch.setattr(module, "rms_norm_fwd", off_by_a_bit)
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [ops.rms_norm(x, None, backend="auto") for _ in range(2)]  # the second call reuses the choice
    (message,) = _fastgpt_warnings(caught)
    assert f"rms_norm on {wrong} failed its check for float32" in message and "y: max error" in message, message
    for out in outs:
        torch.testing.assert_close(out, reference.rms_norm(x, None))
    record = next(iter(_autotune_cache.records().values()))
    assert wrong in record["rejected"] and wrong not in record["ms"], record
    assert record["backend"] == "torch"


def test_auto_answers_a_repeated_signature_from_memory(fresh_cache, monkeypatch):
    """The support checks run once per input signature; other strides, dtype or scalars are checked anew."""
    cands = _slow_auto(monkeypatch)
    checked = []
    real = autotune._supports
    monkeypatch.setattr(autotune, "_supports", lambda backend, op, args: checked.append(op) or real(backend, op, args))
    x = torch.randn(4, 16)
    for _ in range(3):
        ops.rms_norm(x, None, backend="auto")
    assert len(checked) == len(cands)
    for other in (torch.randn(16, 4).t(), x.double()):  # same shape, other strides; other dtype
        ops.rms_norm(other, None, backend="auto")
    ops.rms_norm(x, None, 1e-5, backend="auto")  # another eps
    ops.rms_norm(x, None, 1, backend="auto")  # equal to 1.0 but an int: its own signature
    ops.rms_norm(x, None, 1.0, backend="auto")
    assert len(checked) == 6 * len(cands)
    autotune.forget()
    ops.rms_norm(x, None, backend="auto")
    assert len(checked) == 7 * len(cands)


def test_auto_rejects_a_kernel_that_raises(fresh_cache, monkeypatch):
    cands = _slow_auto(monkeypatch)
    from fastgpt.ops._registry import kernel

    def broken(*args):
        raise RuntimeError("illegal memory access")

    for name in cands:
        monkeypatch.setattr(kernel(name, "rms_norm"), "rms_norm_bwd", broken)
    x = torch.randn(4, 16, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.rms_norm(x, None, backend="auto").sum().backward()
    messages = _fastgpt_warnings(caught)
    assert len(messages) == len(cands), messages
    assert all("raised RuntimeError: illegal memory access" in m for m in messages), messages
    assert x.grad is not None


def test_auto_under_torch_compile(fresh_cache, monkeypatch):
    """The choice is made (and measured) when tracing, outside the graph; fullgraph holds."""
    _slow_auto(monkeypatch)
    x = torch.randn(4, 16)
    compiled = torch.compile(lambda x: ops.rms_norm(x, None, backend="auto"), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), reference.rms_norm(x, None))
    assert list(ops.autotune_choices().values()) == ["torch"]


def test_importing_fastgpt_loads_neither_dynamo_nor_triton():
    """So that TRITON_INTERPRET may still be set after ``import fastgpt`` (and importing stays fast)."""
    code = ("import sys, fastgpt, fastgpt.model, fastgpt.ops, fastgpt.optim\n"
            "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"


_CHILD = """
import sys, torch
from fastgpt import ops
from fastgpt.ops import autotune
if sys.argv[1] == "read":
    def no_tuning(*args):
        raise AssertionError("tuned again instead of reading the cache")
    autotune.tune = no_tuning
ops.rms_norm(torch.randn(3, 8), None, backend="auto")
print(ops.autotune_choices())
"""


def test_cache_is_read_by_a_new_process(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only: the interpreter competes with torch")
    env = dict(os.environ, FASTGPT_CACHE_DIR=str(tmp_path), FASTGPT_AUTO_SLOW="1", FASTGPT_AUTOTUNE="1",
               TRITON_INTERPRET="1", FASTGPT_CUDA_EMULATE="0")
    outs = []
    for mode in ("write", "read"):
        res = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(res.stdout.strip())
    cpu = device_name(torch.device("cpu"))  # the CPU's model name: a cache shared by two machines keeps them apart
    assert outs[0] == outs[1] == f"{{'rms_norm {cpu} float32 N<=8 weight=none residual=False': 'torch'}}"


_GOOD = {"backend": "torch", "ms": {"torch": 1.0}, "rejected": {}}
_BAD_RECORDS = {
    "unknown backend": {"backend": "__import__('os').system('touch pwned')", "ms": {}, "rejected": {}},
    "winner not timed": {"backend": "triton", "ms": {"torch": 1.0}, "rejected": {}},
    "ms a string": {"backend": "torch", "ms": {"torch": "1.0"}, "rejected": {}},
    "ms a bool": {"backend": "torch", "ms": {"torch": True}, "rejected": {}},
    "ms negative": {"backend": "torch", "ms": {"torch": -1.0}, "rejected": {}},
    "ms NaN": {"backend": "torch", "ms": {"torch": "NaN here"}, "rejected": {}},  # written as a bare NaN
    "ms not a dict": {"backend": "torch", "ms": [["torch", 1.0]], "rejected": {}},
    "rejected not text": {"backend": "torch", "ms": {"torch": 1.0}, "rejected": {"cuda": 3}},
    "extra key": {"backend": "torch", "ms": {"torch": 1.0}, "rejected": {}, "code": "print(1)"},
    "backend a list": {"backend": ["torch"], "ms": {"torch": 1.0}, "rejected": {}},
}


def _write_cache(text: str) -> None:
    file = _autotune_cache.path(torch.device("cpu"))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def test_malformed_records_are_dropped(fresh_cache, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.chdir(fresh_cache)
    choices = {"good": _GOOD, **_BAD_RECORDS}
    text = json.dumps({"stamp": _autotune_cache.stamp(cpu), "choices": choices}).replace('"NaN here"', "NaN")
    _write_cache(text)
    assert _autotune_cache.lookup(cpu, "good") == _GOOD
    kept = _autotune_cache.records()
    assert set(kept) == {"good"}, kept
    assert all(_autotune_cache.lookup(cpu, key) is None for key in _BAD_RECORDS)


@pytest.mark.parametrize("text, match", [
    ("{not json", "unreadable"),
    ("[" * 100_000 + "]" * 100_000, "unreadable"),  # nested past the JSON parser's recursion limit
    (json.dumps({"stamp": {}, "choices": {"good": _GOOD}}), "malformed"),  # another stack's stamp
    (json.dumps({"stamp": None, "choices": [_GOOD]}), "malformed"),
    (json.dumps(["choices", _GOOD]), "malformed"),
    ("huge", "bytes, over"),
], ids=["not-json", "deep", "stamp", "choices-list", "top-list", "huge"])
def test_malformed_cache_file_is_ignored(fresh_cache, text, match):
    cpu = torch.device("cpu")
    if text == "huge":
        good = {"stamp": _autotune_cache.stamp(cpu), "choices": {"good": _GOOD}}
        text = json.dumps(good) + " " * _autotune_cache.MAX_BYTES  # valid JSON, but too large to read
    _write_cache(text)
    with pytest.warns(RuntimeWarning, match=match):
        assert _autotune_cache.lookup(cpu, "good") is None
    assert _autotune_cache.records() == {}

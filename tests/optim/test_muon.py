"""Muon against references: Newton–Schulz against an SVD, steps against a plain float64 Muon written here.

Newton–Schulz applies the odd polynomial ``f(s) = a s + b s^3 + c s^5`` to every singular value of its
Frobenius-normalized input and keeps the singular vectors, so in exact arithmetic its output is
``U f^k(S / |G|_F) V^T`` for ``G = U S V^T``: the reference here, computed from an SVD in float64. The band
the coefficients give, [0.68, 1.21] after 5 steps for singular values of at least 1/500 of the norm, is the
scalar map's (``_band``). Measured on these inputs (condition number 5): fp32 outputs match the SVD reference
within 7.8e-7 (max abs; the test allows 5e-6), bf16 within 3.4e-2 (allowed 5e-2); the outputs' singular values
lie in [0.682, 1.133] (fp32) and [0.677, 1.143] (bf16).
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys

import pytest
import torch

from fastgpt.optim import Muon, newton_schulz
from fastgpt.optim.muon import NS_COEFFICIENTS

SHAPES = [(16, 16), (48, 12), (12, 48), (1, 40), (40, 1), (113, 67), (7, 5)]  # square, tall, wide, 1xN, odd
STEP_SHAPES = [(7, 5), (5, 7), (13, 13), (1, 9), (9, 1), (33, 17)]


def _f(s: torch.Tensor, steps: int) -> torch.Tensor:
    """The quintic applied ``steps`` times to each singular value."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def _band(steps: int, smallest: float = 1 / 500) -> tuple[float, float]:
    """Where ``steps`` applications of the quintic take every value in [smallest, 1]."""
    out = _f(torch.linspace(smallest, 1, 200_001, dtype=torch.float64), steps)
    return out.min().item(), out.max().item()


def _ns_reference(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton–Schulz through an SVD in float64: ``U f^steps(S / |G|_F) V^T``."""
    G = G.double()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    return U @ torch.diag(_f(S / G.norm(), steps)) @ Vh


def _well_conditioned(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """A random matrix with singular values spread over [0.2, 1] (x 3.7): condition number 5."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = shape
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, k, generator=g, dtype=torch.float64))
    S = torch.linspace(0.2, 1.0, k, dtype=torch.float64) if k > 1 else torch.ones(1, dtype=torch.float64)
    return 3.7 * U @ torch.diag(S) @ V.T


def test_the_band_the_coefficients_give() -> None:
    lo, hi = _band(5)
    assert 0.68 <= lo <= 0.69 and 1.20 <= hi <= 1.21, (lo, hi)
    assert _f(torch.tensor(1.0, dtype=torch.float64), 5).item() == pytest.approx(0.6964, abs=1e-4)  # 1xN


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_newton_schulz_matches_the_svd_reference(shape: tuple[int, int], dtype: torch.dtype) -> None:
    G = _well_conditioned(shape, seed=shape[0] * 1000 + shape[1])
    out = newton_schulz(G.float(), 5, dtype)
    assert out.shape == G.shape and out.dtype == torch.float32
    ref = _ns_reference(G, 5)
    err = (out.double() - ref).abs().max().item()
    assert err <= (5e-6 if dtype == torch.float32 else 5e-2), f"max abs error {err:.2e}"
    s = torch.linalg.svdvals(out.double())
    lo, hi = _band(5)
    slack = 1e-4 if dtype == torch.float32 else 0.04
    assert lo - slack <= s.min().item() and s.max().item() <= hi + slack, (s.min().item(), s.max().item())


def test_newton_schulz_of_a_vector_and_of_zeros() -> None:
    g = torch.arange(1.0, 10.0).reshape(1, 9)
    torch.testing.assert_close(newton_schulz(g), _f(torch.tensor(1.0), 5) * g / g.norm())
    assert torch.equal(newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        newton_schulz(torch.zeros(2, 3, 4))


def test_more_steps_leave_the_same_band() -> None:
    G = _well_conditioned((30, 20), seed=1)
    for steps in (1, 3, 8):
        torch.testing.assert_close(newton_schulz(G.float(), steps).double(), _ns_reference(G, steps),
                                   atol=5e-5, rtol=0)


# --- Muon's steps -------------------------------------------------------------------------


class PlainMuon:
    """Muon in float64, one matrix at a time, written from the formula (no shared code)."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, nesterov: bool,
                 weight_decay: float, ns_steps: int) -> None:
        self.params = [p.detach().double().clone() for p in params]
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.lr, self.mu, self.nesterov, self.wd, self.steps = lr, momentum, nesterov, weight_decay, ns_steps

    def step(self, grads: list[torch.Tensor]) -> None:
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g = g.double()
            self.bufs[i] = self.mu * self.bufs[i] + g
            m = g + self.mu * self.bufs[i] if self.nesterov else self.bufs[i]
            rows, cols = p.shape
            scale = math.sqrt(max(1.0, rows / cols))
            self.params[i] = p * (1 - self.lr * self.wd) - self.lr * scale * _ns_reference(m, self.steps)


def _grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_muon_steps_match_a_float64_muon(nesterov: bool, weight_decay: float) -> None:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in STEP_SHAPES]
    opt = Muon(params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay, ns_steps=5,
               ns_dtype=torch.float32)
    ref = PlainMuon(params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay, ns_steps=5)
    for step in range(4):
        grads = _grads(step, params)
        for p, grad in zip(params, grads):
            p.grad = grad
        opt.step()
        ref.step(grads)
        for p, want, shape in zip(params, ref.params, STEP_SHAPES):
            err = (p.detach().double() - want).abs().max().item()
            assert err <= 2e-6, f"step {step}, shape {shape}: max abs error {err:.2e}"


def test_state_dict_round_trip_is_exact() -> None:
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g).requires_grad_() for s in STEP_SHAPES]
    opt = Muon(params, lr=0.02, weight_decay=0.1)
    for step in range(2):
        for p, grad in zip(params, _grads(step, params)):
            p.grad = grad
        opt.step()
    copies = [p.detach().clone().requires_grad_() for p in params]
    other = Muon(copies, lr=0.5, momentum=0.1, nesterov=False, ns_steps=2)  # overwritten by the load
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert other.param_groups[0]["lr"] == 0.02 and other.param_groups[0]["nesterov"] is True
    for step in range(2, 4):
        for a, b, grad in zip(params, copies, _grads(step, params)):
            a.grad, b.grad = grad, grad.clone()
        opt.step()
        other.step()
    assert all(torch.equal(a, b) for a, b in zip(params, copies))
    assert all(torch.equal(opt.state[a]["momentum_buffer"], other.state[b]["momentum_buffer"])
               for a, b in zip(params, copies))


def test_bf16_parameters_keep_their_dtype_and_err_like_rounding_fp32_steps() -> None:
    """bf16 weights, momentum and Newton–Schulz err from fp32 Muon at most twice as much as fp32 Muon's
    weights rounded to bf16 after every step do (the rounding alone)."""
    g = torch.Generator().manual_seed(2)
    p32 = torch.randn(24, 10, generator=g).requires_grad_()
    p16 = p32.detach().bfloat16().requires_grad_()
    rounded = p32.detach().bfloat16().float().requires_grad_()
    opts = Muon([p32], lr=0.02), Muon([p16], lr=0.02, ns_dtype=torch.bfloat16), Muon([rounded], lr=0.02)
    for step in range(3):
        (grad,) = _grads(step, [p32])
        p32.grad, p16.grad, rounded.grad = grad, grad.bfloat16(), grad
        for opt in opts:
            opt.step()
        with torch.no_grad():
            rounded.copy_(rounded.bfloat16().float())
    assert p16.dtype == opts[1].state[p16]["momentum_buffer"].dtype == torch.bfloat16
    err, rounding = ((p.detach().float() - p32).abs().max().item() for p in (p16, rounded))
    assert err <= 2 * rounding + 1e-3, f"max abs error {err:.2e}, of the rounding alone {rounding:.2e}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_newton_schulz_runs_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastgpt.optim.muon as muon

    seen = []
    original = muon.newton_schulz
    monkeypatch.setattr(muon, "newton_schulz", lambda G, steps, dtype: seen.append(dtype) or original(G, steps, dtype))
    p = torch.randn(8, 4, device="cuda", requires_grad=True)
    p.grad = torch.randn_like(p)
    Muon([p]).step()
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_non_matrices_are_refused_naming_their_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=f"shape {re.escape(str(shape))}") as err:
        Muon([torch.zeros(4, 4, requires_grad=True), torch.zeros(shape, requires_grad=True)])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "learning rate"), (dict(momentum=1.0), "momentum"), (dict(ns_steps=0), "ns_steps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])  # fmt: skip
def test_bad_hyperparameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Muon([torch.zeros(3, 3, requires_grad=True)], **kwargs)


# --- two ranks (gloo): each orthogonalizes its share, the steps equal one process's ---------------

RANK_SHAPES = [*STEP_SHAPES, (4, 4)]
# each rank runs this (torchrun); SHAPES is RANK_SHAPES
TWO_RANKS = '''
import sys, torch, torch.distributed as dist
import fastgpt.optim.muon as muon
from fastgpt.optim import Muon
dist.init_process_group("gloo")
computed = []
ns = muon.newton_schulz
muon.newton_schulz = lambda G, *a: computed.append(tuple(G.shape)) or ns(G, *a)
g = torch.Generator().manual_seed(0)
params = [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]
opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1, distributed=True)
for step in range(3):
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)  # the same on both ranks, as after DDP's all-reduce
    opt.step()
torch.save({"params": [p.detach() for p in params], "computed": computed, "state": opt.state_dict()},
           f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
'''


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
def test_two_ranks_share_the_iterations_and_step_like_one_process(tmp_path) -> None:
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS.replace("SHAPES", repr(RANK_SHAPES)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in RANK_SHAPES]
    opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    for rank in ranks:
        assert all(torch.equal(a, b) for a, b in zip(rank["params"], params))
        assert all(torch.equal(rank["state"]["state"][i]["momentum_buffer"], opt.state[p]["momentum_buffer"])
                   for i, p in enumerate(params))
    # each matrix orthogonalized once a step, on one rank: the 7 split 4 + 3 (largest first, dealt in turn)
    mine = [r["computed"] for r in ranks]
    assert len(mine[0]) == 3 * 4 and len(mine[1]) == 3 * 3 and not set(mine[0]) & set(mine[1])
    assert sorted(mine[0] + mine[1]) == sorted(RANK_SHAPES * 3)

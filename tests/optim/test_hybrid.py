"""HybridOptimizer: Muon + AdamW as one optimizer, to a scheduler, a GradScaler and a state_dict exactly as
the two optimizers stepped side by side."""

from __future__ import annotations

import copy

import pytest
import torch

from fastgpt.optim import HybridOptimizer, Muon


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in [(9, 5), (4, 11), (7,), (3, 6)]]


def _hybrid(params: list[torch.Tensor]) -> HybridOptimizer:
    muon = Muon(params[:2], lr=0.02, weight_decay=0.1)
    adamw = torch.optim.AdamW([{"params": params[3:]}, {"params": params[2:3], "weight_decay": 0.0}], lr=1e-3)
    return HybridOptimizer({"adamw": adamw, "muon": muon})


def _grads(step: int, *param_lists: list[torch.Tensor], scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g) * scale for p in param_lists[0]]
    for params in param_lists:
        for p, grad in zip(params, grads):
            p.grad = grad.clone()


def _scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 ** it)


def test_steps_equal_the_two_optimizers_side_by_side() -> None:
    a, b = _params(), _params()
    hybrid = _hybrid(a)
    muon, adamw = Muon(b[:2], lr=0.02, weight_decay=0.1), torch.optim.AdamW(
        [{"params": b[3:]}, {"params": b[2:3], "weight_decay": 0.0}], lr=1e-3)
    sched, s1, s2 = _scheduler(hybrid), _scheduler(muon), _scheduler(adamw)
    assert [g["lr"] for g in hybrid.param_groups] == [1e-3, 1e-3, 0.02]  # AdamW's groups, then Muon's
    for step in range(3):
        _grads(step, a, b)
        hybrid.step()
        muon.step()
        adamw.step()
        for s in (sched, s1, s2):
            s.step()
        hybrid.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert hybrid.optimizers["muon"].param_groups[0]["lr"] == 0.02 * 0.5**3


def test_state_dict_resumes_exactly_and_the_scheduler_reaches_the_loaded_groups() -> None:
    a = _params()
    hybrid = _hybrid(a)
    sched = _scheduler(hybrid)
    for step in range(2):
        _grads(step, a)
        hybrid.step()
        sched.step()
    saved, saved_sched = copy.deepcopy(hybrid.state_dict()), sched.state_dict()
    assert set(saved) == {"adamw", "muon"}

    b = [p.detach().clone().requires_grad_() for p in a]
    other = _hybrid(b)
    other_sched = _scheduler(other)
    other.load_state_dict(saved)
    other_sched.load_state_dict(saved_sched)
    for step in range(2, 5):
        _grads(step, a, b)
        for opt, s in ((hybrid, sched), (other, other_sched)):
            opt.step()
            s.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the scheduler set the rate of the groups the load made, which the inner optimizers step with
    assert other.optimizers["muon"].param_groups[0]["lr"] == 0.02 * 0.5**5
    assert other.param_groups[2] is other.optimizers["muon"].param_groups[0]

    with pytest.raises(ValueError, match=r"holds the optimizers \['adamw', 'muon'\], got \['muon'\]"):
        other.load_state_dict({"muon": saved["muon"]})


def _backward(scaler: torch.amp.GradScaler, params: list[torch.Tensor], step: int, inf: bool = False) -> None:
    """The scaled backward of a loss whose gradients are ``_grads(step)``'s (an inf in the first, if ``inf``)."""
    probe = [torch.zeros_like(p) for p in params]
    _grads(step, probe)
    targets = [q.grad for q in probe]
    if inf:
        targets[0][0, 0] = float("inf")
    scaler.scale(sum((p * t).sum() for p, t in zip(params, targets))).backward()


def test_a_grad_scaler_unscales_and_skips_inf_steps() -> None:
    a, b = _params(), _params()
    hybrid, reference = _hybrid(a), _hybrid(b)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _backward(scaler, a, 0)
    scaler.step(hybrid)
    scaler.update()
    _grads(0, b)
    reference.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # 1024 is a power of two: unscaling is exact

    before = [p.detach().clone() for p in a]
    hybrid.zero_grad()
    _backward(scaler, a, 1, inf=True)
    scaler.step(hybrid)  # skipped: no parameter moves
    scaler.update()
    assert all(torch.equal(x, y) for x, y in zip(a, before)) and scaler.get_scale() == 512.0


def test_a_parameter_in_two_optimizers_is_refused() -> None:
    a = _params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        HybridOptimizer({"muon": Muon(a[:2]), "adamw": torch.optim.AdamW(a[1:])})


def test_state_is_the_optimizers_state_together() -> None:
    a = _params()
    hybrid = _hybrid(a)
    _grads(0, a)
    hybrid.step()
    assert set(hybrid.state) == set(a)
    assert hybrid.state[a[0]] is hybrid.optimizers["muon"].state[a[0]]
    assert set(hybrid.state[a[2]]) == {"step", "exp_avg", "exp_avg_sq"}

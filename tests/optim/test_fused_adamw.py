"""FusedAdamW against torch.optim.AdamW: steps, param groups, schedulers, state_dict exchange."""

from __future__ import annotations

import copy

import pytest
import torch

from fastgpt.ops import available_backends
from fastgpt.optim import FusedAdamW

BACKENDS = ["torch", "triton", "cuda"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend that runs on CPU here (triton in its interpreter, cuda emulated), else skipped with why."""
    reason = available_backends("cpu")[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable on cpu: {reason}")
    return request.param


def _params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(33, 17), (17,), (1,), (5, 3, 7)]
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def _clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def _set_grads(step: int, *param_lists: list[torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g) for p in param_lists[0]]
    for params in param_lists:
        for p, grad in zip(params, grads):
            p.grad = grad.to(p.dtype)


def _groups(params: list[torch.Tensor]) -> list[dict]:
    return [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0, "lr": 3e-3}]


def test_matches_torch_adamw_over_20_steps_with_groups_and_scheduler(backend: str) -> None:
    ours_p, ref_p = _params(), _params()
    ours = FusedAdamW(_groups(ours_p), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, backend=backend)
    ref = torch.optim.AdamW(_groups(ref_p), lr=1e-2, betas=(0.8, 0.95), eps=1e-6)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20) for o in (ours, ref)]
    for step in range(20):
        _set_grads(step, ours_p, ref_p)
        ours.step()
        ref.step()
        for s in scheds:
            s.step()
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours_p[0], _params()[0])  # it did move


def test_state_dict_exchange_both_ways(backend: str) -> None:
    ours_p, ref_p = _params(), _params()
    ours = FusedAdamW(ours_p, lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(ref_p, lr=1e-2)
    for step in range(5):
        _set_grads(step, ours_p, ref_p)
        ours.step()
        ref.step()
    # swap: each continues from the other's state on its own (identical) parameters
    ours2, ref2 = FusedAdamW(_clone(ref_p), lr=1e-2, backend=backend), torch.optim.AdamW(_clone(ours_p), lr=1e-2)
    # deep copies: load_state_dict keeps the very tensors it is given when dtype and device match
    ours2.load_state_dict(copy.deepcopy(ref.state_dict()))
    ref2.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert ours2.state_dict()["state"][0]["step"].item() == 5
    p_ours2 = ours2.param_groups[0]["params"]
    p_ref2 = ref2.param_groups[0]["params"]
    for step in range(5, 10):
        _set_grads(step, p_ours2, p_ref2, ours_p, ref_p)
        for opt in (ours2, ref2, ours, ref):
            opt.step()
    for a, b, c in zip(p_ours2, p_ref2, ref_p):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_params_keep_fp32_state(backend: str, dtype: torch.dtype) -> None:
    ours_p, master = _params(dtype), [p.detach().float().requires_grad_() for p in _params(dtype)]
    ours = FusedAdamW(ours_p, lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(master, lr=1e-2)
    for step in range(3):
        _set_grads(step, ours_p, master)
        ours.step()
        ref.step()
        with torch.no_grad():  # the reference keeps an fp32 master rounded like ours each step
            for m in master:
                m.copy_(m.to(dtype))
    state = ours.state[ours_p[0]]
    assert state["exp_avg"].dtype == torch.float32 and ours_p[0].dtype == dtype
    for a, b in zip(ours_p, master):
        torch.testing.assert_close(a.float(), b.to(dtype).float(), rtol=0, atol=2 * torch.finfo(dtype).eps * 4)


def test_tensor_lr_and_invalid_arguments() -> None:
    a_p, b_p = _params(), _params()
    a = FusedAdamW(a_p, lr=torch.tensor(1e-2), backend="torch")
    b = FusedAdamW(b_p, lr=1e-2, backend="torch")
    _set_grads(0, a_p, b_p)
    a.step()
    b.step()
    for x, y in zip(a_p, b_p):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="learning rate"):
        FusedAdamW(_params(), lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        FusedAdamW(_params(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        opt = FusedAdamW(a_p, backend="tpu")
        _set_grads(1, a_p)
        opt.step()

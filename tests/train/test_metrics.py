"""MFU: the one table of GPU peak FLOP/s (benchmarks/ reads it too) and the utilization it gives."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from fastgpt.train import metrics
from fastgpt.train.metrics import PEAK_BF16_FLOPS, flops_utilization, peak_bf16_flops


def test_peak_lookup_takes_the_first_matching_name() -> None:
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12  # before the plain "H100" entry
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_bf16_flops("Some Other GPU") is None
    assert len({name for name, _ in PEAK_BF16_FLOPS}) == len(PEAK_BF16_FLOPS)


def test_flops_utilization() -> None:
    assert flops_utilization(lambda: 10**9, 1e3, torch.device("cpu")) is None
    with mock.patch.object(metrics.torch.cuda, "get_device_name", lambda device: "NVIDIA H200"):
        cuda = torch.device("cuda", 0)
        assert flops_utilization(lambda: 10**9, 989.0, cuda) == pytest.approx(1e-3)
        assert flops_utilization(lambda: 10**9, 989.0, cuda, world_size=4) == pytest.approx(2.5e-4)
    with mock.patch.object(metrics.torch.cuda, "get_device_name", lambda device: "Unknown"):
        assert flops_utilization(lambda: 10**9, 1.0, torch.device("cuda", 0)) is None

"""Run logging: ``metrics.jsonl`` (one JSON object per event), ``loss.png``, optional wandb; and MFU,
with the one table of GPU peak FLOP/s (``benchmarks/`` reads it too)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastgpt.config import LoggingConfig

# dense bf16 tensor-core peak FLOP/s per GPU (datasheet, no sparsity); first match wins
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("A10", 125e12), ("4090", 165e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 FLOP/s of a GPU by name (None when unknown)."""
    return next((v for k, v in PEAK_BF16_FLOPS if k in device_name), None)


def flops_utilization(flops_per_token: Callable[[], int], tokens_per_s: float, device: torch.device,
                      world_size: int = 1) -> float | None:
    """Model FLOPs utilization: achieved training FLOP/s over ``world_size`` GPUs' bf16 peak (None off
    CUDA or on an unknown GPU). ``flops_per_token``: ``GPT.flops_per_token``."""
    if device.type != "cuda":
        return None
    peak = peak_bf16_flops(torch.cuda.get_device_name(device))
    if peak is None:
        return None
    return flops_per_token() * tokens_per_s / (peak * world_size)


def step_summary(event: dict[str, Any]) -> str:
    """A training-step event as text: ``loss 2.3412, lr 0.000985, 131,072 tokens/s, mfu 41.2%``."""
    parts = [f"loss {event['train_loss']:.4f}", f"lr {event['lr']:.3g}", f"{event['tokens_per_s']:,.0f} tokens/s"]
    if "mfu" in event:
        parts.append(f"mfu {100 * event['mfu']:.1f}%")
    return ", ".join(parts)


def open_wandb(cfg: LoggingConfig, config: dict[str, Any]) -> Any | None:
    """A wandb run when ``logging.wandb`` is set (None otherwise), recording the run's ``config``."""
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError("logging.wandb=true needs the wandb package: pip install 'fastgpt[wandb]'") from None
    return wandb.init(project=cfg.wandb_project, name=cfg.run_name, config=config)


class MetricsLog:
    """Appends events to ``out_dir/metrics.jsonl`` and redraws ``out_dir/loss.png`` on request."""

    def __init__(self, out_dir: str | Path, wandb_run: Any | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.plot_path = Path(out_dir) / "loss.png"
        self.wandb_run = wandb_run

    def log(self, **event: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in event.items() if k != "iter"}, step=event.get("iter"))

    def events(self) -> list[dict[str, Any]]:
        """The logged events; a line cut short (the process died, or the disk filled, mid-write) is skipped."""
        if not self.path.exists():
            return []
        events = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: nested too deeply to be ours
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def reset(self) -> None:
        """Forget the events of an earlier run in the same folder."""
        self.path.unlink(missing_ok=True)

    def truncate_after(self, iteration: int) -> None:
        """Drop events logged after ``iteration`` (a resumed run logs them again)."""
        kept = [e for e in self.events() if isinstance(e.get("iter", 0), int) and e.get("iter", 0) <= iteration]
        # a new file renamed over the old one: a crash leaves either log whole, never a truncated one
        fd, tmp = tempfile.mkstemp(prefix=".metrics-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write("".join(json.dumps(e) + "\n" for e in kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def plot(self) -> None:
        """Draw train (per log step) and val (per eval) loss against the iteration."""
        from matplotlib.figure import Figure  # no pyplot: no global state, and lighter to draw

        events = self.events()
        fig = Figure(figsize=(7, 4), dpi=110)
        ax = fig.add_subplot()
        for key, style in (("train_loss", "-"), ("val_loss", "o-")):
            points = [(e["iter"], e[key]) for e in events if key in e and math.isfinite(e[key])]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, label=key.replace("_", " "), markersize=3)
        ax.set_xlabel("iteration")
        ax.set_ylabel("cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.96)
        fig.savefig(self.plot_path)

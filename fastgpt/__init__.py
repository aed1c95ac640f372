"""fastgpt: train small GPT language models from scratch, made fast by Triton and CUDA kernels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgpt.model import GPT, GPTConfig

if TYPE_CHECKING:
    import torch

    from fastgpt.tokenizers import Tokenizer

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "__version__", "load"]


def load(path: str, device: str | torch.device = "cpu", which: str = "best",
         allow_pickle: bool = False) -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a run's out_dir (its ``best`` checkpoint) or a checkpoint folder.

    ``allow_pickle=True`` also reads a checkpoint of DCP shards only, whose pickled metadata can run
    code: for runs of your own (``fastgpt.checkpoint.load``).
    """
    from fastgpt.checkpoint import load as load_checkpoint

    return load_checkpoint(path, device=device, which=which, allow_pickle=allow_pickle)

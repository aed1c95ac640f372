"""fastgpt: train small GPT language models from scratch, made fast by Triton and CUDA kernels."""

from fastgpt.model import GPT, GPTConfig

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "__version__"]

"""Where a run's first weights come from: ``train.init_from``.

* ``scratch``: a freshly initialised model of ``model.*``;
* ``hf:PATH_OR_HUB_ID``: a Hugging Face GPT-2 or Llama model (``GPT.from_hf``);
* ``DIR``: a fastgpt run's ``out_dir`` (its ``best`` checkpoint, as ``fastgpt.load`` reads it) or one
  ``ckpt-NNNNNN`` folder: ``model.safetensors`` and the ``model`` section of its ``config.yaml``.

The last two replace ``model.*`` with the source's model config (the backends stay the run's), and the
data's tokenizer must be the one the source was trained with. A LoRA run (``train.lora_rank``) on a
fastgpt run records the checkpoint folder it adapts, by absolute path, as its ``train.init_from``;
``fastgpt.train.checkpoint.lora_base`` rebuilds that base when the run is loaded, and this module
when it is resumed (``fastgpt.adapters`` checks that its weights are the ones the adapters
were trained on).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fastgpt import checkpoint as ckpt
from fastgpt.config import Config, GPTConfig
from fastgpt.messages import cut
from fastgpt.model import GPT
from fastgpt.tokenizers import Tokenizer, load_tokenizer, same_tokenizer


@dataclass
class InitialWeights:
    """The model config and weights a run starts from, and where they came from (for messages)."""

    source: str
    config: GPTConfig
    weights: dict[str, torch.Tensor]

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model`` (tied tensors may be stored once)."""
        ckpt.load_weights(model, Path(self.source), self.weights)


def initial_weights(cfg: Config, tokenizer: Tokenizer) -> InitialWeights | None:
    """``cfg.train.init_from``'s config and weights; None for ``scratch``. ``tokenizer`` is the data's.

    A LoRA run on a fastgpt run records its base: ``cfg.train.init_from`` becomes the absolute path of
    the checkpoint folder read, which its saved config then names wherever it is loaded from.
    """
    init, m = cfg.train.init_from, cfg.model
    if init == "scratch":
        return None
    if init.startswith("hf:"):
        model = GPT.from_hf(init.removeprefix("hf:"), attn_backend=m.attn_backend, norm_backend=m.norm_backend)
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"train.init_from={cut(init)} has a vocabulary of {model.config.vocab_size} tokens but "
                             f"data.tokenizer={cfg.data.tokenizer!r} has {tokenizer.vocab_size}; use the tokenizer "
                             "the model was trained with (data.tokenizer=gpt2 for GPT-2)")
        return InitialWeights(init, model.config, model.state_dict())
    if not Path(init).expanduser().is_dir():
        if cfg.train.lora_rank and Path(init).is_absolute():  # the base a LoRA run recorded, when resumed
            raise FileNotFoundError(ckpt.base_gone(init))
        raise FileNotFoundError(f"train.init_from={cut(init)} is not 'scratch', 'hf:PATH_OR_HUB_ID' or an existing "
                                "fastgpt run or checkpoint folder")
    path = ckpt.resolve_checkpoint(Path(init).expanduser(), "best")
    config, weights = ckpt.run_weights(path, f"train.init_from={cut(init)}", m.attn_backend, m.norm_backend)
    try:
        theirs = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise ckpt.CheckpointError(f"train.init_from={cut(init)}: {path} has no usable tokenizer: {exc}") from None
    if not same_tokenizer(theirs, tokenizer):
        raise ValueError(f"train.init_from={cut(init)} was trained with the tokenizer {theirs.name!r} "
                         f"({theirs.vocab_size} tokens), but data.tokenizer={cfg.data.tokenizer!r} gives "
                         f"{tokenizer.name!r} ({tokenizer.vocab_size} tokens) on this data; use the same "
                         f"tokenizer: data.tokenizer={str(path)!r} reads it from the checkpoint")
    if cfg.train.lora_rank:
        cfg.train = replace(cfg.train, init_from=str(path.resolve()))
    return InitialWeights(str(path), config, weights)

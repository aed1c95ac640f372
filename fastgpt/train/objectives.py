"""Training objectives (``train.objective``): what a batch's inputs and targets are, and the loss
estimate the trainer logs at each eval.

* ``next_token``: the loader's batch as it is; each position predicts the token after it. Only for
  causal models (``model.causal=true``): a bidirectional model sees the very token it predicts, so
  the config refuses that pairing.
* ``next_token_mlm``: masked next-token prediction for bidirectional models (SuperTinyLanguageModels'
  ``loss_fn: next_token_mlm``, after LLM2Vec's MNTP, arXiv 2404.05961). A fraction
  (``train.mlm_fraction``) of the input tokens is replaced by the mask id, and the loss is on
  predicting each masked token from the position just before it (whose next-token target it is);
  every other target is ignored. STLM's loader masks input positions and scores the targets at the
  masked positions themselves, i.e. the token after a masked one, which stays visible to a
  bidirectional model; here the masked token itself is the target, as in the paper. The first
  input is never masked (no position precedes it); the last position's target lies past the
  window and is scored when drawn.

The mask id is ``tokenizer.vocab_size``: one id past every tokenizer's vocabulary, so it exists for
char, byte, tiktoken and tokenizer.json tokenizers alike, never collides with text or eot, and leaves
saved tokenizers as they are; a ``next_token_mlm`` model has ``vocab_size + 1`` embeddings
(``model_vocab_size``). A row's mask is drawn from ``(train.seed, the loader, the row's index in the
global stream of rows)`` alone, so resumed runs draw the same masks, every eval scores the same ones,
and the masks do not depend on the number of ranks.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from fastgpt.config import TrainConfig
from fastgpt.data import TokenLoader
from fastgpt.eval.bits_per_byte import TokenLengths, bits_per
from fastgpt.tokenizers import Tokenizer
from fastgpt.train.distributed import DistEnv, mean_across_ranks, sum_across_ranks

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def model_vocab_size(tokenizer: Tokenizer, objective: str) -> int:
    """The model's vocabulary for ``objective``: the tokenizer's, plus the mask id for ``next_token_mlm``."""
    return tokenizer.vocab_size + (objective == "next_token_mlm")


def mask_next_tokens(x: torch.Tensor, y: torch.Tensor, chosen: torch.Tensor, mask_id: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked next-token inputs and targets from a next-token batch x, y (B, T), y[:, t] = x[:, t + 1].

    ``chosen`` (B, T) bool marks the targets to predict: where ``chosen[:, t]``, input t + 1 (the token
    y[:, t] is) becomes ``mask_id``; every target not chosen becomes -1 (ignored).
    """
    inputs = x.clone()
    inputs[:, 1:] = torch.where(chosen[:, :-1], mask_id, x[:, 1:])
    return inputs, torch.where(chosen, y, -1)


class Objective:
    """Turns the loader's batches into the model's (x, y, w) for ``train.objective``."""

    def __init__(self, cfg: TrainConfig, tokenizer: Tokenizer) -> None:
        self.name, self.fraction, self.seed = cfg.objective, cfg.mlm_fraction, cfg.seed
        self.mask_id = tokenizer.vocab_size
        # bits per byte compare next-token losses across tokenizers; a masked loss is not one
        self.lengths = TokenLengths(tokenizer) if self.name == "next_token" else None

    def batch(self, loader: TokenLoader, stream: int = 0) -> Batch:
        """The next batch of ``loader``; ``stream`` tells apart loaders whose masks must differ (0 = training)."""
        x, y, w = loader.next_batch()
        if self.name == "next_token":
            return x, y, w
        # row r of the global stream (``TokenLoader``) gets the mask of (seed, stream, r) on any number of ranks
        first = (loader.step - 1) * loader.global_batch + loader.rank * loader.batch_size
        chosen = torch.stack([torch.rand(y.shape[1], generator=_generator(self.seed, stream, first + i))
                              for i in range(y.shape[0])]) < self.fraction
        x, y = mask_next_tokens(x, y, chosen.to(y.device), self.mask_id)
        return x, y, w


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


@torch.no_grad()
def estimate_losses(model: torch.nn.Module, loaders: dict[str, TokenLoader], objective: Objective, iters: int,
                    env: DistEnv, autocast: contextlib.AbstractContextManager) -> dict[str, float]:
    """``{split}_loss``: the mean loss over ``iters`` batches of each loader (the same batches every
    time), and for ``next_token`` ``{split}_bpb``: their summed token losses in bits per UTF-8 byte
    of the targets (``fastgpt.eval.bits_per_byte``), over every rank's batches."""
    model.eval()
    out = {}
    for stream, (split, loader) in enumerate(loaders.items(), start=1):
        loader.step = 0
        losses, nats, n_bytes = [], 0.0, 0
        for _ in range(iters):
            x, y, w = objective.batch(loader, stream)
            with autocast:
                logits, loss = model(x, y, w)
            losses.append(loss.item())
            if objective.lengths is not None:
                flat = logits.reshape(-1, logits.size(-1)).float()
                nats += F.cross_entropy(flat, y.reshape(-1), ignore_index=-1, reduction="sum").item()
                n_bytes += objective.lengths.count(y)[0]
        out[f"{split}_loss"] = mean_across_ranks(sum(losses) / len(losses), env)
        if objective.lengths is not None:
            nats, n_bytes = sum_across_ranks([nats, n_bytes], env)
            if n_bytes > 0:
                out[f"{split}_bpb"] = bits_per(nats, int(n_bytes))
    model.train()
    return out

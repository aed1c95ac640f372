"""Which parameters a run trains: ``prepare_model`` applies ``train.freeze`` or ``train.lora_rank``
(``fastgpt.nn.lora``) to a freshly built model, before its optimizer is made.

``train.freeze``: parameters left out of training by name pattern (an imported core frozen is
SuperTinyLanguageModels' ``freeze_core``).

Each pattern is a shell-style glob (``fnmatch``) over the model's parameter names, tied names included
(``lm_head.weight`` is ``wte.weight`` when the embeddings are tied, and freezing either freezes
both). A frozen parameter has ``requires_grad=False``, so it gets no gradient and no optimizer state
(``fastgpt.train.optimizer.param_groups`` takes trainable parameters only) and stays bit-identical.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from fastgpt.config import TrainConfig
from fastgpt.messages import cut
from fastgpt.nn.lora import add_lora


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name matches one of ``patterns``.

    Returns the names frozen. A pattern matching no parameter, or patterns freezing every
    parameter, raise ValueError naming them.
    """
    params = list(model.named_parameters(remove_duplicate=False))
    frozen = []
    for pattern in patterns:
        hits = [(name, p) for name, p in params if fnmatchcase(name, pattern)]
        if not hits:
            examples = ", ".join(name for name, _ in params[:4])
            raise ValueError(f"train.freeze pattern {cut(pattern)} matches no parameter name (they look like "
                             f"{examples}, ...)")
        for name, p in hits:
            p.requires_grad_(False)
            frozen.append(name)
    if not any(p.requires_grad for _, p in params):
        raise ValueError(f"train.freeze={cut(patterns)} freezes every parameter: nothing would train")
    return frozen


def prepare_model(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze ``cfg.freeze``'s parameters, or add ``cfg.lora_*`` adapters (freezing the rest)."""
    if cfg.freeze:
        freeze(model, cfg.freeze)
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)

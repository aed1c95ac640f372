"""``HybridOptimizer``: several optimizers over disjoint parameters, as one ``torch.optim.Optimizer``.

``optim.name=muon`` is Muon for the hidden matrices and AdamW for the rest; the trainer, the LR scheduler,
the GradScaler and the checkpointer each see one optimizer. Its ``param_groups`` are the inner optimizers'
own group dicts, in order, so a scheduler setting a group's ``lr`` sets the inner optimizer's; ``step`` steps
each; ``state`` is theirs together; ``state_dict`` holds each one's state_dict under its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class HybridOptimizer(torch.optim.Optimizer):
    """``optimizers``: name -> optimizer, over disjoint parameters (a parameter in two is refused)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("HybridOptimizer needs at least one optimizer")
        self.optimizers = dict(optimizers)
        # the inner group dicts themselves (add_param_group keeps them): one lr, seen by both
        super().__init__([g for opt in self.optimizers.values() for g in opt.param_groups], {})

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        """Every inner optimizer's state, by parameter (a new dict: change the inner ones' instead)."""
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    @state.setter
    def state(self, value: dict) -> None:  # Optimizer.__init__ sets an empty one
        if value:
            raise AttributeError("a HybridOptimizer's state is its optimizers' own")

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != set(self.optimizers):
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"a HybridOptimizer state_dict holds the optimizers {sorted(self.optimizers)}, "
                             f"got {got}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        # an Optimizer's load_state_dict replaces its group dicts: share the new ones
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    def __repr__(self) -> str:
        inner = "\n".join(f"  {name}: {opt!r}".replace("\n", "\n  ") for name, opt in self.optimizers.items())
        return f"{type(self).__name__}(\n{inner}\n)"

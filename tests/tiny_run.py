"""The tiny training run the input-checking tests share: 2 steps of a 1-layer model on a short corpus.

``tests/conftest.py`` builds it per test module (fixtures ``corpus`` and ``trained``).
"""

from __future__ import annotations

from pathlib import Path

# max_iters=2: a case that failed to fail would train for 2 steps, not for 2000
TINY = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=2",
    "train.eval_iters=1", "train.sample_tokens=0", "train.device=cpu", "optim.warmup_iters=1", "train.max_iters=2",
]  # fmt: skip
CORPUS = "the king and queen walk by night to see a ghost upon the wall\n" * 40


def tiny_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    """``python -m fastgpt.train`` arguments: the tiny run on ``corpus`` (cached beside it) into ``out``."""
    return [*TINY, f"data.dataset={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", f"train.out_dir={out}",
            *extra]  # fmt: skip


def interrupt_during_step(monkeypatch, step: int):
    """Make training stop as if Ctrl-C came during step ``step`` (1-based): the run saves, then exits.

    Returns the original ``Trainer.train_step``, for the test to put back before it resumes.
    """
    import signal

    from fastgpt.train.trainer import Trainer

    original = Trainer.train_step

    def interrupted(self: Trainer) -> float | None:
        if self.iter == step - 1:
            self.stop_signal = signal.SIGINT
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    return original

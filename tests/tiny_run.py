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
SMALL = ("model.n_layer=2", "model.n_embd=32", "model.block_size=32")  # the 2-layer variant several files train
TINY_MODEL = dict(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_embd=32)  # GPTConfig(**TINY_MODEL)
WORDS = "the king and queen of the castle walk by night to see a ghost upon the wall".split()


def tiny(*changes: str, drop: tuple[str, ...] = ()) -> list[str]:
    """The tiny run's overrides with ``changes`` (``section.key=value``, replacing or adding) and without
    the keys in ``drop``: each test file's variant of the one tiny run, every key once."""
    merged = {item.partition("=")[0]: item for item in [*TINY, *changes]}
    return [item for key, item in merged.items() if key not in drop]


def word_corpus(folder: Path, lines: int = 300) -> Path:
    """``folder/corpus.txt``: ``lines`` lines of nine words cycled from ``WORDS`` (more text than ``CORPUS``,
    for runs that need a longer validation split or more batches)."""
    path = folder / "corpus.txt"
    path.write_text("\n".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(9)) for i in range(lines)))
    return path


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


def train_interrupted(monkeypatch, args: list[str], step: int) -> None:
    """``python -m fastgpt.train args``, stopped as if Ctrl-C came during step ``step``: the run saves
    ``ckpt-{step}`` and exits with 128 + SIGINT. The trainer's step is put back afterwards."""
    import signal

    import pytest

    from fastgpt.train import cli

    original = interrupt_during_step(monkeypatch, step)
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    assert stop.value.code == 128 + signal.SIGINT
    monkeypatch.setattr(cli.Trainer, "train_step", original)

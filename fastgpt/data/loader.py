"""``TokenLoader``: training batches from a token stream, by random windows, epochs or documents."""

from __future__ import annotations

import os

import numpy as np
import torch

MODES = ("random", "epoch", "padded")


class TokenLoader:
    """Batches ``(x, y, w)`` of shape (B, T) from a token stream; ``y`` is ``x`` shifted by one.

    * ``random``: B windows at uniformly random offsets (nanoGPT), with replacement.
    * ``epoch``: the stream is cut into ``(N - 1) // T`` non-overlapping windows; each epoch
      shuffles them (the same permutation on every rank) and rank r takes every world_size-th,
      so no window repeats within an epoch and ranks never share one. Each epoch has
      ``batches_per_epoch`` batches; the few windows that do not fill a batch are skipped.
    * ``padded``: each row is one document (``doc_offsets``), cut or padded with ``pad_id`` to
      T + 1 tokens; targets at pads are -1 (ignored by the loss). Documents go by epochs as above.

    ``w`` is None unless ``special_token_weight != 1``: then it is a float32 (B, T) tensor with
    that weight where the target is one of ``special_ids``, 0 where it is -1, and 1 elsewhere.
    Batch ``step`` depends only on ``(seed, rank, world_size, step)``, so ``state_dict`` is the
    step counter (the same on every rank) and a resumed loader continues exactly.
    A memory-mapped ``tokens`` file is re-opened for every batch, so pages read do not pile up.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        device: str | torch.device = "cpu",
        mode: str = "random",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 1337,
        doc_offsets: np.ndarray | None = None,
        pad_id: int | None = None,
        special_ids: tuple[int, ...] = (),
        special_token_weight: float = 1.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if block_size < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need block_size >= 1, batch_size >= 1 and 0 <= rank < world_size, "
                f"got {block_size}, {batch_size}, rank {rank} of {world_size}"
            )
        if mode == "padded" and (doc_offsets is None or pad_id is None):
            raise ValueError("mode 'padded' needs doc_offsets and pad_id")
        self.block_size, self.batch_size, self.mode = block_size, batch_size, mode
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = torch.device(device)
        self.doc_offsets = None if doc_offsets is None else np.asarray(doc_offsets, dtype=np.int64)
        self.pad_id, self.special_ids, self.special_token_weight = pad_id, tuple(special_ids), special_token_weight
        self._tokens = tokens
        self._path = _whole_file(tokens)
        self.num_tokens = len(tokens)
        self.step = 0
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, this rank's items in that epoch)
        self.batches_per_epoch = self._count_batches()

    def _count_batches(self) -> int:
        T, B, n = self.block_size, self.batch_size, self.num_tokens
        if self.mode != "padded" and n < T + 1:
            raise ValueError(f"{n} tokens are too few for block_size {T}: need at least {T + 1}")
        if self.mode == "random":
            return max(1, n // (B * T * self.world_size))
        items = self._num_items()
        if items // self.world_size < B:
            what = "documents" if self.mode == "padded" else f"windows of {T + 1} tokens"
            raise ValueError(
                f"mode {self.mode!r} needs batch_size * world_size = {B * self.world_size} {what}, the data has {items}"
            )
        return items // self.world_size // B

    def _num_items(self) -> int:
        if self.mode == "padded":
            return len(self.doc_offsets) - 1
        return (self.num_tokens - 1) // self.block_size

    @property
    def epoch(self) -> int:
        """Completed passes over the data (in random mode: tokens drawn // tokens available)."""
        return self.step // self.batches_per_epoch

    def _view(self) -> np.ndarray:
        # recreate the memmap every batch: a long-lived one keeps every page it read resident
        if self._path is None:
            return self._tokens
        return np.memmap(self._path, dtype=self._tokens.dtype, mode="r")

    def _items(self) -> np.ndarray:
        """Window or document indices of batch ``step`` on this rank, shape (B,)."""
        epoch, i = divmod(self.step, self.batches_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self._num_items())
            self._perm = (epoch, order[self.rank :: self.world_size])
        return self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]

    def _rows(self, data: np.ndarray) -> np.ndarray:
        """The batch's rows of T + 1 tokens, int64, shape (B, T + 1); pads marked -1."""
        T, B = self.block_size, self.batch_size
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, self.rank, self.step])
            starts = rng.integers(0, self.num_tokens - T, size=B)
        elif self.mode == "epoch":
            starts = self._items() * T
        else:
            rows = np.full((B, T + 1), -1, dtype=np.int64)
            for row, d in zip(rows, self._items(), strict=True):
                start = self.doc_offsets[d]
                length = min(self.doc_offsets[d + 1] - start, T + 1)
                row[:length] = data[start : start + length]
            return rows
        return data[starts[:, None] + np.arange(T + 1)].astype(np.int64)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T) int64 inputs, y (B, T) int64 targets (-1 = ignore), w (B, T) float32 or None."""
        rows = torch.from_numpy(self._rows(self._view()))
        self.step += 1
        x, y = rows[:, :-1], rows[:, 1:].contiguous()
        if self.mode == "padded":
            x = x.masked_fill(x < 0, self.pad_id)  # pad inputs read the pad id, their targets stay -1
        w = None
        if self.special_token_weight != 1.0:
            w = torch.ones(y.shape, dtype=torch.float32)
            w[torch.isin(y, torch.tensor(self.special_ids, dtype=torch.int64))] = self.special_token_weight
            w[y < 0] = 0.0
        return tuple(self._to_device(t) for t in (x, y, w))

    def _to_device(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        """The loader's position; identical on every rank."""
        return {"mode": self.mode, "world_size": self.world_size, "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``; mode, world size and seed must match."""
        mine = {k: v for k, v in self.state_dict().items() if k != "step"}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"cannot resume a loader saved with {theirs} in one with {mine}")
        self.step = int(state["step"])


def _whole_file(tokens: np.ndarray) -> str | None:
    """The file behind ``tokens`` when it is a memmap of that whole file, else None."""
    if not isinstance(tokens, np.memmap) or tokens.filename is None or tokens.offset != 0:
        return None
    whole = os.path.getsize(tokens.filename) == tokens.size * tokens.itemsize
    return tokens.filename if whole and tokens.flags.c_contiguous else None

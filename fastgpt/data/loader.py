"""``TokenLoader``: training batches from a token stream, by random windows, epochs or documents."""

from __future__ import annotations

import os

import numpy as np
import torch

from fastgpt.config import DATA_MODES as MODES

RANDOM_CHUNK = 4096  # random mode draws the offsets of this many rows at a time
REOPEN_EVERY = 256  # batches read through one memory map of the tokens file


class TokenLoader:
    """Batches ``(x, y, w)`` of shape (B, T) from a token stream; ``y`` is ``x`` shifted by one.

    Every batch is a slice of a global one. The loader walks a stream of rows that is the same on
    every rank and depends only on the seed: batch ``step`` is rows ``[step * B * W, (step + 1) * B * W)``
    of it (W = world_size), and rank r takes the r-th B of them. So the rows an optimizer step trains on
    depend only on ``batch_size * grad_accum_steps * world_size``: 2 ranks x batch 4, 1 rank x batch 8
    and 1 rank x batch 4 x 2 accumulation steps see the same rows, and ranks never share one.

    * ``random``: row j is a window at a uniformly random offset (nanoGPT), drawn from
      ``(seed, j // RANDOM_CHUNK)``; windows may repeat.
    * ``epoch``: the stream is cut into ``(N - 1) // T`` non-overlapping windows; epoch e is a
      permutation of all of them drawn from ``(seed, e)``, and the epochs follow each other without a
      gap, so every window is used once per epoch (a batch at an epoch boundary holds the last windows
      of one epoch and the first of the next).
    * ``padded``: each row is one document (``doc_offsets``), cut or padded with ``pad_id`` to
      T + 1 tokens; targets at pads are -1 (ignored by the loss). Documents go by epochs as above.

    ``w`` is None unless ``special_token_weight != 1``: then it is a float32 (B, T) tensor with
    that weight where the target is one of ``special_ids``, 0 where it is -1, and 1 elsewhere.
    ``state_dict`` is the number of rows consumed, the same on every rank and independent of the world
    size, so a resumed loader continues exactly, also on another number of ranks with the same global
    batch (or any global batch that divides the rows consumed).
    A memory-mapped ``tokens`` file is re-opened every ``REOPEN_EVERY`` batches, so pages read do not
    pile up (re-opening it for every batch costs a few percent of a small model's step).
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
        self._map: tuple[np.ndarray, int] | None = None  # (the open memory map, batches read through it)
        self.num_tokens = len(tokens)
        self.step = 0  # batches drawn
        self._block: tuple[int, np.ndarray] | None = None  # (index, rows) of the last block of rows drawn
        self._check_size()

    @property
    def global_batch(self) -> int:
        """Rows per batch over all ranks: ``batch_size * world_size``."""
        return self.batch_size * self.world_size

    def _check_size(self) -> None:
        T, n = self.block_size, self.num_tokens
        if self.mode != "padded" and n < T + 1:
            raise ValueError(f"{n} tokens are too few for block_size {T}: need at least {T + 1}")
        items = self._epoch_rows()
        if self.mode != "random" and items < self.global_batch:
            what = "documents" if self.mode == "padded" else f"windows of {T + 1} tokens"
            raise ValueError(f"mode {self.mode!r} needs batch_size * world_size = {self.global_batch} {what}, "
                             f"the data has {items}")

    def _epoch_rows(self) -> int:
        """Rows in one pass over the data: windows, documents, or (random) tokens // block_size."""
        if self.mode == "padded":
            return len(self.doc_offsets) - 1
        return (self.num_tokens - 1) // self.block_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one pass over the data (at least 1)."""
        return max(1, self._epoch_rows() // self.global_batch)

    @property
    def epoch(self) -> int:
        """Completed passes over the data (in random mode: tokens drawn // tokens available)."""
        return self.step * self.global_batch // max(1, self._epoch_rows())

    def _view(self) -> np.ndarray:
        if self._path is None:
            return self._tokens
        if self._map is None or self._map[1] >= REOPEN_EVERY:
            self._map = (np.memmap(self._path, dtype=self._tokens.dtype, mode="r"), 0)
        self._map = (self._map[0], self._map[1] + 1)
        return self._map[0]

    def _items(self) -> np.ndarray:
        """This rank's rows of batch ``step``: window starts or document indices, int64, shape (B,)."""
        first = self.step * self.global_batch + self.rank * self.batch_size
        rows = np.arange(first, first + self.batch_size)
        size = RANDOM_CHUNK if self.mode == "random" else self._epoch_rows()
        blocks, pos = np.divmod(rows, size)
        items = np.empty(self.batch_size, dtype=np.int64)
        for b in np.unique(blocks):  # one block, or two at a block (epoch) boundary
            items[blocks == b] = self._draw_block(int(b), size)[pos[blocks == b]]
        return items

    def _draw_block(self, index: int, size: int) -> np.ndarray:
        """Rows ``[index * size, (index + 1) * size)`` of the stream: random offsets or an epoch's order."""
        if self._block is None or self._block[0] != index:
            rng = np.random.default_rng([self.seed, index])
            if self.mode == "random":
                rows = rng.integers(0, self.num_tokens - self.block_size, size=size)
            else:
                rows = rng.permutation(size)
            self._block = (index, rows)
        return self._block[1]

    def _rows(self, data: np.ndarray) -> np.ndarray:
        """The batch's rows of T + 1 tokens, int64, shape (B, T + 1); pads marked -1."""
        T, B = self.block_size, self.batch_size
        items = self._items()
        if self.mode == "padded":
            rows = np.full((B, T + 1), -1, dtype=np.int64)
            for row, d in zip(rows, items, strict=True):
                start = self.doc_offsets[d]
                length = min(self.doc_offsets[d + 1] - start, T + 1)
                row[:length] = data[start : start + length]
            return rows
        starts = items if self.mode == "random" else items * T
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
        """The loader's position in rows consumed; identical on every rank, whatever the world size."""
        return {"mode": self.mode, "seed": self.seed, "rows": self.step * self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``; mode and seed must match, the global batch must divide the rows."""
        mine = {"mode": self.mode, "seed": self.seed}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"cannot resume a loader saved with {theirs} in one with {mine}")
        rows = int(state["rows"])
        if rows % self.global_batch:
            raise ValueError(f"cannot resume a loader at row {rows} with batch_size * world_size = "
                             f"{self.global_batch}, which does not divide it")
        self.step = rows // self.global_batch


def _whole_file(tokens: np.ndarray) -> str | None:
    """The file behind ``tokens`` when it is a memmap of that whole file, else None."""
    if not isinstance(tokens, np.memmap) or tokens.filename is None or tokens.offset != 0:
        return None
    whole = os.path.getsize(tokens.filename) == tokens.size * tokens.itemsize
    return tokens.filename if whole and tokens.flags.c_contiguous else None

"""The random-number state of a training process in a form ``torch.load(weights_only=True)`` reads.

state.pt holds only tensors, numbers, strings, lists and dicts, so loading it runs no code. NumPy's
generator state (an ndarray inside a tuple) is stored as lists of ints; Python's as nested lists.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """torch (and CUDA), NumPy and Python generator states of this process."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned; a malformed state raises TypeError/ValueError/KeyError."""
    n, p = rng["numpy"], rng["python"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    if keys.shape != (624,) or not isinstance(p["internal"], list) or len(p["internal"]) != 625:
        raise ValueError("the saved NumPy or Python generator state has the wrong length")
    if not isinstance(rng["torch"], torch.Tensor) or rng["torch"].dtype != torch.uint8:
        raise TypeError("the saved torch generator state is not a uint8 tensor")
    torch.set_rng_state(rng["torch"])
    np.random.set_state((str(n["name"]), keys, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"]), p["gauss_next"]))
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])

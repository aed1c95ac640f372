"""A pickle that runs code when loaded: what the tests plant to show that nothing unpickles it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class Payload:
    """Unpickling it runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_pickle(path: Path, marker: Path) -> None:
    """Write at ``path`` a pickle whose loading creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"payload": Payload(marker)}))

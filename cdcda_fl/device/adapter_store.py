"""Where a device keeps its users' adapters on disk: the one definition of that layout.

The torch runtime saves and loads adapters here, and the GGUF export (``cdcda_fl.edge``)
reads the same folders; both must agree on paths and file names. The layout needs neither
torch nor peft, so it lives apart from the code that trains and swaps adapters.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: how the adapter was trained (steps, loss, ε, the data's counts), saved inside its folder and
#: atomically with it, so a reused adapter reports what the original training did
TRAIN_META = "cdcda_train.json"


def _safe_component(value: str) -> str:
    """A path-safe folder name; a hash suffix keeps distinct ids distinct after sanitising."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", value).strip(".")[:80]
    if safe != value or not safe:
        safe = f"{safe or 'id'}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"
    return safe


class AdapterStore:
    """Adapters on the device's disk: ``root/<task>/<user_id>/`` (names sanitised for paths)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, user_id: str, task: str) -> Path:
        return self.root / _safe_component(str(task)) / _safe_component(str(user_id))

    def exists(self, user_id: str, task: str) -> bool:
        return (self.path(user_id, task) / ADAPTER_WEIGHTS).is_file()

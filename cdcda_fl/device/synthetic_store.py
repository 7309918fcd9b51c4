"""The device's own record of the cloud's synthetic data: what it received, kept, dropped and why.

One JSON file per user and task under the device's storage dir::

    <storage_dir>/synthetic/<task>/<safe user id>.json   (mode 0600, folders 0700)

holding the records the cloud sent, the ones the device kept for training, the dropped ones
each with its reason (``"invalid:<field> missing"``, ``"label_not_in_profile"``, ``"outlier"``,
...), and the device's decision (free-form, e.g. ``{"rule": ..., "used_synthetic": true,
"reason": ...}``), so a researcher can read what the cloud wrote and what the device made of it
(``cdcda inspect RUN --user U``).

The file stays on the device's disk, like the adapters: nothing here is ever put in a Flower
reply (tests/test_synthetic_store.py checks the device's replies). In simulation the storage dir
is the run's ``devices/`` folder (or ``device.storage-dir``); on a real device its own
``storage-dir`` (default ``<data-dir>/.cdcda``).

Writes are atomic (temp file + rename, :mod:`cdcda_fl.core.atomic`): a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import safe_filename, write_json_atomic

STORE_DIRNAME = "synthetic"
FORMAT_VERSION = 1


class SyntheticStoreError(ValueError):
    """A synthetic log that cannot be written or read (bad arguments, a corrupt file)."""


def synthetic_log_path(storage_dir: Path | str, user_id: str, task: str) -> Path:
    """``<storage_dir>/synthetic/<task>/<safe user id>.json``; never a path outside ``synthetic/``."""
    root = Path(storage_dir) / STORE_DIRNAME
    path = root / safe_filename(str(task)) / f"{safe_filename(str(user_id))}.json"
    if not path.resolve().is_relative_to(root.resolve()):  # safe_filename makes this unreachable; belt and braces
        raise SyntheticStoreError(f"synthetic log path for {task!r}/{user_id!r} leaves the store")
    return path


def _records(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise SyntheticStoreError(f"{name} must be a list of records (dicts), got {type(value).__name__}")
    out = []
    for i, rec in enumerate(value):
        if not isinstance(rec, Mapping):
            raise SyntheticStoreError(f"{name}[{i}] must be a record (dict), got {type(rec).__name__}")
        out.append(dict(rec))
    return out


def reason_kind(reason: str) -> str:
    """A drop reason without its per-record detail in parentheses, for counting:
    ``"style: not among the kept 50% (gain -0.4 nats/token)"`` counts as
    ``"style: not among the kept 50%"``."""
    return reason.split(" (", 1)[0].strip() or reason


def _dropped(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise SyntheticStoreError(f"dropped must be a list of (record, reason) pairs, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not (isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 2):
            raise SyntheticStoreError(f"dropped[{i}] must be a (record, reason) pair")
        rec, reason = item
        if not isinstance(rec, Mapping):
            raise SyntheticStoreError(f"dropped[{i}]: the record must be a dict, got {type(rec).__name__}")
        if not isinstance(reason, str) or not reason.strip():
            raise SyntheticStoreError(f"dropped[{i}]: the reason must be a non-empty string")
        out.append({"record": dict(rec), "reason": reason})
    return out


def save_synthetic_log(storage_dir: Path | str, user_id: str, task: str, *, received: list[dict],
                       kept: list[dict], dropped: list[tuple[dict, str]], decision: dict) -> Path:
    """Write this user's synthetic log for ``task`` (replacing an earlier one); returns its path.

    ``dropped`` pairs each dropped record with its reason; ``decision`` is the device's decision
    as a JSON-able dict. The log also carries counts (received, kept, dropped by reason) so a
    reader need not recount. Raises SyntheticStoreError for malformed arguments.
    """
    if not str(user_id) or not str(task):
        raise SyntheticStoreError("user_id and task must be non-empty")
    if not isinstance(decision, Mapping):
        raise SyntheticStoreError(f"decision must be a dict, got {type(decision).__name__}")
    received_, kept_, dropped_ = _records(received, "received"), _records(kept, "kept"), _dropped(dropped)
    log = {
        "format": FORMAT_VERSION,
        "user_id": str(user_id),
        "task": str(task),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {"received": len(received_), "kept": len(kept_), "dropped": len(dropped_),
                   "dropped_by_reason": dict(sorted(Counter(reason_kind(d["reason"]) for d in dropped_).items()))},
        "decision": dict(decision),
        "received": received_,
        "kept": kept_,
        "dropped": dropped_,
    }
    try:
        json.dumps(log, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SyntheticStoreError(f"synthetic log for {task}/{user_id} is not JSON-serializable: {exc}") from exc
    path = synthetic_log_path(storage_dir, user_id, task)
    for folder in (path.parent.parent, path.parent):  # private folders, like the adapters' (0700)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(path, log)  # the temp file is created 0600 (mkstemp) and renamed over the target
    try:
        os.chmod(path, 0o600)
    except OSError:  # a filesystem without POSIX modes: the file is still written
        pass
    return path


def load_synthetic_log(storage_dir: Path | str, user_id: str, task: str) -> dict[str, Any] | None:
    """The user's synthetic log for ``task``, or None if the device has none.

    Raises SyntheticStoreError for a file that is not a synthetic log (corrupt or foreign JSON).
    """
    path = synthetic_log_path(storage_dir, user_id, task)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SyntheticStoreError(f"{path}: not a readable synthetic log ({exc})") from exc
    if not isinstance(data, dict) or not all(k in data for k in ("received", "kept", "dropped", "decision")):
        raise SyntheticStoreError(f"{path}: not a synthetic log (missing received/kept/dropped/decision)")
    return data

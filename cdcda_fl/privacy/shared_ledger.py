"""Which of a user's records the device has ever shared: kept on the device, read when it trains.

Private selection under DP (``dp.selection = private``) spends ε only on the records the cloud
never saw, so the device must know which ones it saw. Recomputing that from the run config is
wrong twice over: the personalize message carries no ``consent.*`` keys (that read an empty
section, i.e. "nothing shared"), and the owner's file and the server's ceiling at share time are
what decided, not anything sent later. So :func:`record_shared` writes down, at share time, the
owner's ids of every record that left, and :func:`shared_ids` reads them back. It is the union
over every share of this user on this device: a record the cloud saw once is no longer private.

``<home>/shared/<task>/<safe user id>.json`` -- device-local, never sent, written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from cdcda_fl.core.atomic import safe_filename, write_json_atomic

LEDGER_DIR = "shared"


def ledger_path(home: str | Path, task: str, user_id: str) -> Path:
    return Path(home) / LEDGER_DIR / safe_filename(str(task)) / f"{safe_filename(str(user_id))}.json"


def shared_ids(home: str | Path, task: str, user_id: str) -> frozenset[str]:
    """The owner's ids of every record of this user the device has shared (empty: none, or no ledger)."""
    path = ledger_path(home, task, user_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError) as exc:
        raise ValueError(f"the device's share ledger {str(path)!r} is unreadable ({exc}); "
                         "delete it only if nothing was shared since") from None
    ids = data.get("ids") if isinstance(data, dict) else None
    if not isinstance(ids, list):
        raise ValueError(f"the device's share ledger {str(path)!r} has no 'ids' list")
    return frozenset(str(i) for i in ids)


def record_shared(home: str | Path, task: str, user_id: str, ids: Iterable[str]) -> Path:
    """Add ``ids`` (owner's ids of records about to leave) to this user's ledger."""
    path = ledger_path(home, task, user_id)
    union = sorted(shared_ids(home, task, user_id) | {str(i) for i in ids})
    write_json_atomic(path, {"task": str(task), "user": str(user_id), "ids": union})
    return path

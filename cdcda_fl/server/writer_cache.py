"""A server-side cache of the cloud writer's records (``cloud.cache-dir``), so an experiment that
reruns the same shares on the same users pays for the writer once.

Why: the writer is the slowest server step on a CPU (about 10 minutes for 72 users with the
bundled SmolLM2, more for the 0.5B writer), and experiments rerun identical requests: the two
adapter scopes of the multitask comparison share every request, and a share-curve point rerun
after a device-side change asks the writer exactly what it asked before.

One entry is one ``augment`` call: one task and every user of that call, because the cross-user
filter (cloud/augment.py) makes a user's records depend on the others in the same call. The key
covers the writer's label, every ``cloud.*`` and ``synthetic.*`` setting that can change what it
writes, the seed, the task and each user's shared records without their ids (the ids are opaque
names derived from each device's own key, so they differ between run directories while the
prompt does not). Calls with an error for any user are not stored: an outage must not be replayed.
The cache holds synthetic records derived from shared records, on the server's own disk, as the
run directory does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.core.config import config_section
from cdcda_fl.core.run_config import run_config
from cdcda_fl.privacy.consent import SharedRecords

#: cloud.* keys that change how a call is made, not what it writes
_NOT_IN_KEY = frozenset({"cloud.cache-dir", "cloud.timeout", "cloud.max-retries", "cloud.concurrency",
                         "cloud.api-key-env", "cloud.device", "cloud.batch-size"})
FORMAT = 1  # bump when the stored form changes


def call_key(cfg: Mapping[str, Any], writer: str, task: str, requests: Sequence[SharedRecords],
             context: Mapping[str, Sequence[str]] | None = None) -> str:
    """The cache key of one ``augment`` call (see the module docstring for what it covers).

    ``context`` (``synthetic.person-context``: each user's lines from their other tasks) is part
    of the prompt, so of the key.
    """
    settings = {k: v for k, v in {**config_section(cfg, "cloud."), **config_section(cfg, "synthetic.")}.items()
                if k not in _NOT_IN_KEY}
    shared = [{"user": r.user_id, "fields": list(r.fields),
               "records": [{k: v for k, v in rec.items() if k != "id"} for rec in r.records]}
              for r in sorted(requests, key=lambda r: r.user_id)]
    body = {"format": FORMAT, "writer": writer, "settings": settings, "seed": run_config(cfg).seed,
            "task": task, "shared": shared}
    if context:
        body["context"] = {str(u): list(lines) for u, lines in sorted(context.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


class WriterCache:
    """``<cache-dir>/<task>/<key>.json``: per user, the records, filter counts and error of one call."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def get(self, task: str, key: str) -> dict[str, dict[str, Any]] | None:
        path = self.root / task / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))["users"]
        except (OSError, ValueError, KeyError):  # absent, or unreadable: write again
            return None

    def put(self, task: str, key: str, users: Mapping[str, Mapping[str, Any]]) -> bool:
        """Store a call's results unless one of its users got an error; True if stored."""
        if any(entry.get("error") for entry in users.values()):
            return False
        write_json_atomic(self.root / task / f"{key}.json", {"format": FORMAT, "users": dict(users)})
        return True


def writer_cache(cfg: Mapping[str, Any]) -> WriterCache | None:
    """The run's writer cache, or None when ``cloud.cache-dir`` is empty (the default)."""
    root = run_config(cfg).cloud.cache_dir
    return WriterCache(root) if root else None

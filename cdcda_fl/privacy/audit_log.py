"""The audit log: one JSON line per user per request, naming exactly what left the device.

Written from the :class:`~cdcda_fl.privacy.consent.SharedRecords` the cloud receives (not from
what the device *meant* to send), so a user can check which of their records and fields went
out, how many bytes, when, and to which backend. Values are not copied by default -- the log
would otherwise become a second copy of the shared data -- but a SHA-256 of the exact payload
lets anyone holding the records verify them; ``include_records=True`` stores the scrubbed
records themselves for deployments that want a full transcript.

Appends are serialized by a thread lock and a file lock, so Ray workers or threads writing the
same ``audit.jsonl`` never interleave half-lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cdcda_fl.privacy.consent import SharedRecords

AUDIT_FILENAME = "audit.jsonl"


def payload_sha256(shared: SharedRecords) -> str:
    """SHA-256 of the records' canonical JSON (sorted keys): what the cloud actually received."""
    blob = json.dumps(shared.records, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only JSONL log at ``path`` (a directory means ``<dir>/audit.jsonl``)."""

    def __init__(self, path: str | os.PathLike[str], *, include_records: bool = False) -> None:
        p = Path(path)
        if p.is_dir() or (not p.suffix and not p.exists()):
            p = p / AUDIT_FILENAME
        self.path = p
        self.include_records = include_records
        self._lock = threading.Lock()

    def entry(self, shared: SharedRecords, *, destination: str | None = None, request: str | None = None) -> dict[str, Any]:
        """The line that :meth:`record` writes (exposed for tests and dry runs)."""
        line: dict[str, Any] = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "user": shared.user_id,
            "task": shared.task,
            "record_ids": list(shared.record_ids),
            "fields": list(shared.fields),
            "n_shared": shared.n_shared,
            "n_total": shared.n_total,
            "n_denied": shared.n_denied,
            "bytes": shared.bytes,
            "sha256": payload_sha256(shared),
            "redactions": dict(shared.redactions),
        }
        if destination is not None:
            line["destination"] = destination
        if request is not None:
            line["request"] = request
        if self.include_records:
            line["records"] = shared.records
        return line

    def record(self, shared: SharedRecords, *, destination: str | None = None, request: str | None = None) -> dict[str, Any]:
        """Append one line for ``shared`` and return it."""
        line = self.entry(shared, destination=destination, request=request)
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with self._lock, FileLock(str(self.path) + ".lock"):
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
        return line

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_audit(self.path))


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All lines of an audit log (a missing file is an empty log)."""
    p = Path(path)
    if p.is_dir():
        p = p / AUDIT_FILENAME
    if not p.exists():
        return []
    with open(p, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

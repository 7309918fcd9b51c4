"""The audit log: one JSON line per user per request, naming exactly what left the device.

Written from the :class:`~cdcda_fl.privacy.consent.SharedRecords` the cloud receives (not from
what the device *meant* to send), so a user can check which of their records and fields went
out, how many bytes, when, and to which backend. Values are not copied by default -- the log
would otherwise become a second copy of the shared data -- but a SHA-256 of the exact payload
lets anyone holding the records verify them; ``include_records=True`` stores the scrubbed
records themselves for deployments that want a full transcript.

Two logs, two views: the server appends what it *received* (the cloud's view, ``out/audit.jsonl``)
and each device appends what it *sent* before replying (its owner's view, on the device's own
disk). Both name every reply with its ``kind`` (``share`` or ``result``), user, task, byte count
and SHA-256, so the two can be compared line by line (tests/test_simulation.py does, after a real run).
Device lines may also carry ``n_total``/``n_denied`` and ``own_ids`` (the owner's ids of the
opaque ``record_ids``), which never leave the device.

Appends are serialized by a thread lock and a lock on the log file itself, so Ray workers or
threads writing the same ``audit.jsonl`` never interleave half-lines; the log is 0600 and a
symbolic link in its place is refused, never followed (``atomic.append_text``).
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

from cdcda_fl.core.atomic import append_text
from cdcda_fl.privacy.consent import SharedRecords

AUDIT_FILENAME = "audit.jsonl"


def canonical_json(value: Any) -> bytes:
    """The canonical encoding both sides hash: sorted keys, compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def payload_sha256(shared: SharedRecords) -> str:
    """SHA-256 of the records' canonical JSON (sorted keys): what the cloud actually received."""
    return hashlib.sha256(canonical_json(shared.records)).hexdigest()


class AuditLog:
    """Append-only JSONL log at ``path`` (a directory means ``<dir>/audit.jsonl``)."""

    def __init__(self, path: str | os.PathLike[str], *, include_records: bool = False) -> None:
        p = Path(path)
        if p.is_dir() or (not p.suffix and not p.exists()):
            p = p / AUDIT_FILENAME
        self.path = p
        self.include_records = include_records
        self._lock = threading.Lock()

    def entry(self, shared: SharedRecords, *, destination: str | None = None, request: str | None = None,
              local: bool = False) -> dict[str, Any]:
        """The line that :meth:`record` writes (exposed for tests and dry runs).

        ``local=True`` (the device's own log) adds the counts that never leave the device.
        """
        line: dict[str, Any] = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "kind": "share",
            "user": shared.user_id,
            "task": shared.task,
            "record_ids": list(shared.record_ids),
            "fields": list(shared.fields),
            "n_shared": shared.n_shared,
            "bytes": shared.bytes,
            "sha256": payload_sha256(shared),
            "redactions": dict(shared.redactions),
        }
        if local:
            line["n_total"] = shared.n_total
            line["n_denied"] = shared.n_denied
            line["own_ids"] = list(shared.local_ids)  # the owner's ids of record_ids (opaque on the wire)
        if destination is not None:
            line["destination"] = destination
        if request is not None:
            line["request"] = request
        if self.include_records:
            line["records"] = shared.records
        return line

    def record(self, shared: SharedRecords, *, destination: str | None = None, request: str | None = None,
               local: bool = False) -> dict[str, Any]:
        """Append one line for ``shared`` and return it."""
        return self._append(self.entry(shared, destination=destination, request=request, local=local))

    def record_payload(self, kind: str, user: str, task: str, payload: Any, *,
                       destination: str | None = None, **extra: Any) -> dict[str, Any]:
        """Append one line for any other reply (``kind='result'``): its top-level fields, bytes, SHA-256."""
        blob = canonical_json(payload)
        line: dict[str, Any] = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "kind": kind, "user": str(user), "task": str(task),
            "fields": sorted(payload) if isinstance(payload, dict) else [],
            "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), **extra,
        }
        if destination is not None:
            line["destination"] = destination
        return self._append(line)

    def record_bytes(self, kind: str, user: str, task: str, *, n_bytes: int, sha256: str, fields: list[str],
                     destination: str | None = None, **extra: Any) -> dict[str, Any]:
        """Append one line for a binary reply (``kind='update'``: a FedAvg round's adapter arrays),
        whose bytes and SHA-256 the caller computed over exactly what is sent."""
        line: dict[str, Any] = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "kind": kind, "user": str(user), "task": str(task), "fields": sorted(fields),
            "bytes": int(n_bytes), "sha256": str(sha256), **extra,
        }
        if destination is not None:
            line["destination"] = destination
        return self._append(line)

    def _append(self, line: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new folder is private; an old one stays
        with self._lock:
            append_text(self.path, text, private=True)
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

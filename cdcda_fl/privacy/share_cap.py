"""A size cap on each shared field, applied on the device after consent and scrubbing.

Why on the device: one user's oversized record (a 9 MB abstract with no spaces) once made the
cloud's endpoint refuse a whole batch, so everyone batched with that user got no synthetic data
(issue 29, item 8). The cloud shortens prompts too, but the device is where a record's size is
cheapest to bound and where the bound is the owner's: nothing above it ever leaves, and the audit
log records exactly the capped payload. Prompts show ~30-200 words of a field, so a 4 KiB cap
changes nothing the cloud can use.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cdcda_fl.privacy.consent import SharedRecords, payload_bytes

#: Bytes (UTF-8) a shared field value may hold at most; ``id`` is exempt (it names the record).
MAX_FIELD_BYTES = 4096
EXEMPT_FIELDS = frozenset({"id"})


def cap_text(value: str, max_bytes: int = MAX_FIELD_BYTES) -> str:
    """``value`` cut to at most ``max_bytes`` UTF-8 bytes, at a character (and, when one is near, a
    word) boundary."""
    data = value.encode("utf-8")
    if len(data) <= max_bytes:
        return value
    head = data[:max_bytes].decode("utf-8", "ignore")  # drops a split multi-byte character
    space = head.rfind(" ")
    return head[:space] if space > len(head) // 2 else head


def _cap_record(record: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    return {k: (cap_text(v, max_bytes) if isinstance(v, str) and k not in EXEMPT_FIELDS else v)
            for k, v in record.items()}


def cap_shared(shared: SharedRecords, max_bytes: int = MAX_FIELD_BYTES) -> SharedRecords:
    """``shared`` with every field value capped at ``max_bytes`` (a new object; ``bytes`` recomputed)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    records = [_cap_record(r, max_bytes) for r in shared.records]
    return replace(shared, records=records, bytes=payload_bytes(records))

"""What one user's device sends the cloud for one task, in the form it travels (and what never does).

The record set after consent and scrubbing, with its wire form: the device-local counts
(``LOCAL_ONLY``) stay on the device. Apart from consent.py, which builds it, because the server,
the cloud and the audit read it without the policy machinery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SharedRecords:
    """Exactly what one user's device sends to the cloud for one task (after consent + scrub).

    ``records`` hold only allowed fields (plus ``id``); ``bytes`` is the size of their JSON
    encoding, i.e. what crosses the network. ``redactions`` counts placeholders by kind (never
    the removed values) so the audit can show that scrubbing happened.

    ``n_total`` and ``n_denied`` stay on the device (its own audit log): they depend on records
    that were *not* shared, so sending them would let a server that chooses the deny terms ask
    "does any record of this user mention X?" (a keyword oracle) or learn profile sizes. So do
    ``local_ids``, the owner's own ids of the shared records (``record_ids`` and each record's
    ``id`` are their opaque names). :meth:`to_dict` -- the wire form -- leaves them out.
    """

    user_id: str
    task: str
    records: list[dict[str, Any]]
    record_ids: list[str]
    fields: list[str]
    n_total: int
    n_shared: int
    bytes: int
    redactions: dict[str, int] = field(default_factory=dict)
    n_denied: int = 0
    local_ids: list[str] = field(default_factory=list)  # the owner's ids of ``record_ids``, in order

    def to_dict(self) -> dict[str, Any]:
        """The wire form (Flower messages): everything except the device-local counts."""
        data = asdict(self)
        for name in LOCAL_ONLY:
            data.pop(name, None)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SharedRecords:
        """Inverse of :meth:`to_dict`; ignores unknown keys so old payloads keep loading."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("n_total", 0)  # device-local: never on the wire
        values.pop("local_ids", None)
        return cls(**values)


LOCAL_ONLY = ("n_total", "n_denied", "local_ids")


def payload_bytes(records: Sequence[Mapping[str, Any]]) -> int:
    """Size in bytes of the records' compact UTF-8 JSON encoding."""
    return len(json.dumps(list(records), ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

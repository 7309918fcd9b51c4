"""Consent policies: which profile records (and which of their fields) may leave a device.

The policy runs on the device, before anything is audited or sent. It decides three things:

* **which records**: none, a seeded fraction, or an explicit list of record ids;
* **which fields** of those records (``id`` is always kept so the audit can name records);
* **what never goes**: records with a denied label or containing a denied term.

Every shared text field is then PII-scrubbed (:mod:`cdcda_fl.privacy.redact`). The result is a
:class:`SharedRecords` -- the exact payload the cloud receives and the audit log records.

Configuration is flat (Flower run-config style, scalar values)::

    consent.share-fraction = 0.5           # 0..1 of the user's records (rounded down)
    consent.fields         = "title"       # allow-list, empty = all of the task's fields
    consent.deny-terms     = "cancer,divorce"   # never share records containing these
    consent.deny-labels    = "romance"     # never share records with these labels
    consent.redact-terms   = "Acme Corp"   # scrub these words to [REDACTED] (record still shared)
    consent.record-ids     = "p1,p7"       # explicit ids; when given, replaces the fraction
    consent.scrub          = true          # PII scrubbing (on unless a user turns it off)
    consent.seed           = 0             # falls back to the run's ``seed``
    consent.overrides      = "consent.json"  # per-user file: user id -> the same keys

Why the fraction is rounded *down* and ranked by a per-record hash: a user who consents to
"half" must never get more than half out, and ranking by ``sha256(seed:user:record-id)`` makes
the choice deterministic per user, independent of record order, and nested (raising the
fraction only adds records), which keeps privacy-utility sweeps comparable.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdcda_fl.privacy.redact import Redactor

Scalar = str | int | float | bool

PREFIX = "consent."
KEYS = (
    "share-fraction",
    "fields",
    "deny-terms",
    "deny-labels",
    "redact-terms",
    "record-ids",
    "scrub",
    "seed",
    "overrides",
)


class ConsentError(ValueError):
    """A consent setting is invalid; the message names the key (and the file, for overrides)."""


@dataclass
class SharedRecords:
    """Exactly what one user's device sends to the cloud for one task (after consent + scrub).

    ``records`` hold only allowed fields (plus ``id``); ``bytes`` is the size of their JSON
    encoding, i.e. what crosses the network. ``redactions`` counts placeholders by kind (never
    the removed values) so the audit can show that scrubbing happened.
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for Flower messages or files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SharedRecords:
        """Inverse of :meth:`to_dict`; ignores unknown keys so old payloads keep loading."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def payload_bytes(records: Sequence[Mapping[str, Any]]) -> int:
    """Size in bytes of the records' compact UTF-8 JSON encoding."""
    return len(json.dumps(list(records), ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _split_list(value: Any, key: str) -> tuple[str, ...]:
    """Comma-separated string (run config) or a list (TOML/JSON override) -> tuple of strings."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts: Iterable[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = value
    else:
        raise ConsentError(f"{PREFIX}{key} must be a comma-separated string or a list, got {value!r}")
    return tuple(str(p).strip() for p in parts if str(p).strip())


def _fraction(value: Any) -> float:
    if isinstance(value, bool):
        raise ConsentError(f"{PREFIX}share-fraction must be a number in [0, 1], got {value!r}")
    try:
        frac = float(value)
    except (TypeError, ValueError):
        raise ConsentError(f"{PREFIX}share-fraction must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= frac <= 1.0) or math.isnan(frac):
        raise ConsentError(f"{PREFIX}share-fraction must be within [0, 1], got {value!r}")
    return frac


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return value.strip().lower() in {"true", "1", "yes", "on"}
    raise ConsentError(f"{PREFIX}{key} must be true or false, got {value!r}")


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConsentError(f"{PREFIX}{key} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConsentError(f"{PREFIX}{key} must be an integer, got {value!r}") from None


def load_overrides(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a per-user overrides file (``.json`` or ``.toml``): ``{user_id: {key: value}}``.

    Keys may be written with or without the ``consent.`` prefix. Errors name the file.
    """
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConsentError(f"cannot read consent overrides file {str(p)!r}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConsentError(f"consent overrides file {str(p)!r} is not valid {p.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConsentError(f"consent overrides file {str(p)!r} must map user ids to tables of consent keys")
    out: dict[str, dict[str, Any]] = {}
    for user, table in data.items():
        entry: dict[str, Any] = {}
        for key, value in table.items():
            short = key[len(PREFIX):] if key.startswith(PREFIX) else key
            if short not in KEYS or short == "overrides":
                raise ConsentError(
                    f"consent overrides file {str(p)!r}: unknown key {key!r} for user {user!r}; "
                    f"allowed: {', '.join(k for k in KEYS if k != 'overrides')}"
                )
            entry[short] = value
        out[str(user)] = entry
    return out


def _known_fields_and_labels() -> tuple[set[str], set[str]]:
    """Every field and label of every task, to catch typos in multi-task configs early."""
    from cdcda_fl.data.tasks import TASKS

    fields_: set[str] = {"id"}
    labels: set[str] = set()
    for spec in TASKS.values():
        fields_.update(spec.profile_fields)
        if spec.label_field and spec.labels:
            labels.update(spec.labels)
    return fields_, labels


@dataclass(frozen=True)
class ConsentPolicy:
    """One user's consent. Build it with :meth:`from_config`; apply it per task with :meth:`apply`."""

    share_fraction: float = 0.0
    fields: tuple[str, ...] = ()
    deny_terms: tuple[str, ...] = ()
    deny_labels: tuple[str, ...] = ()
    redact_terms: tuple[str, ...] = ()
    record_ids: tuple[str, ...] | None = None
    scrub: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _fraction(self.share_fraction)
        known_fields, known_labels = _known_fields_and_labels()
        unknown = [f for f in self.fields if f not in known_fields]
        if unknown:
            raise ConsentError(
                f"{PREFIX}fields names unknown field(s) {unknown}; task fields are {sorted(known_fields)}"
            )
        bad_labels = [label for label in self.deny_labels if label not in known_labels]
        if bad_labels:
            raise ConsentError(
                f"{PREFIX}deny-labels names label(s) no task has: {bad_labels}; known labels: {sorted(known_labels)}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Scalar], user_id: str) -> ConsentPolicy:
        """Build a user's policy from flat run config, then apply that user's overrides (if any)."""
        values: dict[str, Any] = {k[len(PREFIX):]: v for k, v in cfg.items() if k.startswith(PREFIX)}
        unknown = [k for k in values if k not in KEYS]
        if unknown:
            raise ConsentError(f"unknown consent key(s) {[PREFIX + k for k in unknown]}; allowed: {[PREFIX + k for k in KEYS]}")
        overrides_path = values.pop("overrides", "")
        if overrides_path:
            values.update(load_overrides(str(overrides_path)).get(str(user_id), {}))
        seed = values.get("seed", cfg.get("seed", 0))
        record_ids = _split_list(values.get("record-ids"), "record-ids")
        return cls(
            share_fraction=_fraction(values.get("share-fraction", 0.0)),
            fields=_split_list(values.get("fields"), "fields"),
            deny_terms=_split_list(values.get("deny-terms"), "deny-terms"),
            deny_labels=_split_list(values.get("deny-labels"), "deny-labels"),
            redact_terms=_split_list(values.get("redact-terms"), "redact-terms"),
            record_ids=record_ids or None,
            scrub=_bool(values.get("scrub", True), "scrub"),
            seed=_int(seed, "seed"),
        )

    # ------------------------------------------------------------------ decisions
    def fields_for(self, task: Any) -> list[str]:
        """The task's fields this policy allows (``id`` not included; it is always kept)."""
        if not self.fields:
            return list(task.profile_fields)
        return [f for f in task.profile_fields if f in self.fields]

    def _denied(self, task: Any, item: Mapping[str, Any]) -> bool:
        """Deny rules look at the WHOLE record (all fields), not just the shared ones: a user
        who says "never share anything mentioning X" means the record, not the visible part."""
        if self.deny_labels and task.label_field:
            label = str(item.get(task.label_field, "")).strip()
            if label in self.deny_labels:
                return True
        if self.deny_terms:
            # Substring match, case-insensitive: errs on the side of not sharing.
            text = " ".join(str(v) for k, v in item.items() if k != "id").lower()
            if any(term.lower() in text for term in self.deny_terms):
                return True
        return False

    def rank_key(self, user_id: str, record_id: str) -> str:
        """Deterministic per-(seed, user, record) rank used for fraction sampling."""
        return hashlib.sha256(f"{self.seed}:{user_id}:{record_id}".encode()).hexdigest()

    def select(self, task: Any, user_id: str, items: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], int]:
        """The records to share (in profile order) and how many were refused by deny rules."""
        eligible = [it for it in items if not self._denied(task, it)]
        n_denied = len(items) - len(eligible)
        if self.record_ids is not None:
            wanted = set(self.record_ids)
            chosen = [it for it in eligible if str(it.get("id")) in wanted]
        else:
            k = min(len(eligible), int(math.floor(self.share_fraction * len(items) + 1e-9)))
            ranked = sorted(eligible, key=lambda it: self.rank_key(user_id, str(it.get("id"))))
            keep = {id(it) for it in ranked[:k]}
            chosen = [it for it in eligible if id(it) in keep]
        return chosen, n_denied

    def apply(self, task: Any, user_id: str, items: Sequence[Mapping[str, Any]]) -> SharedRecords:
        """Select, project onto allowed fields, and scrub: the payload that may leave the device.

        Label fields with a fixed label list (LaMP-2 tag, LaMP-3 score) are not scrubbed: they
        carry no free text and scrubbing could only corrupt them. Free-text outputs (titles) are.
        """
        user_id = str(user_id)
        for item in items:
            if not isinstance(item, Mapping) or "id" not in item:
                raise ConsentError(f"user {user_id!r}, task {task.name}: every profile item needs an 'id'")
        allowed = self.fields_for(task)
        if not allowed:  # nothing of this task is allowed out: share no records at all
            return SharedRecords(user_id, task.name, [], [], [], len(items), 0, payload_bytes([]))
        chosen, n_denied = self.select(task, user_id, items)
        redactor = Redactor(self.redact_terms + self.deny_terms)
        fixed_label = task.label_field if task.labels else None
        records: list[dict[str, Any]] = []
        for item in chosen:
            rec: dict[str, Any] = {"id": str(item["id"])}
            for name in allowed:
                if name not in item:
                    continue
                value = item[name]
                if self.scrub and isinstance(value, str) and name != fixed_label:
                    value = redactor(value)
                rec[name] = value
            records.append(rec)
        return SharedRecords(
            user_id=user_id,
            task=task.name,
            records=records,
            record_ids=[r["id"] for r in records],
            fields=["id", *allowed],
            n_total=len(items),
            n_shared=len(records),
            bytes=payload_bytes(records),
            redactions=dict(redactor.counts),
            n_denied=n_denied,
        )


def share_nothing() -> ConsentPolicy:
    """The policy of a user who shares no record (trains on real data only)."""
    return ConsentPolicy(share_fraction=0.0)

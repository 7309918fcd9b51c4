"""Consent policies: which profile records (and which of their fields) may leave a device.

The policy runs on the device, before anything is audited or sent. It decides three things:

* **which records**: none, a seeded fraction, or an explicit list of record ids;
* **which fields** of those records (an ``id`` is always kept so the audit can name records; it
  leaves as an opaque keyed hash, never the owner's string: :mod:`cdcda_fl.privacy.record_ids`);
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

Who decides: the device owner. A device reads its owner's policy from its own disk
(:func:`cdcda_fl.privacy.policy_file.load_device_policy`: ``consent.toml`` at the root of its
data directory, or the file its node config names); the server's ``consent.*`` keys are only a *ceiling*
(:meth:`ConsentPolicy.stricter`): per key the more restrictive of the two wins, and a device
without a policy file shares nothing.

Why the fraction is rounded *down* and ranked by a per-record hash: a user who consents to
"half" must never get more than half out, and ranking by ``sha256(seed:user:record-id)`` makes
the choice deterministic per user, independent of record order, and nested (raising the
fraction only adds records), which keeps privacy-utility sweeps comparable.

Why the fraction counts only the records the owner's deny rules allow, and the server's fraction
only the device's own selection (:meth:`ConsentPolicy.select`): the number of records shared is
seen by the server, so it must not depend on records that are never shared. Counted over the
whole profile, a server asking for 0.5, 0.6 and 1.0 of a 10-record profile with 4 denied records
got 5, 6 and 6 back and so learned both numbers. Now a denied record changes nothing the server
sees, and a server's fraction c yields ``floor(c * n)`` of the ``n`` records it gets at c = 1.
What the count does reveal is the size of the pool the owner's own fraction samples from
(≈ shared / fraction): an owner who wants no count to depend on unshared records lists
``record-ids`` instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import config_section, parse_bool
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task, known_fields_and_labels
from cdcda_fl.privacy.record_ids import fresh_key, opaque_id
from cdcda_fl.privacy.redact import Redactor, fold
from cdcda_fl.privacy.shared_records import SharedRecords, payload_bytes  # built here; callers import both from here too
from cdcda_fl.core.run_config import run_config

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


DEVICE_POLICY_FILENAME = "consent.toml"
# Per-user entries ADD these to the [default] table (a user's own deny list never drops a global one).
ADDITIVE_KEYS = ("deny-terms", "deny-labels", "redact-terms")
# A device policy file may also say which results the owner lets leave (see cdcda_fl.privacy.report)
# and which records FedAvg updates may be computed from (``federated``: FEDERATED_MODES).
DEVICE_ONLY_KEYS = ("report", "federated")
# What a FedAvg update (methods fedavg, fedavg+local, cdcda+fedavg) may be trained on, least first:
# nothing (the device does not take part), the records its owner's policy shares (as shared:
# allowed fields, scrubbed), or every real record. Default: "shared" on a real device, "all" in
# simulation (the standard FL baseline on simulated owners).
FEDERATED_MODES = ("none", "shared", "all")



class ConsentError(ValueError):
    """A consent setting is invalid; the message names the key (and the file, for overrides)."""


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
    if isinstance(value, str) and not value.strip():
        raise ConsentError(f"{PREFIX}{key} must be true or false, got {value!r}")
    return parse_bool(value, ConsentError, f"{PREFIX}{key} must be true or false")


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConsentError(f"{PREFIX}{key} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConsentError(f"{PREFIX}{key} must be an integer, got {value!r}") from None


def load_overrides(path: str | Path, *, extra_keys: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Read a per-user overrides file (``.json`` or ``.toml``): ``{user_id: {key: value}}``.

    Keys may be written with or without the ``consent.`` prefix. Errors name the file.
    """
    allowed_keys = [k for k in KEYS if k != "overrides"] + list(extra_keys)
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
            if short not in allowed_keys:
                raise ConsentError(
                    f"consent file {str(p)!r}: unknown key {key!r} for user {user!r}; "
                    f"allowed: {', '.join(allowed_keys)}"
                )
            entry[short] = value
        out[str(user)] = entry
    return out


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
    # Set only by :meth:`stricter` (the server's ceiling): at most this fraction of the records
    # the device's own rules select.
    max_fraction: float = 1.0
    # The server's deny rules (also set only by :meth:`stricter`). They see only the fields that
    # are shared and only remove records after the device's own selection: matched against
    # non-shared fields, or letting another record take a denied one's place, they would let a
    # server that picks the terms learn about what it was never shown (a keyword oracle).
    ceiling_deny_terms: tuple[str, ...] = ()
    ceiling_deny_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _fraction(self.share_fraction)
        _fraction(self.max_fraction)
        known_fields, known_labels = known_fields_and_labels()
        unknown = [f for f in self.fields if f not in known_fields]
        if unknown:
            raise ConsentError(
                f"{PREFIX}fields names unknown field(s) {unknown}; task fields are {sorted(known_fields)}"
            )
        normal_labels = {normalize_label(x) for x in known_labels}
        bad_labels = [label for label in self.deny_labels if normalize_label(label) not in normal_labels]
        if bad_labels:
            raise ConsentError(
                f"{PREFIX}deny-labels names label(s) no task has: {bad_labels}; known labels: {sorted(known_labels)}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Scalar], user_id: str) -> ConsentPolicy:
        """Build a user's policy from flat run config, then apply that user's overrides (if any)."""
        values: dict[str, Any] = {k[len(PREFIX):]: v for k, v in config_section(cfg, PREFIX).items()}
        unknown = [k for k in values if k not in KEYS]
        if unknown:
            raise ConsentError(f"unknown consent key(s) {[PREFIX + k for k in unknown]}; allowed: {[PREFIX + k for k in KEYS]}")
        overrides_path = values.pop("overrides", "")
        if overrides_path:
            values = merge_entry(values, load_overrides(str(overrides_path)).get(str(user_id), {}))
        return cls.from_values(values, seed_default=run_config(cfg).seed)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, seed_default: Any = 0) -> ConsentPolicy:
        """Build a policy from short keys (``share-fraction``, ``deny-terms`` ...), as in a policy file."""
        seed = values.get("seed", seed_default)
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

    @classmethod
    def ceiling_from_config(cls, cfg: Mapping[str, Scalar]) -> ConsentPolicy:
        """The server's side of a negotiation: the run config's flat ``consent.*`` keys.

        ``consent.overrides`` names a file on the *server's* disk; a device never opens a path a
        server chose (that turned overrides into a file probe), so it is ignored here: per-user
        settings reach simulated devices through the policy file the run writes for them.
        ``consent.record-ids`` are the owner's names for their records, which a server never sees
        (they leave as opaque ids) and could only use to probe for them: ignored too.
        """
        values = {k: v for k, v in config_section(cfg, PREFIX).items()
                  if k not in (PREFIX + "overrides", PREFIX + "record-ids")}
        return cls.from_config(values, "")

    def stricter(self, ceiling: ConsentPolicy) -> ConsentPolicy:
        """This (device) policy, restricted by ``ceiling`` (the server's): per key the stricter wins.

        Which records go stays the device's choice (its fraction or ids, its seed); the server can
        only lower how many (``max_fraction``, a fraction of the device's own selection), intersect
        the fields, add deny and redaction terms and labels, and switch scrubbing on. It can never
        widen anything, and never name records.
        """
        def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(dict.fromkeys((*a, *b)))

        max_fraction = min(self.max_fraction, ceiling.max_fraction, ceiling.share_fraction)
        if self.fields and ceiling.fields:
            fields_ = tuple(f for f in self.fields if f in ceiling.fields)
            if not fields_:  # no field both allow: nothing may go
                fields_, max_fraction = self.fields, 0.0
        else:
            fields_ = self.fields or ceiling.fields
        return ConsentPolicy(
            share_fraction=self.share_fraction, fields=fields_,
            deny_terms=self.deny_terms, deny_labels=self.deny_labels,
            redact_terms=union(union(self.redact_terms, ceiling.redact_terms), ceiling.deny_terms),
            record_ids=self.record_ids, scrub=self.scrub or ceiling.scrub, seed=self.seed,
            max_fraction=max_fraction,
            ceiling_deny_terms=union(union(self.ceiling_deny_terms, ceiling.ceiling_deny_terms), ceiling.deny_terms),
            ceiling_deny_labels=union(union(self.ceiling_deny_labels, ceiling.ceiling_deny_labels),
                                      ceiling.deny_labels),
        )

    # ------------------------------------------------------------------ decisions
    def fields_for(self, task: Any) -> list[str]:
        """The task's fields this policy allows (``id`` not included; it is always kept)."""
        if not self.fields:
            return list(task.profile_fields)
        return [f for f in task.profile_fields if f in self.fields]

    def _denied(self, task: Any, item: Mapping[str, Any]) -> bool:
        """Deny rules look at the WHOLE record (all fields), not just the shared ones: a user
        who says "never share anything mentioning X" means the record, not the visible part.

        Terms match after Unicode folding (compatibility forms, accents, case, zero-width
        characters), so ``ＣＡＮＣＥＲ``, ``cán\u200bcer`` and ``Cancer`` are all ``cancer``.
        Labels are compared in normal form (``Romance`` is ``romance``, ``5.0`` is ``5``), and a
        label outside the task's label list is refused: it is free text (a phone number in a
        ``tag`` went out verbatim before, since label fields are not scrubbed).
        """
        if task.label_field and task.label_field in item:
            label = normalize_label(item.get(task.label_field))
            if task.labels and label not in {normalize_label(x) for x in task.labels}:
                return True
            if label in {normalize_label(x) for x in self.deny_labels}:
                return True
        if self.deny_terms:
            # Substring match on folded text: errs on the side of not sharing.
            text = fold(" ".join(str(v) for k, v in item.items() if k != "id"))
            if any(fold(term) in text for term in self.deny_terms if fold(term)):
                return True
        return False

    def rank_key(self, user_id: str, record_id: str) -> str:
        """Deterministic per-(seed, user, record) rank used for fraction sampling."""
        return hashlib.sha256(f"{self.seed}:{user_id}:{record_id}".encode()).hexdigest()

    def select(self, task: Any, user_id: str, items: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], int]:
        """The records to share (in profile order) and how many were refused by deny rules.

        Every count here is taken over records that may be shared (module docstring): the owner's
        fraction over the records its deny rules allow, the server's fraction over the owner's
        selection; the server's deny rules only remove. A denied record changes nothing.
        """
        eligible = [it for it in items if not self._denied(task, it)]
        n_denied = len(items) - len(eligible)
        if self.record_ids is not None:
            wanted = set(self.record_ids)
            chosen = [it for it in eligible if str(it.get("id")) in wanted]
        else:
            chosen = self._first(user_id, eligible, self.share_fraction)
        chosen = self._first(user_id, chosen, self.max_fraction)  # the server's cap; the device's ranking picks
        if self.ceiling_deny_terms or self.ceiling_deny_labels:  # only removes, never replaces
            kept = [it for it in chosen if not self._ceiling_denied(task, it)]
            n_denied += len(chosen) - len(kept)
            chosen = kept
        return chosen, n_denied

    def _first(self, user_id: str, items: Sequence[Mapping[str, Any]], fraction: float) -> list[Mapping[str, Any]]:
        """``floor(fraction * len(items))`` of ``items`` by rank, in their own order (nested in ``fraction``)."""
        k = int(math.floor(fraction * len(items) + 1e-9))
        if k >= len(items):
            return list(items)
        keep = {id(it) for it in sorted(items, key=lambda it: self.rank_key(user_id, str(it.get("id"))))[:k]}
        return [it for it in items if id(it) in keep]

    def _ceiling_denied(self, task: Any, item: Mapping[str, Any]) -> bool:
        """The server's deny rules, on the fields that would be shared only."""
        visible = set(self.fields_for(task))
        if task.label_field in visible and task.label_field in item and self.ceiling_deny_labels:
            if normalize_label(item.get(task.label_field)) in {normalize_label(x) for x in self.ceiling_deny_labels}:
                return True
        if self.ceiling_deny_terms:
            text = fold(" ".join(str(v) for k, v in item.items() if k in visible))
            if any(fold(term) in text for term in self.ceiling_deny_terms if fold(term)):
                return True
        return False

    def apply(self, task: Any, user_id: str, items: Sequence[Mapping[str, Any]], *,
              id_key: bytes | None = None) -> SharedRecords:
        """Select, project onto allowed fields, and scrub: the payload that may leave the device.

        Each record leaves under an opaque id keyed by ``id_key`` (the device's key,
        :func:`cdcda_fl.privacy.record_ids.device_key`); without one, a fresh key for this call.

        Label fields with a fixed label list (LaMP-2 tag, LaMP-3 score) are not scrubbed: they
        carry no free text (values outside the list are refused by :meth:`_denied`) and scrubbing
        could only corrupt them. Free-text outputs (titles) are. Redaction terms (and deny terms)
        are replaced whatever ``scrub`` says; ``scrub`` switches the PII detectors only.
        """
        user_id = str(user_id)
        for item in items:
            if not isinstance(item, Mapping) or "id" not in item:
                raise ConsentError(f"user {user_id!r}, task {task.name}: every profile item needs an 'id'")
        allowed = self.fields_for(task)
        if not allowed:  # nothing of this task is allowed out: share no records at all
            return SharedRecords(user_id, task.name, [], [], [], len(items), 0, payload_bytes([]))
        chosen, n_denied = self.select(task, user_id, items)
        redactor = Redactor(self.redact_terms + self.deny_terms, pii=self.scrub)
        fixed_label = task.label_field if task.labels else None
        key = id_key if id_key is not None else fresh_key()
        records: list[dict[str, Any]] = []
        for item in chosen:
            rec: dict[str, Any] = {"id": opaque_id(key, task.name, user_id, str(item["id"]))}
            for name in allowed:
                if name not in item:
                    continue
                value = item[name]
                if isinstance(value, str) and name != fixed_label:
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
            local_ids=[str(item["id"]) for item in chosen],
        )


def share_records(user: User, cfg: Mapping[str, Any], *, id_key: bytes | None = None) -> SharedRecords:
    """The records (scrubbed, allowed fields only) this user's consent policy lets leave the device.

    ``cfg`` is the policy here (library use: experiments, audits); a device node applies its
    owner's file and the server's ceiling instead (``device.node.share``). It lives here, not in
    the device layer, because the canary audit (privacy/canary.py) must know what a user shares."""
    return ConsentPolicy.from_config(cfg, user.user_id).apply(get_task(user.task), user.user_id, user.profile,
                                                              id_key=id_key)


def share_nothing() -> ConsentPolicy:
    """The policy of a user who shares no record (trains on real data only)."""
    return ConsentPolicy(share_fraction=0.0)


def normalize_label(value: Any) -> str:
    """A label in comparable form: numbers canonical (``5.0`` -> ``5``), text folded, spaces collapsed."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = " ".join(fold(str(value)).split())
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def merge_entry(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by a per-user ``entry``; deny/redact lists are ADDED, never replaced."""
    out = dict(base)
    for key, value in entry.items():
        if key in ADDITIVE_KEYS:
            out[key] = (*_split_list(base.get(key), key), *_split_list(value, key))
        else:
            out[key] = value
    return out

"""Consent policies share exactly what they should: records, fields, deny rules, overrides, audit."""

from __future__ import annotations

import json

import pytest

from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.audit_log import AuditLog, read_audit
from cdcda_fl.privacy.consent import ConsentError, ConsentPolicy, SharedRecords, payload_bytes

LAMP2 = get_task("LaMP_2")
LAMP5 = get_task("LaMP_5")
TAGS = ["dystopia", "sci-fi", "comedy", "romance"]


def movies(n: int = 10, user: str = "u") -> list[dict]:
    return [{"id": f"{user}-m{i}", "description": f"Movie {i} about things CANARY{user}{i}.", "tag": TAGS[i % 4]} for i in range(n)]


def papers(n: int = 6) -> list[dict]:
    return [{"id": f"p{i}", "abstract": f"Secret abstract {i} ABSCANARY{i}.", "title": f"Title number {i}"} for i in range(n)]


def test_share_nothing_is_the_default_and_shares_nothing() -> None:
    shared = ConsentPolicy.from_config({}, "u").apply(LAMP2, "u", movies())
    assert shared.records == [] and shared.n_shared == 0 and shared.n_total == 10
    assert shared.bytes == payload_bytes([])


@pytest.mark.parametrize(("fraction", "expect"), [(0.0, 0), (0.25, 2), (0.5, 5), (0.99, 9), (1.0, 10)])
def test_fraction_rounds_down_and_is_deterministic_and_nested(fraction: float, expect: int) -> None:
    items = movies()
    pol = ConsentPolicy.from_config({"consent.share-fraction": fraction, "seed": 3}, "alice")
    a = pol.apply(LAMP2, "alice", items)
    b = pol.apply(LAMP2, "alice", list(reversed(items)))
    assert a.n_shared == expect
    assert set(a.record_ids) == set(b.record_ids)  # independent of record order
    bigger = ConsentPolicy.from_config({"consent.share-fraction": min(1.0, fraction + 0.3), "seed": 3}, "alice")
    assert set(a.record_ids) <= set(bigger.apply(LAMP2, "alice", items).record_ids)  # nested


def test_fraction_selection_differs_between_users_and_seeds() -> None:
    items = movies(40)
    ids = lambda cfg, u: set(ConsentPolicy.from_config(cfg, u).apply(LAMP2, u, items).record_ids)  # noqa: E731
    base = {"consent.share-fraction": 0.5}
    assert ids(base, "alice") != ids(base, "bob")
    assert ids(base, "alice") != ids({**base, "consent.seed": 7}, "alice")


def test_explicit_record_ids_replace_the_fraction() -> None:
    cfg = {"consent.share-fraction": 1.0, "consent.record-ids": "u-m1, u-m4,missing"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(LAMP2, "u", movies())
    assert shared.record_ids == ["u-m1", "u-m4"]


def test_field_allow_list_keeps_id_and_drops_other_fields() -> None:
    cfg = {"consent.share-fraction": 1.0, "consent.fields": "title"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(LAMP5, "u", papers())
    assert shared.fields == ["id", "title"]
    assert all(set(r) == {"id", "title"} for r in shared.records)
    assert "ABSCANARY" not in json.dumps(shared.to_dict())
    # A field of another task only: nothing of this task may go out.
    other = ConsentPolicy.from_config({"consent.share-fraction": 1.0, "consent.fields": "tag"}, "u")
    assert other.apply(LAMP5, "u", papers()).records == []


def test_deny_labels_and_terms_look_at_whole_records() -> None:
    items = movies()
    items[2]["description"] += " My Divorce story."
    cfg = {"consent.share-fraction": 1.0, "consent.deny-labels": "romance", "consent.deny-terms": "divorce", "consent.fields": "tag"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(LAMP2, "u", items)
    assert all(r["tag"] != "romance" for r in shared.records)
    assert "u-m2" not in shared.record_ids  # denied by a term in a field that is not even shared
    assert shared.n_denied == 3 and shared.n_shared == 7


def test_scrubbing_happens_inside_apply_but_not_on_fixed_labels() -> None:
    items = [{"id": "r1", "text": "Mail me at bob@x.com or see www.shop.com. Acme rocks.", "score": "5"}]
    cfg = {"consent.share-fraction": 1.0, "consent.redact-terms": "acme"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(get_task("LaMP_3"), "u", items)
    assert shared.records[0] == {"id": "r1", "text": "Mail me at [EMAIL] or see [URL]. [REDACTED] rocks.", "score": "5"}
    assert shared.redactions == {"EMAIL": 1, "URL": 1, "TERM": 1}
    off = ConsentPolicy.from_config({**cfg, "consent.scrub": "false"}, "u").apply(get_task("LaMP_3"), "u", items)
    assert "bob@x.com" in off.records[0]["text"]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"consent.share-fraction": 1.5}, "within \\[0, 1\\]"),
        ({"consent.share-fraction": "half"}, "number"),
        ({"consent.fields": "titel"}, "unknown field"),
        ({"consent.deny-labels": "dystopa"}, "no task has"),
        ({"consent.sharefraction": 0.5}, "unknown consent key"),
        ({"consent.scrub": "maybe"}, "true or false"),
        ({"consent.overrides": "/nonexistent/consent.json"}, "/nonexistent/consent.json"),
    ],
)
def test_bad_values_give_clear_errors(cfg: dict, match: str) -> None:
    with pytest.raises(ConsentError, match=match):
        ConsentPolicy.from_config(cfg, "u")


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_per_user_overrides_file(tmp_path, suffix: str) -> None:
    path = tmp_path / f"consent{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"alice": {"consent.share-fraction": 0, "deny-terms": ["x"]}, "bob": {"record-ids": "u-m3"}}))
    else:
        path.write_text('[alice]\n"consent.share-fraction" = 0\ndeny-terms = ["x"]\n\n[bob]\nrecord-ids = "u-m3"\n')
    cfg = {"consent.share-fraction": 1.0, "consent.overrides": str(path)}
    assert ConsentPolicy.from_config(cfg, "alice").apply(LAMP2, "alice", movies()).n_shared == 0
    assert ConsentPolicy.from_config(cfg, "bob").apply(LAMP2, "bob", movies()).record_ids == ["u-m3"]
    assert ConsentPolicy.from_config(cfg, "carol").apply(LAMP2, "carol", movies()).n_shared == 10
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConsentError, match="bad.json"):
        ConsentPolicy.from_config({"consent.overrides": str(bad)}, "u")


def test_shared_records_round_trip_and_audit_lines(tmp_path) -> None:
    pol = ConsentPolicy.from_config({"consent.share-fraction": 0.5, "consent.fields": "tag"}, "u")
    shared = pol.apply(LAMP2, "u", movies())
    assert SharedRecords.from_dict(json.loads(json.dumps(shared.to_dict()))) == shared
    log = AuditLog(tmp_path / "run")
    log.record(shared, destination="hf:test")
    (line,) = read_audit(tmp_path / "run")
    assert line["user"] == "u" and line["task"] == "LaMP_2" and line["record_ids"] == shared.record_ids
    assert line["fields"] == ["id", "tag"] and line["bytes"] == shared.bytes and line["destination"] == "hf:test"
    assert "records" not in line and "CANARY" not in json.dumps(line) and "timestamp" in line

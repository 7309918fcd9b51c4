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
    assert set(a.local_ids) == set(b.local_ids)  # independent of record order
    bigger = ConsentPolicy.from_config({"consent.share-fraction": min(1.0, fraction + 0.3), "seed": 3}, "alice")
    assert set(a.local_ids) <= set(bigger.apply(LAMP2, "alice", items).local_ids)  # nested


def test_fraction_selection_differs_between_users_and_seeds() -> None:
    items = movies(40)
    ids = lambda cfg, u: set(ConsentPolicy.from_config(cfg, u).apply(LAMP2, u, items).local_ids)  # noqa: E731
    base = {"consent.share-fraction": 0.5}
    assert ids(base, "alice") != ids(base, "bob")
    assert ids(base, "alice") != ids({**base, "consent.seed": 7}, "alice")


def test_explicit_record_ids_replace_the_fraction() -> None:
    cfg = {"consent.share-fraction": 1.0, "consent.record-ids": "u-m1, u-m4,missing"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(LAMP2, "u", movies())
    assert shared.local_ids == ["u-m1", "u-m4"]


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
    assert "u-m2" not in shared.local_ids  # denied by a term in a field that is not even shared
    assert shared.n_denied == 3 and shared.n_shared == 7


def test_scrubbing_happens_inside_apply_but_not_on_fixed_labels() -> None:
    items = [{"id": "r1", "text": "Mail me at bob@x.com or see www.shop.com. Acme rocks.", "score": "5"}]
    cfg = {"consent.share-fraction": 1.0, "consent.redact-terms": "acme"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(get_task("LaMP_3"), "u", items)
    assert shared.records[0] == {"id": shared.record_ids[0], "text": "Mail me at [EMAIL] or see [URL]. [REDACTED] rocks.",
                                 "score": "5"} and shared.local_ids == ["r1"]
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
    assert ConsentPolicy.from_config(cfg, "bob").apply(LAMP2, "bob", movies()).local_ids == ["u-m3"]
    assert ConsentPolicy.from_config(cfg, "carol").apply(LAMP2, "carol", movies()).n_shared == 10
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConsentError, match="bad.json"):
        ConsentPolicy.from_config({"consent.overrides": str(bad)}, "u")


def test_shared_records_round_trip_and_audit_lines(tmp_path) -> None:
    pol = ConsentPolicy.from_config({"consent.share-fraction": 0.5, "consent.fields": "tag"}, "u")
    shared = pol.apply(LAMP2, "u", movies())
    wire = shared.to_dict()
    assert "n_total" not in wire and "n_denied" not in wire  # no oracle: nothing about non-shared records
    back = SharedRecords.from_dict(json.loads(json.dumps(wire)))
    assert back.records == shared.records and back.record_ids == shared.record_ids and back.bytes == shared.bytes
    log = AuditLog(tmp_path / "run")
    log.record(shared, destination="hf:test")
    (line,) = read_audit(tmp_path / "run")
    assert line["user"] == "u" and line["task"] == "LaMP_2" and line["record_ids"] == shared.record_ids
    assert line["fields"] == ["id", "tag"] and line["bytes"] == shared.bytes and line["destination"] == "hf:test"
    assert "records" not in line and "CANARY" not in json.dumps(line) and "timestamp" in line
    assert line["kind"] == "share" and "n_total" not in line and "n_denied" not in line and "own_ids" not in line
    local = log.entry(shared, local=True)
    assert local["n_total"] == 10 and local["own_ids"] == shared.local_ids  # only the device's own log keeps them


# ------------------------------------------------------------------ device-owned policy (issue 16)
from cdcda_fl.privacy.policy_file import device_policy_values, load_device_policy, write_device_policy  # noqa: E402


def test_server_ceiling_only_makes_a_policy_stricter() -> None:
    items = movies(20)
    device = ConsentPolicy.from_config({"consent.share-fraction": 0.5, "consent.fields": "tag", "consent.scrub": False}, "u")
    wide = ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1.0, "consent.scrub": False})
    assert device.stricter(wide).apply(LAMP2, "u", items).local_ids == device.apply(LAMP2, "u", items).local_ids
    narrow = ConsentPolicy.ceiling_from_config({"consent.share-fraction": 0.25, "consent.fields": "description,tag",
                                                "consent.deny-labels": "comedy", "consent.scrub": True})
    combined = device.stricter(narrow)
    assert combined.scrub and combined.fields == ("tag",) and "comedy" in combined.ceiling_deny_labels
    got = combined.apply(LAMP2, "u", items)
    assert got.n_shared <= 5 and set(got.local_ids) <= set(device.apply(LAMP2, "u", items).local_ids)
    assert all(r["tag"] != "comedy" for r in got.records)
    # disjoint field lists: nothing at all
    assert device.stricter(ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1, "consent.fields": "description"})
                           ).apply(LAMP2, "u", items).records == []
    # a server cannot name records: ids it names are ignored (the owner's ids are never on the wire)
    ids = ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1.0, "consent.record-ids": "u-m0,u-m1"})
    assert device.stricter(ids).apply(LAMP2, "u", items).local_ids == device.apply(LAMP2, "u", items).local_ids


def test_server_deny_terms_are_no_oracle_over_unshared_fields() -> None:
    """A server choosing deny terms learns nothing it was not shown: its terms see only the shared
    fields, and a record they remove is not replaced by another (two runs differ only by removal)."""
    items = [{"id": f"m{i}", "description": "oncology clinic visit" if i == 3 else f"plain movie {i}",
              "tag": "comedy"} for i in range(10)]
    device = ConsentPolicy.from_values({"share-fraction": 0.5, "fields": "tag"})
    plain = device.stricter(ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1.0})).apply(LAMP2, "u", items)
    probe = device.stricter(ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1.0,
                                                               "consent.deny-terms": "oncology"})).apply(LAMP2, "u", items)
    assert probe.local_ids == plain.local_ids  # the term sits in a field that is never shared
    visible = ConsentPolicy.from_values({"share-fraction": 0.5})  # all fields shared
    base = visible.stricter(ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1.0})).apply(LAMP2, "u", items)
    hit = visible.stricter(ConsentPolicy.ceiling_from_config({"consent.share-fraction": 1.0, "consent.deny-terms": "plain"}
                                                             )).apply(LAMP2, "u", items)
    assert set(hit.local_ids) <= set(base.local_ids)  # removal only, never a replacement
    # the device owner's own deny terms still look at the whole record
    own = ConsentPolicy.from_values({"share-fraction": 1.0, "fields": "tag", "deny-terms": "oncology"})
    assert "m3" not in own.apply(LAMP2, "u", items).local_ids


def test_zero_device_policy_shares_nothing_whatever_the_ceiling() -> None:
    device = ConsentPolicy.from_values({"share-fraction": 0})
    for server in ({"consent.share-fraction": 1.0}, {"consent.record-ids": "u-m1"}, {"consent.scrub": False}):
        assert device.stricter(ConsentPolicy.ceiling_from_config(server)).apply(LAMP2, "u", movies()).records == []


def test_device_policy_file_default_users_and_additive_deny(tmp_path) -> None:
    path = tmp_path / "consent.toml"
    path.write_text('[default]\nshare-fraction = 1.0\ndeny-terms = ["cancer"]\nreport = "metrics"\n\n'
                    '[alice]\ndeny-terms = "divorce"\nshare-fraction = 0.5\n')
    pol = load_device_policy(path)
    alice = pol.policy_for("alice")
    assert alice.share_fraction == 0.5 and set(alice.deny_terms) == {"cancer", "divorce"}  # added, not replaced
    items = movies(4, "alice")
    items[0]["description"] += " my cancer"
    assert "alice-m0" not in alice.apply(LAMP2, "alice", items).local_ids
    assert pol.policy_for("bob").share_fraction == 1.0 and pol.report_for("bob") == "metrics"
    assert pol.unknown_users(["bob"]) == ["alice"]
    path.write_text('[default]\noauth_token = "x"\n')
    with pytest.raises(ConsentError, match="unknown key 'oauth_token'"):
        load_device_policy(path)


def test_simulated_policy_round_trips_the_run_config(tmp_path) -> None:
    over = tmp_path / "over.json"
    over.write_text(json.dumps({"alice": {"share-fraction": 0.25, "deny-terms": "x"}}))
    cfg = {"consent.share-fraction": 0.5, "consent.deny-terms": "secret, plan", "consent.scrub": True,
           "consent.overrides": str(over), "seed": 3}
    path = write_device_policy(tmp_path / "devices" / "consent.toml", device_policy_values(cfg))
    pol = load_device_policy(path)
    assert pol.policy_for("bob") == ConsentPolicy.from_config(cfg, "bob")
    assert pol.policy_for("alice") == ConsentPolicy.from_config(cfg, "alice")
    assert set(pol.policy_for("alice").deny_terms) == {"secret", "plan", "x"}


@pytest.mark.parametrize("variant", ["ＤＩＶＯＲＣＥ", "di\u200bvorce", "Divórce", "DIVORCE"])
def test_deny_terms_match_unicode_variants(variant: str) -> None:
    items = movies(4)
    items[1]["description"] += f" my {variant} story"
    shared = ConsentPolicy.from_config({"consent.share-fraction": 1, "consent.deny-terms": "divorce"}, "u").apply(LAMP2, "u", items)
    assert "u-m1" not in shared.local_ids and shared.n_shared == 3


def test_labels_compare_normalised_and_unlisted_labels_stay() -> None:
    items = [{"id": "a", "description": "x", "tag": "Romance "}, {"id": "b", "description": "y", "tag": "call 415-555-0100"},
             {"id": "c", "description": "z", "tag": "comedy"}]
    shared = ConsentPolicy.from_config({"consent.share-fraction": 1, "consent.deny-labels": "romance"}, "u").apply(LAMP2, "u", items)
    assert shared.local_ids == ["c"]  # 'Romance ' denied, the phone-number tag is not a label: refused
    reviews = [{"id": "r1", "text": "ok", "score": 5.0}, {"id": "r2", "text": "meh", "score": "3"}]
    got = ConsentPolicy.from_config({"consent.share-fraction": 1, "consent.deny-labels": "5"}, "u").apply(get_task("LaMP_3"), "u", reviews)
    assert got.local_ids == ["r2"]


def test_redaction_terms_apply_even_without_scrubbing() -> None:
    items = [{"id": "r1", "text": "Acme sent bob@x.com", "score": "4"}]
    cfg = {"consent.share-fraction": 1.0, "consent.redact-terms": "acme", "consent.scrub": False}
    rec = ConsentPolicy.from_config(cfg, "u").apply(get_task("LaMP_3"), "u", items).records[0]
    assert rec["text"] == "[REDACTED] sent bob@x.com"


def test_run_names_override_tables_for_users_it_does_not_hold(tmp_path) -> None:
    from cdcda_fl.core.config import resolve
    from cdcda_fl.server.runs import prepare_run_dir, unknown_consent_users

    overrides = tmp_path / "overrides.toml"
    overrides.write_text('[dev-u0000]\nshare-fraction = 1.0\n\n[dev-u00O1]\nshare-fraction = 0\n')  # O for 0
    cfg = prepare_run_dir(resolve({"tasks": "LaMP_2", "users": 2, "out-dir": str(tmp_path / "run"),
                                   "consent.overrides": str(overrides), "personas.queries": 1}))
    assert unknown_consent_users(cfg) == ["dev-u00O1"]


# ------------------------------------------------------------------ counts and ids the server sees (issue 29.1, 29.2)
def _with_denied(n_plain: int, n_denied: int) -> list[dict]:
    plain = [{"id": f"m{i}", "description": f"a plain movie {i}", "tag": "comedy"} for i in range(n_plain)]
    denied = [{"id": f"d{i}", "description": f"a cancer story {i}", "tag": "comedy"} for i in range(n_denied)]
    return plain + denied


@pytest.mark.parametrize("own", [1.0, 0.5])
def test_share_counts_do_not_depend_on_denied_records(own: float) -> None:
    """The issue's probe: 10 records, 4 denied, the device sharing everything else; server fractions
    0.5, 0.6 and 1.0 gave 5, 6 and 6 records (total 10 and denied 4 follow). Now each count is a
    function of what the server gets at 1.0 only, and adding denied records changes no byte."""
    device = ConsentPolicy.from_values({"share-fraction": own, "deny-terms": "cancer"})
    key = b"k" * 32
    for server in (0.5, 0.6, 1.0):
        ceiling = ConsentPolicy.ceiling_from_config({"consent.share-fraction": server})
        views = [device.stricter(ceiling).apply(LAMP2, "u", _with_denied(6, d), id_key=key).to_dict()
                 for d in (0, 4, 40)]
        assert views[0] == views[1] == views[2]  # byte-identical, whatever the number of denied records
        assert views[0]["n_shared"] == int(server * int(own * 6))  # a share of the device's own selection
    at_one = device.apply(LAMP2, "u", _with_denied(6, 4)).n_shared
    assert at_one == int(own * 6)  # the owner's fraction counts the records its deny rules allow


def test_server_fraction_caps_the_devices_own_selection_nested() -> None:
    device = ConsentPolicy.from_values({"share-fraction": 0.5})
    items = movies(20)
    own = device.apply(LAMP2, "u", items).local_ids
    for server in (0.1, 0.5, 0.9):
        got = device.stricter(ConsentPolicy.ceiling_from_config({"consent.share-fraction": server})).apply(LAMP2, "u", items)
        assert set(got.local_ids) <= set(own) and got.n_shared == int(server * len(own) + 1e-9)


def test_record_ids_leave_opaque_and_only_the_device_key_maps_them_back() -> None:
    """Issue 29.2: this id went out verbatim past deny "cancer", redact "jane" and fields=["title"]."""
    from cdcda_fl.privacy.record_ids import opaque_id, own_ids

    leaky = "cancer-biopsy-results-jane.doe@example.org-+1 415 555 0199"
    items = [{"id": leaky, "abstract": "a plain abstract", "title": "A plain title"}, *papers(3)]
    policy = ConsentPolicy.from_values({"share-fraction": 1.0, "deny-terms": "cancer", "redact-terms": "jane",
                                        "fields": "title"})
    key = b"device-key".ljust(32, b"0")
    shared = policy.apply(LAMP5, "u", items, id_key=key)
    assert leaky in shared.local_ids  # the content is innocuous: the record itself may go ...
    wire = json.dumps(shared.to_dict(), ensure_ascii=False).lower()
    for secret in ("cancer", "jane", "example.org", "415", "biopsy", '"p0"', "local_ids"):
        assert secret not in wire, secret  # ... but never its owner's id
    assert all(r["id"].startswith("r-") and len(r["id"]) == 26 for r in shared.records)
    back = own_ids(key, "LaMP_5", "u", [it["id"] for it in items])
    assert [back[r["id"]] for r in shared.records] == shared.local_ids
    assert shared.record_ids == [opaque_id(key, "LaMP_5", "u", i) for i in shared.local_ids]  # stable under one key
    other = policy.apply(LAMP5, "u", items, id_key=b"x" * 32).record_ids
    assert not set(other) & set(shared.record_ids)  # another key (or user, task): unlinkable names
    assert not set(policy.apply(LAMP5, "v", items, id_key=key).record_ids) & set(shared.record_ids)


def test_device_key_is_created_once_private_and_shared_by_workers(tmp_path) -> None:
    import os
    import stat

    from cdcda_fl.privacy.record_ids import KEY_FILENAME, RecordIdKeyError, device_key

    first = device_key(tmp_path / "home")
    assert device_key(tmp_path / "home") == first and len(first) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "home" / KEY_FILENAME).st_mode) == 0o600
    (tmp_path / "home" / KEY_FILENAME).write_bytes(b"short")
    with pytest.raises(RecordIdKeyError, match="record-id.key"):
        device_key(tmp_path / "home")

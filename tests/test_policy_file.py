"""A simulation honours the owners' consent.toml in its data dir: the most restrictive combination of
it and the run's consent.* keys (privacy/policy_file.py; issue 29.13). End to end: test_consent_run.py."""

from __future__ import annotations

import pytest

from cdcda_fl.core.config import resolve
from cdcda_fl.privacy.consent import ConsentError
from cdcda_fl.privacy.policy_file import load_device_policy, most_restrictive, simulated_policy_tables

WIDE_RUN = {"consent.share-fraction": 1.0, "consent.scrub": False, "consent.deny-terms": ""}


def test_most_restrictive_takes_the_stricter_side_of_every_key() -> None:
    run = {"share-fraction": 0.5, "fields": "", "deny-terms": "x", "scrub": False, "seed": 1}
    owner = {"share-fraction": 0.8, "fields": ["title"], "deny-terms": ["cancer"], "redact-terms": "Acme",
             "scrub": True, "seed": 7, "report": "metrics"}
    got = most_restrictive(run, owner, "f")
    assert got == {"share-fraction": 0.5, "fields": ["title"], "deny-terms": ["x", "cancer"], "deny-labels": [],
                   "redact-terms": ["Acme"], "scrub": True, "seed": 7, "report": "metrics"}
    assert most_restrictive({"share-fraction": 1.0}, {}, "f")["share-fraction"] == 0.0  # no fraction: nothing
    assert most_restrictive({"share-fraction": 1, "fields": "tag"}, {"share-fraction": 1, "fields": "title"},
                            "f")["share-fraction"] == 0.0  # no field in common: nothing
    both = most_restrictive({"share-fraction": 1, "record-ids": "a,b"}, {"share-fraction": 1, "record-ids": ["b", "c"]}, "f")
    assert both["record-ids"] == ["b"]
    assert most_restrictive({"share-fraction": 1.0}, {"record-ids": "a", "share-fraction": 0}, "f")["record-ids"] == ["a"]
    assert "record-ids" not in most_restrictive({"share-fraction": 0.0}, {"record-ids": "a"}, "f")


def test_a_list_against_a_partial_fraction_is_refused_naming_both() -> None:
    with pytest.raises(ConsentError, match=r"consent.toml, user 'u': record-ids in the owners' file cannot be "
                                           r"combined with share-fraction = 0.5 in the run's consent"):
        most_restrictive({"share-fraction": 0.5}, {"record-ids": ["a"]}, "consent.toml, user 'u'")


def test_owners_file_in_the_data_dir_is_combined_with_the_run_keys(tmp_path) -> None:
    owners = tmp_path / "consent.toml"
    owners.write_text('[default]\nshare-fraction = 1.0\ndeny-terms = ["oncology"]\n\n[quiet]\nshare-fraction = 0\n')
    tables = simulated_policy_tables(resolve(WIDE_RUN), owners)
    path = tmp_path / "merged.toml"
    from cdcda_fl.privacy.policy_file import write_device_policy

    merged = load_device_policy(write_device_policy(path, tables))
    assert merged.policy_for("quiet").share_fraction == 0.0
    other = merged.policy_for("anyone")
    assert other.share_fraction == 1.0 and "oncology" in other.deny_terms and other.scrub  # scrub stays on
    assert simulated_policy_tables(resolve(WIDE_RUN), None)["default"]["share-fraction"] == 1.0  # no file: the run's

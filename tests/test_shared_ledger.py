"""DP's private selection spends ε only on records the device never shared, as the device recorded
them at share time (issue 29.14): the personalize message carries no consent keys, and reading
them there used to answer "nothing shared" for every user on the Flower path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcda_fl.privacy.shared_ledger import ledger_path, record_shared, shared_ids
from clients.codec import pack, unpack
from tests.test_client_privacy import SIM, _call, _task_identity, cfg, run_cfg  # noqa: F401 - fixtures

DP_PRIVATE = {"methods": "cdcda", "dp.enabled": True, "dp.epsilon": 8.0, "dp.selection": "private",
              "eval.report": "predictions", "train.steps": 1}
SYNTHETIC = {"LaMP_5/alice": [{"id": f"syn-{i}", "abstract": f"We study topic {i} in depth.", "title": f"Topic {i}"}
                              for i in range(4)]}


def _private_decision(cfg: dict) -> dict:
    reply = _call("train.personalize", pack(dict(cfg, **DP_PRIVATE), synthetic=SYNTHETIC), SIM)
    (result,) = unpack(reply)["results"]
    assert "error" not in result, result
    return result["methods"]["cdcda"]["dp"]


def test_private_selection_uses_what_the_device_shared(cfg: dict) -> None:
    """3 records, p1 denied: the device shares p0 and p2, so one record is private."""
    assert _private_decision(cfg)["n_validation"] == 3  # nothing shared yet: every record is private
    share = unpack(_call("query.share", pack(cfg, share=True), SIM))["shares"][0]
    assert share["n_shared"] == 2
    home = Path(cfg["out-dir"]) / "devices"
    assert shared_ids(home, "LaMP_5", "alice") == {"p0", "p2"}
    assert _private_decision(cfg)["n_validation"] == 1  # not the stored decision: the private set changed


def test_ledger_is_a_union_and_a_broken_one_fails_its_user_only(tmp_path: Path) -> None:
    record_shared(tmp_path, "LaMP_5", "a/b", ["p1"])
    record_shared(tmp_path, "LaMP_5", "a/b", ["p2"])
    assert shared_ids(tmp_path, "LaMP_5", "a/b") == {"p1", "p2"}  # once seen, never private again
    assert ledger_path(tmp_path, "LaMP_5", "a/b").parent == tmp_path / "shared" / "LaMP_5"
    ledger_path(tmp_path, "LaMP_5", "a/b").write_text("{")
    with pytest.raises(ValueError, match="share ledger"):
        shared_ids(tmp_path, "LaMP_5", "a/b")

"""Stored adapters are keyed by resolved settings (device/train_key.py), not a hand-written key list
that missed train.equal-real-exposure and reused a stale adapter (issue 29.14)."""

from __future__ import annotations

import pytest

from cdcda_fl.config import load_config, message_config, received_config
from cdcda_fl.device.train_key import adapter_key, dp_key, gate_key

REAL = [(f"q{i}", f"a{i}") for i in range(4)]
SYNTH = [(f"s{i}", f"b{i}") for i in range(2)]
PAIRS, WEIGHTS = REAL + SYNTH, [1.0] * 4 + [0.5, 0.5]


def _cfg(**over):
    return load_config(None, [f"{k}={v}" for k, v in {"train.steps": 8, **over}.items()])


@pytest.mark.parametrize("change", [{"train.equal-real-exposure": False}, {"train.synthetic-schedule": "synthetic-first"},
                                    {"train.lr": 0.01}, {"train.lora-layers": 2}, {"device.dtype": "fp32"},
                                    {"train.epochs": 2}, {"seed": 3}])
def test_every_setting_that_changes_cdcda_training_changes_its_key(change):
    assert adapter_key(_cfg(), PAIRS, WEIGHTS, 4) != adapter_key(_cfg(**change), PAIRS, WEIGHTS, 4)


@pytest.mark.parametrize("change", [{"train.synthetic-weight": 0.9}, {"dp.epsilon": 3.0}, {"eval.batch-size": 2},
                                    {"train.synthetic-gate": "none"}, {"train.retrain": True}])
def test_settings_that_do_not_touch_local_training_keep_its_adapter(change):
    """Local-only trains on real pairs alone: these settings must not force a retrain."""
    ones = [1.0] * 4
    assert adapter_key(_cfg(), REAL, ones, 4) == adapter_key(_cfg(**change), REAL, ones, 4)


def test_keys_read_what_a_personalize_message_carries():
    cfg = received_config("personalize", message_config("personalize", _cfg()))
    assert adapter_key(cfg, PAIRS, WEIGHTS, 4) == adapter_key(_cfg(), PAIRS, WEIGHTS, 4)
    assert gate_key(cfg, REAL, [1.0] * 4, SYNTH, [0.5, 0.5]) != gate_key(
        _cfg(**{"train.synthetic-gate-margin": 0.3}), REAL, [1.0] * 4, SYNTH, [0.5, 0.5])


def test_dp_key_holds_the_rule_the_candidates_and_the_shared_set():
    from cdcda_fl.device.dp_select import candidates_for

    cfg = _cfg(**{"dp.enabled": True, "dp.epsilon": 8.0})
    key = lambda c, shared=None: dp_key(c, "cdcda", candidates_for(c, 4), None, (REAL,), shared)  # noqa: E731
    assert key(cfg) != key(_cfg(**{"dp.enabled": True, "dp.epsilon": 8.0, "dp.fallback-margin": 0.1}))
    assert key(cfg) != key(_cfg(**{"dp.enabled": True, "dp.epsilon": 4.0}))
    assert key(cfg, {"p0"}) != key(cfg, {"p0", "p1"})  # which records are private changes the decision


def test_a_changed_exposure_setting_retrains_instead_of_reusing(tmp_path):
    """The real device path on one storage dir: the second run must not reuse the first's adapter."""
    from cdcda_fl.device.personalize import personalize_user
    from tests.test_personalize_batch import _lamp2_user, _synthetic

    user = _lamp2_user("a", 1)
    base = {"methods": "cdcda", "device.model": "tiny-random", "train.steps": 1, "train.synthetic-gate": "none",
            "eval.max-queries": 1}
    first = personalize_user(user, _synthetic(user), _cfg(**base), storage_dir=tmp_path)
    again = personalize_user(user, _synthetic(user), _cfg(**base), storage_dir=tmp_path)
    assert not first["methods"]["cdcda"]["train"].get("reused") and again["methods"]["cdcda"]["train"]["reused"]
    changed = personalize_user(user, _synthetic(user), _cfg(**base, **{"train.equal-real-exposure": False}),
                               storage_dir=tmp_path)
    assert not changed["methods"]["cdcda"]["train"].get("reused")
    assert changed["methods"]["cdcda"]["train"]["steps"] != first["methods"]["cdcda"]["train"]["steps"]

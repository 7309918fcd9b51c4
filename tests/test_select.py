"""train.synthetic-select (device/select.py): which of the cloud's records the device trains on."""

from __future__ import annotations

import json

import pytest

from cdcda_fl.core.config import ConfigError, load_config
from cdcda_fl.device.select import SelectConfig, select_records

RECORDS = [{"id": f"s{i}"} for i in range(5)]
PAIRS = [(f"in {i}", f"out {i}") for i in range(5)]


def _cfg(**over):
    return load_config(None, [f"{k}={v}" for k, v in over.items()])


def _scorer(adapter, base, calls=None):
    def score(pairs):
        if calls is not None:
            calls.append(list(pairs))
        return list(adapter), list(base)
    return score


def test_style_keeps_the_share_with_the_highest_gain_in_the_clouds_order():
    # gains (base - adapter): 0.5, 2.0, -1.0, 1.0, 2.0
    sel = select_records(SelectConfig("style", 0.5), RECORDS, PAIRS,
                         _scorer([1.5, 0.0, 3.0, 1.0, 0.5], [2.0, 2.0, 2.0, 2.0, 2.5]))
    assert [r["id"] for r in sel.kept] == ["s1", "s3", "s4"]  # ceil(2.5) = 3, kept in the cloud's order
    assert sel.gains == pytest.approx([0.5, 2.0, -1.0, 1.0, 2.0])
    assert [r["id"] for r, _ in sel.dropped] == ["s0", "s2"]
    assert sel.dropped[1][1] == "style: not among the kept 50% (gain -1.000 nats/token, cut-off +1.000)"


def test_style_breaks_ties_by_the_clouds_order_and_keeps_at_least_one():
    sel = select_records(SelectConfig("style", 0.01), RECORDS, PAIRS, _scorer([1.0] * 5, [2.0] * 5))
    assert [r["id"] for r in sel.kept] == ["s0"]
    assert len(sel.dropped) == 4


def test_all_and_a_full_share_never_score():
    calls: list = []
    for config in (SelectConfig("all", 0.5), SelectConfig("style", 1.0)):
        sel = select_records(config, RECORDS, PAIRS, _scorer([0.0] * 5, [0.0] * 5, calls))
        assert sel.kept == RECORDS and sel.dropped == [] and sel.gains == []
    assert calls == []
    assert select_records(SelectConfig("style", 0.5), [], [], _scorer([], [], calls)).kept == [] and calls == []


def test_records_and_pairs_must_match():
    with pytest.raises(ValueError, match="5 records but 4 pairs"):
        select_records(SelectConfig("style", 0.5), RECORDS, PAIRS[:4], _scorer([], []))


@pytest.mark.parametrize(("over", "message"), [
    ({"train.synthetic-select": "best"}, "train.synthetic-select must be one of all, style, got 'best'"),
    ({"train.synthetic-select-keep": 0}, r"train.synthetic-select-keep must be a share in \(0, 1\], got 0"),
    ({"train.synthetic-select-keep": 1.5}, "train.synthetic-select-keep must be a share"),
])
def test_bad_settings_are_config_errors_naming_the_key(over, message):
    with pytest.raises(ConfigError, match=message):
        SelectConfig.from_config(_cfg(**over))


def test_defaults_keep_every_record():
    config = SelectConfig.from_config(_cfg())
    assert config == SelectConfig("all", 0.5) and not config.scores


# ---------------------------------------------------------------------- on the real device model
LAMP2_INPUT = ("Which tag does this movie relate to among the following tags? Just answer with the tag name "
               "without further explanation. tags: [comedy, horror] description: {}")


@pytest.fixture(scope="module")
def tiny_model():
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model

    return DeviceModel(get_base_model("tiny-random"))


def _user(n: int):
    from cdcda_fl.data.lamp import Query, User

    profile = [{"id": f"p{i}", "description": f"a film about cats number {i}", "tag": "comedy"} for i in range(n)]
    return User(user_id=f"u-select-{n}", task="LaMP_2", profile=profile,
                queries=[Query(id="q0", input=LAMP2_INPUT.format("a film about cats"), gold="comedy")])


# Two records agree with everything the user's real items say (cats -> comedy), two contradict it.
SYNTHETIC = [{"id": "s0", "description": "a film about cats number 90", "tag": "comedy", "synthetic": True},
             {"id": "s1", "description": "a film about cats number 91", "tag": "horror", "synthetic": True},
             {"id": "s2", "description": "a film about cats number 92", "tag": "comedy", "synthetic": True},
             {"id": "s3", "description": "a film about cats number 93", "tag": "horror", "synthetic": True}]


def test_style_keeps_the_records_the_users_adapter_agrees_with(tiny_model, tmp_path):
    """A seeded case on the real model: the user's adapter, trained on cats -> comedy, ranks the two
    records that agree with it above the two that contradict it; the dropped ones and their reason
    are in the device's own synthetic log."""
    from cdcda_fl.device.personalize import personalize_user

    cfg = _cfg(**{"methods": "local,cdcda", "device.model": "tiny-random", "train.steps": 30, "train.lr": 0.01,
                  "train.batch-size": 2, "train.synthetic-gate": "none", "train.synthetic-select": "style",
                  "train.synthetic-select-keep": 0.5, "seed": 0})
    res = personalize_user(_user(4), SYNTHETIC, cfg, storage_dir=tmp_path, device_model=tiny_model)
    assert res["n_synthetic_selected"] == 2 and res["n_synthetic_used"] == 2
    log = json.loads(next((tmp_path / "synthetic" / "LaMP_2").glob("*.json")).read_text())
    assert sorted(r["id"] for r in log["kept"]) == ["s0", "s2"]
    assert log["counts"]["dropped_by_reason"] == {"style: not among the kept 50%": 2}


def test_the_holdout_check_selects_with_its_own_adapter_and_the_default_never_scores(tiny_model, tmp_path,
                                                                                    monkeypatch):
    """With the check, selection runs twice: for the final adapter and, after the check's real-only
    adapter has trained on the check's split, for the check; under the default, never."""
    import cdcda_fl.device.methods.cloud_records as cloud_records
    import cdcda_fl.device.personalize as personalize

    calls: list[int] = []
    real_select = cloud_records.select_records

    def spy(config, records, pairs, scorer):
        calls.append(len(records))
        return real_select(config, records, pairs, scorer)

    monkeypatch.setattr(cloud_records, "select_records", spy)
    base = {"methods": "local,cdcda", "device.model": "tiny-random", "train.steps": 2, "train.batch-size": 2,
            "train.equal-real-exposure": "false", "seed": 0, "train.synthetic-gate": "holdout"}
    res = personalize.personalize_user(_user(6), SYNTHETIC, _cfg(**base, **{"train.synthetic-select": "style"}),
                                       storage_dir=tmp_path / "style", device_model=tiny_model)
    assert calls == [4, 4]  # the final selection, then the check's (3 of 6 items held out)
    assert res["synthetic_decision"]["n_validation"] == 3 and res["n_synthetic_selected"] == 2
    calls.clear()
    res = personalize.personalize_user(_user(6), SYNTHETIC, _cfg(**base), storage_dir=tmp_path / "all",
                                       device_model=tiny_model)
    assert calls == [] and "n_synthetic_selected" not in res
    # a profile too small for the check falls back untested: nothing is scored for it
    res = personalize.personalize_user(_user(4), SYNTHETIC, _cfg(**base, **{"train.synthetic-select": "style"}),
                                       storage_dir=tmp_path / "small", device_model=tiny_model)
    assert calls == [] and not res["synthetic_decision"]["used_synthetic"]

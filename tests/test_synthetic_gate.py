"""The device's private check of the cloud's records (device/synthetic_gate.py) and its wiring."""

from __future__ import annotations

import random

import pytest

from cdcda_fl.core.config import load_config
from cdcda_fl.device.synthetic_gate import (
    GateConfig,
    GateError,
    HeldOutScores,
    cap_record_weights,
    check_step_scale,
    decide,
    holdout_split,
)

ITEMS = [{"id": str(i), "description": f"movie {i}", "tag": "comedy"} for i in range(9)]


def _losses(local: float, cdcda: float, metric_local: float | None = None, metric_cdcda: float | None = None,
            higher_is_better: bool = True):
    seen: dict[str, list] = {}

    def fn(train, held):
        seen["train"], seen["held"] = train, held
        return HeldOutScores(local, cdcda, metric_local, metric_cdcda, higher_is_better)
    return fn, seen


def test_falls_back_when_synthetic_data_fits_held_out_items_worse():
    fn, seen = _losses(1.0, 1.2)
    d = decide(GateConfig(rule="holdout"), ITEMS, 5, seed="s", held_out=fn)
    assert not d.used_synthetic and "fell back" in d.reason
    assert d.loss_local == 1.0 and d.loss_cdcda == 1.2 and d.n_validation == 3
    # held-out items are real items the throw-away adapters did not train on
    assert not {it["id"] for it in seen["train"]} & {it["id"] for it in seen["held"]}
    assert len(seen["train"]) + len(seen["held"]) == len(ITEMS)


def test_uses_synthetic_data_only_beyond_the_margin():
    fn, _ = _losses(1.0, 0.9)
    assert decide(GateConfig(rule="holdout"), ITEMS, 5, seed="s", held_out=fn).used_synthetic
    assert not decide(GateConfig(rule="holdout", margin=0.2), ITEMS, 5, seed="s", held_out=fn).used_synthetic


def test_a_worse_held_out_metric_vetoes_a_better_loss():
    """Real writing showed lower held-out loss with worse ROUGE: loss+metric falls back then."""
    fn, _ = _losses(3.0, 2.5, metric_local=0.23, metric_cdcda=0.16)
    d = decide(GateConfig(rule="holdout", criterion="loss+metric"), ITEMS, 5, seed="s", held_out=fn)
    assert not d.used_synthetic and "metric got worse" in d.reason
    assert decide(GateConfig(rule="holdout", criterion="loss"), ITEMS, 5, seed="s", held_out=fn).used_synthetic
    fn, _ = _losses(3.0, 2.5, metric_local=1.0, metric_cdcda=0.5, higher_is_better=False)  # MAE went down
    assert decide(GateConfig(rule="holdout"), ITEMS, 5, seed="s", held_out=fn).used_synthetic
    same = lambda train, held: HeldOutScores(1.0, 1.0, 0.5, 0.5, same_data=True)  # noqa: E731
    d = decide(GateConfig(rule="holdout"), ITEMS, 5, seed="s", held_out=same)
    assert not d.used_synthetic and "no synthetic record" in d.reason


def test_better_metric_criterion_needs_a_strictly_better_held_out_metric():
    """loss+better-metric: a metric tie (0 = 0 on three held-out tags) falls back, a gain uses."""
    strict = GateConfig(rule="holdout", criterion="loss+better-metric")
    fn, _ = _losses(2.67, 1.98, metric_local=0.0, metric_cdcda=0.0)
    tie_ok = GateConfig(rule="holdout", criterion="loss+metric")
    assert decide(tie_ok, ITEMS, 5, seed="s", held_out=fn).used_synthetic  # loss+metric lets a tie pass
    assert GateConfig().criterion == strict.criterion  # the default since 2026-12-07
    d = decide(strict, ITEMS, 5, seed="s", held_out=fn)
    assert not d.used_synthetic and "the held-out metric did not improve" in d.reason
    fn, _ = _losses(2.67, 1.98, metric_local=0.0, metric_cdcda=1 / 3)
    assert decide(strict, ITEMS, 5, seed="s", held_out=fn).used_synthetic
    fn, _ = _losses(2.67, 1.98, metric_local=1.0, metric_cdcda=0.67, higher_is_better=False)  # MAE fell
    assert decide(strict, ITEMS, 5, seed="s", held_out=fn).used_synthetic
    fn, _ = _losses(2.67, 2.9, metric_local=0.0, metric_cdcda=1.0)  # a better metric never overrides the loss
    assert not decide(strict, ITEMS, 5, seed="s", held_out=fn).used_synthetic
    fn, _ = _losses(2.67, 1.98)  # no metric (none computable): the loss decides, as for loss+metric
    assert decide(strict, ITEMS, 5, seed="s", held_out=fn).used_synthetic


def test_no_check_without_synthetic_data_or_enough_real_items():
    def never(train, held):
        raise AssertionError("must not train")
    assert not decide(GateConfig(rule="holdout"), ITEMS, 0, seed="s", held_out=never).used_synthetic
    small = decide(GateConfig(rule="holdout", min_real=3), ITEMS[:2], 4, seed="s", held_out=never)
    assert small.used_synthetic and small.reason.startswith("unchecked")
    assert decide(GateConfig(rule="none"), ITEMS, 4, seed="s", held_out=never).used_synthetic


def test_too_small_a_profile_to_test_on_three_items_falls_back_without_training():
    """LaMP-3 + a 1.5 B writer: one held-out rating passed the check for half the users and CDCDA
    got significantly worse; a decision to use now needs min_held_out (3) held-out items + 2 to train."""
    def never(train, held):
        raise AssertionError("must not train")
    for n in (1, 3, 4):
        d = decide(GateConfig(rule="holdout"), ITEMS[:n], 4, seed="s", held_out=never)
        assert not d.used_synthetic and "cannot test" in d.reason and d.n_validation == 0
    fn, seen = _losses(1.0, 0.9)
    d = decide(GateConfig(rule="holdout"), ITEMS[:5], 4, seed="s", held_out=fn)
    assert d.used_synthetic and d.n_validation == 3 and len(seen["train"]) == 2
    d = decide(GateConfig(rule="holdout", min_held_out=1), ITEMS[:3], 4, seed="s", held_out=fn)  # the rule before 2026-12-04
    assert d.used_synthetic and d.n_validation == 1
    with pytest.raises(GateError, match="min-held-out"):
        GateConfig.from_config(load_config(None, ["train.synthetic-gate-min-held-out=0"]))


def test_falls_back_untested_matches_what_decide_does():
    """The device skips the selection's scoring exactly for the profiles decide() falls back for
    without training anything."""
    def never(*_args):
        raise AssertionError("the check trained")

    for gate in (GateConfig(rule="holdout"), GateConfig(rule="holdout", min_real=3), GateConfig(rule="none"), GateConfig(rule="holdout", min_held_out=1)):
        for n in range(8):
            if gate.falls_back_untested(n):
                decision = decide(gate, [{"id": str(i)} for i in range(n)], 2, seed="s", held_out=never)
                assert not decision.used_synthetic and decision.n_validation == 0
            else:
                assert gate.rule == "none" or n < gate.min_real or n >= gate.min_checkable


def test_holdout_split_holds_out_at_least_min_held_out():
    for n in range(4, 10):
        train, held = holdout_split(ITEMS[:n], 0.34, "u1", min_held_out=3)
        assert len(held) == max(3, round(0.34 * n)) and len(train) == n - len(held)


def test_holdout_split_is_seeded_never_empty_never_all():
    for n in range(2, 12):
        train, held = holdout_split(ITEMS[:n] if n <= 9 else ITEMS * 2, 0.34, "u1")
        assert train and held
    a = holdout_split(ITEMS, 0.34, "u1")
    assert a == holdout_split(ITEMS, 0.34, "u1")
    assert {i["id"] for i in a[1]} != {i["id"] for i in holdout_split(ITEMS, 0.34, "u2")[1]} or True


def test_record_cap():
    assert cap_record_weights([5.0, 0.5], 1.0) == [1.0, 0.5]
    assert cap_record_weights([5.0], 0) == [5.0]


def test_bad_settings_are_named():
    cfg = load_config(None, ["train.synthetic-gate=sometimes"])
    with pytest.raises(GateError, match="train.synthetic-gate"):
        GateConfig.from_config(cfg)
    with pytest.raises(GateError, match="fraction"):
        GateConfig.from_config(load_config(None, ["train.synthetic-gate-fraction=1.0"]))


# ---------------------------------------------------------------------- wiring in personalize_user
@pytest.fixture(scope="module")
def tiny_model():
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model
    return DeviceModel(get_base_model("tiny-random"))


def test_check_budget_gives_each_item_the_final_trainings_passes():
    """epochs (default): 6 of 9 items -> 2/3 of the steps; steps: the full budget; bad value refused."""
    assert check_step_scale(GateConfig(), 6, 9) == pytest.approx(2 / 3)
    assert check_step_scale(GateConfig(budget="steps"), 6, 9) == 1.0
    assert check_step_scale(GateConfig(), 9, 9) == 1.0
    with pytest.raises(GateError, match="train.synthetic-gate-budget"):
        GateConfig.from_config(load_config(None, ["train.synthetic-gate-budget=weeks"]))


def test_the_check_trains_its_adapters_for_the_scaled_budget(tiny_model, tmp_path):
    """9 items, 3 held out: 6 steps of the 9 (real-only); real + synthetic also stretched by its mass."""
    from cdcda_fl.device.personalize import personalize_user

    synthetic = [{"id": f"s{i}", "description": f"another film {i}", "tag": "comedy", "synthetic": True}
                 for i in range(3)]
    steps = {}
    for budget in ("epochs", "steps"):
        res = personalize_user(_user(), synthetic, _cfg(**{"train.steps": 9, "train.synthetic-gate-budget": budget,
                                                                "train.synthetic-gate": "holdout"}),
                               storage_dir=tmp_path / budget, device_model=tiny_model)
        steps[budget] = res["synthetic_decision"]["check_steps"]
    assert steps["epochs"][0] == 6 and steps["steps"][0] == 9
    assert steps["epochs"][1] < steps["steps"][1] and steps["steps"][1] > 9  # equal real exposure stretches it


def _user(n_profile: int = 9):
    from cdcda_fl.data.lamp import Query, User
    r = random.Random(0)
    tags = ["comedy", "horror", "romance"]
    profile = [{"id": f"p{i}", "description": f"a film about {r.choice(['cats', 'ghosts', 'love'])} number {i}",
                "tag": tags[i % 3]} for i in range(n_profile)]
    queries = [Query(id=f"q{i}", input=f"Which tag does this movie relate to among the following tags? "
                     f"Just answer with the tag name without further explanation. tags: [comedy, horror, romance] "
                     f"description: a film {i}", gold=tags[i % 3]) for i in range(3)]
    return User(user_id="u-gate", task="LaMP_2", profile=profile, queries=queries)


def _cfg(**over):
    base = {"methods": "local,cdcda", "device.model": "tiny-random", "train.steps": 2, "train.batch-size": 2,
            "eval.batch-size": 4}
    return load_config(None, [f"{k}={v}" for k, v in {**base, **over}.items()])


def test_fall_back_gives_cdcda_exactly_the_local_answers_and_is_stored(tiny_model, tmp_path):
    from cdcda_fl.device.personalize import personalize_user
    from cdcda_fl.device.synthetic_store import load_synthetic_log

    user = _user()
    synthetic = [{"id": f"s{i}", "description": "zzzz qqqq " * 5, "tag": "horror", "synthetic": True}
                 for i in range(4)] + [{"id": "bad", "description": 5, "tag": "horror"}]
    # a margin no adapter can beat: the check must fall back
    res = personalize_user(user, synthetic, _cfg(**{"train.synthetic-gate-margin": 1e9, "train.synthetic-gate": "holdout"}), storage_dir=tmp_path,
                           device_model=tiny_model)
    d = res["synthetic_decision"]
    assert d["rule"] == "holdout" and d["used_synthetic"] is False and d["n_validation"] == 3
    assert res["n_synthetic_used"] == 0
    assert res["methods"]["cdcda"]["predictions"] == res["methods"]["local"]["predictions"]
    assert res["methods"]["cdcda"]["decision"] == {"rule": "holdout", "used_synthetic": False, "answer_with": "local"}
    log = load_synthetic_log(tmp_path, "u-gate", "LaMP_2")
    assert log is not None and len(log["received"]) == 5 and len(log["kept"]) == 4
    assert [d["reason"] for d in log["dropped"]] == ["invalid: field 'description' must be a string, got int"]
    assert log["decision"]["used_synthetic"] is False


def test_rule_none_always_trains_on_synthetic(tiny_model, tmp_path):
    from cdcda_fl.device.personalize import personalize_user

    synthetic = [{"id": f"s{i}", "description": f"another film {i}", "tag": "comedy", "synthetic": True}
                 for i in range(3)]
    res = personalize_user(_user(), synthetic, _cfg(**{"train.synthetic-gate": "none"}), storage_dir=tmp_path,
                           device_model=tiny_model)
    assert res["synthetic_decision"]["used_synthetic"] is True
    assert res["n_synthetic_used"] == 3
    assert res["methods"]["cdcda"]["train"]["n_synthetic"] == 3


# ---------------------------------------------------------------------- partial-field shares
def _lamp5_user():
    from cdcda_fl.data.lamp import Query, User
    profile = [{"id": f"p{i}", "abstract": f"We study problem {i} with method {i % 3} and find gains.",
                "title": f"Method {i % 3} for Problem {i}"} for i in range(6)]
    queries = [Query(id=f"q{i}", input=f"Generate a title for the following abstract of a paper: We study "
                     f"question {i}.", gold=f"Question {i}") for i in range(2)]
    return User(user_id="u-partial", task="LaMP_5", profile=profile, queries=queries)


@pytest.mark.parametrize("shared_field", ["title", "abstract"])
def test_partial_field_records_are_completed_on_the_device_and_used(tiny_model, tmp_path, shared_field,
                                                                    monkeypatch):
    """consent.fields=title (or abstract): the cloud can only write that field; the device completes
    the other (base model writes the abstract; the local adapter writes the title) and trains on it."""
    from cdcda_fl.device.personalize import personalize_user
    from cdcda_fl.device.synthetic_store import load_synthetic_log

    real_generate = tiny_model.generate

    def generate(prompts, *args, **kwargs):  # tiny-random answers only EOS: give its rows some text
        return [text or f"text {n}" for n, text in enumerate(real_generate(prompts, *args, **kwargs))]
    monkeypatch.setattr(tiny_model, "generate", generate)

    texts = {"title": "Sparse Methods for Dense Problems", "abstract": "We propose a sparse method for dense data."}
    synthetic = [{"id": f"s{i}", shared_field: f"{texts[shared_field]} {i}", "synthetic": True} for i in range(3)]
    res = personalize_user(_lamp5_user(), synthetic,
                           _cfg(**{"train.synthetic-gate": "none", "consent.fields": shared_field}),
                           storage_dir=tmp_path, device_model=tiny_model)
    log = load_synthetic_log(tmp_path, "u-partial", "LaMP_5")
    assert res["n_synthetic_completed"] + len(log["dropped"]) == 3
    assert res["n_synthetic_used"] == res["n_synthetic_completed"] > 0
    assert res["methods"]["cdcda"]["train"]["n_synthetic"] == res["n_synthetic_used"]
    other = "abstract" if shared_field == "title" else "title"
    assert all(r["completed"] == other and r[other] for r in log["kept"])

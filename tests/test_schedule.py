"""train.synthetic-schedule (device/schedule.py): how CDCDA's adapter trains on real + synthetic pairs."""

from __future__ import annotations

import pytest

from cdcda_fl.core.config import ConfigError, load_config
from cdcda_fl.device.schedule import SCHEDULES, schedule_name, train_cdcda

REAL = [(f"Which tag? description: a film about cats {i}", "comedy") for i in range(4)]
SYNTH = [(f"Which tag? description: another film {i}", "comedy") for i in range(2)]


class RecordingModel:
    """Records each train() call: what a schedule asks the device model to do (a unit-test double)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def train(self, examples, cfg, dp, weights=None, *, continue_active=False, **_kw):
        from cdcda_fl.device.training import TrainResult

        steps = cfg.total_steps(len(examples))
        self.calls.append({"examples": list(examples), "steps": steps, "weights": list(weights or []),
                           "continue": continue_active, "dp": dp})
        return TrainResult(steps=steps, trained_tokens=10 * steps, seconds=0.5, final_loss=float(len(self.calls)),
                           losses=[1.0] * steps)


def _cfg(**over):
    base = {"train.steps": 12, "train.equal-real-exposure": "false"}
    return load_config(None, [f"{k}={v}" for k, v in {**base, **over}.items()])


def test_mix_is_one_weighted_training_on_both():
    model = RecordingModel()
    res = train_cdcda(model, _cfg(), REAL, [1.0] * 4, SYNTH, [0.5, 0.5])
    (call,) = model.calls
    assert call["examples"] == REAL + SYNTH and call["weights"] == [1.0] * 4 + [0.5, 0.5]
    assert call["steps"] == 12 and not call["continue"] and res.steps == 12
    model = RecordingModel()
    train_cdcda(model, _cfg(**{"train.equal-real-exposure": "true"}), REAL, [1.0] * 4, SYNTH, [0.5, 0.5])
    assert model.calls[0]["steps"] == 15  # 12 x (4 + 1) / 4: the real records keep their updates


def test_synthetic_first_trains_the_clouds_records_then_local_onlys_budget_on_the_real_ones():
    model = RecordingModel()
    res = train_cdcda(model, _cfg(**{"train.synthetic-schedule": "synthetic-first"}), REAL, [1.0, 1.0, 2.0, 2.0],
                      SYNTH, [1.0, 1.0], step_scale=0.5)
    first, second = model.calls
    assert first["examples"] == SYNTH and not first["continue"] and first["weights"] == [1.0, 1.0]
    assert first["steps"] == 3  # 12 x 0.5 (check's scale) x 2/4 (synthetic mass per real record)
    assert second["examples"] == REAL and second["continue"] and second["weights"] == [1.0] * 4  # as local-only
    assert second["steps"] == 6  # local-only's budget at this scale, whatever the synthetic mass
    assert res.steps == 9 and res.final_loss == 2.0 and res.trained_tokens == 90


def test_synthetic_first_never_gives_the_clouds_records_more_passes_than_the_real_ones():
    model = RecordingModel()
    train_cdcda(model, _cfg(**{"train.synthetic-schedule": "synthetic-first"}), REAL, [1.0] * 4, SYNTH * 4,
                [1.0] * 8)
    assert [c["steps"] for c in model.calls] == [12, 12]


def test_without_synthetic_pairs_every_schedule_is_local_only_training():
    for name in SCHEDULES:
        model = RecordingModel()
        train_cdcda(model, _cfg(**{"train.synthetic-schedule": name}), REAL, [1.0] * 4, [], [])
        assert len(model.calls) == 1 and model.calls[0]["examples"] == REAL and model.calls[0]["steps"] == 12


def test_a_bad_schedule_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="train.synthetic-schedule must be one of mix, synthetic-first"):
        schedule_name(_cfg(**{"train.synthetic-schedule": "sometimes"}))


def test_synthetic_first_end_to_end_on_tiny_random(tmp_path):
    """The real device model: two stages on one adapter, reported steps are their sum, and the check
    (rule none here, holdout below) trains the same schedule."""
    from cdcda_fl.data.lamp import Query, User
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model
    from cdcda_fl.device.personalize import personalize_user

    profile = [{"id": f"p{i}", "description": f"a film about cats number {i}", "tag": ["comedy", "horror"][i % 2]}
               for i in range(6)]
    queries = [Query(id="q0", input="Which tag does this movie relate to among the following tags? Just answer "
                     "with the tag name without further explanation. tags: [comedy, horror] description: a film",
                     gold="comedy")]
    user = User(user_id="u-sched", task="LaMP_2", profile=profile, queries=queries)
    synthetic = [{"id": f"s{i}", "description": f"another film {i}", "tag": "comedy", "synthetic": True}
                 for i in range(3)]
    model = DeviceModel(get_base_model("tiny-random"))
    base = {"methods": "local,cdcda", "device.model": "tiny-random", "train.steps": 4, "train.batch-size": 2,
            "train.equal-real-exposure": "false", "train.synthetic-schedule": "synthetic-first"}
    cfg = load_config(None, [f"{k}={v}" for k, v in {**base, "train.synthetic-gate": "none"}.items()])
    res = personalize_user(user, synthetic, cfg, storage_dir=tmp_path / "none", device_model=model)
    assert res["methods"]["local"]["train"]["steps"] == 4
    # 3 comedy records of weight 1 = mass 0.5 per real record: 2 steps on them, then local-only's 4
    assert res["methods"]["cdcda"]["train"]["steps"] == 2 + 4 and res["n_synthetic_used"] == 3
    mix = personalize_user(user, synthetic, load_config(None, [f"{k}={v}" for k, v in {
        **base, "train.synthetic-gate": "none", "train.synthetic-schedule": "mix"}.items()]),
        storage_dir=tmp_path / "none", device_model=model)  # same store: a different adapter, not a reuse
    assert mix["methods"]["cdcda"]["train"]["steps"] == 4 and not mix["methods"]["cdcda"]["train"].get("reused")
    cfg = load_config(None, [f"{k}={v}" for k, v in {**base, "train.synthetic-gate": "holdout"}.items()])
    # rule holdout: 6 items, 3 held out
    res = personalize_user(user, synthetic, cfg, storage_dir=tmp_path / "holdout", device_model=model)
    # the check's real + synthetic adapter: 3 of 6 items -> 2 of the 4 steps, + 1 synthetic-stage step
    assert res["synthetic_decision"]["check_steps"] == [2, 1 + 2]

"""Stored adapters are keyed by resolved settings (device/train_key.py), not a hand-written key list
that missed train.equal-real-exposure and reused a stale adapter (issue 29.14)."""

from __future__ import annotations

import dataclasses

import pytest

from cdcda_fl.core.config import load_config, message_config, received_config
from cdcda_fl.device.select import SelectConfig
from cdcda_fl.device.synthetic_gate import GateConfig
from cdcda_fl.device.train_key import DPRule, adapter_key, base_identity, dp_key, gate_key, stages_key

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
    changed = _cfg(**{"train.synthetic-gate-margin": 0.3})
    assert _gate_key(cfg) != _gate_key(changed)
    assert _gate_key(cfg) == _gate_key(_cfg())


def _gate_key(cfg, gate=None, select=None):
    return gate_key(cfg, gate or GateConfig.from_config(cfg), select or SelectConfig.from_config(cfg),
                    REAL, [1.0] * 4, SYNTH, [0.5, 0.5])


def test_dp_key_holds_the_rule_the_candidates_and_the_shared_set():
    from cdcda_fl.device.dp_select import candidates_for

    cfg = _cfg(**{"dp.enabled": True, "dp.epsilon": 8.0})
    key = lambda c, shared=None: dp_key(c, DPRule.from_run_config(c), "cdcda", candidates_for(c, 4), None,  # noqa: E731
                                        (REAL,), shared)
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


# ---------------------------------------------------------------------- every field of the typed configs
def _changed(value):
    """A different value of the same kind (a field's default, a resolved setting)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, tuple):
        return (*value, "changed")
    if isinstance(value, dict):
        return {**value, "changed": True}
    if value is None:
        return 1
    raise TypeError(f"no changed value for {value!r}")


def _variants(obj):
    """(field path, a copy of the dataclass ``obj`` with that one field changed), nested dataclasses field by field."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            for path, inner in _variants(value):
                yield f"{f.name}.{path}", dataclasses.replace(obj, **{f.name: inner})
        else:
            yield f.name, dataclasses.replace(obj, **{f.name: _changed(value)})


def test_the_adapter_key_holds_every_field_of_every_stage():
    """A field added to a schedule stage or to LoraTrainConfig is in the key without anyone listing it."""
    from cdcda_fl.device.schedule import plan_cdcda

    cfg = _cfg(**{"train.synthetic-schedule": "synthetic-first"})
    stages = plan_cdcda(cfg, REAL, [1.0] * 4, SYNTH, [0.5, 0.5])
    base = base_identity(cfg)
    key = stages_key(base, stages, PAIRS, WEIGHTS)
    assert key == adapter_key(cfg, PAIRS, WEIGHTS, 4)
    for i, stage in enumerate(stages):
        variants = list(_variants(stage))
        assert {p for p, _ in variants} >= {f"lora.{f.name}" for f in dataclasses.fields(stage.lora)}
        for path, changed in variants:
            other = [changed if j == i else s for j, s in enumerate(stages)]
            assert stages_key(base, other, PAIRS, WEIGHTS) != key, f"stage {i}: {path} is not in the key"
    for name in base:
        assert stages_key({**base, name: _changed(base[name])}, stages, PAIRS, WEIGHTS) != key, name


def test_the_gate_key_holds_every_field_of_the_gate_and_selector_configs():
    cfg = _cfg()
    gate, select = GateConfig.from_config(cfg), SelectConfig.from_config(cfg)
    key = _gate_key(cfg, gate, select)
    for path, changed in _variants(gate):
        assert _gate_key(cfg, changed, select) != key, f"gate.{path} is not in the key"
    for path, changed in _variants(select):
        assert _gate_key(cfg, gate, changed) != key, f"select.{path} is not in the key"


def test_the_dp_key_holds_every_field_of_the_rule_and_the_candidates():
    """Every DPRule field (for a method that trains on the cloud's records), and every field of a
    candidate: its LoRA config, its DPConfig, its plan; and the public stage's LoRA config."""
    from cdcda_fl.device.dp_select import candidates_for, public_lora

    cfg = _cfg(**{"dp.enabled": True, "dp.epsilon": 8.0})
    rule, (candidate,) = DPRule.from_run_config(cfg), candidates_for(cfg, 4)[:1]
    stage = public_lora(candidate.lora, cfg, 2)

    def key(rule=rule, candidate=candidate, stage=stage):
        return dp_key(cfg, rule, "cdcda", [candidate], stage, (REAL, SYNTH))

    for path, changed in _variants(rule):
        assert key(rule=changed) != key(), f"rule.{path} is not in the key"
    for path, changed in _variants(candidate):
        assert key(candidate=changed) != key(), f"candidate.{path} is not in the key"
    for path, changed in _variants(stage):
        assert key(stage=changed) != key(), f"public stage {path} is not in the key"

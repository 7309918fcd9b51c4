"""Private adapters that never make a user worse: one ε for K candidates, privacy-free choice, fall-back."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from cdcda_fl.core.config import resolve
from cdcda_fl.data.lamp import Query, User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.dp_select import (
    Candidate,
    DPSelectError,
    candidates_for,
    composed_epsilon,
    holdout_split,
    shared_noise_multiplier,
    train_private,
)
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.methods.private import dp_training_data
from cdcda_fl.device.personalize import personalize_user
from cdcda_fl.device.training import LoraTrainConfig
from cdcda_fl.privacy.consent import share_records
from cdcda_fl.privacy.dp import DPConfig
from device_fixtures import USER_B, one_thread, tiny_base, tiny_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# More comedies: what a cloud model might write from USER_B's shared records.
COMEDY_VAL = [
    ("Which tag fits this movie? A baker enters a talent show.", "comedy"),
    ("Which tag fits this movie? Twins trade places at school.", "comedy"),
    ("Which tag fits this movie? A parrot inherits a fortune.", "comedy"),
]


def _noise_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,;"
    return [("".join(rng.choice(chars) for _ in range(40)), "".join(rng.choice(chars) for _ in range(60)))
            for _ in range(n)]


def _cand(name: str = "fast", lr: float = 5e-2, rank: int = 4, steps: int = 16, eps: float = 50.0) -> Candidate:
    """A candidate that learns on tiny-random in a few full-batch steps (the shipped plans are gentler)."""
    lora = LoraTrainConfig(rank=rank, alpha=2 * rank, dropout=0.0, target_modules=("q_proj", "v_proj"), steps=steps,
                           learning_rate=lr, batch_size=64, seed=0)
    return Candidate(name, lora, DPConfig(enabled=True, target_epsilon=eps, max_grad_norm=0.1), {"name": name})


def _cfg(**kw) -> dict:
    return resolve({"device.model": "tiny-random", "dp.enabled": True, "dp.epsilon": 8.0, "dp.selection": "synthetic",
                    **kw})


# ---------------------------------------------------------------------- accounting (no model)
@pytest.mark.parametrize("runs", [[(1.0, 16)], [(1.0, 16), (1.0, 16)], [(1.0, 16), (0.5, 10), (1.0, 8)]])
@pytest.mark.parametrize("target", [1.0, 8.0])
def test_composition_over_k_candidates_meets_the_target(runs, target):
    delta = 1e-2
    sigma = shared_noise_multiplier(runs, target, delta, "rdp")
    eps = composed_epsilon([(sigma, q, t) for q, t in runs], delta, "rdp")
    assert eps <= target and eps > 0.95 * target  # tight, never over
    if len(runs) > 1:  # K runs need more noise than one run at the same ε
        assert sigma > shared_noise_multiplier(runs[:1], target, delta, "rdp")


def test_candidates_from_config():
    cands = candidates_for(_cfg(**{"dp.candidates": 2}), 10)
    assert [c.name for c in cands] == ["r1-v", "r1-q+v"]
    assert all(c.lora.batch_size == 10 and c.dp.target_epsilon == 8.0 and c.lora.dropout == 0.0 for c in cands)
    manual = candidates_for(_cfg(**{"dp.auto": False, "train.steps": 6}), 10, step_scale=2.0)
    assert [c.name for c in manual] == ["config"] and manual[0].lora.steps == 12 and manual[0].lora.rank == 8
    with pytest.raises(DPSelectError, match="needs dp.auto"):
        candidates_for(_cfg(**{"dp.auto": False, "dp.candidates": 2}), 10)
    with pytest.raises(DPSelectError, match="only 3 automatic plans"):
        candidates_for(_cfg(**{"dp.candidates": 4}), 10)


# ---------------------------------------------------------------------- which data validates
def _user() -> User:
    profile = [{"id": f"p{i}", "description": f"Movie number {i} about things.", "tag": t}
               for i, t in enumerate(["comedy", "comedy", "horror", "comedy", "romance", "comedy"])]
    return User("u1", "LaMP_2", profile, [Query("q1", "Which tag fits this movie? A film.", "comedy")])


def _synthetic(n: int) -> list[dict]:
    return [{"id": f"s{i}", "description": f"A cloud-written film {i}.", "tag": "comedy"} for i in range(n)]


def test_validation_pairs_come_only_from_the_cloud_records_never_from_training():
    spec, user = get_task("LaMP_2"), _user()
    cfg = _cfg(**{"consent.share-fraction": 0.5})
    shared_ids = set(share_records(user, cfg).local_ids)
    private_pairs = set(spec.profile_to_pairs([r for r in user.profile if r["id"] not in shared_ids]))
    synthetic = _synthetic(8)
    syn_pairs = set(spec.profile_to_pairs(synthetic))

    real, syn_train, syn_w, val = dp_training_data(spec, user, synthetic, "local", cfg)
    assert syn_train == [] and syn_w == [] and set(val) == syn_pairs  # local: validates on all, trains on none
    assert real == spec.profile_to_pairs(user.profile) and not set(val) & set(real)

    real, syn_train, syn_w, val = dp_training_data(spec, user, synthetic, "cdcda", cfg)
    assert len(val) == 2 and len(syn_train) == 6  # dp.validation-fraction 0.25 held out
    assert set(val) <= syn_pairs and not set(val) & set(syn_train) and not set(val) & private_pairs
    assert not set(val) & set(real)
    # Weights come from public counts only: the same for every synthetic pair.
    assert syn_w == [1.0 * len(real) / 6] * 6
    # The held-out split is seeded: the same every time.
    assert dp_training_data(spec, user, synthetic, "cdcda", cfg)[3] == val


def test_train_private_drops_validation_pairs_that_are_training_pairs(tiny_base):
    dm = DeviceModel(tiny_base)
    val = [USER_B[0], COMEDY_VAL[0]]  # the cloud copied a record the user trains on
    decision, _ = train_private(dm, USER_B, [], val, _cfg(), candidates=[_cand(steps=2)])
    assert decision.n_validation == 1


def test_holdout_split_never_takes_all_and_keeps_weights_aligned():
    pairs = [(f"q{i}", f"a{i}") for i in range(5)]
    train, w, val = holdout_split(pairs, [float(i) for i in range(5)], 0.25, seed=1)
    assert len(val) == 1 and len(train) == 4 and not set(val) & set(train)
    assert all(float(p[0][1:]) == x for p, x in zip(train, w))
    assert holdout_split(pairs[:1], None, 0.9)[2] == []  # one record: nothing to hold out
    with pytest.raises(DPSelectError):
        holdout_split(pairs, None, 1.0)


# ---------------------------------------------------------------------- the decision
def test_no_validation_pair_falls_back_to_the_base(tiny_base):
    dm = DeviceModel(tiny_base)
    decision, res = train_private(dm, USER_B, [], [], _cfg())
    assert decision.fell_back and decision.chosen is None and res is None and not dm.has_adapter
    assert "no consented/synthetic validation pair" in decision.reason
    assert 0 < decision.epsilon <= 8.0 and decision.candidates[0]["name"] == "r1-v"


def test_validation_on_unrelated_noise_falls_back(tiny_base):
    dm = DeviceModel(tiny_base)
    decision, res = train_private(dm, USER_B, [], _noise_pairs(6), _cfg(), candidates=[_cand()])
    assert decision.fell_back and res is None and not dm.has_adapter
    assert decision.candidates[0]["validation_loss"] >= decision.base_loss * 0.99
    probe = [COMEDY_VAL[1]]
    assert dm.example_losses(probe) == DeviceModel(tiny_base).example_losses(probe)  # answers are the base's


def test_a_helpful_candidate_is_kept_and_the_best_of_k_is_the_one_loaded(tiny_base):
    dm = DeviceModel(tiny_base)
    weak, strong = _cand("weak", lr=1e-4, rank=1), _cand("strong", lr=5e-2, rank=4)
    decision, res = train_private(dm, USER_B, [], COMEDY_VAL, _cfg(**{"dp.epsilon": 50.0}),
                                  candidates=[strong, weak])
    assert not decision.fell_back and decision.chosen == "strong" and dm.has_adapter
    by_name = {c["name"]: c["validation_loss"] for c in decision.candidates}
    assert by_name["strong"] < decision.base_loss * 0.99 and by_name["strong"] < by_name["weak"]
    # The model holds the chosen (first, stored) candidate, not the last one trained.
    assert sum(dm.example_losses(COMEDY_VAL)) / 3 == pytest.approx(by_name["strong"], rel=1e-5)
    assert res is not None and res.epsilon == decision.epsilon
    assert decision.epsilon <= 50.0 and decision.epsilon > max(c["run_epsilon"] for c in decision.candidates)
    # What may leave the device carries no training loss or timing of the private records.
    assert not any(k in json.dumps(decision.to_dict()) for k in ("train_loss", "seconds"))
    assert decision.details[0]["final_train_loss"] is not None


def test_fallback_off_keeps_the_adapter(tiny_base):
    dm = DeviceModel(tiny_base)
    decision, res = train_private(dm, USER_B, [], _noise_pairs(4), _cfg(**{"dp.fallback": False}),
                                  candidates=[_cand()])
    assert not decision.fell_back and res is not None and dm.has_adapter and "keeping the adapter" in decision.reason
    dm.clear_adapter()


# ---------------------------------------------------------------------- on the device
def test_personalize_with_dp_reports_the_decision_and_answers_like_the_base_on_fall_back(tiny_base, tmp_path: Path):
    dm = DeviceModel(tiny_base)
    user = _user()
    cfg = _cfg(**{"methods": "base,local,cdcda", "consent.share-fraction": 0.5})
    # Cloud records unrelated to the task (noise): no DP adapter can beat the base on them.
    synthetic = [{"id": f"s{i}", "description": d, "tag": "comedy"} for i, (d, _) in enumerate(_noise_pairs(8))]
    synthetic.append(dict(user.profile[0], id="copy"))  # a copy of a profile record: never a validation pair
    out = personalize_user(user, synthetic, cfg, storage_dir=tmp_path, device_model=dm)
    base = out["methods"]["base"]["predictions"]
    for method, n_val in (("local", 8), ("cdcda", 2)):
        entry = out["methods"][method]
        dp = entry["dp"]
        assert dp["n_validation"] == n_val and dp["candidates"] and dp["base_loss"] is not None
        assert 0 < entry["epsilon"] == dp["epsilon"] <= 8.0
        if dp["fell_back"]:
            assert entry["predictions"] == base and dp["chosen"] is None
    assert out["methods"]["local"]["dp"]["fell_back"]  # noise validation: no evidence the adapter helps
    # A rerun reuses the stored decision (and adapter, if one was kept) and answers the same.
    again = personalize_user(user, synthetic, cfg, storage_dir=tmp_path, device_model=dm)
    for method in ("local", "cdcda"):
        assert again["methods"][method]["train"]["reused"] is True
        assert again["methods"][method]["predictions"] == out["methods"][method]["predictions"]
        assert again["methods"][method]["dp"] == out["methods"][method]["dp"]
    assert not dm.has_adapter


def test_personalize_without_dp_reports_no_decision(tiny_base, tmp_path: Path):
    dm = DeviceModel(tiny_base)
    cfg = resolve({"device.model": "tiny-random", "methods": "local", "train.steps": 1})
    out = personalize_user(_user(), [], cfg, storage_dir=tmp_path, device_model=dm)
    entry = out["methods"]["local"]
    assert "dp" not in entry and entry["epsilon"] is None and entry["train"]["steps"] == 1
    assert not math.isnan(entry["train"]["final_loss"])


# ---------------------------------------------------------------------- public warm start (CDCDA+DP)
def _params(dm: DeviceModel) -> dict:
    return {k: p.detach().clone() for k, p in dm.slots.params(dm.slots.name).items()}


def test_continue_active_trains_the_same_adapter_further(tiny_base):
    dm = DeviceModel(tiny_base)
    lora = LoraTrainConfig(rank=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"), steps=3,
                           learning_rate=5e-2, batch_size=4)
    with pytest.raises(RuntimeError, match="no active adapter"):
        dm.train(USER_B, lora, continue_active=True)
    dm.train(USER_B, lora)
    name, first = dm.slots.name, _params(dm)
    dm.train(COMEDY_VAL, lora, continue_active=True)
    assert dm.slots.name == name  # the same adapter, not a fresh one
    after = _params(dm)
    assert any(not (first[k] == after[k]).all() for k in first)
    # A fresh adapter from the same seed starts where the first one started, not from `first`.
    dm.train(COMEDY_VAL, lora)
    assert any(not (after[k] == v).all() for k, v in _params(dm).items())
    with pytest.raises(ValueError, match="layout"):
        dm.train(USER_B, LoraTrainConfig(rank=4, alpha=8, target_modules=("q_proj",), steps=1), continue_active=True)
    dm.clear_adapter()


def test_public_warmstart_is_a_noise_free_candidate_and_dp_continues_on_real_pairs_only(tiny_base):
    dm = DeviceModel(tiny_base)
    public = [("Which tag fits this movie? A clown runs a bank.", "comedy"),
              ("Which tag fits this movie? Cousins race lawn mowers.", "comedy"),
              ("Which tag fits this movie? A cat becomes a chef.", "comedy")]
    cfg = _cfg(**{"dp.epsilon": 50.0, "dp.public-steps": 8, "dp.public-lr": 5e-2})
    decision, res = train_private(dm, USER_B, [], COMEDY_VAL + public[:1], cfg, candidates=[_cand(steps=4)],
                                  public_pairs=public)
    assert decision.n_validation == 3  # a validation pair that is a public training pair is dropped
    names = [c["name"] for c in decision.candidates]
    assert names == ["public-only", "fast"]
    by = {c["name"]: c for c in decision.candidates}
    assert by["public-only"]["run_epsilon"] == 0.0 and by["public-only"]["public_steps"] == 8
    assert by["fast"]["public_steps"] == 8 and by["fast"]["steps"] == 4 and by["fast"]["run_epsilon"] > 0
    # One budget: only the DP run is composed (the public stage costs the non-shared records nothing).
    assert decision.epsilon == pytest.approx(by["fast"]["run_epsilon"], rel=1e-6) and decision.epsilon <= 50.0
    assert not decision.fell_back and res is not None and dm.has_adapter
    assert by[decision.chosen]["validation_loss"] < decision.base_loss
    # The model holds the chosen option's adapter.
    assert sum(dm.example_losses(COMEDY_VAL)) / 3 == pytest.approx(by[decision.chosen]["validation_loss"], rel=1e-5)
    dm.clear_adapter()


def test_personalize_cdcda_dp_warm_starts_on_the_cloud_records(tiny_base, tmp_path: Path):
    dm = DeviceModel(tiny_base)
    cfg = _cfg(**{"methods": "base,cdcda", "consent.share-fraction": 0.5, "dp.public-steps": 2})
    out = personalize_user(_user(), _synthetic(8), cfg, storage_dir=tmp_path, device_model=dm)
    entry = out["methods"]["cdcda"]
    assert entry["train"]["n_public_warmstart"] == 6 and entry["train"]["n_real"] == 6
    assert [c["name"] for c in entry["dp"]["candidates"]] == ["public-only", "r1-v"]
    off = personalize_user(_user(), _synthetic(8), {**cfg, "dp.public-warmstart": False}, storage_dir=tmp_path,
                           device_model=dm)
    assert off["methods"]["cdcda"]["train"]["n_public_warmstart"] == 0
    assert [c["name"] for c in off["methods"]["cdcda"]["dp"]["candidates"]] == ["r1-v"]


# ---------------------------------------------------------------------- private selection (dp.selection = private)
def test_exponential_mechanism_prefers_the_better_option_as_epsilon_grows():
    from cdcda_fl.device.dp_select import exponential_mechanism

    def share(eps: float) -> float:
        rng = random.Random(0)
        return sum(exponential_mechanism([0.0, 1.0], eps, rng) for _ in range(4000)) / 4000

    # P(better) = e^(ε/2) / (1 + e^(ε/2)) for a utility gap of 1 (the sensitivity).
    for eps in (0.5, 2.0, 8.0):
        assert share(eps) == pytest.approx(math.exp(eps / 2) / (1 + math.exp(eps / 2)), abs=0.03)
    with pytest.raises(DPSelectError):
        exponential_mechanism([0.0, 1.0], 0.0, random.Random(0))


def test_private_selection_keeps_a_public_adapter_that_fits_the_private_records(tiny_base):
    from cdcda_fl.device.dp_select import select_public_privately

    dm = DeviceModel(tiny_base)
    cfg = _cfg(**{"dp.epsilon": 50.0, "dp.public-steps": 12, "dp.public-lr": 5e-2})
    lora = _cand().lora
    decision, res = select_public_privately(dm, COMEDY_VAL, USER_B, cfg, lora, seed="t")
    assert decision.chosen == "public-only" and not decision.fell_back and dm.has_adapter
    assert res is not None and res.epsilon == decision.epsilon == 50.0
    # The private utilities stay on the device: not in what may leave it.
    out = json.dumps(decision.to_dict())
    d = decision.details[0]
    assert '"utility"' not in out and repr(d["utility"])[:8] not in out and repr(d["base_utility"])[:8] not in out
    assert d["utility"] > d["base_utility"]
    dm.clear_adapter()
    # Where the user's own records say the adapter answers worse than the base (a stand-in task
    # metric), the ε-DP choice falls back and the model is the base again.

    def adapter_is_wrong(model, pairs):
        return [0.0 if model.has_adapter else 1.0 for _ in pairs]

    decision, res = select_public_privately(dm, COMEDY_VAL, USER_B, cfg, lora, seed="t", utilities=adapter_is_wrong)
    assert decision.fell_back and res is None and not dm.has_adapter
    assert decision.details[0]["utility"] < decision.details[0]["base_utility"]


def test_personalize_with_private_selection_never_trains_on_private_records(tiny_base, tmp_path: Path, monkeypatch):
    from cdcda_fl.core.config import ConfigError, check_dp_selection

    seen: list[list] = []
    real_train = DeviceModel.train

    def spy(self, examples, *a, **kw):
        seen.append(list(examples))
        return real_train(self, examples, *a, **kw)

    monkeypatch.setattr(DeviceModel, "train", spy)
    dm = DeviceModel(tiny_base)
    user = _user()
    cfg = _cfg(**{"methods": "base,cdcda", "consent.share-fraction": 0.5, "dp.selection": "private",
                  "dp.public-steps": 2})
    out = personalize_user(user, _synthetic(8), cfg, storage_dir=tmp_path, device_model=dm)
    entry = out["methods"]["cdcda"]
    assert entry["epsilon"] == 8.0 and entry["dp"]["criterion"].startswith("exponential mechanism")
    real = set(get_task("LaMP_2").profile_to_pairs(user.profile))
    assert seen and all(not set(batch) & real for batch in seen)  # only the cloud's records were trained on
    assert entry["dp"]["n_validation"] == len(user.profile) - len(share_records(user, cfg).local_ids)
    with pytest.raises(ConfigError, match="choose from synthetic, private"):
        check_dp_selection({**cfg, "dp.selection": "magic"})
    # No target ε (σ given instead): nothing for the mechanism to spend, so DP-SGD candidates as before.
    sigma_only = {**cfg, "dp.epsilon": 0.0, "dp.noise-multiplier": 1.0}
    out = personalize_user(user, _synthetic(8), sigma_only, storage_dir=tmp_path, device_model=dm)
    assert "r1-v" in [c["name"] for c in out["methods"]["cdcda"]["dp"]["candidates"]]

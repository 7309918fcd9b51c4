"""Canary exposure (Secret Sharer): the rank/exposure arithmetic, keeping canaries off the cloud, the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from cdcda_fl.core.config import resolve
from cdcda_fl.data.lamp import Query, User
from cdcda_fl.privacy.consent import share_records
from cdcda_fl.privacy.canary import (
    CanaryError,
    candidate_secrets,
    canary_consent,
    check_not_shared,
    exposure,
    make_canaries,
    measure_exposure,
    plant,
    rank_of,
)
from device_fixtures import one_thread, tiny_base, tiny_cache  # noqa: F401


# ---------------------------------------------------------------------- rank and exposure, by hand
def test_rank_counts_lower_losses_and_splits_ties():
    assert rank_of(0.5, [1.0, 2.0, 3.0]) == 1.0
    assert rank_of(2.5, [1.0, 2.0, 3.0]) == 3.0
    assert rank_of(9.0, [1.0, 2.0, 3.0]) == 4.0
    assert rank_of(2.0, [2.0, 2.0, 1.0]) == 3.0  # one lower, two ties: mid rank 1 + 1 + 1


def test_a_memorised_canary_has_the_maximum_exposure():
    candidates = [1.0 + i / 100 for i in range(127)]  # R = 128
    assert exposure(0.1, candidates) == pytest.approx(7.0)  # log2 128: ranked first
    assert exposure(5.0, candidates) == pytest.approx(0.0)  # ranked last
    assert exposure(1.005, candidates) == pytest.approx(7.0 - 1.0)  # rank 2: one bit less


def test_an_unseen_canary_has_small_exposure_about_log2_e():
    r = 128
    # Every rank equally likely (the canary is just another random secret): exact mean over ranks.
    exact = sum(exposure(k - 0.5, list(range(1, r))) for k in range(1, r + 1)) / r
    assert exact == pytest.approx(math.log2(r) - math.log2(math.factorial(r)) / r)
    assert abs(exact - math.log2(math.e)) < 0.1
    # The same from random losses: the canary's loss drawn like the others'.
    rng = random.Random(0)
    sampled = [exposure(rng.random(), [rng.random() for _ in range(r - 1)]) for _ in range(2000)]
    assert abs(sum(sampled) / len(sampled) - exact) < 0.15
    assert sum(sampled) / len(sampled) < 0.25 * math.log2(r)


def test_exposure_refuses_meaningless_input():
    with pytest.raises(CanaryError, match="at least one candidate"):
        exposure(1.0, [])
    with pytest.raises(CanaryError, match="finite"):
        exposure(float("nan"), [1.0])


class _FakeModel:
    """example_losses: the canary's own secret (first pair) scores `own`, every other secret 1.0 + noise."""

    def __init__(self, own: float):
        self.own = own

    def example_losses(self, pairs, batch_size=16):
        return [self.own] + [1.0 + i * 1e-3 for i in range(1, len(pairs))]


def test_measure_exposure_scores_the_canary_against_its_candidates():
    (c,) = make_canaries("LaMP_5", 1, seed=0)
    hit = measure_exposure(_FakeModel(0.1), [c], 16, planted=True)[0]
    miss = measure_exposure(_FakeModel(9.0), [c], 16, planted=False)[0]
    assert hit.rank == 1 and hit.exposure == pytest.approx(4.0) == pytest.approx(hit.max_exposure)
    assert miss.rank == 16 and miss.exposure == pytest.approx(0.0) and not miss.planted


def test_canaries_and_candidates_are_seeded_and_distinct():
    a, b = make_canaries("LaMP_2", 3, seed=1), make_canaries("LaMP_2", 3, seed=1)
    assert a == b and len({c.secret for c in a}) == 3 and all(c.label for c in a)
    others = candidate_secrets(a[0], 32, seed=1)
    assert len(others) == 31 == len(set(others)) and a[0].secret not in others
    assert a[0].secret in a[0].pair()[0]  # LaMP-2: the secret sits in the input
    (t,) = make_canaries("LaMP_5", 1)
    assert t.secret in t.pair()[1]  # LaMP-5: in the output
    with pytest.raises(CanaryError, match="not supported"):
        make_canaries("LaMP_1", 1)


# ---------------------------------------------------------------------- canaries stay on the device
def _user() -> User:
    profile = [{"id": f"p{i}", "description": f"Movie {i} about a long journey.", "tag": "comedy"} for i in range(6)]
    return User("u7", "LaMP_2", profile, [Query("q1", "Which tag fits this movie? A film.", "comedy")])


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_planted_canaries_never_reach_the_share_payload(fraction):
    user = _user()
    cfg = resolve({"consent.share-fraction": fraction})
    canaries = make_canaries("LaMP_2", 3, seed="u7")
    planted = plant(user, canaries, repeats=2)
    assert len(planted.profile) == len(user.profile) + 6
    consent = canary_consent(cfg, user, canaries)
    shared = share_records(planted, consent)
    check_not_shared(shared, canaries)  # does not raise
    payload = json.dumps(shared.to_dict())
    assert not any(c.secret in payload or f'"{c.id}' in payload for c in canaries)
    # Planting changes neither which nor how many records leave.
    assert shared.local_ids == share_records(user, cfg).local_ids
    # Without the canary consent, sharing everything would leak them, and the check says so.
    if fraction == 1.0:
        with pytest.raises(CanaryError, match="would reach the cloud"):
            check_not_shared(share_records(planted, cfg), canaries)


def test_canary_ids_must_not_clash():
    user = _user()
    (c,) = make_canaries("LaMP_2", 1)
    with pytest.raises(CanaryError, match="already has"):
        plant(plant(user, [c]), [c])


# ---------------------------------------------------------------------- `cdcda audit canaries`
@pytest.mark.usefixtures("one_thread")
def test_cli_audit_canaries_end_to_end(tiny_base, tiny_cache, tmp_path: Path, monkeypatch, capsys):
    from cdcda_fl.cli import main

    monkeypatch.setenv("CDCDA_CACHE_DIR", str(tiny_cache))
    import cdcda_fl.sweeps.canary_audit as canary_audit

    real, asked = canary_audit.device_model_for, []

    def recording(cfg):  # the audit must take the base the device would use per setting (fp32 under DP)
        asked.append(bool(cfg["dp.enabled"]))
        return real(cfg)

    monkeypatch.setattr(canary_audit, "device_model_for", recording)
    out = tmp_path / "audit"
    rc = main(["audit", "canaries", "--out", str(out), "--candidates", "8", "--dp-epsilon", "off,8",
               "--set", "tasks=LaMP_2", "--set", "users=1", "--set", "device.model=tiny-random",
               "--set", "train.steps=2", "--set", "personas.queries=2"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "canaries.json").read_text())
    assert report["candidates"] == 8 and report["settings"] == ["off", 8.0] and len(report["users"]) == 1
    (user,) = report["users"]
    assert user["canaries_shared"] == 0 and user["records_shared"] >= 0
    off, dp = user["settings"]
    assert off["epsilon"] is None and 0 < dp["epsilon"] <= 8.0 and dp["plan"]["name"] == "r1-v"
    for s in (off, dp):
        assert len(s["canaries"]) == 4 and {c["planted"] for c in s["canaries"]} == {True, False}
        assert all(0.0 <= c["exposure"] <= 3.0 and c["candidates"] == 8 for c in s["canaries"])
    assert {r["dp_epsilon"] for r in report["summary"]} == {"off", "8.0"}
    assert asked == [False, True] and off["dtype"] == dp["dtype"] == "torch.float32"
    assert "canaries.json" in capsys.readouterr().out


def test_cli_audit_rejects_bad_settings(capsys):
    from cdcda_fl.cli import main

    assert main(["audit", "canaries", "--dp-epsilon", "loud"]) == 2
    assert "neither 'off' nor a number" in capsys.readouterr().err
    assert main(["audit", "canaries", "--candidates", "1"]) == 2

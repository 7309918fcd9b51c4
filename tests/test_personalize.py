"""Device-side personalization logic that needs no model: the real/synthetic mixture."""

from __future__ import annotations

import pytest

from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.methods.mixture import mixture_weights


def _items(tags: list[str]) -> list[dict]:
    return [{"id": str(i), "description": f"d{i}", "tag": t} for i, t in enumerate(tags)]


def _mass(items, weights) -> dict[str, float]:
    out: dict[str, float] = {}
    for item, w in zip(items, weights):
        out[item["tag"]] = out.get(item["tag"], 0.0) + w
    return out


def test_label_mass_follows_the_real_distribution_whatever_the_cloud_covered() -> None:
    spec = get_task("LaMP_2")
    real = _items(["fantasy", "fantasy", "romance", "dark comedy"])
    # the user shared only fantasy records, so the cloud wrote only fantasy (plus one foreign tag)
    synthetic = _items(["fantasy"] * 7 + ["action"])
    kept, real_w, syn_w = mixture_weights(spec, real, synthetic, alpha=1.0)
    assert all(r["tag"] == "fantasy" for r in kept) and len(kept) == 7  # unused label dropped
    mass = _mass(real + kept, real_w + syn_w)
    assert mass == pytest.approx({"fantasy": 4.0, "romance": 2.0, "dark comedy": 2.0})  # (1 + alpha) * real


def test_generation_mixing_ratio_is_fixed() -> None:
    spec = get_task("LaMP_5")
    real = [{"id": str(i), "abstract": "a", "title": "t"} for i in range(4)]
    synthetic = [{"id": f"s{i}", "abstract": "a", "title": "t"} for i in range(10)]
    kept, real_w, syn_w = mixture_weights(spec, real, synthetic, alpha=0.5)
    assert len(kept) == 10 and sum(real_w) == 4 and sum(syn_w) == pytest.approx(2.0)


def test_no_synthetic_or_zero_alpha() -> None:
    spec = get_task("LaMP_3")
    real = [{"id": "1", "text": "x", "score": "4"}]
    assert mixture_weights(spec, real, [], 1.0) == ([], [1.0], [])
    assert mixture_weights(spec, real, [{"id": "s", "text": "y", "score": 4}], 0.0)[0] == []
    kept, _, syn_w = mixture_weights(spec, real, [{"id": "s", "text": "y", "score": 4.0}], 1.0)
    assert len(kept) == 1 and syn_w == [1.0]  # scores compare as ratings, not strings


def test_every_configurable_method_has_an_implementation():
    """config.METHODS (what `methods=` accepts) is the method table's list, and every name in it
    builds the device class the table names (tests/test_methods.py checks the table itself)."""
    from cdcda_fl.core.config import METHODS as CONFIGURABLE
    from cdcda_fl.device.methods.registry import method_class
    from cdcda_fl.core.method_table import METHODS as TABLE

    assert CONFIGURABLE is TABLE
    assert [method_class(m).name for m in CONFIGURABLE] == list(CONFIGURABLE)

"""Bootstrap intervals over users: checked against exact enumeration, edge cases, pairing."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from cdcda_fl.evaluation.stats import (
    DEFAULT_RESAMPLES,
    TIE_TOLERANCE,
    bootstrap_means,
    format_interval,
    mean_ci,
    paired_diff_ci,
    win_tie_loss,
)


def _exact_percentile(values: list[int], p: float) -> Fraction:
    """The p-quantile (smallest m with P(mean <= m) >= p) of the exact bootstrap distribution.

    With n users there are n**n equally likely resamples; for 3 users that is 27, few enough to list.
    """
    n = len(values)
    means = sorted(Fraction(sum(c), n) for c in itertools.product(values, repeat=n))
    for i, m in enumerate(means):
        if Fraction(i + 1, len(means)) >= Fraction(p).limit_denominator(1000):
            return m
    return means[-1]


def test_default_resamples_at_least_2000() -> None:
    assert DEFAULT_RESAMPLES >= 2000


def test_interval_matches_hand_computed_exact_bootstrap() -> None:
    # Users scoring 0, 2, 7: the 27 resample means have P(mean <= 0) = 1/27, P(<= 2/3) = 4/27, ...,
    # P(<= 14/3) = 23/27, P(<= 16/3) = 26/27. An 80 % interval (10th and 90th percentiles) is
    # therefore [2/3, 16/3]; a 95 % one (2.5th, 97.5th) is [0, 7]. No percentile sits near a jump
    # of the distribution function, so 4000 seeded resamples land on the exact values.
    values = [0, 2, 7]
    assert _exact_percentile(values, 0.10) == Fraction(2, 3)
    assert _exact_percentile(values, 0.90) == Fraction(16, 3)
    mean, lo, hi = mean_ci(values, level=0.80)
    assert mean == pytest.approx(3.0)
    assert lo == pytest.approx(2 / 3) and hi == pytest.approx(16 / 3)
    mean, lo, hi = mean_ci(values, level=0.95)
    assert (lo, hi) == (pytest.approx(0.0), pytest.approx(7.0))


@pytest.mark.parametrize("values", [[1, 2, 6], [0, 1, 4]])
def test_interval_matches_enumeration_for_other_small_cases(values: list[int]) -> None:
    _, lo, hi = mean_ci(values, level=0.80, n_resamples=20000, seed=3)
    assert lo == pytest.approx(float(_exact_percentile(values, 0.10)))
    assert hi == pytest.approx(float(_exact_percentile(values, 0.90)))


def test_percentiles_agree_with_numpy_on_the_same_resamples() -> None:
    values = np.random.default_rng(1).uniform(0, 1, size=40)
    means = bootstrap_means(values, n_resamples=3000, seed=11)
    _, lo, hi = mean_ci(values, n_resamples=3000, seed=11)
    assert (lo, hi) == tuple(np.quantile(means, [0.025, 0.975], method="inverted_cdf"))
    assert lo < values.mean() < hi


def test_seeded_and_seed_matters() -> None:
    values = np.random.default_rng(2).normal(size=25)
    assert mean_ci(values, seed=5) == mean_ci(values, seed=5)
    assert mean_ci(values, seed=5) != mean_ci(values, seed=6)


def test_all_equal_values_give_zero_width_interval() -> None:
    assert mean_ci([0.625] * 9) == (pytest.approx(0.625), pytest.approx(0.625), pytest.approx(0.625))


def test_zero_and_one_user_give_no_interval() -> None:
    assert mean_ci([]) == (None, None, None)
    assert mean_ci([0.4]) == (pytest.approx(0.4), None, None)
    assert paired_diff_ci([0.5], [0.25]) == (pytest.approx(0.25), None, None)
    assert win_tie_loss([], []) == (0, 0, 0)
    assert format_interval(mean_ci([])) == "–"
    assert format_interval(mean_ci([0.4])) == "0.400"


def test_weights_make_the_mean_the_pooled_metric() -> None:
    # User A: 2 of 2 queries right; user B: 1 of 8. Pooled accuracy = 3/10, not (1 + 1/8) / 2.
    mean, lo, hi = mean_ci([1.0, 0.125], weights=[2, 8])
    assert mean == pytest.approx(0.3)
    assert lo is not None and hi is not None and 0.125 <= lo <= 0.3 <= hi <= 1.0
    assert mean_ci([0.2, 0.6], weights=[3, 3]) == pytest.approx(mean_ci([0.2, 0.6]))


def test_bad_input_fails_clearly() -> None:
    with pytest.raises(ValueError, match="same users"):
        paired_diff_ci([1, 2], [1])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        mean_ci([0.1, 0.2], level=95)
    with pytest.raises(ValueError, match="weights"):
        mean_ci([0.1, 0.2], weights=[1])


def test_paired_interval_narrower_than_unpaired_on_correlated_users() -> None:
    rng = np.random.default_rng(0)
    ability = rng.uniform(0.1, 0.9, size=30)           # hard users are hard for both methods
    a = ability + 0.05 + rng.normal(0, 0.02, size=30)
    b = ability + rng.normal(0, 0.02, size=30)
    mean, lo, hi = paired_diff_ci(a, b)
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert lo > 0  # the pairing detects the 0.05 gain ...
    unpaired = bootstrap_means(a, seed=1) - bootstrap_means(b, seed=2)
    u_lo, u_hi = np.quantile(unpaired, [0.025, 0.975])
    assert u_lo < 0 < u_hi  # ... that two independent resamplings cannot tell from noise
    assert (hi - lo) < 0.25 * (u_hi - u_lo)


def test_win_tie_loss_with_tolerance_and_direction() -> None:
    a = [0.50, 0.50, 0.50, 0.50 + TIE_TOLERANCE / 2, 0.80]
    b = [0.40, 0.60, 0.50, 0.50, 0.30]
    assert win_tie_loss(a, b) == (2, 2, 1)
    assert win_tie_loss(a, b, tie=0.2) == (1, 4, 0)
    # MAE: lower is better, so a = 0.5 against b = 1.0 is a win for a.
    assert win_tie_loss([0.5, 1.0], [1.0, 1.0], lower_is_better=True) == (1, 1, 0)
    assert win_tie_loss([0.5, 1.0], [1.0, 1.0]) == (0, 1, 1)


def test_format_interval() -> None:
    assert format_interval((0.5833, 0.41, 0.75)) == "0.583 [0.410, 0.750]"
    assert format_interval((0.05, -0.01, 0.1), signed=True, digits=2) == "+0.05 [-0.01, +0.10]"
    assert format_interval((0.5833, 0.41, 0.75), ci_digits=2) == "0.583 [0.41, 0.75]"


def test_task_intervals_block_for_results_json() -> None:
    from cdcda_fl.evaluation.stats import task_intervals

    # MAE (lower is better): CDCDA lowers every user's error by 0.5 -> gain +0.5, 3 wins.
    per_user = {"local": {"u1": (1.5, 4), "u2": (1.0, 4), "u3": (2.0, 4)},
                "cdcda": {"u1": (1.0, 4), "u2": (0.5, 4), "u3": (1.5, 4)},
                "base": {"u1": (3.0, 4)}}
    block = task_intervals(per_user, "mae", lower_is_better=True, seed=0)
    assert block["methods"]["local"]["mean"] == pytest.approx(1.5)
    assert block["methods"]["base"] == {"mean": 3.0, "lo": None, "hi": None, "n_users": 1}
    cmp = block["cdcda_vs_local"]
    assert cmp["diff"] == {"mean": pytest.approx(-0.5), "lo": pytest.approx(-0.5), "hi": pytest.approx(-0.5)}
    assert cmp["gain"] == {"mean": pytest.approx(0.5), "lo": pytest.approx(0.5), "hi": pytest.approx(0.5)}
    assert (cmp["wins"], cmp["ties"], cmp["losses"], cmp["n_users"]) == (3, 0, 0, 3)
    assert cmp["verdict"] == "better" and block["higher_is_better"] is False
    assert block["per_user"]["cdcda"] == {"u1": 1.0, "u2": 0.5, "u3": 1.5}
    # Accuracy (higher is better), a mixed picture: gain's interval straddles zero.
    acc = {"local": {"a": (0.5, 8), "b": (0.75, 8), "c": (0.25, 8)},
           "cdcda": {"a": (0.625, 8), "b": (0.625, 8), "c": (0.25, 8)}}
    cmp = task_intervals(acc, "accuracy", lower_is_better=False)["cdcda_vs_local"]
    assert (cmp["wins"], cmp["ties"], cmp["losses"]) == (1, 1, 1)
    assert cmp["gain"]["lo"] < 0 < cmp["gain"]["hi"] and cmp["verdict"] == "not significant"
    assert "cdcda_vs_local" not in task_intervals({"local": acc["local"]}, "accuracy", lower_is_better=False)


def test_intervals_agree_with_scipys_percentile_bootstrap() -> None:
    """The hand-written resampler against a maintained one (scipy.stats.bootstrap, same seeded
    generator, percentile method): the ends agree to a few ten-thousandths (interpolation)."""
    import numpy as np
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(7)
    for n in (5, 12, 30):
        a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
        ours = paired_diff_ci(a, b, seed=0)
        ref = scipy_stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True,
                                    vectorized=True, n_resamples=4000, method="percentile",
                                    random_state=np.random.default_rng(0)).confidence_interval
        assert abs(ours.lo - ref.low) < 2e-3 and abs(ours.hi - ref.high) < 2e-3, (n, ours, ref)

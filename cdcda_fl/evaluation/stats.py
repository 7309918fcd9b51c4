"""Confidence intervals over users: is a difference between two methods more than noise?

Why over users: personalization is per user, and a run's queries are not independent (a user's
queries share one adapter and one style), so the unit that is resampled is the user, not the
query. Everything here is a seeded percentile bootstrap over users (numpy only):

- :func:`mean_ci`: a method's metric, the mean over users with a 95 % interval. Optional
  per-user weights (a user's number of queries) make the point estimate equal to the pooled
  metric every report shows: accuracy, MAE and ROUGE-1 are all means over queries, so the pooled
  value is the query-weighted mean of the per-user values.
- :func:`paired_diff_ci`: the same users under two methods; the interval of the mean per-user
  difference. Pairing removes the between-user spread both methods share (hard users are hard for
  both), so it is much narrower than comparing two unpaired intervals.
- :func:`win_tie_loss`: how many users each method serves better, with a stated tie tolerance.

With 0 users there is no estimate and with 1 user no interval: those come back as ``None``, never
as an exception or a zero-width interval that would look like certainty.

Why not ``scipy.stats.bootstrap`` (issue 30): with the same seeded generator it draws the same
resamples and gives the same intervals up to its interpolating percentile (largest end difference
0.0002 over 12 paired comparisons of real runs, 2026-12-07; ``tests/test_stats.py`` checks the
agreement), but its ends are then not resample means, which the exact-enumeration tests rely on,
and it has no per-user weights. The resampler below is a dozen lines of numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_RESAMPLES = 4000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
# Two per-user scores closer than this count as a tie: one hundredth of the metric's scale
# (1 ROUGE point, 1 accuracy point, 0.01 stars of MAE). Differences that small are below what a
# reader would call a different result for one user; exact ties (common for accuracy over a few
# queries) are ties under any tolerance.
TIE_TOLERANCE = 0.01
_CHUNK = 512  # resamples drawn at a time, so memory stays ~CHUNK x users whatever the resample count


class Interval(NamedTuple):
    """A point estimate with its bootstrap interval; ``lo``/``hi`` are None below two users."""

    mean: float | None
    lo: float | None
    hi: float | None


class WinTieLoss(NamedTuple):
    """Users where the first method is better, within the tie tolerance, and worse."""

    wins: int
    ties: int
    losses: int


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains a non-finite value (NaN or inf); drop users without a score first")
    return arr


def _check(level: float, n_resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def bootstrap_means(values: Sequence[float] | np.ndarray, *, weights: Sequence[float] | np.ndarray | None = None,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The (weighted) mean of ``n_resamples`` resamples of the users, drawn with replacement."""
    x = _as_array(values, "values")
    w = np.ones_like(x) if weights is None else _as_array(weights, "weights")
    if w.shape != x.shape:
        raise ValueError(f"weights has {w.size} entries but values has {x.size}")
    if np.any(w <= 0):
        raise ValueError("weights must be positive (a user's number of queries)")
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(n_resamples, start + _CHUNK)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = (x[idx] * w[idx]).sum(axis=1) / w[idx].sum(axis=1)
    return out


def mean_ci(values: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL, *,
            weights: Sequence[float] | np.ndarray | None = None, n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> Interval:
    """Mean over users with a percentile-bootstrap interval at ``level`` (seeded: same input, same interval).

    The interval's ends are resample means themselves (numpy's ``inverted_cdf`` quantile), so all
    users scoring the same gives a zero-width interval, and small cases can be checked by
    enumerating every resample exactly.
    """
    _check(level, n_resamples)
    x = _as_array(values, "values")
    if x.size == 0:
        return Interval(None, None, None)
    w = np.ones_like(x) if weights is None else _as_array(weights, "weights")
    if w.shape != x.shape:
        raise ValueError(f"weights has {w.size} entries but values has {x.size}")
    mean = float(np.sum(x * w) / np.sum(w))
    if x.size == 1:
        return Interval(mean, None, None)
    means = bootstrap_means(x, weights=w, n_resamples=n_resamples, seed=seed)
    alpha = round((1.0 - level) / 2.0, 12)  # 0.025, not 0.025000000000000022 (a quantile jump)
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], method="inverted_cdf")
    return Interval(mean, float(lo), float(hi))


def paired_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL, *,
                   weights: Sequence[float] | np.ndarray | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED) -> Interval:
    """Mean of the per-user differences ``a[i] - b[i]`` (same users, same order) with its interval."""
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired comparison needs the same users: a has {x.size} values, b has {y.size}")
    return mean_ci(x - y, level, weights=weights, n_resamples=n_resamples, seed=seed)


def win_tie_loss(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, tie: float = TIE_TOLERANCE,
                 lower_is_better: bool = False) -> WinTieLoss:
    """Count users where ``a`` beats ``b`` by more than ``tie``, is within ``tie`` of it, or loses.

    ``lower_is_better`` flips what "beats" means (MAE): a win is then ``a < b - tie``.
    """
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired comparison needs the same users: a has {x.size} values, b has {y.size}")
    if tie < 0:
        raise ValueError(f"tie tolerance must be >= 0, got {tie}")
    gain = (y - x) if lower_is_better else (x - y)
    wins = int(np.sum(gain > tie))
    losses = int(np.sum(gain < -tie))
    return WinTieLoss(wins, int(x.size) - wins - losses, losses)


def format_interval(interval: Interval | Sequence[float | None] | None, digits: int = 3, *,
                    ci_digits: int | None = None, signed: bool = False) -> str:
    """'0.583 [0.41, 0.75]' (``ci_digits=2``); the point alone below two users; '–' with no estimate."""
    if interval is None or interval[0] is None:
        return "–"
    mean, lo, hi = interval
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    if lo is not None and hi is not None:
        d = digits if ci_digits is None else ci_digits
        text += f" [{lo:{sign}.{d}f}, {hi:{sign}.{d}f}]"
    return text


def _negated(interval: Interval) -> Interval:
    """-X with its interval: the ends swap."""
    flip = (lambda v: None if v is None else -v)
    return Interval(flip(interval.mean), flip(interval.hi), flip(interval.lo))


def _interval_dict(interval: Interval) -> dict[str, float | None]:
    return {"mean": interval.mean, "lo": interval.lo, "hi": interval.hi}


def task_intervals(per_user: dict[str, dict[str, tuple[float, float]]], metric: str, *, lower_is_better: bool,
                   level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   pairs: Sequence[tuple[str, str]] = (("cdcda", "local"),)) -> dict[str, object]:
    """One task's uncertainty block for ``results.json``.

    ``per_user`` maps method -> user id -> (the user's primary-metric value, their number of
    queries). Each method gets its pooled value with an interval over users; each pair ``(a, b)``
    present (CDCDA vs local-only by default) gets, over the users scored under both, the paired
    difference ``a - b`` in the metric's units, the same as a *gain* (positive = ``a`` is better,
    so ``b - a`` for a lower-is-better metric such as MAE) and win/tie/loss counts from ``a``'s side.
    """
    out: dict[str, object] = {"metric": metric, "higher_is_better": not lower_is_better, "level": level,
                              "resamples": n_resamples, "seed": seed, "unit": "user", "methods": {}}
    methods: dict[str, object] = {}
    for method, users in per_user.items():
        ids = sorted(users)
        ci = mean_ci([users[u][0] for u in ids], level, weights=[users[u][1] for u in ids],
                     n_resamples=n_resamples, seed=seed)
        methods[method] = {**_interval_dict(ci), "n_users": len(ids)}
    out["methods"] = methods
    for a, b in pairs:
        if a not in per_user or b not in per_user:
            continue
        ids = sorted(set(per_user[a]) & set(per_user[b]))
        va = [per_user[a][u][0] for u in ids]
        vb = [per_user[b][u][0] for u in ids]
        w = [per_user[a][u][1] for u in ids]
        diff = paired_diff_ci(va, vb, level, weights=w, n_resamples=n_resamples, seed=seed)
        gain = _negated(diff) if lower_is_better else diff
        wtl = win_tie_loss(va, vb, tie=TIE_TOLERANCE, lower_is_better=lower_is_better)
        verdict = ("better" if gain.lo is not None and gain.lo > 0 else
                   "worse" if gain.hi is not None and gain.hi < 0 else "not significant")
        out[f"{a}_vs_{b}"] = {"a": a, "b": b, "n_users": len(ids), "diff": _interval_dict(diff),
                              "gain": _interval_dict(gain), "wins": wtl.wins, "ties": wtl.ties,
                              "losses": wtl.losses, "tie_tolerance": TIE_TOLERANCE, "verdict": verdict}
    out["per_user"] = {m: {u: v for u, (v, _w) in sorted(users.items())} for m, users in per_user.items()}
    return out

"""The cross-fitted check (``train.synthetic-gate = crossfit``): every real item is evidence, for every user.

The holdout check (synthetic_gate.py) holds out a third of the profile and needs three held-out
items, so a user with four items can never be tested and never gets the cloud's records -- the
sparse users the method is for. Cross-fitting removes that lock-out without trusting the cloud:

1. split the user's real items into ``k`` folds (``train.synthetic-gate-folds``, at most one per item);
2. per fold, train the throw-away adapters on the other folds -- real only, and real + the cloud's
   records -- and score the fold's items with both (per-item output loss, greedy answers);
   a fold with nothing left to train on (a one-item profile) compares the plain base model with
   an adapter trained on the cloud's records alone;
3. every item is held out exactly once, so the decision rests on all ``n`` items: the cloud's
   records are used if the mean per-item loss falls by more than ``margin`` and the task metric of
   the answers over all items is strictly better (``criterion = loss+better-metric``, the default
   since 2026-12-07; ``loss+metric`` accepts a tie). A lower loss with the same answers is no
   evidence that answers improve: on integer ratings (LaMP-3) and tags (LaMP-2) the mean metric
   often ties, and accepting ties let records through that made CDCDA significantly worse than
   local-only on the LaMP-3 personas (−0.118 MAE [−0.229, −0.021]; docs/augmentation.md);
4. **do no harm down to the base model**: the base model's answers to the same items cost one
   generation pass. If the adapter the device would use (CDCDA's, or local-only's on a fallback)
   scores below the base model on the user's own items, and the base model answers at least
   :data:`BASE_EVIDENCE` more items better than worse, CDCDA answers with the base model and says so
   (on real writing, 4-item authors lost ROUGE-1 to personalization itself: docs/augmentation.md).

Cost: ``k`` real-only and ``k`` real + synthetic adapters at ``(k-1)/k`` of the final budget
(2 folds: two budgets, against 1.33 for the holdout check), plus answers to the ``n`` items.
The real-only folds do not depend on the cloud's records: their scores are stored on the device
and reused across share fractions and writers (a sweep pays for them once per user).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdcda_fl.device.synthetic_gate import criterion_checks, criterion_failure

#: metrics closer than this are a tie (float noise of a mean)
TIE = 1e-9
#: why a check with cloud records tested none (no fold had a record whose label the user uses)
NO_FITTING_RECORD = "no synthetic record fits the user's items (labels)"
#: part of a stored decision's key: a changed rule never reuses decisions made by the old one
RULE_VERSION = 3
#: how many more of the user's items the base model must answer better than the adapter (per-item
#: metric) before CDCDA answers with the base model. The out-of-fold adapters train on half the
#: items, so on a tiny profile they understate the final adapter: with 2, a 3-item LaMP-2 persona
#: (base 0.083, local-only 0.250 on its queries) was sent to the base model on 2 of 3 items.
BASE_EVIDENCE = 3


def folds(n_items: int, k: int, seed: str) -> list[list[int]]:
    """Seeded partition of ``range(n_items)`` into ``min(k, n_items)`` folds of near-equal size."""
    order = list(range(n_items))
    random.Random(f"crossfit/{seed}").shuffle(order)
    k = max(1, min(k, n_items))
    return [sorted(order[i::k]) for i in range(k)]


@dataclass(frozen=True)
class FoldScores:
    """One model's per-item loss and answer on the held-out items of one fold (same order)."""

    losses: tuple[float, ...]
    answers: tuple[str, ...]
    steps: int = 0


@dataclass(frozen=True)
class CrossfitScores:
    """All folds put together: per item (in profile order) the loss and answer of each model."""

    loss_real: tuple[float, ...]
    loss_mix: tuple[float, ...]
    answers_base: tuple[str, ...]
    answers_real: tuple[str, ...]
    answers_mix: tuple[str, ...]
    tested_mix: int  # items whose fold had synthetic records to train on (else mix = real)
    steps: tuple[int, ...] = ()


def run_folds(items: Sequence[Mapping[str, Any]], fold_ids: Sequence[Sequence[int]], *,
              base: Callable[[list[Mapping[str, Any]]], FoldScores],
              real: Callable[[list[Mapping[str, Any]], list[Mapping[str, Any]]], FoldScores],
              mix: Callable[[list[Mapping[str, Any]], list[Mapping[str, Any]]], FoldScores | None]) -> CrossfitScores:
    """Score every item out of fold. ``base(held)`` scores the plain model; ``real(train, held)`` /
    ``mix(train, held)`` train throw-away adapters on ``train`` (mix returns None when no synthetic
    record fits the fold's training items: then the mix model is the real-only one)."""
    n = len(items)
    loss_r: list[float] = [0.0] * n
    loss_m: list[float] = [0.0] * n
    ans_b: list[str] = [""] * n
    ans_r: list[str] = [""] * n
    ans_m: list[str] = [""] * n
    tested, steps = 0, []
    base_all = base(list(items))
    for held_ids in fold_ids:
        held_set = set(held_ids)
        train = [it for i, it in enumerate(items) if i not in held_set]
        held = [items[i] for i in held_ids]
        if train:
            r = real(train, held)
            steps.append(r.steps)
        else:  # nothing to train on: the real-only model of this fold is the base model
            r = FoldScores(tuple(base_all.losses[i] for i in held_ids), tuple(base_all.answers[i] for i in held_ids))
        m = mix(train, held)
        if m is None:
            m = r
        else:
            tested += len(held_ids)
            steps.append(m.steps)
        for j, i in enumerate(held_ids):
            loss_r[i], loss_m[i] = r.losses[j], m.losses[j]
            ans_b[i], ans_r[i], ans_m[i] = base_all.answers[i], r.answers[j], m.answers[j]
    return CrossfitScores(tuple(loss_r), tuple(loss_m), tuple(ans_b), tuple(ans_r), tuple(ans_m), tested, tuple(steps))


@dataclass(frozen=True)
class CrossfitVerdict:
    """What the scores say: use the cloud's records? and which model answers if not (local | base)."""

    used_synthetic: bool
    answer_with: str  # "cdcda" | "local" | "base"
    reason: str
    loss_real: float
    loss_mix: float
    metric_base: float | None
    metric_real: float | None
    metric_mix: float | None


def item_wins(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> int:
    """Items where ``a`` scores better than ``b`` minus items where it scores worse."""
    sign = 1.0 if higher_is_better else -1.0
    return sum((sign * (x - y) > TIE) - (sign * (y - x) > TIE) for x, y in zip(a, b))


def judge(s: CrossfitScores, *, margin: float, criterion: str, metric_of: Callable[[Sequence[str]], float | None],
          higher_is_better: bool, per_item: Callable[[Sequence[str]], Sequence[float]] | None = None,
          untested: str = NO_FITTING_RECORD) -> CrossfitVerdict:
    """The rule (module docstring, steps 3 and 4). ``metric_of(answers)`` scores answers to all items;
    ``per_item(answers)`` each item alone (the base model must win :data:`BASE_EVIDENCE` more items
    than it loses; without it the means decide)."""
    n = len(s.loss_real)
    loss_real, loss_mix = sum(s.loss_real) / n, sum(s.loss_mix) / n
    m_base, m_real, m_mix = metric_of(s.answers_base), metric_of(s.answers_real), metric_of(s.answers_mix)

    def gain(a: float | None, b: float | None) -> float | None:
        """How much better a is than b (None when either is unknown)."""
        if a is None or b is None:
            return None
        return (a - b) if higher_is_better else (b - a)

    loss_ok, metric_ok = criterion_checks(criterion, loss_mix, loss_real, margin, gain(m_mix, m_real))
    loss_ok = loss_ok and s.tested_mix > 0
    used = loss_ok and metric_ok
    scores = (f"loss {loss_mix:.3f} vs {loss_real:.3f} real-only"
              + (f", metric {m_mix:.3f} vs {m_real:.3f}" if m_mix is not None and m_real is not None else "")
              + f" on all {n} item(s), cross-fitted")
    if used:
        reason = f"synthetic data helped ({scores})"
    elif s.tested_mix == 0:
        reason = untested  # why no fold had a cloud record to train on
    else:
        reason = f"{criterion_failure(criterion, loss_ok)} ({scores}; margin {margin})"
    chosen, chosen_metric = ("cdcda", m_mix) if used else ("local", m_real)
    below_base = gain(m_base, chosen_metric)
    evidence = BASE_EVIDENCE if per_item is None else item_wins(
        per_item(s.answers_base), per_item(s.answers_mix if used else s.answers_real), higher_is_better)
    if below_base is not None and below_base > TIE and evidence >= BASE_EVIDENCE:
        reason += (f"; the {'CDCDA' if used else 'local-only'} adapter scored {chosen_metric:.3f} against the base "
                   f"model's {m_base:.3f} on the user's items (the base model better on {evidence} more item(s)), "
                   "so CDCDA answers with the base model")
        chosen = "base"
    elif not used:
        reason = "fell back to local-only: " + reason
    return CrossfitVerdict(used and chosen == "cdcda", chosen, reason, loss_real, loss_mix, m_base, m_real, m_mix)

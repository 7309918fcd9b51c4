"""Should this device train on the cloud's records at all? A private, per-user check ("do no harm").

The cloud wrote its records from the few records the user shared; whether they help *this* user is
something only the device can judge, because only the device holds the whole profile. So, before
CDCDA trains on real + synthetic data, the device runs a small held-out experiment on its own
records, privately:

1. hold out a seeded fraction of the user's real profile items (at least ``min_held_out``, never all);
2. train two throw-away adapters on the rest: real only, and real + the cloud's records (the same
   mixture, weights and schedule the final CDCDA adapter would get, and a step budget that gives
   every training item as many passes as the final training will: :func:`check_step_scale`);
3. compare them on the held-out real items. CDCDA keeps the synthetic data only if, with it, the
   held-out outputs get a lower loss by ``margin`` (nats per output token) AND the task's own
   metric on the held-out items (accuracy, MAE, ROUGE-1 of the answers) is not worse
   (criterion ``loss+better-metric``, the default: a strictly better metric, so a tie falls back;
   ``loss+metric`` accepts a tie; ``loss`` drops the second condition). Otherwise the
   device *falls back*: its CDCDA answer is its local-only answer.

Why both: the loss is the signal that is about the user (not about the cloud's own records),
continuous (a classification user with three items still gives a usable number) and cheap. But
on real writing (git.git authors, docs/augmentation.md) synthetic headlines lowered the held-out
loss while making the answers' ROUGE worse: they teach generic wording that is likely under the
model, not the author's terse style. Requiring the metric not to drop as well makes the rule
conservative, which is what "do no harm" asks. Nothing of it leaves the device but the decision
(and, at the ``predictions`` report level, the held-out scores).

**Evidence, not one coin flip** (``train.synthetic-gate-min-held-out``, default 3). A decision to
use the cloud's records rests on at least that many held-out items: the check holds out
``max(min_held_out, fraction * n)`` items while keeping at least :data:`MIN_CHECK_TRAIN` to train
on, and a user whose profile cannot give that (fewer than ``min_held_out + MIN_CHECK_TRAIN``
items) falls back without training anything. Why: on the LaMP-3 personas with a 1.5 B writer
(docs/augmentation.md §3) the check held out a single rating for half the users, passed 11 of 12,
and made CDCDA significantly worse than local-only; with one held-out item the metric condition
cannot veto (one rating often ties) and the loss falls whenever the model merely hedges. So a
small profile that cannot be tested keeps its local-only adapter: "do no harm" over "maybe help".

Users with fewer than ``min_real`` real items (default 0: nobody) skip the check and train on
the synthetic data ``unchecked``; this is the rule before 2026-12-04 for those who want sparse
users to take the cloud's records on trust (the per-record weight cap bounds what they can do).

The rule is named ``holdout``; ``none`` (always use the cloud's records) is the ablation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cdcda_fl.core.config import ConfigError, default_of
from cdcda_fl.core.run_config import run_config

RULES = ("crossfit", "holdout", "none")
METRIC_TIE = 1e-9  # held-out metrics closer than this are equal (float noise of a mean)
CRITERIA = ("loss+metric", "loss+better-metric", "loss", "better-metric")
#: criteria under which a tie of the task metric falls back
STRICT_METRIC = frozenset({"loss+better-metric", "better-metric"})
BUDGETS = ("epochs", "steps")


def criterion_checks(criterion: str, loss_new: float, loss_old: float, margin: float,
                     metric_gain: float | None) -> tuple[bool, bool]:
    """(loss condition met, metric condition met) of ``train.synthetic-gate-criterion`` for both
    rules (holdout here, crossfit in crossfit.py). ``metric_gain``: how much better the metric is
    with the cloud's records (None when no metric could be computed: the loss then decides)."""
    # better-metric: the answers alone decide (the loss only when no metric can be computed)
    loss_ok = (criterion == "better-metric" and metric_gain is not None) or loss_new < loss_old - margin
    metric_ok = True
    if criterion != "loss" and metric_gain is not None:
        metric_ok = metric_gain > METRIC_TIE if criterion in STRICT_METRIC else metric_gain >= -METRIC_TIE
    return loss_ok, metric_ok


def criterion_failure(criterion: str, loss_ok: bool, where: str = "") -> str:
    """Why a check whose records were testable fell back (``where``: "held-out " for holdout)."""
    if not loss_ok:
        return f"the {where}loss did not improve"
    return f"the {where}metric did not improve" if criterion in STRICT_METRIC else f"the {where}metric got worse"
MIN_CHECK_TRAIN = 2  # real items the check's throw-away adapters train on, at the least


class GateError(ConfigError):
    """A bad train.synthetic-gate* setting (a ConfigError: one line, no traceback, before the run starts)."""


@dataclass(frozen=True)
class GateConfig:
    """The ``train.synthetic-gate*`` keys (``cdcda run --help-config``)."""

    rule: str = str(default_of("train.synthetic-gate"))
    fraction: float = float(default_of("train.synthetic-gate-fraction"))
    margin: float = float(default_of("train.synthetic-gate-margin"))
    min_real: int = int(default_of("train.synthetic-gate-min-real"))
    criterion: str = str(default_of("train.synthetic-gate-criterion"))
    budget: str = str(default_of("train.synthetic-gate-budget"))
    min_held_out: int = int(default_of("train.synthetic-gate-min-held-out"))
    folds: int = int(default_of("train.synthetic-gate-folds"))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GateConfig:
        rc = run_config(cfg)
        rule = rc.train.synthetic_gate.strip().lower()
        gate = cls(rule=rule, fraction=rc.train.synthetic_gate_fraction,
                   margin=rc.train.synthetic_gate_margin,
                   min_real=rc.train.synthetic_gate_min_real,
                   criterion=rc.train.synthetic_gate_criterion.strip().lower(),
                   budget=rc.train.synthetic_gate_budget.strip().lower(),
                   min_held_out=rc.train.synthetic_gate_min_held_out,
                   folds=rc.train.synthetic_gate_folds)
        if gate.rule not in RULES:
            raise GateError(f"train.synthetic-gate must be one of {', '.join(RULES)}, got {rule!r}")
        if not 0.0 < gate.fraction < 1.0:
            raise GateError(f"train.synthetic-gate-fraction must be in (0, 1), got {gate.fraction}")
        if gate.criterion not in CRITERIA:
            raise GateError(f"train.synthetic-gate-criterion must be one of {', '.join(CRITERIA)}, got {gate.criterion!r}")
        if gate.budget not in BUDGETS:
            raise GateError(f"train.synthetic-gate-budget must be one of {', '.join(BUDGETS)}, got {gate.budget!r}")
        if gate.min_real < 0:
            raise GateError(f"train.synthetic-gate-min-real must be 0 or more, got {gate.min_real}")
        if gate.folds < 2:
            raise GateError(f"train.synthetic-gate-folds must be at least 2, got {gate.folds}")
        if gate.min_held_out < 1:
            raise GateError(f"train.synthetic-gate-min-held-out must be at least 1, got {gate.min_held_out}")
        return gate

    @property
    def min_checkable(self) -> int:
        """The fewest real items a profile needs for the check: ``min_held_out`` + :data:`MIN_CHECK_TRAIN`."""
        return self.min_held_out + MIN_CHECK_TRAIN

    def falls_back_untested(self, n_real: int) -> bool:
        """Will :func:`decide` fall back for a profile of ``n_real`` items without any check (too
        small to test, and not exempted by ``min_real``)? Lets the device skip work whose only use
        would be the check or the synthetic adapter."""
        return self.rule == "holdout" and self.min_real <= n_real < self.min_checkable


@dataclass(frozen=True)
class GateDecision:
    """What the device decided about the cloud's records, and why (kept on the device; see report.py)."""

    rule: str
    used_synthetic: bool
    reason: str
    n_validation: int = 0
    loss_local: float | None = None
    loss_cdcda: float | None = None
    margin: float = 0.0
    metric_local: float | None = None
    metric_cdcda: float | None = None
    check_steps: list[int] | None = None  # optimizer steps of the check's adapters (real-only, real + synthetic)
    #: what CDCDA answers with: "cdcda" (its adapter), "local" (fell back) or "base" (personalization
    #: itself scored below the base model on the user's items: crossfit rule). None = by used_synthetic.
    answer_with: str | None = None
    metric_base: float | None = None

    @property
    def answers_with(self) -> str:
        return self.answer_with or ("cdcda" if self.used_synthetic else "local")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_step_scale(gate: GateConfig, n_train: int, n_real: int) -> float:
    """How the check's step budget relates to the final adapters' (``train.synthetic-gate-budget``).

    ``epochs`` (default): the throw-away adapters train on ``n_train`` of the user's ``n_real``
    items, so they get that share of the final step budget and see every training item as often
    as the final adapters will. The check then imitates the training it decides about (same
    passes per item, hence the same over-fitting of a small profile) and costs ``n_train/n_real``
    of it: about 2/3 with the default third held out. ``steps``: the final adapters' full budget
    (each check item is seen ``n_real/n_train`` times as often as in the final training).
    A budget given in ``train.epochs`` scales itself (steps follow the item count), so this
    scale applies only to a budget in ``train.steps``.
    """
    if gate.budget == "steps" or n_real <= 0:
        return 1.0
    return min(1.0, n_train / n_real)


def cap_record_weights(weights: Sequence[float], cap: float) -> list[float]:
    """No synthetic record weighs more than ``cap`` real records (``train.synthetic-record-cap``).

    Why: the mixing ratio spreads a fixed synthetic mass over however many records the cloud
    wrote, so one lone synthetic record could carry the weight of the whole real profile (a demo
    user got one record at weight 5 and lost 0.15 ROUGE). With the cap, few records add little.
    ``cap <= 0`` means no cap.
    """
    if cap <= 0:
        return list(weights)
    return [min(float(w), cap) for w in weights]


def holdout_split(items: Sequence[Mapping[str, Any]], fraction: float, seed: str, min_held_out: int = 1
                  ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(training items, held-out items): a seeded ``fraction`` held out, at least ``min_held_out``
    (and at least one), never all."""
    n_val = min(len(items) - 1, max(1, min_held_out, round(fraction * len(items))))
    order = list(range(len(items)))
    random.Random(f"synthetic-gate/{seed}").shuffle(order)
    held = set(order[:n_val])
    return [it for i, it in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


@dataclass(frozen=True)
class HeldOutScores:
    """The two throw-away adapters on the held-out real items: mean loss and the task metric."""

    loss_local: float
    loss_cdcda: float
    metric_local: float | None = None
    metric_cdcda: float | None = None
    higher_is_better: bool = True
    same_data: bool = False  # no synthetic record fit the training split: both adapters are one
    steps: tuple[int, ...] = ()  # optimizer steps each throw-away adapter trained


def decide(gate: GateConfig, real_items: Sequence[Mapping[str, Any]], n_synthetic: int, *, seed: str,
           held_out: Callable[[list[Mapping[str, Any]], list[Mapping[str, Any]]], HeldOutScores]
           ) -> GateDecision:
    """Run the rule. ``held_out(train_items, held_items)`` trains the two throw-away adapters
    (real only; real + synthetic) on ``train_items`` and scores them on ``held_items``."""
    if n_synthetic == 0:
        return GateDecision(gate.rule, False, "no usable synthetic records")
    if gate.rule == "none":
        return GateDecision(gate.rule, True, "rule 'none': the cloud's records are always used")
    if len(real_items) < gate.min_real:
        return GateDecision(gate.rule, True, f"unchecked: {len(real_items)} real item(s), fewer than "
                                             f"train.synthetic-gate-min-real = {gate.min_real}")
    if gate.falls_back_untested(len(real_items)):  # the rule and min_real are settled above
        return GateDecision(gate.rule, False, f"fell back to local-only: {len(real_items)} real item(s) cannot test "
                                              f"the cloud's records on {gate.min_held_out} held-out item(s) "
                                              f"and train on {MIN_CHECK_TRAIN}")
    train, held = holdout_split(real_items, gate.fraction, seed, gate.min_held_out)
    s = held_out(train, held)
    gain = None
    if s.metric_local is not None and s.metric_cdcda is not None:
        gain = (s.metric_cdcda - s.metric_local) if s.higher_is_better else (s.metric_local - s.metric_cdcda)
    loss_ok, metric_ok = criterion_checks(gate.criterion, s.loss_cdcda, s.loss_local, gate.margin, gain)
    used = loss_ok and metric_ok and not s.same_data
    scores = f"loss {s.loss_cdcda:.3f} vs {s.loss_local:.3f} real-only" + (
        f", metric {s.metric_cdcda:.3f} vs {s.metric_local:.3f}" if s.metric_local is not None and
        s.metric_cdcda is not None else "")
    if used:
        reason = f"synthetic data helped on the user's {len(held)} held-out item(s) ({scores})"
    elif s.same_data:
        reason = "fell back to local-only: no synthetic record has a label of the check's training items"
    else:
        why = criterion_failure(gate.criterion, loss_ok, "held-out ")
        reason = f"fell back to local-only: {why} ({scores}; margin {gate.margin})"
    r4 = (lambda v: None if v is None else round(float(v), 4))
    return GateDecision(gate.rule, used, reason, len(held), r4(s.loss_local), r4(s.loss_cdcda), gate.margin,
                        r4(s.metric_local), r4(s.metric_cdcda), list(s.steps) or None)


def mean_loss(losses: Sequence[float]) -> float:
    """Mean of per-example losses (the held-out criterion)."""
    return _mean(losses)

"""LaMP metrics with the benchmark evaluator's semantics.

- Classification (LaMP-1, LaMP-2): accuracy and macro-F1 over the task's fixed label list; a
  prediction outside the list counts as wrong (it maps to no label, so it can never match).
- Rating (LaMP-3): MAE and RMSE; a non-numeric prediction counts as the farther of 1 and 5 from
  the gold, as LaMP's evaluator does.
- Generation (LaMP-4, 5, 7): ROUGE-1 and ROUGE-L F-measure from ``rouge-score`` with
  ``use_stemmer=False`` (the default of the ``evaluate`` metric LaMP used), mean over examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

from sklearn.metrics import accuracy_score, f1_score

from cdcda_fl.data.tasks import TaskSpec, get_task

# Higher is better for every metric but these two.
LOWER_IS_BETTER = frozenset({"mae", "rmse"})

PRIMARY_METRIC = {"classification": "accuracy", "regression": "mae", "generation": "rouge-1"}


class PredictionMismatchError(ValueError):
    """Prediction ids do not match gold ids exactly."""


def classification_metrics(golds: Sequence[str], preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    index = {label: i for i, label in enumerate(labels)}
    y_true = [index.get(g.strip(), -1) for g in golds]
    y_pred = [index.get(p.strip(), -1) for p in preds]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, labels=list(range(len(labels))), average="macro", zero_division=0)),
    }


def _rating_or_far(pred: str, gold: float) -> float:
    """LaMP's rule: the prediction as a number, else the farther of 1 and 5 from the gold."""
    try:
        value = float(pred)
    except (TypeError, ValueError):
        return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0
    return value if math.isfinite(value) else (1.0 if abs(1 - gold) > abs(5 - gold) else 5.0)


def rating_metrics(golds: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    errors = []
    for gold, pred in zip(golds, preds):
        g = float(gold)
        errors.append(_rating_or_far(pred, g) - g)
    n = len(errors)
    return {"mae": sum(abs(e) for e in errors) / n, "rmse": math.sqrt(sum(e * e for e in errors) / n)}


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


def rouge_metrics(golds: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    scorer = _scorer()
    r1 = rl = 0.0
    for gold, pred in zip(golds, preds):
        scores = scorer.score(gold, pred)
        r1 += scores["rouge1"].fmeasure
        rl += scores["rougeL"].fmeasure
    n = len(golds)
    return {"rouge-1": r1 / n, "rouge-L": rl / n}


def score(task: str | TaskSpec, golds: Mapping[str, str], preds: Mapping[str, str]) -> dict[str, float]:
    """Score predictions against golds (both id -> output); ids must match exactly."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    missing = sorted(set(golds) - set(preds))
    extra = sorted(set(preds) - set(golds))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} gold id(s) have no prediction: {missing[:10]}")
        if extra:
            parts.append(f"{len(extra)} prediction id(s) are not in the golds: {extra[:10]}")
        raise PredictionMismatchError("; ".join(parts))
    if not golds:
        raise PredictionMismatchError("no examples to score")
    ids = list(golds)
    g = [golds[i] for i in ids]
    p = [preds[i] if isinstance(preds[i], str) else str(preds[i]) for i in ids]
    if spec.kind == "classification":
        return classification_metrics(g, p, spec.labels or ())
    if spec.kind == "regression":
        return rating_metrics(g, p)
    return rouge_metrics(g, p)


def per_example(task: str | TaskSpec, golds: Sequence[str], preds: Sequence[str]) -> list[float]:
    """The task's primary metric of each example alone (exact label match, absolute rating error,
    ROUGE-1 F); their mean is :func:`score`'s primary metric.

    The device's check scores every item of every user three times over; :func:`score` computes
    macro-F1 with scikit-learn, whose argument validation alone cost a third of a tiny user's
    device time (benchmarks/scale.py profile, 2026-12-07) for a metric the check never reads.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if len(golds) != len(preds):
        raise PredictionMismatchError(f"{len(golds)} gold(s) against {len(preds)} prediction(s)")
    if spec.kind == "classification":
        index = {label: i for i, label in enumerate(spec.labels or ())}
        return [float(index.get(g.strip(), -1) == index.get(p.strip(), -2)) for g, p in zip(golds, preds)]
    if spec.kind == "regression":
        return [abs(_rating_or_far(p, float(g)) - float(g)) for g, p in zip(golds, preds)]
    scorer = _scorer()
    return [scorer.score(g, p)["rouge1"].fmeasure for g, p in zip(golds, preds)]


def primary_metric(task: str | TaskSpec) -> str:
    """The metric a table leads with for the task (accuracy, MAE or ROUGE-1)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    return PRIMARY_METRIC[spec.kind]

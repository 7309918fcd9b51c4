"""LaMP metric semantics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from cdcda_fl.evaluation.metrics import PredictionMismatchError, score


def test_classification_outside_label_list_is_wrong() -> None:
    golds = {"1": "[1]", "2": "[2]", "3": "[1]", "4": "[2]"}
    preds = {"1": "[1]", "2": "[1]", "3": "banana", "4": "[2]"}
    m = score("LaMP_1", golds, preds)
    assert m["accuracy"] == pytest.approx(0.5)
    # label [1]: tp=1 fp=1 fn=1 -> f1 0.5; label [2]: tp=1 fp=0 fn=1 -> p=1 r=.5 f1=2/3
    assert m["f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_macro_f1_over_fixed_tag_list() -> None:
    golds = {"a": "comedy", "b": "comedy", "c": "romance"}
    preds = {"a": "comedy", "b": "romance", "c": "romance"}
    m = score("LaMP_2", golds, preds)
    assert m["accuracy"] == pytest.approx(2 / 3)
    # comedy: p=1 r=.5 f1=2/3; romance: p=.5 r=1 f1=2/3; the 13 unseen tags count 0 in LaMP's macro average
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3) / 15)


def test_rating_non_numeric_counts_as_farther_end() -> None:
    golds = {"1": "2", "2": "5", "3": "4", "4": "3"}
    preds = {"1": "great", "2": "", "3": "4", "4": "five"}
    # gold 2 -> 5 (error 3); gold 5 -> 1 (error 4); exact (0); gold 3: tie -> 5 (error 2)
    m = score("LaMP_3", golds, preds)
    assert m["mae"] == pytest.approx((3 + 4 + 0 + 2) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((9 + 16 + 0 + 4) / 4))


def test_rouge_by_hand_empty_and_unicode() -> None:
    golds = {"1": "the cat sat", "2": "a b c d", "3": "café au lait"}
    preds = {"1": "the cat", "2": "", "3": "café au lait"}
    m = score("LaMP_5", golds, preds)
    # 1: P=1 R=2/3 F=0.8 ; 2: empty prediction scores 0 ; 3: rouge-score's tokenizer drops non-ASCII
    # letters ("caf"), identical texts still score 1.
    assert m["rouge-1"] == pytest.approx((0.8 + 0 + 1) / 3)
    assert m["rouge-L"] == pytest.approx((0.8 + 0 + 1) / 3)
    m2 = score("LaMP_7", {"1": "привет мир"}, {"1": "привет мир"})
    assert m2["rouge-1"] == 0.0  # no ASCII tokens at all, as in LaMP's evaluator


def test_rouge_l_differs_from_rouge_1_on_order() -> None:
    m = score("LaMP_4", {"1": "a b c d"}, {"1": "d c b a"})
    assert m["rouge-1"] == pytest.approx(1.0)
    assert m["rouge-L"] == pytest.approx(0.25)


def test_ids_must_match_exactly() -> None:
    with pytest.raises(PredictionMismatchError, match=r"1 gold id\(s\) have no prediction: \['2'\].*not in the golds: \['9'\]"):
        score("LaMP_2", {"1": "comedy", "2": "action"}, {"1": "comedy", "9": "action"})
    with pytest.raises(PredictionMismatchError, match="no examples"):
        score("LaMP_2", {}, {})


@pytest.mark.parametrize("task", ["LaMP_1", "LaMP_2", "LaMP_3", "LaMP_5", "LaMP_7"])
def test_per_example_metrics_average_to_the_primary_metric(task: str) -> None:
    """The device's check averages per_example; it must equal what the tables report (score)."""
    import random

    from cdcda_fl.data.tasks import get_task
    from cdcda_fl.evaluation.metrics import per_example, primary_metric

    spec = get_task(task)
    rng = random.Random(task)
    if spec.kind == "classification":
        pool = [*spec.labels, "not a label", " " + spec.labels[0] + " "]
        golds = [rng.choice(spec.labels) for _ in range(40)]
    elif spec.kind == "regression":
        pool = ["1", "2", "3", "4", "5", "4.5", "five", "", "nan"]
        golds = [rng.choice("12345") for _ in range(40)]
    else:
        words = "the user wrote a short title about models data and privacy".split()
        pool = [" ".join(rng.sample(words, rng.randint(0, 6))) for _ in range(20)]
        golds = [" ".join(rng.sample(words, rng.randint(1, 6))) for _ in range(40)]
    preds = [rng.choice(pool) for _ in golds]
    values = per_example(spec, golds, preds)
    expected = score(spec, {str(i): g for i, g in enumerate(golds)}, {str(i): p for i, p in enumerate(preds)})
    assert sum(values) / len(values) == pytest.approx(expected[primary_metric(spec)], abs=1e-12)
    assert len(values) == len(golds)

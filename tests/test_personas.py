"""Seeded personas: deterministic bytes, valid files, and a personal signal a simple baseline can see."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from cdcda_fl.data.lamp import load_task_users, validate_path
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import TASK_NAMES
from cdcda_fl.metrics import score


@pytest.fixture(scope="module")
def personas(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("personas")
    write_personas(out, users=24, seed=7)
    return out


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    files_a = write_personas(a, users=3, seed=1)
    write_personas(b, users=3, seed=1)
    write_personas(c, users=3, seed=2)
    for f in files_a:
        rel = f.relative_to(a)
        assert (b / rel).read_bytes() == f.read_bytes()
    assert any((c / f.relative_to(a)).read_bytes() != f.read_bytes() for f in files_a)


def test_all_files_valid_and_sparse(personas: Path) -> None:
    assert len(validate_path(personas)) == len(TASK_NAMES) * 4
    for task in TASK_NAMES:
        for user in load_task_users(personas, task, "dev"):
            assert 4 <= len(user.profile) <= 6
            assert len(user.queries) > len(user.profile)  # more queries than history: sparsity


def _per_user_vs_global(personas: Path, task: str, label_of) -> tuple[dict, dict]:
    users = load_task_users(personas, task, "dev")
    global_counts = Counter(label_of(item) for u in users for item in u.profile)
    golds, per_user, global_ = {}, {}, {}
    for u in users:
        own = Counter(label_of(item) for item in u.profile).most_common(1)[0][0]
        for q in u.queries:
            golds[q.id] = q.gold
            per_user[q.id] = own
            global_[q.id] = global_counts.most_common(1)[0][0]
    return score(task, golds, per_user), score(task, golds, global_)


def test_lamp2_per_user_majority_beats_global(personas: Path) -> None:
    mine, glob = _per_user_vs_global(personas, "LaMP_2", lambda item: item["tag"])
    assert mine["accuracy"] > glob["accuracy"] + 0.15


def test_lamp3_per_user_bias_beats_global(personas: Path) -> None:
    """Text sentiment plus the user's own rating bias beats text sentiment plus the global bias."""
    from cdcda_fl.data.personas import SENTIMENT

    def sentiment(text: str) -> int:
        return next(level for level, phrases in SENTIMENT.items() for p in phrases if p in text)

    users = load_task_users(personas, "LaMP_3", "dev")
    all_bias = [int(i["score"]) - sentiment(i["text"]) for u in users for i in u.profile]
    global_bias = round(statistics.mean(all_bias))
    golds, mine, glob = {}, {}, {}
    for u in users:
        own = round(statistics.mean(int(i["score"]) - sentiment(i["text"]) for i in u.profile))
        for q in u.queries:
            s = sentiment(q.input)
            golds[q.id], mine[q.id], glob[q.id] = q.gold, str(min(5, max(1, s + own))), str(min(5, max(1, s + global_bias)))
    assert score("LaMP_3", golds, mine)["mae"] < score("LaMP_3", golds, glob)["mae"] - 0.3


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _style_words(task: str, items: list[dict]) -> str:
    """Output words absent from the input, found in at least 3/4 of the pairs: the user's template."""
    from cdcda_fl.data.tasks import get_task

    pairs = get_task(task).profile_to_pairs(items)
    counts = Counter(w for inp, out in pairs for w in set(_words(out)) - set(_words(inp)))
    return " ".join(sorted(w for w, c in counts.items() if c >= 0.75 * len(pairs)))


@pytest.mark.parametrize("task", ["LaMP_4", "LaMP_5", "LaMP_7"])
def test_generation_style_baseline_beats_global(personas: Path, task: str) -> None:
    """Query content plus the user's own template words beats content plus the global template words."""
    users = load_task_users(personas, task, "dev")
    global_style = _style_words(task, [i for u in users for i in u.profile])
    golds, mine, glob = {}, {}, {}
    for u in users:
        own_style = _style_words(task, u.profile)
        for q in u.queries:
            content = q.input.split(": ", 1)[1]
            golds[q.id], mine[q.id], glob[q.id] = q.gold, f"{content} {own_style}", f"{content} {global_style}"
    assert score(task, golds, mine)["rouge-1"] > score(task, golds, glob)["rouge-1"] + 0.02


def test_lamp1_topic_is_personal(personas: Path) -> None:
    """Picking the reference that shares more words with the user's own titles beats chance clearly."""
    import re

    users = load_task_users(personas, "LaMP_1", "dev")
    golds, preds = {}, {}
    for u in users:
        vocab = Counter(w for i in u.profile for w in re.findall(r"[a-z]+", (i["title"] + " " + i["abstract"]).lower()))
        for q in u.queries:
            refs = re.findall(r'\[(\d)\]: "([^"]+)"', q.input)
            overlap = [sum(vocab[w] > 0 for w in re.findall(r"[a-z]+", ref.lower())) for _, ref in refs]
            preds[q.id] = "[1]" if overlap[0] >= overlap[1] else "[2]"
            golds[q.id] = q.gold
    assert score("LaMP_1", golds, preds)["accuracy"] > 0.8

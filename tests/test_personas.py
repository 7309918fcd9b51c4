"""Seeded personas behave like LaMP: deterministic bytes, valid files, varied sparse profiles, skewed
labels, varied text, and a personal signal that simple per-user baselines see -- but do not
exhaust from three items (so more in-style data has something to add)."""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cdcda_fl.data.lamp import User, load_task_users, validate_path
from cdcda_fl.data.personas import (
    PRODUCT_CATEGORY,
    SENTIMENT,
    TAG_CUES,
    draw_profile_size,
    make_task_split,
    write_personas,
)
from cdcda_fl.data.tasks import TASK_NAMES, get_task
from cdcda_fl.evaluation.metrics import score

N_USERS = 40


@pytest.fixture(scope="module")
def personas(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("personas")
    write_personas(out, users=N_USERS, seed=7, splits=("dev",))
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


def test_all_files_valid_with_varied_mostly_sparse_profiles(personas: Path) -> None:
    assert len(validate_path(personas)) == len(TASK_NAMES) * 2
    all_sizes = []
    for task in TASK_NAMES:
        users = load_task_users(personas, task, "dev")
        sizes = [len(u.profile) for u in users]
        assert len(users) == N_USERS and all(len(u.queries) == 8 for u in users)
        assert all(3 <= s <= 40 for s in sizes)
        assert max(sizes) >= 20, sizes  # a few users with dozens of items
        assert len(set(sizes)) >= 8, sizes
        all_sizes += sizes
    assert sum(s <= 6 for s in all_sizes) >= 0.4 * len(all_sizes)  # many sparse users
    assert statistics.median(all_sizes) <= 8


def test_profile_size_draw_is_skewed_and_bounded() -> None:
    r = random.Random(0)
    sizes = [draw_profile_size(r, 3, 40) for _ in range(4000)]
    assert min(sizes) == 3 and max(sizes) == 40
    assert 4 <= statistics.median(sizes) <= 8
    assert draw_profile_size(r, 5, 5) == 5
    with pytest.raises(ValueError, match="profile_size"):
        draw_profile_size(r, 0, 4)
    questions, _ = make_task_split("LaMP_2", "dev", users=3, seed=0, profile_size=(4, 6), queries_per_user=2)
    assert all(4 <= len(q["profile"]) <= 6 for q in questions) and len(questions) == 6


def test_labels_are_skewed(personas: Path) -> None:
    tags = Counter(i["tag"] for u in load_task_users(personas, "LaMP_2", "dev") for i in u.profile)
    ranked = [c for _, c in tags.most_common()]
    assert ranked[0] >= 3 * ranked[-1], tags  # popular tags and a long tail
    ratings = Counter(i["score"] for u in load_task_users(personas, "LaMP_3", "dev") for i in u.profile)
    total = sum(ratings.values())
    assert (ratings["4"] + ratings["5"]) / total > 0.5 and ratings["1"] / total < 0.2, ratings
    users = load_task_users(personas, "LaMP_3", "dev")
    means = [statistics.mean(int(i["score"]) for i in u.profile) for u in users]
    assert max(means) - min(means) > 1.5  # harsh and generous users


def _shape(title: str, source: str) -> str:
    """A title with the words it shares with its source text masked: what is left is its phrasing."""
    src = set(_words(source))
    return " ".join("_" if w in src else w for w in _words(title))


@pytest.mark.parametrize(("task", "source", "target"), [("LaMP_5", "abstract", "title"), ("LaMP_4", "text", "title")])
def test_titles_vary_per_user_and_reuse_the_source_words(personas: Path, task: str, source: str, target: str) -> None:
    varied, shares = 0, []
    users = [u for u in load_task_users(personas, task, "dev") if len(u.profile) >= 6]
    for u in users:
        shapes = {_shape(i[target], i[source]) for i in u.profile}
        varied += len(shapes) >= 2
        for item in u.profile:  # content comes from the text: title words are mostly the source's
            words = _words(item[target])
            shares.append(sum(w in set(_words(item[source])) for w in words) / len(words))
    assert varied >= 0.8 * len(users)  # one person, several phrasings
    assert statistics.mean(shares) >= 0.5 and min(shares) >= 0.2
    all_shapes = Counter(_shape(i[target], i[source]) for u in users for i in u.profile)
    assert all_shapes.most_common(1)[0][1] < 0.3 * sum(all_shapes.values())


# ---------------------------------------------------------------------- simple per-user baselines
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _cued_tags(description: str) -> list[str]:
    text = description.lower()
    return [tag for tag, cues in TAG_CUES.items() if any(c.lower() in text for c in cues)]


def _tag_wins(items: list[dict]) -> Counter:
    """Each profile item is a choice: its tag won over the other tags its description cues."""
    wins = Counter()
    for i in items:
        for other in _cued_tags(i["description"]):
            if other != i["tag"]:
                wins[i["tag"]] += 1
                wins[other] -= 1
    return wins


def _lamp2_predict(users: Sequence[User], history: Callable[[User], list[dict]], per_user: bool) -> float:
    """Among the tags the description cues, the one this user (or everyone) preferred most often."""
    pooled = _tag_wins([i for u in users for i in history(u)])
    golds, preds = {}, {}
    for u in users:
        counts = _tag_wins(history(u)) if per_user else Counter()
        for q in u.queries:
            cued = _cued_tags(q.input)
            assert cued, q.input
            preds[q.id] = max(cued, key=lambda t: (counts[t], pooled[t]))
            golds[q.id] = q.gold
    return score("LaMP_2", golds, preds)["accuracy"]


def _sentiment(text: str) -> int:
    return next(level for level, phrases in SENTIMENT.items() for p in phrases if p in text)


def _fit_rating(items: list[dict]) -> tuple[float, float]:
    """Offset and slope of score ~ 3 + slope*(sentiment-3) + offset, slope shrunk towards 1 (ridge, lambda=1)."""
    xs = [_sentiment(i["text"]) - 3 for i in items]
    ys = [int(i["score"]) - 3 for i in items]
    # minimise sum (y - b - s x)^2 + (s - 1)^2 over b, s: two linear equations.
    n, sx, sxx = len(xs), sum(xs), sum(x * x for x in xs)
    sy, sxy = sum(ys), sum(x * y for x, y in zip(xs, ys))
    det = n * (sxx + 1) - sx * sx
    slope = (n * (sxy + 1) - sx * sy) / det
    return (sy - slope * sx) / n, slope


def _category(text: str) -> str:
    return next(PRODUCT_CATEGORY[p] for p in sorted(PRODUCT_CATEGORY, key=len, reverse=True) if re.search(rf"\b{p}\b", text))


def _lamp3_predict(users: Sequence[User], history: Callable[[User], list[dict]], per_user: bool) -> float:
    """Sentiment through the user's (or everyone's) offset and slope, plus a shrunk per-category correction."""
    pooled = _fit_rating([i for u in users for i in history(u)])
    golds, preds = {}, {}
    for u in users:
        items = history(u)
        offset, slope = _fit_rating(items) if per_user else pooled
        residuals: dict[str, list[float]] = {}
        for i in items if per_user else []:
            fitted = 3 + offset + slope * (_sentiment(i["text"]) - 3)
            residuals.setdefault(_category(i["text"]), []).append(int(i["score"]) - fitted)
        for q in u.queries:
            x = _sentiment(q.input) - 3
            res = residuals.get(_category(q.input), [])
            correction = sum(res) / (len(res) + 1)  # one pseudo-rating at zero: shrink small samples
            golds[q.id], preds[q.id] = q.gold, str(min(5, max(1, round(3 + offset + slope * x + correction))))
    return score("LaMP_3", golds, preds)["mae"]


class _WordRates:
    """A bag-of-words "model" of how a user turns inputs into outputs.

    For each word: how often it is copied when it is in the input, and how often it appears in the
    output without being in the input (a style word). With a ``prior`` (the pooled model of all
    users) each rate is shrunk towards the prior's with the weight of ``strength`` pseudo-pairs, so
    the per-user model is "everyone's habits, corrected by this user's" and unseen words fall back
    to what everyone does.
    """

    def __init__(self, pairs: list[tuple[str, str]], prior: _WordRates | None = None, strength: float = 2.0) -> None:
        self.seen, self.copied, self.extra = Counter(), Counter(), Counter()
        total_in = total_copied = 0
        for inp, out in pairs:
            i, o = set(_words(inp)), set(_words(out))
            self.seen.update(i)
            self.copied.update(i & o)
            self.extra.update(o - i)
            total_in, total_copied = total_in + len(i), total_copied + len(i & o)
        self.n = len(pairs)
        self.prior, self.k = prior, strength if prior else 0.0
        self.default = (total_copied / total_in) if total_in else 0.0

    def copy_rate(self, w: str) -> float:
        base = self.prior.copy_rate(w) if self.prior else self.default
        if not self.seen[w] and not self.k:
            return base
        return (self.copied[w] + self.k * base) / (self.seen[w] + self.k)

    def style_rate(self, w: str) -> float:
        base = self.prior.style_rate(w) if self.prior else 0.0
        return (self.extra[w] + self.k * base) / (self.n + self.k) if (self.n + self.k) else 0.0

    def style_words(self) -> list[str]:
        candidates = set(self.extra) | (set(self.prior.extra) if self.prior else set())
        return sorted(w for w in candidates if self.style_rate(w) >= 0.5)

    def predict(self, inp: str) -> str:
        words = list(dict.fromkeys(_words(inp)))
        return " ".join([w for w in words if self.copy_rate(w) >= 0.5] + self.style_words())


def _generation_predict(task: str, users: Sequence[User], history: Callable[[User], list[dict]],
                        per_user: bool) -> float:
    """Everyone's word habits (pooled over the users' histories), corrected by the user's own when ``per_user``."""
    spec = get_task(task)
    pooled = _WordRates(spec.profile_to_pairs([i for u in users for i in history(u)]))
    golds, preds = {}, {}
    for u in users:
        model = _WordRates(spec.profile_to_pairs(history(u)), prior=pooled) if per_user else pooled
        for q in u.queries:
            golds[q.id], preds[q.id] = q.gold, model.predict(q.input)
    return score(task, golds, preds)["rouge-1"]


def _whole(u: User) -> list[dict]:
    return list(u.profile)


def _first3(u: User) -> list[dict]:
    return list(u.profile[:3])


# ---------------------------------------------------------------------- the signal is personal ...
def test_lamp2_per_user_ranking_beats_global(personas: Path) -> None:
    users = load_task_users(personas, "LaMP_2", "dev")
    assert _lamp2_predict(users, _whole, True) > _lamp2_predict(users, _whole, False) + 0.08


def test_lamp3_per_user_fit_beats_global(personas: Path) -> None:
    """Text sentiment plus the user's own offset and slope beats the same with everyone's."""
    users = load_task_users(personas, "LaMP_3", "dev")
    assert _lamp3_predict(users, _whole, True) < _lamp3_predict(users, _whole, False) - 0.15


@pytest.mark.parametrize(("task", "margin"), [("LaMP_4", 0.03), ("LaMP_5", 0.03), ("LaMP_7", 0.015)])
def test_generation_per_user_word_rates_beat_global(personas: Path, task: str, margin: float) -> None:
    """LaMP-7's margin is smaller: only hashtags, handles and links are words the style-free query lacks."""
    users = load_task_users(personas, task, "dev")
    assert _generation_predict(task, users, _whole, True) > _generation_predict(task, users, _whole, False) + margin


def test_lamp1_topic_is_personal(personas: Path) -> None:
    """Picking the reference that shares more words with the user's own papers beats chance clearly."""
    users = load_task_users(personas, "LaMP_1", "dev")
    golds, preds = {}, {}
    for u in users:
        vocab = Counter(w for i in u.profile for w in _words(i["title"] + " " + i["abstract"]))
        for q in u.queries:
            refs = re.findall(r'\[(\d)\]: "([^"]+)"', q.input)
            overlap = [sum(vocab[w] > 0 for w in _words(ref)) for _, ref in refs]
            preds[q.id] = "[1]" if overlap[0] >= overlap[1] else "[2]"
            golds[q.id] = q.gold
    assert score("LaMP_1", golds, preds)["accuracy"] > 0.75


# ---------------------------------------------------------------------- ... and three items do not exhaust it
def _large(personas: Path, task: str) -> list[User]:
    """Users with at least 8 items: where three items and the whole profile can differ."""
    users = [u for u in load_task_users(personas, task, "dev") if len(u.profile) >= 8]
    assert len(users) >= 10
    return users


def test_lamp2_three_items_are_clearly_worse_than_the_whole_profile(personas: Path) -> None:
    users = _large(personas, "LaMP_2")
    assert _lamp2_predict(users, _first3, True) < _lamp2_predict(users, _whole, True) - 0.08


def test_lamp3_three_items_are_clearly_worse_than_the_whole_profile(personas: Path) -> None:
    users = _large(personas, "LaMP_3")
    assert _lamp3_predict(users, _first3, True) > _lamp3_predict(users, _whole, True) + 0.1


@pytest.mark.parametrize("task", ["LaMP_4", "LaMP_5"])
def test_generation_three_items_are_clearly_worse_than_the_whole_profile(personas: Path, task: str) -> None:
    users = _large(personas, task)
    assert _generation_predict(task, users, _first3, True) < _generation_predict(task, users, _whole, True) - 0.03

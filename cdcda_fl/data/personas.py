"""Seeded synthetic LaMP users for all six tasks, written in the benchmark's own file format.

Why: the real LaMP files are not reachable here, and the product must show that personalization
and augmentation matter. The personas are built to behave like LaMP in the ways that decide
whether augmentation *can* help:

- **Varied, mostly sparse profiles.** Profile sizes are drawn between ``profile_size`` (default
  3..40) with a skew to the low end: about half the users have 6 items or fewer, a few have dozens.
- **Skewed labels.** Movie tags follow a global popularity curve and each user's own taste;
  product ratings lean positive as on Amazon, with per-user generosity and scale use.
- **Natural text, personal tendencies.** Titles, headlines and tweets are composed from the
  item's own content (the abstract's method and problem, the article's subject and action) with
  several phrasings per user: a user *tends* to a pattern, favourite words, a casing, a length,
  but no user follows one template.
- **A signal a handful of items does not saturate.** Each user is a set of latent traits (a tag
  ranking, a rating slope and offset, pattern and vocabulary weights, research or news beats).
  Three items reveal a little of it, thirty reveal much more (a test checks this), so local-only
  training stays below the ceiling and more in-style data can help.

Held-out queries come from the same user process (time-later items). The same seed gives the same
bytes: every random draw comes from ``random.Random`` seeded by a string, never from hash order.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.data.lamp import write_outputs, write_questions
# the word banks (data): the generators below and multitask_personas read them from here
from cdcda_fl.data.persona_vocab import (
    HEADLINE_PATTERNS, TITLE_PATTERNS, ADJ, CHALLENGES, DAYS, DESCRIPTION_FRAMES, EMOJI, ENDINGS, FRIENDS,
    GENERIC_TITLES, HASHTAGS, INTERJECTIONS, MECHANISMS, NAME_SUFFIXES, NEWS_BEATS, NEWS_DETAILS, PLACES,
    PRODUCT_CATEGORIES, PROPERTIES, RATING_BIAS, REASONS, RESEARCH, RESULTS, REVIEW_FILLERS, REVIEW_OPENERS,
    SENTIMENT, SENTIMENT_LEVEL_WEIGHTS, TAG_CUES, TAG_POPULARITY, TWEET_ACTIVITIES, TWEET_TAILS, WHO,
)
from cdcda_fl.data.oracle_items import disjoint_items, oracle_path, write_oracle_items
from cdcda_fl.data.tasks import (
    LAMP1_TEMPLATE,
    LAMP2_TEMPLATE,
    LAMP3_TEMPLATE,
    LAMP4_TEMPLATE,
    LAMP5_TEMPLATE,
    LAMP7_TEMPLATE,
    MOVIE_TAGS,
    TASK_NAMES,
    get_task,
    neutralize_tweet,
)

Record = dict[str, Any]
UserData = tuple[str, list[Record], list[tuple[str, str]]]  # user id, profile, [(input, gold)]

DEFAULT_PROFILE_SIZE = (3, 40)
#: further items per user written for the simulation-only oracle writer (``{split}_oracle.json``)
ORACLE_ITEMS = 24


# ---------------------------------------------------------------------- shared helpers
def draw_profile_size(r: random.Random, lo: int, hi: int) -> int:
    """A profile size in [lo, hi], log-skewed to the low end: the median is about lo * (hi/lo) ** 0.25.

    ``lo * (hi/lo) ** (u*u)`` with u uniform: half the users land in the bottom quarter of the log
    range (sparse users, the point of the method), and the tail reaches ``hi``.
    """
    if lo < 1 or hi < lo:
        raise ValueError(f"profile_size must be (lo, hi) with 1 <= lo <= hi, got ({lo}, {hi})")
    u = r.random()
    return max(lo, min(hi, int(round(lo * (hi / lo) ** (u * u)))))


def _dirichlet(r: random.Random, alphas: Sequence[float]) -> list[float]:
    draws = [r.gammavariate(a, 1.0) + 1e-12 for a in alphas]
    total = sum(draws)
    return [d / total for d in draws]


def _weighted(r: random.Random, options: Mapping[str, float]) -> str:
    keys = sorted(options)
    return r.choices(keys, weights=[options[k] for k in keys])[0]


_SMALL_WORDS = frozenset("a an and as at by for from in into of on or the to via vs with".split())


def title_case(text: str) -> str:
    """Headline-style capitalisation: every word but short function words (the first word always)."""
    words = text.split(" ")
    out = []
    for i, w in enumerate(words):
        if w and (i == 0 or w.lower() not in _SMALL_WORDS) and w[0].islower():
            w = w[0].upper() + w[1:]
        out.append(w)
    return " ".join(out)


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def with_article(word: str) -> str:
    """'an adaptive', 'a robust'."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


# ---------------------------------------------------------------------- LaMP-2


def draw_movie(r: random.Random, watched: Mapping[str, float], rank: Mapping[str, float]) -> tuple[str, str]:
    """One LaMP-2 movie: 2-3 tags cued (drawn by ``watched`` weight), its description, and the tag
    the user gives it (the cued tag ``rank`` puts highest; 12 % of the time another cued one).

    Shared by the one-task and the multi-task personas, so both draw movies the same way."""
    k = 3 if r.random() < 0.4 else 2
    cued: list[str] = []
    while len(cued) < k:
        cued.append(_weighted(r, {t: w for t, w in watched.items() if t not in cued}))
    tag = max(cued, key=lambda t: rank[t]) if r.random() >= 0.12 else r.choice(cued)
    cues = [r.choice(TAG_CUES[t]) for t in cued]
    r.shuffle(cues)
    who = r.choice(WHO)
    text = r.choice(DESCRIPTION_FRAMES).format(who=who, Who=sentence_case(who), a=cues[0], A=sentence_case(cues[0]),
                                               b=cues[1], B=sentence_case(cues[1]))
    if k == 3:
        text += f" {sentence_case(cues[2])}."
    return text, tag


def _lamp2_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    """A user ranks tags (taste x popularity); a movie cues 2-3 tags and the user picks the one ranked highest.

    12 % of the time the user picks another cued tag (people are not consistent). The ranking over
    15 tags is the signal: a few items show only which of a couple of tags wins.
    """
    tags = sorted(MOVIE_TAGS)
    taste = _dirichlet(r, [0.5] * len(tags))
    rank = {t: w * math.sqrt(TAG_POPULARITY[t]) for t, w in zip(tags, taste)}

    watched = {t: TAG_POPULARITY[t] for t in tags}

    def movie() -> tuple[str, str]:
        return draw_movie(r, watched, rank)

    profile = [{"id": f"{uid}-p{i}", "description": d, "tag": t} for i, (d, t) in
               enumerate(movie() for _ in range(n_profile))]
    queries = [(LAMP2_TEMPLATE.format(description=d), t) for d, t in (movie() for _ in range(n_queries))]
    return uid, profile, queries


# ---------------------------------------------------------------------- LaMP-3
PRODUCT_CATEGORY = {p: c for c, products in PRODUCT_CATEGORIES.items() for p in products}


def _lamp3_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    """rating = round(3 + slope*(sentiment-3) + offset + category offset + noise), clipped to 1..5.

    The text shows the sentiment; the rest is personal: an overall offset (harsh .. generous,
    skewed generous), a slope (how much of the scale they use), an offset per product category
    (harsh on electronics, kind to kitchen gadgets ...), and noise. A few ratings show the overall
    offset; the category offsets need many, and the user buys mostly in a couple of categories.
    """
    offset = RATING_BIAS[_weighted(r, {"harsh": 0.3, "neutral": 0.3, "generous": 0.4})] + r.uniform(-0.35, 0.35)
    slope = r.uniform(0.4, 1.4)
    categories = sorted(PRODUCT_CATEGORIES)
    category_offset = {c: r.gauss(0.0, 0.8) for c in categories}
    category_weights = dict(zip(categories, _dirichlet(r, [0.8] * len(categories))))
    levels = {str(k): w for k, w in SENTIMENT_LEVEL_WEIGHTS.items()}

    def review() -> tuple[str, str]:
        level = int(_weighted(r, levels))
        category = _weighted(r, category_weights)
        text = r.choice(REVIEW_OPENERS).format(p=r.choice(PRODUCT_CATEGORIES[category]), s=r.choice(SENTIMENT[level]))
        if r.random() < 0.5:
            text += " " + r.choice(REVIEW_FILLERS)
        rating = round(3 + slope * (level - 3) + offset + category_offset[category] + r.gauss(0.0, 0.4))
        return text, str(min(5, max(1, rating)))

    profile = [{"id": f"{uid}-p{i}", "text": t, "score": s} for i, (t, s) in enumerate(review() for _ in range(n_profile))]
    queries = [(LAMP3_TEMPLATE.format(text=t), s) for t, s in (review() for _ in range(n_queries))]
    return uid, profile, queries


# ---------------------------------------------------------------------- LaMP-1 / LaMP-5


class _Author:
    """A researcher: research areas, favourite title patterns and words, casing, and how much they say.

    Each trait is a tendency (weights and probabilities), so two titles of one author differ.
    """

    def __init__(self, r: random.Random, topics: Sequence[str] | None = None) -> None:
        names = sorted(RESEARCH)
        self.topics = list(topics) if topics else r.sample(names, 1 + (r.random() < 0.45) + (r.random() < 0.2))
        self.topic_weights = _dirichlet(r, [1.0] * len(self.topics))
        patterns = sorted(TITLE_PATTERNS)
        self.patterns = dict(zip(patterns, _dirichlet(r, [0.45] * len(patterns))))
        self.adjectives = r.sample(ADJ, 2)
        self.p_fav_adj = r.uniform(0.5, 0.95)
        self.p_dataset = r.uniform(0.0, 0.6)
        self.titlecase = r.random() < 0.7
        self.r = r

    def paper(self, topic: str | None = None) -> tuple[str, str]:
        """(abstract, title) of one new paper."""
        r = self.r
        topic = topic or r.choices(self.topics, weights=self.topic_weights)[0]
        bank = RESEARCH[topic]
        method, problem, dataset = r.choice(bank["method"]), r.choice(bank["problem"]), r.choice(bank["dataset"])
        name = "".join(w[0] for w in method.replace("-", " ").split()).upper() + r.choice(NAME_SUFFIXES)
        adj = r.choice(self.adjectives) if r.random() < self.p_fav_adj else r.choice(ADJ)
        abstract = " ".join((
            r.choice((f"Progress on {problem} stalls when {r.choice(CHALLENGES)}.",
                      f"We study {problem} when {r.choice(CHALLENGES)}.",
                      f"Existing approaches to {problem} struggle when {r.choice(CHALLENGES)}.")),
            f"We propose {name}, {with_article(adj)} approach based on {method} that {r.choice(MECHANISMS)}.",
            f"Experiments on {dataset} show {r.choice(RESULTS)}.",
        ))
        fields = {"name": name, "adj": adj, "problem": problem, "method": method, "property": r.choice(PROPERTIES)}
        title = TITLE_PATTERNS[_weighted(r, self.patterns)](fields)
        if r.random() < self.p_dataset and not title.endswith("?"):
            title += r.choice((f" on {dataset}", f": evidence from {dataset}"))
        return abstract, (title_case(title) if self.titlecase else sentence_case(title))


def _lamp1_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    """An author with 1-3 research areas; a query pairs one of their papers with one from another area.

    A multi-area author whose few profile papers cover one area leaves the other areas unknown.
    """
    author = _Author(r)
    others = [t for t in sorted(RESEARCH) if t not in author.topics]
    stranger = _Author(r, topics=others)
    profile = [{"id": f"{uid}-p{i}", "title": t, "abstract": a} for i, (a, t) in
               enumerate(author.paper() for _ in range(n_profile))]
    queries = []
    for _ in range(n_queries):
        own, foreign = author.paper()[1], stranger.paper(r.choice(others))[1]
        if r.random() < 0.5:
            queries.append((LAMP1_TEMPLATE.format(title=r.choice(GENERIC_TITLES), ref1=own, ref2=foreign), "[1]"))
        else:
            queries.append((LAMP1_TEMPLATE.format(title=r.choice(GENERIC_TITLES), ref1=foreign, ref2=own), "[2]"))
    return uid, profile, queries


def _lamp5_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    author = _Author(r)
    papers = [author.paper() for _ in range(n_profile + n_queries)]
    profile = [{"id": f"{uid}-p{i}", "abstract": a, "title": t} for i, (a, t) in enumerate(papers[:n_profile])]
    queries = [(LAMP5_TEMPLATE.format(abstract=a), t) for a, t in papers[n_profile:]]
    return uid, profile, queries


# ---------------------------------------------------------------------- LaMP-4


_PREPOSITIONS = frozenset("about across after despite for from in near of on over to with".split())


def _head_phrase(words: Sequence[str]) -> list[str]:
    """The object up to its first inner preposition: 'new budget for public transit' -> 'new budget'."""
    for i, w in enumerate(words[1:], start=1):
        if w in _PREPOSITIONS:
            return list(words[:i])
    return list(words)


def _lamp4_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    """A journalist with 1-3 beats and headline habits (patterns, place, casing, trimming the object)."""
    beats = r.sample(sorted(NEWS_BEATS), 1 + (r.random() < 0.5) + (r.random() < 0.25))
    beat_weights = _dirichlet(r, [1.0] * len(beats))
    patterns = dict(zip(sorted(HEADLINE_PATTERNS), _dirichlet(r, [0.3] * len(HEADLINE_PATTERNS))))
    p_place, p_trim, titlecase = r.uniform(0.0, 0.7), r.uniform(0.0, 0.8), r.random() < 0.5

    def story() -> tuple[str, str]:
        beat = NEWS_BEATS[r.choices(beats, weights=beat_weights)[0]]
        subject, short, past, present, base, obj = r.choice(beat["events"])
        place, reason = r.choice(PLACES), r.choice(REASONS)
        detail = r.choice(NEWS_DETAILS).format(n=r.randrange(20, 400))
        affected = r.choice(beat["affected"])
        text = (f"{sentence_case(subject)} {past} {obj} in {place} on {r.choice(DAYS)} after {reason}. {detail} "
                f"{sentence_case(affected)} are expected to feel the change within weeks.")
        words = [w for w in obj.split() if w not in {"a", "an", "the", "its"}]
        o = " ".join(_head_phrase(words) if r.random() < p_trim else words)
        fields = {"S": short, "V": present, "B": base, "O": o, "P": place, "R": reason,
                  "K": r.choice(beat["kicker"]), "A": affected}
        name = _weighted(r, patterns)
        headline = HEADLINE_PATTERNS[name](fields)
        if name != "place-colon" and not headline.endswith("?") and r.random() < p_place:
            headline += f" in {place}"
        return text, (title_case(headline) if titlecase else sentence_case(headline))

    items = [story() for _ in range(n_profile + n_queries)]
    profile = [{"id": f"{uid}-p{i}", "text": t, "title": h} for i, (t, h) in enumerate(items[:n_profile])]
    queries = [(LAMP4_TEMPLATE.format(text=t), h) for t, h in items[n_profile:]]
    return uid, profile, queries


# ---------------------------------------------------------------------- LaMP-7


def _lamp7_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    """A tweet voice as probabilities: casing, interjections, endings, emoji, and the parts the
    style-free query drops (hashtags, a friend's handle, a shared link), each a personal habit."""
    casing = _weighted(r, dict(zip(("lower", "normal", "upper"), _dirichlet(r, [1.0, 1.0, 0.3]))))
    p_inter, inter = r.uniform(0.0, 0.8), r.sample(INTERJECTIONS, 2)
    p_tag, tags = r.uniform(0.1, 0.95), r.sample(HASHTAGS, 3)
    tag_weights = dict(zip(tags, _dirichlet(r, [0.5] * len(tags))))  # usually one signature hashtag
    n_tags = r.choice((1, 1, 2, 3))  # some users pile them on
    p_emoji, emoji = r.uniform(0.0, 0.8), r.sample(EMOJI, 2)
    endings = dict(zip(ENDINGS, _dirichlet(r, [0.4] * len(ENDINGS))))
    p_mention, friend = r.uniform(0.0, 0.5), r.choice(FRIENDS)
    p_link = r.uniform(0.2, 0.9) if r.random() < 0.4 else 0.0  # link sharers

    def tweet() -> str:
        text = r.choice(TWEET_ACTIVITIES) + r.choice(TWEET_TAILS)
        if r.random() < p_mention:
            text = f"{text} with {friend}" if r.random() < 0.5 else f"{friend} {text}"
        mode = casing if r.random() < 0.85 else _weighted(r, {"lower": 1, "normal": 1})
        text = text.upper() if mode == "upper" else sentence_case(text) if mode == "normal" else text
        if r.random() < p_inter:
            word = r.choice(inter)
            text = f"{word} {text}" if r.random() < 0.5 else f"{text} {word}"
        text += _weighted(r, endings)
        if r.random() < p_emoji:
            text += " " + r.choice(emoji) * r.randint(1, 2)
        if r.random() < p_tag:
            chosen = list(dict.fromkeys(_weighted(r, tag_weights) for _ in range(n_tags)))
            text += " " + " ".join(chosen)
        if r.random() < p_link:
            text += " https://t.co/" + "".join(r.choices("abcdefghijkmnpqrstuvwxyz23456789", k=8))
        return text

    tweets = [tweet() for _ in range(n_profile + n_queries)]
    profile = [{"id": f"{uid}-p{i}", "text": t} for i, t in enumerate(tweets[:n_profile])]
    queries = [(LAMP7_TEMPLATE.format(text=neutralize_tweet(t)), t) for t in tweets[n_profile:]]
    return uid, profile, queries


GENERATORS: dict[str, Callable[[random.Random, str, int, int], UserData]] = {
    "LaMP_1": _lamp1_user, "LaMP_2": _lamp2_user, "LaMP_3": _lamp3_user,
    "LaMP_4": _lamp4_user, "LaMP_5": _lamp5_user, "LaMP_7": _lamp7_user,
}


def _user_rng(task: str, split: str, seed: int, k: int) -> random.Random:
    return random.Random(f"cdcda-personas/{seed}/{task}/{split}/{k}")


def further_items(task: str, split: str, users: int, seed: int, n_items: int, *,
                  profile_size: tuple[int, int] = DEFAULT_PROFILE_SIZE,
                  queries_per_user: int = 8, user_prefix: str = "") -> dict[str, list[Record]]:
    """``n_items`` further profile items per user, from the same latent traits (for the oracle writer).

    How: each generator draws the user's traits, then profile items, then query items, all from
    one seeded stream; asking it for ``n_profile + queries + n_items`` profile items therefore
    repeats the profile, then the queries' items, then continues with new items of the same user.
    Only the continuation is kept, minus anything equal to a profile item or inside a query
    (:func:`~cdcda_fl.data.oracle_items.disjoint_items`). The question files are not touched.
    """
    spec = get_task(task)
    out: dict[str, list[Record]] = {}
    for k in range(users):
        r = _user_rng(spec.name, split, seed, k)
        uid = f"{user_prefix}{split}-u{k:04d}"
        n_profile = draw_profile_size(r, *profile_size)
        state = r.getstate()
        _, profile, queries = GENERATORS[spec.name](r, uid, n_profile, queries_per_user)
        r.setstate(state)
        skip = n_profile + queries_per_user
        _, longer, _ = GENERATORS[spec.name](r, uid, skip + n_items, 0)
        extra = [{**it, "id": f"{uid}-o{i}"} for i, it in enumerate(longer[skip:])]
        texts = [q for pair in queries for q in pair]
        out[uid] = disjoint_items(extra, profile, texts)
    return out


def make_task_split(task: str, split: str, users: int, seed: int, *,
                    profile_size: tuple[int, int] = DEFAULT_PROFILE_SIZE,
                    queries_per_user: int = 8, user_prefix: str = "") -> tuple[list[Record], list[tuple[str, str]]]:
    """Questions (time-based layout: one entry per query with ``user_id``) and golds for one split.

    ``profile_size`` is the (smallest, largest) profile; sizes in between are skewed to the small end
    (:func:`draw_profile_size`). Every user has exactly ``queries_per_user`` held-out queries.
    ``user_prefix`` goes in front of every user, record and query id (the texts do not change): two
    devices that each write their own personas need distinct ids, or the server gives a user
    claimed by both to neither (cdcda_fl/server/node_guard.py).
    """
    check_user_prefix(user_prefix)
    spec = get_task(task)
    questions: list[Record] = []
    golds: list[tuple[str, str]] = []
    task_no = spec.name.split("_")[1]
    for k in range(users):
        r = _user_rng(spec.name, split, seed, k)
        uid = f"{user_prefix}{split}-u{k:04d}"
        n_profile = draw_profile_size(r, *profile_size)
        _, profile, queries = GENERATORS[spec.name](r, uid, n_profile, queries_per_user)
        for q, (text, gold) in enumerate(queries):
            qid = f"{user_prefix}{task_no}{split[0]}{k:04d}{q:02d}"
            questions.append({"id": qid, "input": text, "profile": profile, "user_id": uid})
            golds.append((qid, gold))
    return questions, golds


def check_user_prefix(prefix: str) -> str:
    """A prefix for ids: letters, digits, ``.``, ``_``, ``-`` only (a user id may not hold a path separator)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]*", prefix) or len(prefix) > 64:
        raise ValueError(f"user prefix {prefix[:70]!r}: use at most 64 letters, digits, '.', '_' or '-'")
    return prefix


def write_personas(out_dir: Path | str, *, users: int, tasks: Sequence[str] = TASK_NAMES, seed: int = 0,
                   splits: Sequence[str] = ("train", "dev"), profile_size: tuple[int, int] = DEFAULT_PROFILE_SIZE,
                   queries_per_user: int = 8, user_prefix: str = "", oracle_items: int = ORACLE_ITEMS) -> list[Path]:
    """Write ``OUT/LaMP_k/{split}_questions.json`` and ``{split}_outputs.json`` for each task and split,
    and ``{split}_oracle.json`` (``oracle_items`` further items per user, 0 = none) for the
    simulation-only reference writers (cdcda_fl/data/oracle_items.py)."""
    out = Path(out_dir)
    written = []
    for task in tasks:
        spec = get_task(task)
        for split in splits:
            questions, golds = make_task_split(spec.name, split, users, seed, profile_size=profile_size,
                                               queries_per_user=queries_per_user, user_prefix=user_prefix)
            qpath = out / spec.name / f"{split}_questions.json"
            opath = out / spec.name / f"{split}_outputs.json"
            write_questions(qpath, questions)
            write_outputs(opath, spec.name, golds)
            written += [qpath, opath]
            if oracle_items > 0:
                extra = further_items(spec.name, split, users, seed, oracle_items, profile_size=profile_size,
                                      queries_per_user=queries_per_user, user_prefix=user_prefix)
                written.append(write_oracle_items(oracle_path(out, spec.name, split), spec.name, split, extra))
    return written

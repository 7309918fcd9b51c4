"""Seeded synthetic people who each write in several LaMP tasks: one user id, one set of traits.

Why: :mod:`cdcda_fl.data.personas` draws every task's users independently, so ``dev-u0000`` of
LaMP-2 and ``dev-u0000`` of LaMP-5 share an id and nothing else; a method that pools one user's
tasks has nothing to gain there. Here the user is *one person*: a :class:`PersonTraits` drawn
from ``(seed, person)`` alone, and each task's items come from generators that read those traits.
What the traits fix across tasks (docs/multitask.md):

- **interests** (one or two of :data:`INTERESTS`): the movie tags they watch and prefer (LaMP-2),
  the product category they buy and are kind to (LaMP-3), their research areas (LaMP-5), what
  they tweet about and their hashtags (LaMP-7);
- **signature words**, their mascot (a pet's name they give things) and one of their interests' words:
  the catchy names of their papers and their hashtags;
- **casing** (lower, sentence or title case) of every text they write: titles and tweets;
- **verbosity**: dataset suffixes on titles, tails on tweets, filler sentences in reviews;
- **enthusiasm**: rating generosity (LaMP-3) and exclamations, interjections and emoji (LaMP-7);
- **which task they are active in**: one task's profile is rich, the others sparse.

Every task's text banks, sentence frames and the scholarly-author model come from
:mod:`~cdcda_fl.data.personas`; held-out queries and the oracle sidecar's further items continue
the same person's item stream. The same seed gives the same bytes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from cdcda_fl.data.lamp import write_outputs, write_questions
from cdcda_fl.data.oracle_items import disjoint_items, oracle_path, write_oracle_items
from cdcda_fl.data.personas import (
    DEFAULT_PROFILE_SIZE,
    FRIENDS,
    ORACLE_ITEMS,
    PRODUCT_CATEGORIES,
    RATING_BIAS,
    RESEARCH,
    REVIEW_FILLERS,
    REVIEW_OPENERS,
    SENTIMENT,
    SENTIMENT_LEVEL_WEIGHTS,
    TAG_POPULARITY,
    TWEET_ACTIVITIES,
    Record,
    _Author,
    _dirichlet,
    _weighted,
    check_user_prefix,
    draw_movie,
    draw_profile_size,
    sentence_case,
    title_case,
)
from cdcda_fl.data.tasks import (
    LAMP2_TEMPLATE,
    LAMP3_TEMPLATE,
    LAMP5_TEMPLATE,
    LAMP7_TEMPLATE,
    MOVIE_TAGS,
    get_task,
    neutralize_tweet,
)

#: the tasks a multi-task person writes in (LaMP-1 and LaMP-4 are not modelled: see docs/multitask.md)
MULTITASK_TASKS: tuple[str, ...] = ("LaMP_2", "LaMP_3", "LaMP_5", "LaMP_7")
CASINGS: tuple[str, ...] = ("lower", "sentence", "title")
#: (profile fields, query input, gold output) of one item a person wrote
Item = tuple[Record, str, str]


@dataclass(frozen=True)
class Interest:
    """What one interest puts into each task: tags, product category, research areas, tweets, words."""

    tags: tuple[str, ...]
    category: str
    research: tuple[str, ...]
    activities: tuple[str, ...]
    hashtags: tuple[str, ...]
    words: tuple[str, ...]


INTERESTS: dict[str, Interest] = {
    "space": Interest(("sci-fi", "dystopia", "thought-provoking"), "electronics", ("robotics", "vision"),
                      ("watched the meteor shower from the hill", "the new telescope finally arrived",
                       "stayed up late for the rocket launch", "spotted the rings of saturn tonight",
                       "took the kids to the planetarium show", "read every article about the moon mission"),
                      ("#stargazing", "#space", "#astronomy"), ("orbit", "stellar", "cosmic", "lunar")),
    "cooking": Interest(("comedy", "romance"), "kitchen", ("recommender systems", "databases"),
                        ("made fresh pasta from scratch", "my sourdough finally rose properly",
                         "tried a new curry recipe tonight", "the farmers market haul was huge",
                         "baked bread for the neighbours", "the spice rack is finally organised"),
                        ("#foodie", "#homecooking", "#baking"), ("simmer", "spicy", "pantry", "saffron")),
    "outdoors": Interest(("action", "true story"), "outdoor", ("robotics", "networks"),
                         ("hiked to the summit before sunrise", "camped by the lake all weekend",
                          "my new trail shoes are already muddy", "saw a deer on the morning trail",
                          "kayaked across the bay", "packed the tent for the mountains"),
                         ("#hiking", "#outdoors", "#trailrunning"), ("summit", "alpine", "trail", "granite")),
    "music": Interest(("classic", "romance", "based on a book"), "electronics", ("speech", "language"),
                      ("the concert last night was incredible", "finally learned the new song on guitar",
                       "found an old vinyl at the flea market", "band practice ran late again",
                       "new album from my favourite band is out", "the choir rehearsal went well"),
                      ("#nowplaying", "#livemusic", "#vinyl"), ("melody", "rhythm", "harmony", "chord")),
    "mystery": Interest(("twist ending", "psychology", "dark comedy"), "home", ("security", "privacy"),
                        ("finished the detective novel in one night", "solved the escape room with a minute left",
                         "the podcast about the old heist is so good", "doing the cryptic crossword with coffee",
                         "guessed the killer by chapter three", "the murder mystery party was a hit"),
                        ("#truecrime", "#mystery", "#puzzles"), ("cipher", "sleuth", "riddle", "shadow")),
    "history": Interest(("classic", "true story", "based on a book"), "home", ("databases", "language"),
                        ("spent the day at the history museum", "found my grandfather's old letters",
                         "visited the castle ruins on the coast", "reading about ancient rome again",
                         "the archive visit was worth it", "restored an old wooden chair"),
                        ("#history", "#vintage", "#museum"), ("ancient", "vintage", "archive", "heritage")),
    "gaming": Interest(("fantasy", "action", "sci-fi"), "electronics", ("graph learning", "vision"),
                       ("beat the final boss at two am", "the new controller just arrived",
                        "game night with the crew went long", "speedrun attempt number forty",
                        "the patch finally fixed my save file", "built a castle in the sandbox game"),
                       ("#gaming", "#gamer", "#retrogaming"), ("pixel", "quest", "arcade", "respawn")),
    "fitness": Interest(("comedy", "true story", "social commentary"), "outdoor", ("recommender systems", "speech"),
                        ("just finished a long run in the park", "the gym was packed at six am",
                         "yoga before work changed my week", "new personal best on the rowing machine",
                         "meal prepped for the whole week", "ten thousand steps before lunch"),
                        ("#running", "#fitness", "#yoga"), ("sprint", "stamina", "tempo", "stride")),
}

#: the name a person gives the things they make, their pets and their projects: one per person, rarely
#: shared, so it names that person's papers and tags their tweets and nobody else's
MASCOTS: tuple[str, ...] = ("biscuit", "maple", "juniper", "nova", "pepper", "clover", "ziggy", "mochi", "waffles",
                            "pickle", "noodle", "bramble", "tango", "pebble", "sprocket", "marble", "fennel", "hazel",
                            "indigo", "kiwi", "lumen", "mango", "nimbus", "olive", "quill", "rusty", "sable",
                            "toffee", "velvet", "willow", "yuzu", "zephyr")

# Tweet voice by mood: an enthusiastic person exclaims, a grumpy one sighs.
MOOD_INTERJECTIONS = {"up": ("yay", "wow", "omg", "so good"), "flat": ("honestly", "tbh", "ngl", "lol"),
                      "down": ("smh", "ugh", "meh", "sigh")}
MOOD_ENDINGS = {"up": {"!": 3, "!!": 2, "!!!": 1, " :)": 1}, "flat": {"": 2, ".": 3, " haha": 1},
                "down": {"...": 3, ".": 2, " :/": 1}}
MOOD_EMOJI = {"up": ("🎉", "😍", "🙌", "🔥"), "flat": ("👍", "☕", "🙂"), "down": ("🙃", "😭", "😩")}
VERBOSE_TAILS = (" today", " again", " this week", " and it made my day", " and now I need a nap",
               " with the whole family")


@dataclass(frozen=True)
class PersonTraits:
    """One person's latent traits, the same in every task they write in (see the module docstring)."""

    person: str
    interests: tuple[str, ...]
    interest_weights: tuple[float, ...]
    signature_words: tuple[str, ...]
    p_signature: float
    casing: str
    p_own_casing: float
    verbosity: float
    enthusiasm: float
    tag_rank: Mapping[str, float]
    task_order: tuple[str, ...]
    rich_size: int
    sparse_sizes: Mapping[str, int]

    @property
    def mood(self) -> str:
        """'up', 'flat' or 'down': the tweet voice of their enthusiasm (which is also their rating generosity)."""
        return "up" if self.enthusiasm > 0.35 else "down" if self.enthusiasm < -0.35 else "flat"

    def interest(self, r: random.Random) -> Interest:
        """One of the person's interests, by their weights (what this item is about)."""
        return INTERESTS[r.choices(self.interests, weights=self.interest_weights)[0]]

    def recase(self, r: random.Random, text: str) -> str:
        """``text`` in the person's casing, or now and then in another (people are not consistent)."""
        casing = self.casing if r.random() < self.p_own_casing else r.choice([c for c in CASINGS if c != self.casing])
        return text.lower() if casing == "lower" else title_case(text) if casing == "title" else sentence_case(text)

    def profile_size(self, task: str, tasks: Sequence[str]) -> int:
        """Rich in the person's most active task among ``tasks``, sparse in the others."""
        home = next(t for t in self.task_order if t in tasks)
        return self.rich_size if task == home else self.sparse_sizes[task]


def interest_tags(interests: Sequence[str]) -> set[str]:
    """The movie tags of these interests: the ones a person watches and ranks up (LaMP-2)."""
    return {t for name in interests for t in INTERESTS[name].tags}


def person_rng(seed: int, person: str) -> random.Random:
    """The stream a person's traits come from: the seed and the person, nothing about any task."""
    return random.Random(f"cdcda-multitask/{seed}/{person}")


def item_rng(seed: int, person: str, task: str) -> random.Random:
    """The stream of one person's items in one task (profile, then queries, then oracle items)."""
    return random.Random(f"cdcda-multitask/{seed}/{person}/{task}")


def sizes_for(r: random.Random, lo: int, hi: int) -> tuple[int, dict[str, int]]:
    """A rich size in the top half of [lo, hi] and a sparse size per task in [lo, max(lo, hi // 4)], log-skewed low."""
    sparse_hi = max(lo, hi // 4)
    rich = r.randint(max(lo, (lo + hi + 1) // 2), hi)
    return rich, {task: draw_profile_size(r, lo, sparse_hi) for task in MULTITASK_TASKS}


def draw_person(seed: int, person: str, profile_size: tuple[int, int] = DEFAULT_PROFILE_SIZE) -> PersonTraits:
    """The traits of ``person`` (e.g. ``dev-u0003``): one or two interests, style, mood, activity."""
    r = person_rng(seed, person)
    interests = tuple(r.sample(sorted(INTERESTS), 1 + (r.random() < 0.4)))
    weights = tuple(_dirichlet(r, [2.0] * len(interests)))
    pool = sorted({w for name in interests for w in INTERESTS[name].words})
    signature = (r.choice(MASCOTS), r.choice(pool))
    casing = _weighted(r, {"lower": 0.3, "sentence": 0.35, "title": 0.35})
    enthusiasm = RATING_BIAS[_weighted(r, {"harsh": 0.3, "neutral": 0.3, "generous": 0.4})] + r.uniform(-0.3, 0.3)
    favoured = interest_tags(interests)
    tags = sorted(MOVIE_TAGS)
    taste = _dirichlet(r, [0.5] * len(tags))
    rank = {t: w * math.sqrt(TAG_POPULARITY[t]) * (4.0 if t in favoured else 1.0) for t, w in zip(tags, taste)}
    order = list(MULTITASK_TASKS)
    r.shuffle(order)
    rich, sparse = sizes_for(r, *profile_size)
    return PersonTraits(person=person, interests=interests, interest_weights=weights, signature_words=signature,
                        p_signature=r.uniform(0.6, 0.9), casing=casing, p_own_casing=r.uniform(0.85, 0.98),
                        verbosity=r.random(), enthusiasm=enthusiasm, tag_rank=rank, task_order=tuple(order),
                        rich_size=rich, sparse_sizes=sparse)


# ---------------------------------------------------------------------- per-task item streams
def movie_items(person: PersonTraits, r: random.Random) -> Iterator[Item]:
    """LaMP-2: they watch more of their interests' tags and tag a movie with the cued tag they rank highest.

    As in personas' LaMP-2, a movie cues 2-3 tags and 12 % of the time another cued tag wins.
    """
    favoured = interest_tags(person.interests)
    watched = {t: TAG_POPULARITY[t] * (3.0 if t in favoured else 1.0) for t in sorted(MOVIE_TAGS)}
    while True:
        text, tag = draw_movie(r, watched, person.tag_rank)
        yield {"description": text, "tag": tag}, LAMP2_TEMPLATE.format(description=text), tag


def review_items(person: PersonTraits, r: random.Random) -> Iterator[Item]:
    """LaMP-3: rating = round(3 + slope*(sentiment-3) + enthusiasm + category offset + noise), clipped to 1..5.

    The person buys mostly in their interests' categories and is kinder to them (+0.7); the
    enthusiasm that makes their tweets exclaim is their overall generosity; verbosity adds fillers.
    """
    slope = r.uniform(0.4, 1.4)
    categories = sorted(PRODUCT_CATEGORIES)
    loved = {INTERESTS[name].category for name in person.interests}
    offset = {c: r.gauss(0.0, 0.5) + (0.7 if c in loved else 0.0) for c in categories}
    bought = {c: w * (4.0 if c in loved else 1.0) for c, w in zip(categories, _dirichlet(r, [0.8] * len(categories)))}
    levels = {str(k): w for k, w in SENTIMENT_LEVEL_WEIGHTS.items()}
    while True:
        level, category = int(_weighted(r, levels)), _weighted(r, bought)
        text = r.choice(REVIEW_OPENERS).format(p=r.choice(PRODUCT_CATEGORIES[category]), s=r.choice(SENTIMENT[level]))
        if r.random() < person.verbosity:
            text += " " + r.choice(REVIEW_FILLERS)
        rating = round(3 + slope * (level - 3) + person.enthusiasm + offset[category] + r.gauss(0.0, 0.4))
        score = str(min(5, max(1, rating)))
        yield {"text": text, "score": score}, LAMP3_TEMPLATE.format(text=text), score


def title_items(person: PersonTraits, r: random.Random) -> Iterator[Item]:
    """LaMP-5: personas' scholarly author, working in the person's interests' research areas, with
    the person's casing, a dataset suffix as often as they are verbose, and, now and then, a catchy
    name from their signature words that the abstract does not contain ('Orbit: ...')."""
    areas = sorted({a for name in person.interests for a in INTERESTS[name].research if a in RESEARCH})
    author = _Author(r, topics=areas)
    author.titlecase = False  # the person's casing decides (below)
    author.p_dataset = 0.05 + 0.6 * person.verbosity
    while True:
        abstract, title = author.paper()
        if r.random() < person.p_signature and ":" not in title:
            title = f"{r.choice(person.signature_words).capitalize()}: {_decapitalize(title)}"
        title = person.recase(r, title)
        yield {"abstract": abstract, "title": title}, LAMP5_TEMPLATE.format(abstract=abstract), title


def _decapitalize(text: str) -> str:
    """'Robust node classification' -> 'robust node classification'; an acronym ('GNNNet ...') stays."""
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first[1:].islower() else text


def tweet_items(person: PersonTraits, r: random.Random) -> Iterator[Item]:
    """LaMP-7: tweets about their interests (70 %) in their casing, mood and length, tagged with
    their interests' hashtags or a signature word (hashtags are what the style-free query drops)."""
    mood = person.mood
    p_inter, p_emoji = r.uniform(0.2, 0.7), r.uniform(0.1, 0.6) if mood != "flat" else r.uniform(0.0, 0.3)
    p_mention, friend = r.uniform(0.0, 0.4), r.choice(FRIENDS)
    while True:
        topic = person.interest(r)
        text = r.choice(topic.activities) if r.random() < 0.7 else r.choice(TWEET_ACTIVITIES)
        if r.random() < person.verbosity:
            text += r.choice(VERBOSE_TAILS)
        if r.random() < p_mention:
            text = f"{text} with {friend}"
        text = person.recase(r, text)
        if r.random() < p_inter:
            word = r.choice(MOOD_INTERJECTIONS[mood])
            text = f"{word} {text}" if r.random() < 0.5 else f"{text} {word}"
        text += _weighted(r, MOOD_ENDINGS[mood])
        if r.random() < p_emoji:
            text += " " + r.choice(MOOD_EMOJI[mood])
        tags = [r.choice(topic.hashtags)] if r.random() < 0.6 else []
        if r.random() < person.p_signature:
            tags.append("#" + r.choice(person.signature_words))
        if tags:
            text += " " + " ".join(dict.fromkeys(tags))
        yield {"text": text}, LAMP7_TEMPLATE.format(text=neutralize_tweet(text)), text


ITEM_STREAMS: dict[str, Callable[[PersonTraits, random.Random], Iterator[Item]]] = {
    "LaMP_2": movie_items, "LaMP_3": review_items, "LaMP_5": title_items, "LaMP_7": tweet_items,
}


# ---------------------------------------------------------------------- files
def check_tasks(tasks: Sequence[str]) -> list[str]:
    """The canonical task names; a task no multi-task person writes in is a ValueError naming the ones they do."""
    names = [get_task(t).name for t in tasks]
    unsupported = [t for t in names if t not in ITEM_STREAMS]
    if unsupported or not names:
        raise ValueError(f"multi-task personas write {', '.join(MULTITASK_TASKS)}; "
                         f"not {', '.join(unsupported) or 'no task'}")
    return list(dict.fromkeys(names))


@dataclass
class PersonTask:
    """One person's files in one task: the profile, the held-out (input, gold) pairs, further items."""

    profile: list[Record]
    queries: list[tuple[str, str]]
    further: list[Record]


def person_task(person: PersonTraits, task: str, tasks: Sequence[str], seed: int, uid: str, *,
                queries_per_user: int, oracle_items: int) -> PersonTask:
    """The first items of the person's stream are the profile, the next the queries, the rest the
    oracle's further items (minus any that repeat a profile item or sit in a query)."""
    n_profile = person.profile_size(task, tasks)
    items = list(islice(ITEM_STREAMS[task](person, item_rng(seed, person.person, task)),
                        n_profile + queries_per_user + oracle_items))
    profile = [{"id": f"{uid}-p{i}", **fields} for i, (fields, _, _) in enumerate(items[:n_profile])]
    queries = [(query, gold) for _, query, gold in items[n_profile:n_profile + queries_per_user]]
    extra = [{"id": f"{uid}-o{i}", **fields} for i, (fields, _, _) in enumerate(items[n_profile + queries_per_user:])]
    texts = [text for pair in queries for text in pair]
    return PersonTask(profile, queries, disjoint_items(extra, profile, texts) if extra else [])


def write_multitask_personas(out_dir: Path | str, *, users: int, tasks: Sequence[str] = MULTITASK_TASKS,
                             seed: int = 0, splits: Sequence[str] = ("train", "dev"),
                             profile_size: tuple[int, int] = DEFAULT_PROFILE_SIZE, queries_per_user: int = 8,
                             user_prefix: str = "", oracle_items: int = ORACLE_ITEMS) -> list[Path]:
    """Write ``OUT/LaMP_k/{split}_questions.json``, ``{split}_outputs.json`` and (``oracle_items`` > 0)
    ``{split}_oracle.json`` for each task, with user ``{prefix}{split}-uNNNN`` the same person in every task.

    The file layout, ids and query ids are those of :func:`cdcda_fl.data.personas.write_personas`;
    train and dev hold different people, as there.
    """
    check_user_prefix(user_prefix)
    names = check_tasks(tasks)
    out = Path(out_dir)
    written: list[Path] = []
    for split in splits:
        people = [draw_person(seed, f"{split}-u{k:04d}", profile_size) for k in range(users)]
        for task in names:
            written += _write_task_split(out, task, split, names, people, seed, queries_per_user=queries_per_user,
                                         oracle_items=oracle_items, user_prefix=user_prefix)
    return written


def _write_task_split(out: Path, task: str, split: str, tasks: Sequence[str], people: Sequence[PersonTraits],
                      seed: int, *, queries_per_user: int, oracle_items: int, user_prefix: str) -> list[Path]:
    """One task's files of one split, in personas' layout (one question per query, ``user_id`` set)."""
    task_no = task.split("_")[1]
    questions: list[Record] = []
    golds: list[tuple[str, str]] = []
    further: dict[str, list[Record]] = {}
    for k, person in enumerate(people):
        uid = user_prefix + person.person
        data = person_task(person, task, tasks, seed, uid, queries_per_user=queries_per_user, oracle_items=oracle_items)
        for q, (text, gold) in enumerate(data.queries):
            qid = f"{user_prefix}{task_no}{split[0]}{k:04d}{q:02d}"
            questions.append({"id": qid, "input": text, "profile": data.profile, "user_id": uid})
            golds.append((qid, gold))
        further[uid] = data.further
    qpath, opath = out / task / f"{split}_questions.json", out / task / f"{split}_outputs.json"
    write_questions(qpath, questions)
    write_outputs(opath, task, golds)
    if oracle_items <= 0:
        return [qpath, opath]
    return [qpath, opath, write_oracle_items(oracle_path(out, task, split), task, split, further)]

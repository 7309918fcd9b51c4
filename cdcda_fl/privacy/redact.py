"""PII scrubbing of shared text, on the device, before anything is audited or sent.

What does the detecting, and why (benchmarks/pii.py measures each candidate on the PII battery
of tests/pii_battery.py; docs/privacy.md has the table):

* **our own patterns** for what no maintained offline library finds in running text: e-mail,
  including IDN (``jürgen@müller.de``) and obfuscated forms (``jane at example dot com``,
  ``bob(at)mail(dot)de``, which Presidio's recognizers miss), URLs, handles, IPv4/IPv6 (IPv6
  checked by :mod:`ipaddress`), MAC addresses, IBANs, card numbers, US SSNs, UK NI numbers,
  dates only where the text says they are a date of birth, and long digit runs (8+ digits:
  account numbers, client ids);
* **python-stdnum** validates what the patterns propose: IBAN mod-97 *and* the country's BBAN
  length/format (``check_country=False``: not the bank registry, which refuses valid IBANs of
  banks it does not list), Luhn for cards, the SSA's rules for SSNs (no area 000/666/9xx), and
  ISBNs, which are left alone after the word "ISBN";
* **phonenumbers** (``phonenumberslite``: the same library without geocoding data) finds the
  national phone formats our pattern misses (``030 12345678``, ``+33 6 12 34 56 78``) with
  Google's numbering plans (leniency VALID, regions :data:`PHONE_REGIONS`); our pattern stays for
  numbers outside those plans (fictional 555 numbers, unassigned ranges).

Presidio (``presidio-analyzer``) was measured and not adopted: it pulls spaCy and tldextract (a
400 MB environment that tries to download the public-suffix list), its pattern recognizers miss
the obfuscated e-mails and most dates of birth, and its phone recognizer *is* phonenumbers.

Design:

* **Unicode folding first** (:func:`fold`): every detector and every user term runs on a folded
  copy of the text -- compatibility forms (NFKD, the decomposition half of NFKC: full-width
  ``ｊａｎｅ``, ligatures), accents removed, case folded, zero-width/format characters dropped --
  and matches are mapped back to the original characters. So ``ｃａｎｃｅｒ``, ``can\\u200bcer``
  and ``Cáncer`` are all the term ``cancer``, and ``jürgen@müller.de`` is an e-mail. The
  libraries above see only the folded text too.
* every detector proposes spans; spans are accepted in priority order (URL, EMAIL, ..., user
  terms) and never overlap, and the text is rebuilt once. So an e-mail inside a URL becomes one
  ``[URL]``, a user term that happens to spell ``email`` does not mangle an ``[EMAIL]``
  placeholder, and the result is independent of replacement order.
* quantities are not ids: a number grouped in thousands before a currency or unit
  (``12 500 000 euros``) and a row of one- and two-digit numbers (``4 8 15 16 23 42``) are
  neither phones nor account numbers.
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

import phonenumbers
from stdnum import iban as _stdnum_iban
from stdnum import isbn as _stdnum_isbn
from stdnum import luhn as _stdnum_luhn
from stdnum.us import ssn as _stdnum_ssn

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
# Repeats are bounded ({1,8} labels, 64-character local parts) so that no pattern is quadratic
# on long runs such as "a.a.a.a..." or "12-12-12-..." (a record is at most a few KB, but a
# crafted one should not stall the device).
BARE_URL_RE = re.compile(  # example.com/path, bit.ly/xyz
    r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}(?:" + _TLDS + r")\b(?:/[^\s<>\"']*)?",
    re.IGNORECASE,
)
EMAIL_RE = re.compile(
    r"\b[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}[a-z]{2,24}\b",
    re.IGNORECASE,
)
# Addresses in other scripts (用户@例子.中国): folding already turns accented Latin into ASCII.
EMAIL_IDN_RE = re.compile(r"(?<![\w.%+-])[\w][\w.%+-]{0,63}@(?:[\w-]{1,63}\.){1,8}[^\W\d_]{2,24}(?!\w)")
# Also catches obfuscated addresses such as "jane at example dot com".
_AT = r"\s*(?:\[at\]|\(at\)|\sat\s)\s*"
_DOT = r"\s*(?:\[dot\]|\(dot\)|\sdot\s)\s*"
EMAIL_OBFUSCATED_RE = re.compile(  # local part and domain may be "tom dot baker", "mail dot co dot uk"
    # (bounded repeats: linear time on long runs such as "a dot a dot ..." or "12-12-12-...")
    r"\b[a-z0-9._%+-]{1,64}(?:" + _DOT + r"[a-z0-9._%+-]{1,64}){0,4}" + _AT
    + r"[a-z0-9-]{1,63}(?:" + _DOT + r"[a-z0-9-]{1,63}){0,4}" + _DOT + r"(?:" + _TLDS + r")\b",
    re.IGNORECASE,
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}(?:" + _OCTET + r"(?:\." + _OCTET + r"){3}|[0-9a-f]{1,4})?"
                     r"(?![\w:]|\.\d)", re.IGNORECASE)  # the dotted-quad tail first: ::ffff:192.0.2.128
MAC_RE = re.compile(r"(?<![\w:-])[0-9a-f]{2}(?:([:-])[0-9a-f]{2})(?:\1[0-9a-f]{2}){4}(?![\w:-])", re.IGNORECASE)
MAC_DOTTED_RE = re.compile(r"(?<![\w.])[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}(?![\w]|\.\w)", re.IGNORECASE)  # Cisco
IBAN_RE = re.compile(r"(?<!\w)[a-z]{2}\d{2}(?:[a-z0-9]{11,30}|(?: [a-z0-9]{4}){2,7}(?: [a-z0-9]{1,4})?)(?!\w)",
                     re.IGNORECASE)
CARD_RE = re.compile(r"(?<![\w])\d(?:[ -]?\d){12,18}(?![\w])")
SSN_RE = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")  # US social security number: 536-90-4399
UK_NINO_RE = re.compile(r"(?<!\w)[a-ceghj-pr-tw-z][a-ceghj-npr-tw-z] ?\d{2} ?\d{2} ?\d{2} ?[a-d](?!\w)", re.IGNORECASE)
_NINO_NEVER = {"bg", "gb", "kn", "nk", "nt", "tn", "zz"}  # prefixes HMRC never issues
# Dates only where the text says they are a birth date (other dates are ordinary content).
DOB_RE = re.compile(
    r"(?:\bborn(?:\s+on)?(?:\s+the)?|\bd\.?o\.?b\.?|\bdate of birth|\bbirth ?date|\bbirthday)\s*[:\-]?\s*"
    r"(\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?[a-z]{3,9}\.?,?\s+\d{2,4}"
    r"|[a-z]{3,9}\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4})",
    re.IGNORECASE,
)
HANDLE_RE = re.compile(r"(?<![\w@.])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])\b")  # @kate.w, not its full stop
# Phone: optional +country, optional (area), then 2+ digit groups split by space, dot or dash
# (after a +country code the first group may be one digit: +33 6 12 34 56 78).
PHONE_RE = re.compile(  # never a fragment of a longer dashed/dotted digit string (an ISBN)
    r"(?<![\w+])\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,5}(?:[\s.-]\d{2,8}){1,5}(?!\w|[.-]\d)"
    r"|(?<![\w+])(?<!\d[.-])(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,8}){1,4}(?!\w|[.-]\d)"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
)
# Regions whose national formats phonenumbers looks for (international +CC numbers are found
# whatever the region). Each added region finds more national formats and more false positives:
# IN reads "4 8 15 16 23 42" as a number, DK any 8 digits.
PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR")
# Long digit runs (account numbers, ids), optionally grouped by space/dash: 8 digits or more.
NUMBER_RE = re.compile(r"(?<![\w.,])\d(?:[ -]?\d){7,}(?![\w]|[.,]\d)")
# A number the text calls an account / policy / client number: 6 digits or more, whatever grouping.
ACCOUNT_RE = re.compile(
    r"\b(?:account|acct|a/c|konto\w*|policy|client|customer|member(?:ship)?|contract|invoice)"
    r"(?:\s*(?:no\.?|nr\.?|number|num|#|id|ids))?\s*[:#.]?\s*(\d(?:[ -]?\d){5,})(?![\w]|[.,]\d)"
)
_ISO_DATE_RE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
_YEAR_RE = re.compile(r"^(?:1[5-9]|20)\d\d$")
_YEARISH_RE = re.compile(r"^(?:1[5-9]|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")  # 20190512: a date
_THOUSANDS_RE = re.compile(r"^[1-9]\d{0,2}(?:[ \u00a0]\d{3})+$")  # 12 500 000
_QUANTITY_AFTER_RE = re.compile(
    r"^\s*(?:[€$£¥%]|(?:euros?|eur|dollars?|usd|pounds?|gbp|yen|francs?|chf|rupees?|people|persons|copies|"
    r"units|users|views|visitors|votes|inhabitants|residents|km|miles|tonnes|tons|kg|years|words|pages|"
    r"times|members|subscribers|followers|downloads)\b)",
)
_QUANTITY_BEFORE_RE = re.compile(r"[€$£¥]\s*$")
_SMALL_GROUPS_RE = re.compile(r"^[1-9]\d?(?: \d{1,2})+$")  # 4 8 15 16 23 42 (numbers, not a phone)
# Words after which a dotted quad is a version or section number ("patch 1.0.2.3"); kept short,
# since every word here is one after which an IP address would stay ("update", "release" are not).
_VERSION_BEFORE_RE = re.compile(r"(?:\bversion|\bver\.?|\bpatch|\bbuild|\bfirmware|\bchapter|\bsection|\bsec\.|§)\s*$")


def _valid_phone(match: str) -> bool:
    """Filter the phone regex's false positives: dates, year lists, decimals, rows of small numbers,
    too few or too many digits."""
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
    if not explicit and _SMALL_GROUPS_RE.match(match.strip()):  # "15 16 23 42": lottery numbers, scores
        return False
    return True


def _luhn(match: str) -> bool:
    """Payment card numbers: 13-19 digits with a valid Luhn check digit (python-stdnum)."""
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and _stdnum_luhn.is_valid(digits)


def _iban(match: str) -> bool:
    """ISO 13616 IBAN (python-stdnum): mod 97 == 1 and the country's BBAN length and format.

    ``check_country=False``: stdnum's per-country modules also look the bank up in a registry,
    which refuses well-formed IBANs of banks it does not list (ISO's own example
    BE68 5390 0754 7034): for scrubbing, a stale registry must not let an account out.
    """
    return _stdnum_iban.is_valid(match, check_country=False)


def _ssn(match: str) -> bool:
    """A US SSN the SSA could have issued (python-stdnum: no area 000/666/9xx, group 00, serial 0000)."""
    return _stdnum_ssn.is_valid(match.replace(" ", "-"))


def _nino(match: str) -> bool:
    return match[:2].lower() not in _NINO_NEVER


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
    if _SMALL_GROUPS_RE.match(match.strip()):  # "4 8 15 16 23 42"
        return False
    return not (len(digits) == 8 and _YEARISH_RE.match(digits))


def _not_version(folded: str, start: int, end: int) -> bool:
    """A dotted quad after "version", "patch", "build", "section" ... is a version, not an address."""
    return not _VERSION_BEFORE_RE.search(folded[max(0, start - 12):start])


def _not_quantity_or_isbn(folded: str, start: int, end: int) -> bool:
    """Digits that are a quantity (``12 500 000 euros``, ``€ 1 299 000``) or an ISBN after the word
    "ISBN" (checked by python-stdnum, ISBN-10 ``X`` included) are content, not PII."""
    match = folded[start:end].strip()
    if _THOUSANDS_RE.match(match) and (_QUANTITY_AFTER_RE.match(folded[end:end + 24])
                                       or _QUANTITY_BEFORE_RE.search(folded[max(0, start - 3):start])):
        return False
    if "isbn" in folded[max(0, start - 12):start]:
        tail = re.match(r"-?x(?!\w)", folded[end:end + 2])
        if _stdnum_isbn.is_valid(match + (tail.group().lstrip("-") if tail else "")):
            return False
    return True


class _Ibans:
    """IBAN candidates validated by ``check``; a grouped one that fails is retried without its last
    group, since the pattern's optional short tail also takes a following word ("... 7034 now")."""

    def __init__(self, check: Callable[[str], bool]) -> None:
        self.check = check

    def finditer(self, text: str) -> Iterable[_Found]:
        out = []
        for m in IBAN_RE.finditer(text):
            start, end = m.span()
            while True:
                if self.check(text[start:end]):
                    out.append(_Found(start, end))
                    break
                cut = text.rfind(" ", start, end)
                if cut < start + 15:  # shorter than any IBAN
                    break
                end = cut
        return out


class _Found:
    """A span found by a library, shaped like the part of :class:`re.Match` that _spans uses."""

    def __init__(self, start: int, end: int) -> None:
        self._span = (start, end)

    def span(self, group: int = 0) -> tuple[int, int]:
        return self._span


# Stretches of text a phone number could be in: digits with separators, 7 digits or more (checked
# below). The matcher (about 0.5 ms per stretch and region) runs only on these, plus a character
# of context each side, and only where the own pattern has not already taken the stretch.
_PHONE_CANDIDATE_RE = re.compile(r"(?<!\w)\+?\(?\d[\d \t().\-/]{5,40}\d(?!\w)")


class _PhoneNumbers:
    """phonenumbers' matcher (numbering plans of :data:`PHONE_REGIONS`), as a regex-like finder."""

    def finditer(self, text: str, taken: Iterable[tuple[int, int, str]] = ()) -> Iterable[_Found]:
        """Spans of valid numbers; stretches inside a span already ``taken`` are not scanned again."""
        spans: set[tuple[int, int]] = set()
        taken = list(taken)
        for cand in _PHONE_CANDIDATE_RE.finditer(text):
            if sum(c.isdigit() for c in cand.group()) < 7:  # no phone number has fewer digits
                continue
            if any(s <= cand.start() and cand.end() <= e for s, e, _ in taken):
                continue
            lo, hi = max(0, cand.start() - 1), min(len(text), cand.end() + 1)
            window = text[lo:hi]
            for region in PHONE_REGIONS:
                for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID):
                    spans.add((lo + m.start, lo + m.end))
        return [_Found(s, e) for s, e in sorted(spans)]


PHONENUMBERS = _PhoneNumbers()
IBANS = _Ibans(_iban)


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

# (kind, finder, validity check, group): priority order. Full URLs first (an address inside one
# stays part of it), then e-mails so that "jane@example.com" is not read as the bare domain
# "example.com"; IPv6 before IPv4 (::ffff:192.0.2.128 is one address); structured ids with
# checksums before the generic phone and digit-run patterns. A finder is a compiled regex or
# anything with the same ``finditer`` (:data:`PHONENUMBERS`, :data:`IBANS`).
_DETECTORS: list[tuple[str, re.Pattern[str] | _PhoneNumbers | _Ibans, Check, int]] = [
    ("URL", URL_RE, None, 0),
    ("EMAIL", EMAIL_RE, None, 0),
    ("EMAIL", EMAIL_IDN_RE, None, 0),
    ("EMAIL", EMAIL_OBFUSCATED_RE, None, 0),
    ("URL", BARE_URL_RE, None, 0),
    ("MAC", MAC_RE, None, 0),
    ("MAC", MAC_DOTTED_RE, None, 0),
    ("IP", IPV6_RE, _ipv6, 0),
    ("IP", IPV4_RE, None, 0),
    ("IBAN", IBANS, None, 0),
    ("CARD", CARD_RE, _luhn, 0),
    ("ID", SSN_RE, _ssn, 0),
    ("ID", UK_NINO_RE, _nino, 0),
    ("DATE", DOB_RE, None, 1),
    ("HANDLE", HANDLE_RE, None, 0),
    ("NUMBER", ACCOUNT_RE, _number, 1),
    ("PHONE", PHONE_RE, _valid_phone, 0),
    ("PHONE", PHONENUMBERS, None, 0),
    ("NUMBER", NUMBER_RE, _number, 0),
]
# Checks that look at the text around a span: kinds made of digits, which a quantity or an ISBN
# can look like, and IPv4 addresses, which a four-part version number can.
_CONTEXT_CHECKS: dict[str, Callable[[str, int, int], bool]] = {
    "CARD": _not_quantity_or_isbn, "PHONE": _not_quantity_or_isbn, "NUMBER": _not_quantity_or_isbn,
    "IP": _not_version,
}


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
            found = regex.finditer(folded, taken) if isinstance(regex, _PhoneNumbers) else regex.finditer(folded)
            for m in found:
                start, end = m.span(group)
                if regex is URL_RE or regex is BARE_URL_RE:
                    start, end = _strip_url_tail((start, end), folded)
                if end <= start or (check is not None and not check(folded[start:end])):
                    continue
                context = _CONTEXT_CHECKS.get(kind)
                if context is not None and not context(folded, start, end):
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

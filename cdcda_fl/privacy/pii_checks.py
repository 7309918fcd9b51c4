"""Validity checks for the spans the PII patterns propose, and the finders that are libraries
rather than regexes (phonenumbers' matcher, IBANs validated group by group).

python-stdnum validates (IBAN mod-97 and BBAN format, Luhn, SSA rules for SSNs, ISBNs);
phonenumbers (``phonenumberslite``) finds national phone formats with Google's numbering plans.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

import phonenumbers
from stdnum import iban as _stdnum_iban
from stdnum import isbn as _stdnum_isbn
from stdnum import luhn as _stdnum_luhn
from stdnum.es import dni as _stdnum_dni
from stdnum.es import nie as _stdnum_nie
from stdnum.it import codicefiscale as _stdnum_cf
from stdnum.us import ssn as _stdnum_ssn

from cdcda_fl.privacy.pii_patterns import (
    HASH_BEFORE_RE,
    IBAN_RE,
    ID_PREFIX_RE,
    ISO_DATE_RE,
    NINO_NEVER,
    NOT_HANDLES,
    PHONE_CANDIDATE_RE,
    PHONE_REGIONS,
    PROSE_WORDS,
    QUANTITY_AFTER_RE,
    QUANTITY_BEFORE_RE,
    SMALL_GROUPS_RE,
    THOUSANDS_RE,
    VERSION_BEFORE_RE,
    YEAR_RE,
    YEARISH_RE,
)


def valid_phone(match: str) -> bool:
    """Filter the phone regex's false positives: dates, year lists, decimals, rows of small numbers,
    too few or too many digits."""
    digits = re.sub(r"\D", "", match)
    explicit = match.lstrip().startswith("+") or "(" in match
    if not 7 <= len(digits) <= (15 if explicit else 12):
        return False
    if ISO_DATE_RE.match(match.strip()):
        return False
    groups = re.split(r"[\s.-]+", match.strip().strip("+"))
    if not explicit and all(YEAR_RE.match(g) for g in groups):  # "1999 2004 2010"
        return False
    if not explicit and "." in match and len(groups) == 2:  # a decimal number like 12345.678
        return False
    if not explicit and SMALL_GROUPS_RE.match(match.strip()):  # "15 16 23 42": lottery numbers, scores
        return False
    return True


def luhn(match: str) -> bool:
    """Payment card numbers: 13-19 digits with a valid Luhn check digit (python-stdnum)."""
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and _stdnum_luhn.is_valid(digits)


def iban(match: str) -> bool:
    """ISO 13616 IBAN (python-stdnum): mod 97 == 1 and the country's BBAN length and format.

    ``check_country=False``: stdnum's per-country modules also look the bank up in a registry,
    which refuses well-formed IBANs of banks it does not list (ISO's own example
    BE68 5390 0754 7034): for scrubbing, a stale registry must not let an account out.
    """
    return _stdnum_iban.is_valid(match, check_country=False)


def ssn(match: str) -> bool:
    """A US SSN the SSA could have issued (python-stdnum: no area 000/666/9xx, group 00, serial 0000)."""
    return _stdnum_ssn.is_valid(match.replace(" ", "-"))


def nino(match: str) -> bool:
    return match[:2].lower() not in NINO_NEVER


def ipv6(match: str) -> bool:
    """A valid IPv6 address with at least three groups (or a dotted-quad tail): ``1::2`` and ``::1``
    are a C++ scope or a ratio as often as an address, and the loopback identifies no one."""
    try:
        if not isinstance(ipaddress.ip_address(match), ipaddress.IPv6Address):
            return False
    except ValueError:
        return False
    return "." in match or sum(1 for g in match.split(":") if g) >= 3


def es_dni(match: str) -> bool:
    """A Spanish DNI or NIE whose check letter is right (python-stdnum)."""
    compact = match.upper()
    return _stdnum_dni.is_valid(compact) or _stdnum_nie.is_valid(compact)


def it_codice_fiscale(match: str) -> bool:
    """An Italian codice fiscale with a valid date part and check letter (python-stdnum)."""
    return _stdnum_cf.is_valid(match.upper())


def prose_email(match: str) -> bool:
    """An address spelled out with spaced "at"/"dot" whose host part is a function word
    ("savings at the dot com bubble") is prose. Bracketed forms ("[at]", "(dot)") are always addresses."""
    if "[" in match or "(" in match:
        return True
    host = re.split(r"\sat\s", match)[-1]
    labels = re.split(r"\s*(?:\sdot\s|\.)\s*", host.strip())
    return not any(label.strip() in PROSE_WORDS for label in labels[:-1])


def not_product_name(folded: str, start: int, end: int) -> bool:
    """A bare domain with no path and a label of at most three letters (``ASP.NET``, ``VB.NET``) is a
    product name or a brand, not a person's address."""
    match = folded[start:end]
    return "/" in match or match.count(".") > 1 or len(match.split(".")[0]) > 3


def not_code_annotation(folded: str, start: int, end: int) -> bool:
    """``@property``, ``@Override``, ``@media``, ``@here``, or any ``@name(`` call: code, not a handle."""
    return folded[start + 1:end].split(".")[0] not in NOT_HANDLES and not folded.startswith("(", end)


def not_hash(folded: str, start: int, end: int) -> bool:
    """12 hex digits after "commit", "sha", "hash", "rev", "build", "#" are a short git hash."""
    return not HASH_BEFORE_RE.search(folded[max(0, start - 12):start])


def not_identifier_tail(folded: str, start: int, end: int) -> bool:
    """Digits right after "WORD-" end an identifier (``CVE-2021-44228``), they are no phone or account."""
    return not ID_PREFIX_RE.search(folded[max(0, start - 12):start])


def number(match: str) -> bool:
    """Digit runs that are not ids: an 8-digit date (20190512), a list of years (1999 2004)."""
    digits = re.sub(r"\D", "", match)
    groups = re.split(r"[ -]+", match.strip())
    if len(groups) > 1 and all(YEAR_RE.match(g) for g in groups):
        return False
    if SMALL_GROUPS_RE.match(match.strip()):  # "4 8 15 16 23 42"
        return False
    return not (len(digits) == 8 and YEARISH_RE.match(digits))


def not_version(folded: str, start: int, end: int) -> bool:
    """A dotted quad after "version", "patch", "build", "section" ... is a version, not an address."""
    return not VERSION_BEFORE_RE.search(folded[max(0, start - 12):start])


def not_quantity_or_isbn(folded: str, start: int, end: int) -> bool:
    """Digits that are a quantity (``12 500 000 euros``, ``€ 1 299 000``) or an ISBN after the word
    "ISBN" (checked by python-stdnum, ISBN-10 ``X`` included) are content, not PII."""
    match = folded[start:end].strip()
    if THOUSANDS_RE.match(match) and (QUANTITY_AFTER_RE.match(folded[end:end + 24])
                                       or QUANTITY_BEFORE_RE.search(folded[max(0, start - 3):start])):
        return False
    if "isbn" in folded[max(0, start - 12):start]:
        tail = re.match(r"-?x(?!\w)", folded[end:end + 2])
        if _stdnum_isbn.is_valid(match + (tail.group().lstrip("-") if tail else "")):
            return False
    return True


def digits_in_content(folded: str, start: int, end: int) -> bool:
    """The context checks of every digit kind: not a quantity, an ISBN or an identifier's tail."""
    return not_quantity_or_isbn(folded, start, end) and not_identifier_tail(folded, start, end)


class Ibans:
    """IBAN candidates validated by ``check``; a grouped one that fails is retried without its last
    group, since the pattern's optional short tail also takes a following word ("... 7034 now")."""

    def __init__(self, check: Callable[[str], bool]) -> None:
        self.check = check

    def finditer(self, text: str) -> Iterable[Found]:
        out = []
        for m in IBAN_RE.finditer(text):
            start, end = m.span()
            while True:
                if self.check(text[start:end]):
                    out.append(Found(start, end))
                    break
                cut = text.rfind(" ", start, end)
                if cut < start + 15:  # shorter than any IBAN
                    break
                end = cut
        return out


class Found:
    """A span found by a library, shaped like the part of :class:`re.Match` that _spans uses."""

    def __init__(self, start: int, end: int) -> None:
        self._span = (start, end)

    def span(self, group: int = 0) -> tuple[int, int]:
        return self._span




class PhoneNumbers:
    """phonenumbers' matcher (numbering plans of :data:`PHONE_REGIONS`), as a regex-like finder."""

    def finditer(self, text: str, taken: Iterable[tuple[int, int, str]] = ()) -> Iterable[Found]:
        """Spans of valid numbers; stretches inside a span already ``taken`` are not scanned again."""
        spans: set[tuple[int, int]] = set()
        taken = list(taken)
        for cand in PHONE_CANDIDATE_RE.finditer(text):
            if sum(c.isdigit() for c in cand.group()) < 7:  # no phone number has fewer digits
                continue
            if any(s <= cand.start() and cand.end() <= e for s, e, _ in taken):
                continue
            lo, hi = max(0, cand.start() - 1), min(len(text), cand.end() + 1)
            window = text[lo:hi]
            for region in PHONE_REGIONS:
                for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID):
                    spans.add((lo + m.start, lo + m.end))
        return [Found(s, e) for s, e in sorted(spans)]


PHONENUMBERS = PhoneNumbers()
IBANS = Ibans(iban)


def strip_url_tail(span: tuple[int, int], text: str) -> tuple[int, int]:
    """A URL at the end of a sentence should not swallow the full stop or closing bracket."""
    start, end = span
    while end > start and text[end - 1] in ".,;:!?)]}'\"":
        end -= 1
    return start, end

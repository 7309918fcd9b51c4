"""The PII recognizers the scrubber runs, in priority order (a registry: a new kind of PII is one
more :class:`Recognizer` here, with its pattern in :mod:`~cdcda_fl.privacy.pii_patterns` and its
checks in :mod:`~cdcda_fl.privacy.pii_checks`).

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
  Google's numbering plans (leniency VALID, regions ``PHONE_REGIONS``); our pattern stays for
  numbers outside those plans (fictional 555 numbers, unassigned ranges).

Presidio (``presidio-analyzer``) was measured and not adopted: it pulls spaCy and tldextract (a
400 MB environment that tries to download the public-suffix list), its pattern recognizers miss
the obfuscated e-mails and most dates of birth, and its phone recognizer *is* phonenumbers.

Quantities are not ids: a number grouped in thousands before a currency or unit
(``12 500 000 euros``) and a row of one- and two-digit numbers (``4 8 15 16 23 42``) are neither
phones nor account numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from cdcda_fl.privacy import pii_checks as ck
from cdcda_fl.privacy import pii_patterns as pt

Span = tuple[int, int, str]  # (start, end, kind) in the folded text


class Finder(Protocol):
    """A compiled regex, or anything with the same ``finditer`` (phonenumbers, IBANs)."""

    def finditer(self, text: str, /) -> Iterable[re.Match[str] | ck.Found]: ...


@dataclass(frozen=True)
class Recognizer:
    """One way of finding one kind of PII: a finder, then checks on what it found.

    ``check`` sees the matched text, ``context`` the folded text and the span (what is around it),
    ``trim`` may shorten the span (a URL's closing full stop); ``skip_taken`` finders are told which
    spans are already taken, so that an expensive library does not scan them again.
    """

    kind: str
    finder: Finder | ck.PhoneNumbers
    check: Callable[[str], bool] | None = None
    group: int = 0
    context: Callable[[str, int, int], bool] | None = None
    trim: Callable[[tuple[int, int], str], tuple[int, int]] | None = None
    skip_taken: bool = False

    def find(self, folded: str, taken: list[Span]) -> Iterable[tuple[int, int]]:
        """The accepted spans of this recognizer in ``folded`` (not yet checked against ``taken``)."""
        found = self.finder.finditer(folded, taken) if self.skip_taken else self.finder.finditer(folded)
        for m in found:
            start, end = m.span(self.group)
            if self.trim is not None:
                start, end = self.trim((start, end), folded)
            if end <= start or (self.check is not None and not self.check(folded[start:end])):
                continue
            if self.context is not None and not self.context(folded, start, end):
                continue
            yield start, end


# Priority order. Full URLs first (an address inside one stays part of it), then e-mails so that
# "jane@example.com" is not read as the bare domain "example.com"; IPv6 before IPv4
# (::ffff:192.0.2.128 is one address); structured ids with checksums before the generic phone
# and digit-run patterns. Digit kinds check that they are not a quantity, an ISBN or the tail of an
# identifier (CVE-2021-44228), IPv4 that it is not a version number.
DETECTORS: tuple[Recognizer, ...] = (
    Recognizer("URL", pt.URL_RE, trim=ck.strip_url_tail),
    Recognizer("EMAIL", pt.EMAIL_RE),
    Recognizer("EMAIL", pt.EMAIL_IDN_RE),
    Recognizer("EMAIL", pt.EMAIL_OBFUSCATED_RE, ck.prose_email),
    Recognizer("URL", pt.BARE_URL_RE, trim=ck.strip_url_tail, context=ck.not_product_name),
    Recognizer("MAC", pt.MAC_RE),
    Recognizer("MAC", pt.MAC_DOTTED_RE),
    Recognizer("MAC", pt.MAC_BARE_RE, context=ck.not_hash),
    Recognizer("IP", pt.IPV6_RE, ck.ipv6),
    Recognizer("IP", pt.IPV4_RE, context=ck.not_version),
    Recognizer("IBAN", ck.IBANS),
    Recognizer("CARD", pt.CARD_RE, ck.luhn, context=ck.digits_in_content),
    Recognizer("ID", pt.SSN_RE, ck.ssn),
    Recognizer("ID", pt.UK_NINO_RE, ck.nino),
    Recognizer("ID", pt.ES_DNI_RE, ck.es_dni),
    Recognizer("ID", pt.IT_CF_RE, ck.it_codice_fiscale),
    Recognizer("ID", pt.PASSPORT_RE, group=1),
    Recognizer("DATE", pt.DOB_RE, group=1),
    Recognizer("HANDLE", pt.HANDLE_RE, context=ck.not_code_annotation),
    Recognizer("NUMBER", pt.ACCOUNT_RE, ck.number, group=1, context=ck.digits_in_content),
    Recognizer("PHONE", pt.PHONE_RE, ck.valid_phone, context=ck.digits_in_content),
    Recognizer("PHONE", ck.PHONENUMBERS, context=ck.digits_in_content, skip_taken=True),
    Recognizer("NUMBER", pt.NUMBER_RE, ck.number, context=ck.digits_in_content),
)

"""Unicode folding: the one form in which deny terms, redaction terms, labels and PII detectors
compare text, so that what *looks* the same *is* the same.

``fold`` maps each character on its own (so every folded character knows the original one it
came from, :func:`fold_with_map`):

* **invisible characters go**: every Default_Ignorable_Code_Point (Unicode's list, through the
  ``regex`` module's property tables: zero-width space/joiners, soft hyphen, U+034F combining
  grapheme joiner, variation selectors U+FE00-FE0F and U+E0100-E01EF, Hangul fillers U+3164,
  U+115F/1160 and U+FFA0, tag characters, bidi controls), every other format character (Cf), and
  U+2800 BRAILLE PATTERN BLANK, which is not default-ignorable but draws as an empty cell;
* **marks go**: compatibility decomposition (NFKD: full-width forms, ligatures, math letters),
  then every nonspacing and enclosing mark (Mn, Me), not only those with a combining class
  (U+034F and the variation selectors have none, which is how they used to slip through);
* **look-alikes meet**: a non-ASCII letter becomes its prototype in Unicode's confusables table
  (UTS #39, the data behind the *skeleton*: Cyrillic ``а`` and Greek ``ο`` are ``a`` and ``o``,
  dotless ``ı`` is ``i``), taken from the maintained ``confusable-homoglyphs`` package;
* case is folded, other digits (``١``, ``１``) become ASCII digits and other white space a space.

ASCII characters are only lower-cased: the full skeleton would also make ``0`` an ``o``, ``1`` an
``l`` and ``m`` an ``rn``, which would break the PII detectors (digits) and label comparison
(``1`` vs ``1.0``) and make the term ``rna`` match every word starting with ``ma``. Mixed-script
spoofing, which is what the skeleton is for, only needs non-ASCII characters mapped.
"""

from __future__ import annotations

import functools
import unicodedata

import regex

# Default_Ignorable_Code_Point and format characters (Cf): invisible, dropped wherever they are.
_INVISIBLE = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Cf}]")
_BLANKS = frozenset("\u2800")  # not default-ignorable, but renders as nothing visible
_MARKS = frozenset({"Mn", "Me"})


@functools.cache
def _prototypes() -> dict[str, str]:
    """Unicode's confusables (UTS #39) as character -> prototype, from confusable-homoglyphs' copy.

    Its table lists each pair both ways (``а`` -> ``a`` and ``a`` -> ``а``, ...); a character with
    one entry whose partner has several is a source and the partner its prototype. For pairs of
    two single-entry characters the direction is lost; either one is a consistent representative,
    so the ASCII one (else the lower code point) is taken. Right-to-left characters come wrapped in
    U+200E marks in that table; they are unwrapped.
    """
    from confusable_homoglyphs.utils import load

    def clean(s: str) -> str:
        return s.replace("\u200e", "") if len(s) > 1 else s

    pairs: dict[str, list[str]] = {}
    for char, entries in load("confusables.json").items():
        pairs.setdefault(clean(char), []).extend(clean(e["c"]) for e in entries)
    table = {}
    for char, partners in pairs.items():
        if len(char) != 1 or char.isascii() or len(partners) != 1:
            continue
        partner = partners[0]
        if len(pairs.get(partner, ())) == 1:  # a lone pair: pick a stable representative
            partner = min((char, partner), key=lambda s: (not s.isascii(), s))
        if partner != char:
            table[char] = partner
    return table


def _strip_marks(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _MARKS)


def is_invisible(ch: str) -> bool:
    """Characters that fold to nothing: default-ignorable, format (Cf), the braille blank."""
    return ch in _BLANKS or _INVISIBLE.match(ch) is not None


@functools.lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    """One non-ASCII character in folded form (possibly empty or several characters)."""
    if is_invisible(ch):
        return ""
    if ch.isspace():
        return " "
    out = []
    for c in _strip_marks(unicodedata.normalize("NFD", ch)):
        digit = unicodedata.decimal(c, None)
        if digit is not None:
            out.append(str(digit))
            continue
        lower = c.casefold()
        if lower.isascii():  # ß -> ss, K (Kelvin) -> k: no prototype needed
            out.append(lower)
            continue
        out.append(_strip_marks(unicodedata.normalize("NFKD", _prototype(c, lower))).casefold())
    return "".join(out)


def _prototype(c: str, lower: str) -> str:
    """A letter's confusable prototype (the cased form's first: Cyrillic ``С`` -> ``C``, Greek ``Η`` ->
    ``H``), else its lower case. Only letters: symbols' prototypes (``€`` -> ``ꞓ``, ``—`` -> ``ー``)
    would break the detectors' currency and dash rules and hide no word.

    The skeleton merges capital ``I`` into ``l``; in case-folded text a capital I is an ``i``, so a
    capital whose prototype is ``l`` (Greek ``Ι``, Cyrillic ``І``) folds to ``i``.
    """
    if not unicodedata.category(c).startswith("L"):
        return lower
    table = _prototypes()
    cased = table.get(c)
    if cased is not None:
        return "i" if cased == "l" and c != lower else cased
    return table.get(lower, lower)


# Invisible carriers of a hidden payload: tag characters (U+E0000-E007F spell ASCII invisibly)
# and variation selectors beyond the first after a character (an emoji followed by many selectors
# encodes bytes). Folding drops them, so no detector sees what they spell; the scrubbed text drops
# them too, so it does not leave the device either.
_TAGS = regex.compile(r"[\U000E0000-\U000E007F]+")
_SELECTOR_RUNS = regex.compile(r"([\uFE00-\uFE0F\U000E0100-\U000E01EF])[\uFE00-\uFE0F\U000E0100-\U000E01EF]+")


def drop_hidden(text: str) -> str:
    """``text`` without tag characters and with at most one variation selector after a character."""
    if text.isascii():
        return text
    return _SELECTOR_RUNS.sub(r"\1", _TAGS.sub("", text))


def fold_with_map(text: str) -> tuple[str, list[int]]:
    """The folded text and, per folded character, the index of the original character it came from."""
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        folded = ch.lower() if ch.isascii() else fold_char(ch)
        out.append(folded)
        index.extend([i] * len(folded))
    return "".join(out), index


def fold(text: str) -> str:
    """Text in the form deny terms, redaction terms and detectors compare
    (``fold('Ｃá\\u200bnсer') == 'cancer'``, with a Cyrillic ``с``)."""
    return fold_with_map(text)[0]

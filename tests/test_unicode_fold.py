"""Issue 29, item 5: invisible characters and look-alike letters must not carry a deny or redact
term past the device's consent checks (the real ConsentPolicy and Redactor, no stand-ins)."""

from __future__ import annotations

import sys

import pytest
import regex

from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import ConsentPolicy, normalize_label
from cdcda_fl.privacy.redact import Redactor, fold
from cdcda_fl.privacy.unifold import drop_hidden

LAMP2 = get_task("LaMP_2")
LAMP3 = get_task("LaMP_3")

# What the review used (each found to pass the terms on main), and more of the same classes.
VARIANTS = {
    "U+034F combining grapheme joiner": "can\u034fcer",
    "U+FE0F variation selector": "can\ufe0fcer",
    "U+3164 Hangul filler": "can\u3164cer",
    "U+2800 braille blank": "can\u2800cer",
    "U+E0020 tag space": "can\U000e0020cer",
    "U+180E Mongolian vowel separator": "can\u180ecer",
    "Cyrillic a and es": "c\u0430n\u0441er",
    "all Cyrillic look-alikes": "\u0441\u0430n\u0441\u0435r",
    "Greek lunate sigma": "\u03f2ancer",
    "Greek capitals": "C\u0391NC\u0395R",
    "Cherokee letter tli": "\u13dfancer",
    "math bold": "\U0001d41c\U0001d41a\U0001d427\U0001d41c\U0001d41e\U0001d42b",
}
DOTLESS = {"dotless i": "b\u0131opsy", "Greek capital iota": "B\u0399OPSY", "Cyrillic i": "b\u0456opsy"}


def _movies(text: str) -> list[dict]:
    return [{"id": "m0", "description": "A quiet film.", "tag": "comedy"},
            {"id": "m1", "description": f"A film about my {text} year.", "tag": "comedy"}]


@pytest.mark.parametrize("variant", [*VARIANTS.values(), *DOTLESS.values()], ids=[*VARIANTS, *DOTLESS])
def test_deny_terms_refuse_invisible_and_lookalike_spellings(variant: str) -> None:
    cfg = {"consent.share-fraction": 1.0, "consent.deny-terms": "cancer,biopsy"}
    shared = ConsentPolicy.from_config(cfg, "u").apply(LAMP2, "u", _movies(variant))
    assert shared.local_ids == ["m0"], f"{variant!r} passed the deny term"


@pytest.mark.parametrize("variant", [*VARIANTS.values(), *DOTLESS.values()], ids=[*VARIANTS, *DOTLESS])
def test_redact_terms_hide_invisible_and_lookalike_spellings(variant: str) -> None:
    cfg = {"consent.share-fraction": 1.0, "consent.redact-terms": "cancer,biopsy", "consent.scrub": False}
    shared = ConsentPolicy.from_config(cfg, "u").apply(LAMP2, "u", _movies(variant))
    assert shared.records[1]["description"] == "A film about my [REDACTED] year.", shared.records[1]


def test_every_default_ignorable_code_point_folds_away() -> None:
    """All of Unicode's Default_Ignorable_Code_Point (the regex module's tables), not a hand list."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    ignorable = regex.findall(r"\p{Default_Ignorable_Code_Point}", every)
    assert len(ignorable) > 4000
    leaks = [f"U+{ord(ch):04X}" for ch in ignorable if fold(f"can{ch}cer") != "cancer"]
    assert not leaks, leaks[:20]


def test_a_term_glued_to_a_word_by_an_invisible_is_still_a_word() -> None:
    assert Redactor(("cancer",), pii=False)("breast\u200bcancer and breast\u2800cancer") == \
        "breast\u200b[REDACTED] and breast\u2800[REDACTED]"
    assert Redactor(("breast cancer",), pii=False)("my breast\u3164cancer, my breast  cancer") == \
        "my [REDACTED], my [REDACTED]"
    assert Redactor(("cancer",), pii=False)("precancerous stays") == "precancerous stays"


def test_ascii_keeps_its_identity_so_digits_and_labels_still_compare() -> None:
    """The skeleton would make 0 an o and 1 an l; only non-ASCII letters are mapped."""
    assert fold("0 1 m l I O") == "0 1 m l i o"
    assert fold("\u0661\u0662\u0663 \uff14\uff15\uff16") == "123 456"  # other digits are digits
    assert fold("1 299,99 \u20ac") == "1 299,99 \u20ac"  # symbols keep their identity (€ is no letter)
    assert normalize_label("1.0") == normalize_label("1") == "1"
    reviews = [{"id": "r1", "text": "fine", "score": "1.0"}, {"id": "r2", "text": "ok", "score": 5}]
    assert ConsentPolicy.from_config({"consent.share-fraction": 1, "consent.deny-labels": "1"}, "u") \
        .apply(LAMP3, "u", reviews).local_ids == ["r2"]
    assert Redactor(("rna",), pii=False)("mammal rna") == "mammal [REDACTED]"  # no m -> rn


def test_prototypes_are_unicodes_confusables() -> None:
    """Spot checks against confusables.txt (UTS #39)."""
    pairs = {"\u0430": "a", "\u03bf": "o", "\u0131": "i", "\u0455": "s", "\u13aa": "a", "\u0501": "d",
             "\u0421": "c", "\u0397": "h", "\u00df": "ss", "\u0130": "i", "\ufb01": "fi"}
    assert {ch: fold(ch) for ch in pairs} == pairs


def test_hidden_payloads_do_not_leave_in_the_scrubbed_text() -> None:
    """Tag characters spell ASCII invisibly; a run of variation selectors encodes bytes."""
    smuggled = "".join(chr(0xE0000 + ord(c)) for c in "jane@example.com")
    out = Redactor()(f"hello{smuggled} world")
    assert out == "hello world"
    emoji = "\U0001f600" + "".join(chr(0xE0100 + b) for b in b"secret")
    assert Redactor()(f"so {emoji}!") == "so \U0001f600\U000e0173!"  # one selector kept
    assert drop_hidden("\u2764\ufe0f") == "\u2764\ufe0f"  # an ordinary emoji presentation stays


def test_folding_stays_fast_on_non_latin_text() -> None:
    """A 1.5 KB record in Cyrillic folds in well under the scrubber's budget (cached per character)."""
    import time

    text = ("\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! " * 100)[:1536]
    fold(text)
    t0 = time.perf_counter()
    for _ in range(10):
        fold(text)
    per_call = (time.perf_counter() - t0) / 10
    assert per_call < 0.02, per_call
    assert sys.modules.get("confusable_homoglyphs.utils") is not None  # the maintained table is the source

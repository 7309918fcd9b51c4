"""PII scrubbing: each kind is removed, normal text (numbers, dates, decimals) is left alone."""

from __future__ import annotations

import pytest

from cdcda_fl.privacy.redact import Redactor, contains_pii, scrub


@pytest.mark.parametrize(
    ("text", "secret", "placeholder"),
    [
        ("write to jane.doe+lamp@example.co.uk today", "jane.doe+lamp@example.co.uk", "[EMAIL]"),
        ("reach me: jane at example dot com", "jane at example dot com", "[EMAIL]"),
        ("call +1 (555) 123-4567 after six", "555) 123-4567", "[PHONE]"),
        ("office 555-123-4567", "555-123-4567", "[PHONE]"),
        ("ring 020 7946 0958 please", "7946 0958", "[PHONE]"),
        ("ring +447946095812 please", "447946095812", "[PHONE]"),
        ("see https://example.org/a?b=1 for more", "example.org", "[URL]"),
        ("see www.my-blog.net/post.", "my-blog", "[URL]"),
        ("link bit.ly/3xYz in bio", "bit.ly", "[URL]"),
        ("thanks @jack_dorsey!", "jack_dorsey", "[HANDLE]"),
        ("card 4111 1111 1111 1111 expired", "4111 1111", "[NUMBER]"),
        ("account 12345678901234", "12345678901234", "[NUMBER]"),
        ("ssn 123-45-6789", "6789", None),
    ],
)
def test_each_pii_kind_is_scrubbed(text: str, secret: str, placeholder: str | None) -> None:
    out = scrub(text)
    assert secret not in out
    if placeholder:
        assert placeholder in out
    assert contains_pii(text)


@pytest.mark.parametrize(
    "text",
    [
        "The model reaches 95.3% accuracy on 2 benchmarks in 2019.",
        "Between 1999 2004 and 2010 prices rose by 12 345 units.",
        "Released on 2019-05-12, rated 4.5 out of 5, costs 1,299.99 dollars.",
        "e.g. the U.S. team, i.e. a dystopia; sci-fi at its best!",
        "Email is not an address; look at the dot on the map, or at home dot now.",
        "A 3-4-5 triangle, version 2.13.0, and pi is 3.14159.",
    ],
)
def test_normal_text_is_untouched(text: str) -> None:
    assert scrub(text) == text


def test_user_terms_are_redacted_case_insensitively_with_suffixes() -> None:
    r = Redactor(("cancer", "Acme Corp"))
    out = r("My CANCER diagnosis; cancers at ACME corp. Cancellation is fine.")
    assert out == "My [REDACTED] diagnosis; [REDACTED] at [REDACTED]. Cancellation is fine."
    assert r.counts["TERM"] == 3


def test_placeholders_are_not_mangled_by_terms_and_email_in_url_is_one_url() -> None:
    out = scrub("email me: bob@mail.com (https://x.com/u?to=bob@mail.com)", ["email"])
    assert out == "[REDACTED] me: [EMAIL] ([URL])"


def test_counts_only_kinds_never_values() -> None:
    r = Redactor()
    r("a@b.com, c@d.org and @handle")
    assert dict(r.counts) == {"EMAIL": 2, "HANDLE": 1}

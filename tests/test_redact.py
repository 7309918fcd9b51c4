"""PII scrubbing: each kind is removed, normal text (numbers, dates, decimals) is left alone."""

from __future__ import annotations

import pii_battery
import pytest

from cdcda_fl.privacy.redact import PLACEHOLDERS, Redactor, contains_pii, scrub


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
        ("card 4111 1111 1111 1111 expired", "4111 1111", "[CARD]"),
        ("account 12345678901234", "12345678901234", "[NUMBER]"),
        ("ssn 123-45-6789", "6789", "[ID]"),
    ],
)
def test_each_pii_kind_is_scrubbed(text: str, secret: str, placeholder: str | None) -> None:
    out = scrub(text)
    assert secret not in out
    if placeholder:
        assert placeholder in out
    assert contains_pii(text)


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


# ---------------------------------------------------------------------------- PII battery (docs/privacy.md)
# (kind, text, the secret that must not survive). Counts by kind are in docs/privacy.md.
PII_BATTERY: list[tuple[str, str, str]] = [
    ("EMAIL", "write to jane.doe+lamp@example.co.uk today", "jane.doe+lamp@example.co.uk"),
    ("EMAIL", "mail JANE@Clinic.ORG now", "JANE@Clinic.ORG"),
    ("EMAIL", "reach me: jane at example dot com", "jane at example dot com"),
    ("EMAIL", "reach me: jane [at] example [dot] org", "jane [at] example [dot] org"),
    ("EMAIL", "schreib an jürgen@müller.de bitte", "müller"),
    ("EMAIL", "联系 用户@例子.中国 谢谢", "用户@例子"),
    ("EMAIL", "full-width ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ here", "ｊａｎｅ"),
    ("EMAIL", "zero\u200bwidth ja\u200bne@exam\u200bple.com here", "exam\u200bple"),
    ("PHONE", "call +1 (555) 123-4567 after six", "123-4567"),
    ("PHONE", "office 555-123-4567", "555-123-4567"),
    ("PHONE", "ring 020 7946 0958 please", "7946 0958"),
    ("PHONE", "ring +447946095812 please", "447946095812"),
    ("PHONE", "tel. 030.1234.5678", "1234.5678"),
    ("URL", "see https://example.org/a?b=1 for more", "example.org"),
    ("URL", "see www.my-blog.net/post.", "my-blog"),
    ("URL", "link bit.ly/3xYz in bio", "bit.ly"),
    ("HANDLE", "thanks @jack_dorsey!", "jack_dorsey"),
    ("IP", "server at 192.168.1.23 is down", "192.168.1.23"),
    ("IP", "from 8.8.8.8.", "8.8.8.8"),
    ("IP", "v6 2001:db8:85a3::8a2e:370:7334 ok", "8a2e:370:7334"),
    ("IP", "loopback ::1 and fe80::1ff:fe23:4567:890a", "fe80::1ff"),
    ("MAC", "my mac 00:1A:2B:3C:4D:5E broke", "3C:4D:5E"),
    ("MAC", "adapter 00-1a-2b-3c-4d-5e", "3c-4d-5e"),
    ("IBAN", "pay to GB82WEST12345698765432 thanks", "GB82WEST12345698765432"),
    ("IBAN", "IBAN DE89 3704 0044 0532 0130 00", "0532 0130"),
    ("IBAN", "iban fr1420041010050500013m02606", "0500013m02606"),
    ("CARD", "card 4111 1111 1111 1111 expired", "4111 1111"),
    ("CARD", "amex 378282246310005", "378282246310005"),
    ("CARD", "visa 4012-8888-8888-1881", "8888-1881"),
    ("ID", "ssn 123-45-6789", "123-45-6789"),
    ("ID", "NI number JG 10 37 75 A", "10 37 75"),
    ("ID", "ni AB123456D on file", "AB123456D"),
    ("DATE", "I was born on 12/04/1990 in Leeds", "12/04/1990"),
    ("DATE", "DOB: 1990-04-12", "1990-04-12"),
    ("DATE", "birthday 4 March 1985!", "March 1985"),
    ("NUMBER", "account 12345678901234", "12345678901234"),
    ("NUMBER", "account no 31926819", "31926819"),
    ("NUMBER", "client id 00012345678", "00012345678"),
]

# Ordinary content that must come out unchanged (false-positive battery): the tuned negatives of
# tests/pii_battery.py (one copy of the cases) plus one case of this file's own.
NOT_PII: list[str] = [*pii_battery.TUNED_NEGATIVES,
                      "ISBN-free title: Deep Learning for Graphs, 2nd edition, pages 100-250."]


@pytest.mark.parametrize(("kind", "text", "secret"), PII_BATTERY, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(PII_BATTERY)])
def test_pii_battery(kind: str, text: str, secret: str) -> None:
    r = Redactor()
    out = r(text)
    assert secret not in out, out
    assert PLACEHOLDERS[kind] in out, out
    assert r.counts[kind] >= 1


@pytest.mark.parametrize("text", NOT_PII)
def test_false_positive_battery(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.parametrize("variant", ["ＣＡＮＣＥＲ", "can\u200bcer", "Cáncer", "CANCER", "c\u00adancer", "cance\u0301r"])
def test_terms_match_unicode_variants(variant: str) -> None:
    out = Redactor(("cancer",), pii=False)(f"my {variant} story")
    assert out == "my [REDACTED] story", out
    assert Redactor(("ｃáncer",), pii=False)("my cancer story") == "my [REDACTED] story"  # folded terms too


def test_checksums_refuse_lookalikes() -> None:
    assert "[CARD]" not in scrub("order 4111 1111 1111 1112 shipped")  # Luhn fails
    assert "[IBAN]" not in scrub("code GB82WEST12345698765431 here")  # mod-97 fails
    assert "[IP]" not in scrub("version 1.2.3.4.5 and 999.1.1.1")


def test_terms_only_when_pii_is_off() -> None:
    r = Redactor(("acme",), pii=False)
    assert r("Acme mail bob@x.com") == "[REDACTED] mail bob@x.com"


# ------------------------------------------------------------- the full PII battery (tests/pii_battery.py)
# Measured by benchmarks/pii.py (benchmarks/results/pii.json, docs/privacy.md): cases caught per kind
# out of the whole battery. The scrubber must never do worse; raise these when it does better.
MEASURED_CAUGHT = {"EMAIL": 23, "PHONE": 27, "URL": 8, "HANDLE": 4, "IP": 11, "MAC": 8, "IBAN": 13, "CARD": 12,
                   "ID": 19, "DATE": 23, "NUMBER": 14}
# The holdout's known gap, as measured once (never tuned on): an EAN-13 barcode is read as an
# account number. (Its other miss, "my birthday is 14 February 1992", is the class issue 29 fixed.)
KNOWN_HOLDOUT_FALSE_POSITIVES = {"EAN 4006381333931 on the label."}


def test_battery_is_the_documented_size() -> None:
    assert len(pii_battery.ALL_POSITIVES) >= 60 and len(pii_battery.ALL_NEGATIVES) >= 30
    assert pii_battery.counts_by_kind() == {"EMAIL": 23, "PHONE": 27, "URL": 8, "HANDLE": 4, "IP": 11, "MAC": 8,
                                            "IBAN": 13, "CARD": 12, "ID": 19, "DATE": 23, "NUMBER": 14}


def test_battery_recall_per_kind_is_at_least_the_measured_figure() -> None:
    result = pii_battery.score(Redactor()._spans)
    below = {k: (result["caught"][k], floor) for k, floor in MEASURED_CAUGHT.items() if result["caught"][k] < floor}
    assert not below, f"recall fell below the measured figure (caught, floor): {below}; missed: {result['missed']}"


def test_battery_output_never_keeps_a_caught_secret() -> None:
    """End to end through Redactor.__call__ (placeholders mapped back onto the original text)."""
    caught = {k: 0 for k in MEASURED_CAUGHT}
    for kind, text, secret in pii_battery.ALL_POSITIVES:
        r = Redactor()
        out = r(text)
        if secret not in out and PLACEHOLDERS[kind] in out and r.counts[kind] >= 1:
            caught[kind] += 1
    assert all(caught[k] >= floor for k, floor in MEASURED_CAUGHT.items()), caught


def test_battery_negatives_come_out_unchanged() -> None:
    changed = {t for t in pii_battery.ALL_NEGATIVES if scrub(t) != t}
    assert changed <= KNOWN_HOLDOUT_FALSE_POSITIVES, changed - KNOWN_HOLDOUT_FALSE_POSITIVES
    assert not changed & set(pii_battery.TUNED_NEGATIVES)  # zero false positives where we tuned


def test_battery_checksums_refuse_every_lookalike() -> None:
    result = pii_battery.score(Redactor()._spans)
    assert result["lookalike_hits"] == 0, result["lookalike_texts"]


def test_stdnum_iban_check_keeps_banks_its_registry_lacks() -> None:
    # ISO 13616's own example: stdnum's Belgian module refuses it (bank 539 is not in its registry).
    assert scrub("pay BE68 5390 0754 7034 now") == "pay [IBAN] now"
    assert scrub("serial DE93ABCD1234EFGH5678 here") == "serial DE93ABCD1234EFGH5678 here"  # mod-97 ok, no DE shape


def test_phonenumbers_adds_national_formats_and_quantities_stay() -> None:
    assert scrub("call 0044 20 7946 0321 now") == "call [PHONE] now"  # 00 international prefix: phonenumbers
    assert scrub("hotline 1-800-555-0199.") == "hotline [PHONE]."
    for text in ("The budget grew to 12 500 000 euros.", "Numbers 4 8 15 16 23 42 again.",
                 "ISBN 0-8044-2957-X here", "Patch 1.0.2.3 fixed it."):
        assert scrub(text) == text


# ------------------------------------------------- issue 29, item 6: the review's misses and false positives
@pytest.mark.parametrize(("text", "expected"), [
    ("my birthday is March 12, 1985", "my birthday is [DATE]"),
    ("born in March 1985", "born in [DATE]"),
    ("b. 12/03/1985", "b. [DATE]"),
    ("né le 12/03/1985", "né le [DATE]"),
    ("DNI 12345678Z", "DNI [ID]"),
    ("NIE X1234567L", "NIE [ID]"),
    ("codice fiscale RSSMRA85T10A562S", "codice fiscale [ID]"),
    ("passport no. C01X00T47", "passport no. [ID]"),
    ("mac 001a2b3c4d5e", "mac [MAC]"),
])
def test_issue29_misses_are_scrubbed(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize("text", [
    "the dot com bubble", "I lost money at the dot com bubble", "ASP.NET", "use @property here", "CVE-2021-44228",
    "1::2", "localhost ::1", "commit 3f786850e387", "@app.route('/')", "ping @here", "DNI 12345678A",  # wrong letter
    "born in 1990", "plan B. then C.",
])
def test_issue29_false_positives_stay(text: str) -> None:
    assert scrub(text) == text


def test_issue29_fixes_keep_the_real_thing() -> None:
    """The new rules are narrow: an address, a handle, an IPv6 address, a phone still go."""
    assert scrub("jane at example dot com") == "[EMAIL]"
    assert scrub("see janedoe.net now") == "see [URL] now"
    assert scrub("dm @kate.w or @property_jane") == "dm [HANDLE] or [HANDLE]"
    assert scrub("gw 2001:db8::1 up") == "gw [IP] up"
    assert scrub("call 555-123-4567 today") == "call [PHONE] today"
    assert scrub("wifi 00:1A:2B:3C:4D:5E") == "wifi [MAC]"


def test_issue29_ids_leave_no_trace_through_consent() -> None:
    """The real consent path: a shared record's DNI and birth date are scrubbed before they leave."""
    from cdcda_fl.data.tasks import get_task
    from cdcda_fl.privacy.consent import ConsentPolicy

    items = [{"id": "r1", "text": "Soy Ana, DNI 12345678Z, nacida el 14/02/1992.", "score": "4"}]
    rec = ConsentPolicy.from_config({"consent.share-fraction": 1.0}, "u").apply(get_task("LaMP_3"), "u", items).records[0]
    assert rec["text"] == "Soy Ana, DNI [ID], nacida el [DATE]."

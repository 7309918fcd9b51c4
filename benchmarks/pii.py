"""PII scrubbing: recall per kind and false positives of each candidate on the PII battery.

Candidates, all run on the same folded text (cdcda_fl.privacy.unifold: what the scrubber hands
every detector; an older scrubber measured at its commit gets its own fold):

* ``redact.py``: the shipped scrubber (cdcda_fl/privacy/redact.py and its recognizers);
* ``redact.py before issue 29`` / ``before the libraries``: redact.py as of 157d89f / c288820
  (``git show``), so that every run re-measures the "before" rows on the current battery;
* ``redact.py, no checksums``: the same patterns without the Luhn / mod-97 / SSN / NI checks;
* ``presidio``: presidio-analyzer's predefined *pattern* recognizers called directly
  (``recognizer.analyze(text, entities, None)``: no AnalyzerEngine, no spaCy model), every
  result (the AnalyzerEngine's default threshold is 0) and, as a second row, results scoring 0.5+;
* ``phonenumbers``: ``PhoneNumberMatcher`` (leniency VALID), one default region and several;
* ``python-stdnum``: our IBAN / card / SSN regexes validated by stdnum's ``iban``, ``luhn`` and
  ``us.ssn`` instead of our checks (stdnum validates, it does not search text).

A library that is not installed is reported as such (presidio is not a project dependency:
``pip install presidio-analyzer`` into a throwaway venv and run this script with it).

Scores: recall per kind, span precision (spans touching a secret / all spans) and false
positives, on the whole battery and on its parts (holdout, issue 29, issue-29 variants), and the
cost of scrubbing a 1.5 KB record (best of 30, interleaved with the scrubber before issue 29).

    python benchmarks/pii.py            # table + benchmarks/results/pii.json
    python benchmarks/pii.py --out x.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pii_battery as battery  # noqa: E402
from pii_battery import KINDS, Span, counts_by_kind, score  # noqa: E402

from cdcda_fl.privacy import pii_checks, pii_patterns, redact  # noqa: E402
from cdcda_fl.privacy.recognizers import DETECTORS, Recognizer  # noqa: E402

PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------ candidates
def ours() -> Callable[[str], list[Span]]:
    r = redact.Redactor()
    return r._spans


def _with_detectors(detectors: Iterable[Recognizer]) -> Callable[[str], list[Span]]:
    return redact.Redactor(detectors=tuple(detectors))._spans


def ours_without_checksums() -> Callable[[str], list[Span]]:
    """Ablation: no Luhn, no IBAN validation, no SSN rules (the phone, digit-run and IPv6 checks stay)."""
    checksums = {pii_checks.luhn, pii_checks.ssn}
    return _with_detectors(
        replace(r, finder=pii_checks.Ibans(lambda s: True) if r.finder is pii_checks.IBANS else r.finder,
                check=None if r.check in checksums else r.check)
        for r in DETECTORS)


def ours_mod97_only() -> Callable[[str], list[Span]]:
    """Ablation: IBANs checked by mod-97 alone (the check before python-stdnum), no BBAN format."""
    def mod97(match: str) -> bool:
        compact = match.replace(" ", "").upper()
        try:
            return 15 <= len(compact) <= 34 and int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1
        except ValueError:
            return False

    return _with_detectors(replace(r, finder=pii_checks.Ibans(mod97)) if r.finder is pii_checks.IBANS else r
                           for r in DETECTORS)


def ours_without_phonenumbers() -> Callable[[str], list[Span]]:
    """Ablation: our phone pattern alone."""
    return _with_detectors(r for r in DETECTORS if r.finder is not pii_checks.PHONENUMBERS)


BASELINE = "c288820"  # the last commit before phonenumbers/python-stdnum were adopted
BEFORE_ISSUE29 = "157d89f"  # main before issue 29 (Unicode folding, PII gaps and false positives)


def _git(*args: str) -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def redactor_at(commit: str):
    """redact.py as of ``commit`` (``git show``; it was one self-contained module then), or None."""
    import types

    source = _git("show", f"{commit}:cdcda_fl/privacy/redact.py")
    if source is None:
        return None
    module = types.ModuleType(f"redact_at_{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:cdcda_fl/privacy/redact.py", "exec"), module.__dict__)
    return module


def ours_at(commit: str) -> Callable[[str], list[Span]] | None:
    """The scrubber as of ``commit``, on the text folded as it folded then (``detect.fold``)."""
    module = redactor_at(commit)
    if module is None:
        return None
    spans = module.Redactor()._spans

    def detect(folded: str) -> list[Span]:
        return spans(folded)

    detect.fold = module.fold
    return detect


PRESIDIO_KINDS = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "URL": "URL", "IP_ADDRESS": "IP",
    "MAC_ADDRESS": "MAC", "IBAN_CODE": "IBAN", "CREDIT_CARD": "CARD", "US_SSN": "ID", "UK_NINO": "ID",
    "DATE_TIME": "DATE", "US_BANK_NUMBER": "NUMBER",
}


def presidio(min_score: float = 0.0) -> Callable[[str], list[Span]]:
    import logging

    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # no network: it falls back to its bundled list
    from presidio_analyzer import predefined_recognizers as pr

    recognizers = [pr.EmailRecognizer(), pr.PhoneRecognizer(), pr.UrlRecognizer(), pr.IpRecognizer(),
                   pr.MacAddressRecognizer(), pr.IbanRecognizer(), pr.CreditCardRecognizer(), pr.UsSsnRecognizer(),
                   pr.UkNinoRecognizer(), pr.DateRecognizer(), pr.UsBankRecognizer()]

    def detect(folded: str) -> list[Span]:
        spans = []
        for rec in recognizers:
            for res in rec.analyze(folded, rec.supported_entities, None) or []:
                if res.score >= min_score and res.entity_type in PRESIDIO_KINDS:
                    spans.append((res.start, res.end, PRESIDIO_KINDS[res.entity_type]))
        return spans

    detect.cased = True  # its IBAN / NI patterns want upper case: give it the folded text with case kept
    return detect


def phonenumbers_matcher(regions: Iterable[str], leniency: str = "VALID") -> Callable[[str], list[Span]]:
    import phonenumbers

    regions = tuple(regions)
    level = getattr(phonenumbers.Leniency, leniency)

    def detect(folded: str) -> list[Span]:
        spans = []
        for region in regions:
            for m in phonenumbers.PhoneNumberMatcher(folded, region, leniency=level):
                spans.append((m.start, m.end, "PHONE"))
        return spans

    return detect


def stdnum_validators() -> Callable[[str], list[Span]]:
    from stdnum import iban, luhn
    from stdnum.us import ssn

    def card(s: str) -> bool:
        digits = re.sub(r"\D", "", s)
        return 13 <= len(digits) <= 19 and luhn.is_valid(digits)

    checks = [("IBAN", pii_patterns.IBAN_RE, iban.is_valid), ("CARD", pii_patterns.CARD_RE, card),
              ("ID", pii_patterns.SSN_RE, lambda s: ssn.is_valid(s.replace(" ", "-")))]  # iban: with the bank registry

    def detect(folded: str) -> list[Span]:
        return [(m.start(), m.end(), kind) for kind, rx, ok in checks for m in rx.finditer(folded) if ok(m.group())]

    return detect


def _at(commit: str) -> str | None:
    return "git " + commit if _git("cat-file", "-e", commit) is not None else None


def candidates() -> list[tuple[str, str | None, tuple[str, ...], Callable[[], Callable[[str], list[Span]] | None]]]:
    """(name, library version or None when missing, kinds it covers, factory)."""
    pres = _version("presidio-analyzer")
    phon = _version("phonenumbers") or _version("phonenumberslite")
    std = _version("python-stdnum")
    regions = ",".join(pii_patterns.PHONE_REGIONS)
    return [
        ("redact.py", "shipped", KINDS, ours),
        (f"redact.py before issue 29 ({BEFORE_ISSUE29})", _at(BEFORE_ISSUE29), KINDS, lambda: ours_at(BEFORE_ISSUE29)),
        (f"redact.py before the libraries ({BASELINE})", _at(BASELINE), KINDS, lambda: ours_at(BASELINE)),
        ("redact.py, no phonenumbers", "ablation", KINDS, ours_without_phonenumbers),
        ("redact.py, IBAN mod-97 only", "ablation", KINDS, ours_mod97_only),
        ("redact.py, no checksums", "ablation", KINDS, ours_without_checksums),
        ("presidio patterns", pres, tuple(k for k in KINDS if k in PRESIDIO_KINDS.values()), lambda: presidio(0.0)),
        ("presidio patterns, score>=0.5", pres, tuple(k for k in KINDS if k in PRESIDIO_KINDS.values()),
         lambda: presidio(0.5)),
        ("phonenumbers VALID (US)", phon, ("PHONE",), lambda: phonenumbers_matcher(["US"])),
        (f"phonenumbers VALID ({regions})", phon, ("PHONE",), lambda: phonenumbers_matcher(pii_patterns.PHONE_REGIONS)),
        (f"phonenumbers POSSIBLE ({regions})", phon, ("PHONE",),
         lambda: phonenumbers_matcher(pii_patterns.PHONE_REGIONS, "POSSIBLE")),
        ("python-stdnum validators", std, ("IBAN", "CARD", "ID"), stdnum_validators),
    ]


PARTS = {
    "all": (battery.ALL_POSITIVES, battery.ALL_NEGATIVES, battery.LOOKALIKES),
    "holdout": (battery.HOLDOUT_POSITIVES, battery.HOLDOUT_NEGATIVES, []),
    "issue29": (battery.ISSUE29_POSITIVES, battery.ISSUE29_NEGATIVES, []),
    "issue29_variants": (battery.ISSUE29_VARIANT_POSITIVES, battery.ISSUE29_VARIANT_NEGATIVES, []),
}


def _restrict(result: dict, kinds: tuple[str, ...]) -> dict:
    """A candidate's result on the kinds it covers (a phone library is not scored on e-mails)."""
    result = dict(result)
    result["recall"] = {k: v for k, v in result["recall"].items() if k in kinds}
    result["missed"] = [text for kind, text in result["missed"] if kind in kinds]
    hits = sum(result["caught"][k] for k in kinds)
    total = sum(result["total"][k] for k in kinds)
    result["recall_covered_kinds"] = round(hits / total, 3) if total else None
    result["caught_covered_kinds"], result["total_covered_kinds"] = hits, total
    return result


# Cost: a 1.5 KB abstract-like record with numbers, dates and one address in it, scrubbed whole.
TIMING_TEXT = " ".join([
    "We study personalised text generation on 4 benchmarks released in 2019 and 2021, with 1,204 users",
    "and 38 rounds of training; results improve by 3.5 points (p < 0.05) over the 2020 baseline.",
    "Code is at example.org/code and questions go to the authors; version 2.13.0 fixes 12 bugs.",
    "The corpus has 12 500 000 tokens from 3,500 authors between 1998 and 2004, pages 100-250.",
] * 4)[:1536]


def timing(repeats: int = 30) -> dict:
    """Milliseconds to scrub :data:`TIMING_TEXT` (best of ``repeats``: the machine is shared) and
    on the whole battery, for the shipped scrubber and the one before issue 29."""
    import time

    battery_text = " ".join(t for _, t, _ in battery.ALL_POSITIVES) + " " + " ".join(battery.ALL_NEGATIVES)
    out = {"record_bytes": len(TIMING_TEXT.encode()), "battery_bytes": len(battery_text.encode())}
    before = redactor_at(BEFORE_ISSUE29)
    makers = {"shipped": redact.Redactor, **({"before_issue29": before.Redactor} if before else {})}
    for label, text in (("record_ms", TIMING_TEXT), ("battery_ms", battery_text)):
        best = dict.fromkeys(makers, float("inf"))
        for _ in range(repeats):  # interleaved, so that a busy moment on the machine hits both
            for name, make in makers.items():
                t0 = time.perf_counter()
                make()(text)
                best[name] = min(best[name], time.perf_counter() - t0)
        for name, seconds in best.items():
            out[f"{name}_{label}"] = round(seconds * 1000, 2)
    return out


def run() -> dict:
    rows = []
    for name, version, kinds, factory in candidates():
        detect = factory() if version is not None else None
        if detect is None:
            rows.append({"candidate": name, "installed": False})
            continue
        row = {"candidate": name, "version": version, "installed": True, "kinds": list(kinds)}
        for part, (pos, neg, look) in PARTS.items():
            row[part] = _restrict(score(detect, pos, neg, look), kinds)
        rows.append(row)
    return {
        "libraries": {d: _version(d) for d in ("phonenumbers", "phonenumberslite", "python-stdnum", "presidio-analyzer",
                                               "confusable-homoglyphs", "regex")},
        "battery": {"positives": len(battery.ALL_POSITIVES), "by_kind": counts_by_kind(),
                    "negatives": len(battery.ALL_NEGATIVES), "lookalikes": len(battery.LOOKALIKES),
                    "holdout_positives": len(battery.HOLDOUT_POSITIVES),
                    "holdout_negatives": len(battery.HOLDOUT_NEGATIVES),
                    "issue29_positives": len(battery.ISSUE29_POSITIVES),
                    "issue29_negatives": len(battery.ISSUE29_NEGATIVES),
                    "issue29_variant_positives": len(battery.ISSUE29_VARIANT_POSITIVES),
                    "issue29_variant_negatives": len(battery.ISSUE29_VARIANT_NEGATIVES)},
        "rows": rows,
        "timing": timing(),
    }


def _part_cells(row: dict, part: str) -> str:
    r = row[part]
    return f"{r['caught_covered_kinds']}/{r['total_covered_kinds']} | {r['false_positives']}/{r['negatives']}"


def print_table(data: dict) -> None:
    b = data["battery"]
    kinds = list(b["by_kind"])
    head = ["candidate", *[f"{k} ({b['by_kind'][k]})" for k in kinds], "recall", "precision", f"FP /{b['negatives']}",
            f"lookalike /{b['lookalikes']}", "holdout recall", "holdout FP", "issue-29 recall", "issue-29 FP",
            "variants recall", "variants FP"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in data["rows"]:
        if not row["installed"]:
            print(f"| {row['candidate']} | not installed |")
            continue
        full = row["all"]
        cells = [f"{full['caught'][k]}/{full['total'][k]}" if k in full["recall"] else "—" for k in kinds]
        print(f"| {row['candidate']} | " + " | ".join(cells)
              + f" | {full['recall_covered_kinds']} | {full['precision']} | {full['false_positives']} | {full['lookalike_hits']} | "
              + " | ".join(_part_cells(row, part) for part in ("holdout", "issue29", "issue29_variants")) + " |")
    t = data["timing"]
    print(f"\ncost, best of 30 (ms): a {t['record_bytes']} B record {t.get('shipped_record_ms')} "
          f"(before issue 29: {t.get('before_issue29_record_ms')}); the whole battery, {t['battery_bytes']} B, "
          f"{t.get('shipped_battery_ms')} (before: {t.get('before_issue29_battery_ms')})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pii.json")
    args = ap.parse_args()
    data = run()
    print_table(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

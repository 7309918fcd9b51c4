"""PII scrubbing: recall per kind and false positives of each candidate on the PII battery.

Candidates, all run on the same folded text (NFKD, no accents, casefolded, no zero-width
characters: what cdcda_fl.privacy.redact hands every detector):

* ``redact.py``: the shipped scrubber (cdcda_fl/privacy/redact.py);
* ``redact.py, no checksums``: the same patterns without the Luhn / mod-97 / SSN / NI checks;
* ``presidio``: presidio-analyzer's predefined *pattern* recognizers called directly
  (``recognizer.analyze(text, entities, None)``: no AnalyzerEngine, no spaCy model), every
  result (the AnalyzerEngine's default threshold is 0) and, as a second row, results scoring 0.5+;
* ``phonenumbers``: ``PhoneNumberMatcher`` (leniency VALID), one default region and several;
* ``python-stdnum``: our IBAN / card / SSN regexes validated by stdnum's ``iban``, ``luhn`` and
  ``us.ssn`` instead of our checks (stdnum validates, it does not search text).

A library that is not installed is reported as such (presidio is not a project dependency:
``pip install presidio-analyzer`` into a throwaway venv and run this script with it).

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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pii_battery as battery  # noqa: E402
from pii_battery import KINDS, Span, counts_by_kind, score  # noqa: E402

from cdcda_fl.privacy import redact  # noqa: E402

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


def _with_detectors(detectors: list) -> Callable[[str], list[Span]]:
    def detect(folded: str) -> list[Span]:
        saved = redact._DETECTORS
        redact._DETECTORS = detectors
        try:
            return redact.Redactor()._spans(folded)
        finally:
            redact._DETECTORS = saved

    return detect


def ours_without_checksums() -> Callable[[str], list[Span]]:
    """Ablation: no Luhn, no IBAN validation, no SSN rules (the phone, digit-run and IPv6 checks stay)."""
    checksums = {redact._luhn, redact._ssn}
    return _with_detectors([(k, redact._Ibans(lambda s: True) if rx is redact.IBANS else rx,
                             None if chk in checksums else chk, g) for k, rx, chk, g in redact._DETECTORS])


def ours_mod97_only() -> Callable[[str], list[Span]]:
    """Ablation: IBANs checked by mod-97 alone (the check before python-stdnum), no BBAN format."""
    def mod97(match: str) -> bool:
        compact = match.replace(" ", "").upper()
        try:
            return 15 <= len(compact) <= 34 and int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1
        except ValueError:
            return False

    return _with_detectors([(k, redact._Ibans(mod97) if rx is redact.IBANS else rx, chk, g)
                            for k, rx, chk, g in redact._DETECTORS])


def ours_without_phonenumbers() -> Callable[[str], list[Span]]:
    """Ablation: our phone pattern alone."""
    return _with_detectors([d for d in redact._DETECTORS if d[1] is not redact.PHONENUMBERS])


BASELINE = "c288820"  # the last commit before phonenumbers/python-stdnum were adopted


def _git(*args: str) -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def ours_at_baseline() -> Callable[[str], list[Span]] | None:
    """redact.py as of :data:`BASELINE` (``git show``), to measure what adopting the libraries did."""
    import types

    source = _git("show", f"{BASELINE}:cdcda_fl/privacy/redact.py")
    if source is None:
        return None
    module = types.ModuleType("redact_at_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{BASELINE}:cdcda_fl/privacy/redact.py", "exec"), module.__dict__)
    return module.Redactor()._spans


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

    checks = [("IBAN", redact.IBAN_RE, iban.is_valid), ("CARD", redact.CARD_RE, card),
              ("ID", redact.SSN_RE, lambda s: ssn.is_valid(s.replace(" ", "-")))]  # iban: with the bank registry

    def detect(folded: str) -> list[Span]:
        return [(m.start(), m.end(), kind) for kind, rx, ok in checks for m in rx.finditer(folded) if ok(m.group())]

    return detect


def candidates() -> list[tuple[str, str | None, tuple[str, ...], Callable[[], Callable[[str], list[Span]] | None]]]:
    """(name, library version or None when missing, kinds it covers, factory)."""
    pres = _version("presidio-analyzer")
    phon = _version("phonenumbers") or _version("phonenumberslite")
    std = _version("python-stdnum")
    regions = ",".join(redact.PHONE_REGIONS)
    return [
        ("redact.py", "shipped", KINDS, ours),
        (f"redact.py at {BASELINE} (before)", "git " + BASELINE if _git("cat-file", "-e", BASELINE) is not None else None,
         KINDS, ours_at_baseline),
        ("redact.py, no phonenumbers", "ablation", KINDS, ours_without_phonenumbers),
        ("redact.py, IBAN mod-97 only", "ablation", KINDS, ours_mod97_only),
        ("redact.py, no checksums", "ablation", KINDS, ours_without_checksums),
        ("presidio patterns", pres, tuple(k for k in KINDS if k in PRESIDIO_KINDS.values()), lambda: presidio(0.0)),
        ("presidio patterns, score>=0.5", pres, tuple(k for k in KINDS if k in PRESIDIO_KINDS.values()),
         lambda: presidio(0.5)),
        ("phonenumbers VALID (US)", phon, ("PHONE",), lambda: phonenumbers_matcher(["US"])),
        (f"phonenumbers VALID ({regions})", phon, ("PHONE",), lambda: phonenumbers_matcher(redact.PHONE_REGIONS)),
        (f"phonenumbers POSSIBLE ({regions})", phon, ("PHONE",),
         lambda: phonenumbers_matcher(redact.PHONE_REGIONS, "POSSIBLE")),
        ("python-stdnum validators", std, ("IBAN", "CARD", "ID"), stdnum_validators),
    ]


PARTS = {
    "all": (battery.ALL_POSITIVES, battery.ALL_NEGATIVES, battery.LOOKALIKES),
    "holdout": (battery.HOLDOUT_POSITIVES, battery.HOLDOUT_NEGATIVES, []),
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
        "libraries": {d: _version(d) for d in ("phonenumbers", "phonenumberslite", "python-stdnum", "presidio-analyzer")},
        "battery": {"positives": len(battery.ALL_POSITIVES), "by_kind": counts_by_kind(),
                    "negatives": len(battery.ALL_NEGATIVES), "lookalikes": len(battery.LOOKALIKES),
                    "holdout_positives": len(battery.HOLDOUT_POSITIVES),
                    "holdout_negatives": len(battery.HOLDOUT_NEGATIVES)},
        "rows": rows,
    }


def print_table(data: dict) -> None:
    b = data["battery"]
    kinds = list(b["by_kind"])
    head = ["candidate", *[f"{k} ({b['by_kind'][k]})" for k in kinds], f"FP /{b['negatives']}",
            f"lookalike /{b['lookalikes']}", f"holdout recall /{b['holdout_positives']}", f"holdout FP /{b['holdout_negatives']}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in data["rows"]:
        if not row["installed"]:
            print(f"| {row['candidate']} | not installed |")
            continue
        full, hold = row["all"], row["holdout"]
        cells = [f"{full['caught'][k]}/{full['total'][k]}" if k in full["recall"] else "—" for k in kinds]
        print(f"| {row['candidate']} | " + " | ".join(cells) + f" | {full['false_positives']} | {full['lookalike_hits']} | "
              f"{hold['caught_covered_kinds']}/{hold['total_covered_kinds']} | {hold['false_positives']} |")


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

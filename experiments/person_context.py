"""Does the writer use a person's other tasks? ``synthetic.person-context`` on the multi-task personas.

Issue 32.3: under ``train.adapter-scope = user`` one cloud request per person can carry the shared
records of all of their tasks, and each prompt can show a few lines the person wrote in their
other tasks (``synthetic.person-context``). The multi-task personas put a person's signature words
(a mascot and an interest word, docs/multitask.md) in both their paper titles and their tweets, so
the question is measurable without training anything: **how many of the writer's accepted records
carry the person's signature words**, with the context off and on, on the same people, the same
shares and the same seed. Reported per task: that rate with its 95 % interval over people, the
paired difference (context − none) with its interval and win/tie/loss, the rate in the people's
own shared records (what a faithful writer would reach), the records accepted per person, and
how many accepted records copy a context line (Jaccard of word sets >= 0.7: copying, not style).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/person_context.py --data-dir runs/multitask-task/data \
        --users 24 --context 0,3 --json docs/results/measurements/person_context.json

A measurement, not a test: the bundled SmolLM2 writes about 2 records per second on 2 cores.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.cloud.augment import PERSON_WRITING, AugmentConfig, CloudAugmenter, person_writing
from cdcda_fl.cloud.backends import make_backend
from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.core.config import resolve
from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.multitask_personas import draw_person
from cdcda_fl.evaluation.stats import format_interval, mean_ci, paired_diff_ci, win_tie_loss
from cdcda_fl.privacy.consent import SharedRecords, share_records

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def signature_rate(texts: Sequence[str], signature: Sequence[str]) -> float | None:
    """The fraction of ``texts`` naming one of the person's signature words (hashtags count)."""
    if not texts:
        return None
    return sum(bool(words(t) & set(signature)) for t in texts) / len(texts)


def copies(text: str, context: Sequence[str], threshold: float = 0.7) -> bool:
    own = words(text)
    return any(len(own & (c := words(line))) / max(1, len(own | c)) >= threshold for line in context)


def shares_of(cfg: dict[str, Any], data_dir: str, tasks: Sequence[str], users: int, split: str) -> dict[str, dict[str, SharedRecords]]:
    """Per task, per person: what their device shares under the run's consent settings."""
    out: dict[str, dict[str, SharedRecords]] = {}
    for task in tasks:
        loaded = sorted(load_task_users(data_dir, task, split), key=lambda u: u.user_id)[:users]
        out[task] = {u.user_id: share_records(u, cfg) for u in loaded}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    levels = [int(k) for k in args.context.split(",")]
    base = {"cloud.model": args.cloud, "synthetic.per-user": args.per_user, "synthetic.max-rounds": 2,
            "synthetic.max-new-tokens": 64, "consent.share-fraction": args.share, "seed": args.seed,
            "train.adapter-scope": "user"}
    shared = shares_of(resolve(base), args.data_dir, tasks, args.users, args.split)
    people = sorted(set.intersection(*(set(s) for s in shared.values())))
    backend = make_backend(resolve(base))
    written: dict[int, dict[str, dict[str, list[str]]]] = {}
    contexts: dict[str, dict[str, list[str]]] = {}
    seconds: dict[int, float] = {}
    for k in levels:
        cfg = AugmentConfig.from_config(resolve({**base, "synthetic.person-context": k}))
        augmenter = CloudAugmenter(backend, cfg)
        written[k] = {}
        started = time.perf_counter()
        for task in tasks:
            field = PERSON_WRITING[task]
            contexts[task] = {p: person_writing([shared[t][p] for t in tasks if t != task]) for p in people}
            results = augmenter.augment([shared[task][p] for p in people], context=contexts[task])
            written[k][task] = {p: [str(r[field]) for r in results[p].records] for p in people}
        seconds[k] = time.perf_counter() - started
    signature = {p: draw_person(args.seed, p).signature_words for p in people}
    report: dict[str, Any] = {"people": len(people), "tasks": tasks, "context_levels": levels, "writer": args.cloud,
                              "share": args.share, "seed": args.seed, "seconds": seconds, "per_task": {},
                              "records": {str(k): written[k] for k in levels}}
    for task in tasks:
        field = PERSON_WRITING[task]
        own = [signature_rate([str(r[field]) for r in shared[task][p].records], signature[p]) for p in people]
        row: dict[str, Any] = {"own_shared": _interval([x for x in own if x is not None])}
        for k in levels:
            rates = [signature_rate(written[k][task][p], signature[p]) for p in people]
            row[f"context_{k}"] = {
                "signature_rate": _interval([x for x in rates if x is not None]),
                "people_with_records": sum(x is not None for x in rates),
                "accepted_per_person": sum(len(written[k][task][p]) for p in people) / len(people),
                "copies_of_context": sum(copies(t, contexts[task][p]) for p in people for t in written[k][task][p]),
            }
        lo, hi = levels[0], levels[-1]
        both = [p for p in people if written[lo][task][p] and written[hi][task][p]]
        a = [signature_rate(written[hi][task][p], signature[p]) for p in both]
        b = [signature_rate(written[lo][task][p], signature[p]) for p in both]
        diff = paired_diff_ci(a, b)
        row["difference"] = {"levels": [hi, lo], "people": len(both), "mean": diff.mean, "low": diff.lo,
                             "high": diff.hi, "wtl": list(win_tie_loss(a, b, tie=0.0))}
        report["per_task"][task] = row
    return report


def _interval(values: Sequence[float]) -> dict[str, float | None]:
    ci = mean_ci(values)
    return {"mean": ci.mean, "low": ci.lo, "high": ci.hi, "n": len(values)}


def table(report: dict[str, Any]) -> str:
    levels = report["context_levels"]
    lines = ["| Task | own shared records | " + " | ".join(f"context {k}: rate (accepted/person, copies)" for k in levels)
             + f" | context {levels[-1]} − {levels[0]} (paired) | W/T/L |",
             "|---|---:|" + "---:|" * len(levels) + "---:|---:|"]
    for task, row in report["per_task"].items():
        cells = [format_interval((row["own_shared"]["mean"], row["own_shared"]["low"], row["own_shared"]["high"]))]
        for k in levels:
            c = row[f"context_{k}"]
            r = c["signature_rate"]
            cells.append(f"{format_interval((r['mean'], r['low'], r['high']))} ({c['accepted_per_person']:.1f}, "
                         f"{c['copies_of_context']})")
        d = row["difference"]
        cells.append(format_interval((d["mean"], d["low"], d["high"]), signed=True))
        cells.append("/".join(map(str, d["wtl"])))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="multi-task personas (cdcda data personas --multitask)")
    parser.add_argument("--tasks", default="LaMP_5,LaMP_7", help="tasks whose records carry the signature words")
    parser.add_argument("--users", type=int, default=24, help="people (sorted by id)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--context", default="0,3", help="synthetic.person-context levels, first = baseline")
    parser.add_argument("--cloud", default="smollm2-135m", help="the writer (cloud.model)")
    parser.add_argument("--per-user", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.5, help="consent.share-fraction")
    parser.add_argument("--seed", type=int, default=0, help="the personas' and the writer's seed")
    parser.add_argument("--json", type=Path, help="write the report here (atomically)")
    args = parser.parse_args(argv)
    report = run(args)
    report["table_md"] = table(report)
    print(report["table_md"])
    if args.json:
        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One adapter per person or one per task? Two finished runs of the same people, paired per user.

    .venv/bin/python experiments/multitask_compare.py runs/multitask-task runs/multitask-user [--json OUT]

The first run trained with ``train.adapter-scope = task`` (one adapter per user and task), the
second with ``user`` (one adapter per person over all their tasks); see
experiments/configs/multitask.toml. For each task and trained method (local, cdcda) it prints
both runs' means with 95 % intervals over users, the paired difference user − task (positive =
one adapter is better; for MAE, task − user) with its interval and W/T/L, the same split by the
task's profile size (≤ 5, 6–15, > 15 items), and per person: the bytes of the adapters CDCDA
answers with (what the phone keeps), the training seconds of local + CDCDA (the check's
included) and the seconds per answered query. Numbers come from the runs' per-user result files
(``users/<task>/<user>.json``) and the device store on disk; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.device.adapter_store import ADAPTER_WEIGHTS as ADAPTER_FILE, TRAIN_META
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric
from cdcda_fl.evaluation.stats import format_interval, mean_ci, paired_diff_ci, win_tie_loss

METHODS = ("local", "cdcda")
BUCKETS = (("≤5", 0, 5), ("6–15", 6, 15), (">15", 16, 10 ** 9))


def user_results(run: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {user: the device's result file}} of a finished run."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((run / "users").glob("*/*.json")):
        entry = json.loads(path.read_text())
        if "methods" in entry:
            out.setdefault(entry["task"], {})[entry["user_id"]] = entry
    return out


def storage_of(run: Path) -> Path:
    cfg = json.loads((run / "config.json").read_text())["config"]
    return Path(str(cfg.get("device.storage-dir") or run / "devices")) / "adapters"


def _metric(entry: Mapping[str, Any], method: str, metric: str) -> float | None:
    value = ((entry["methods"].get(method) or {}).get("metrics") or {}).get(metric)
    return None if value is None else float(value)


def _compare(xa: list[float], xb: list[float], lower_better: bool) -> dict[str, Any]:
    sign = -1.0 if lower_better else 1.0
    wins_user, ties, wins_task = win_tie_loss([sign * v for v in xb], [sign * v for v in xa])
    return {"users": len(xa), "task_scope": mean_ci(xa)._asdict(), "user_scope": mean_ci(xb)._asdict(),
            "user_minus_task": paired_diff_ci([sign * v for v in xb], [sign * v for v in xa])._asdict(),
            "wins_user": wins_user, "ties": ties, "wins_task": wins_task}


def quality(task_run: Path, user_run: Path) -> list[dict[str, Any]]:
    """Per task, method and profile-size bucket (and all users): both scopes and the paired difference."""
    a, b = user_results(task_run), user_results(user_run)
    rows = []
    for task in sorted(set(a) & set(b)):
        metric = primary_metric(task)
        users = sorted(set(a[task]) & set(b[task]))
        for method in METHODS:
            pairs = [(u, _metric(a[task][u], method, metric), _metric(b[task][u], method, metric)) for u in users]
            pairs = [(u, x, y) for u, x, y in pairs if x is not None and y is not None]
            for name, lo, hi in (("all", 0, 10 ** 9), *BUCKETS):
                inside = [(x, y) for u, x, y in pairs if lo <= int(a[task][u]["n_profile"]) <= hi]
                if not inside:
                    continue
                rows.append({"task": task, "metric": metric, "method": method, "profile": name,
                             **_compare([x for x, _ in inside], [y for _, y in inside], metric in LOWER_IS_BETTER)})
    return rows


def answer_folders(results: Mapping[str, Any], store: Path, person: str, scope: str) -> set[Path]:
    """The stored adapters ``person``'s CDCDA answers come from (its local one on a fall-back; none
    for a task answered by the base model): what the phone keeps to answer every task.

    Several configurations may share one device store (the alpha = 0.5 and alpha = 0 runs do), so
    a person can have several ``person-local-<key>`` folders: the one this run answered with is the
    folder whose training record (TRAIN_META) is the one the run's result reports."""
    out = set()
    for task, users in results.items():
        entry = users.get(person)
        answer_with = (((entry or {}).get("methods", {}).get("cdcda") or {}).get("decision") or {}).get("answer_with")
        if entry is None or answer_with == "base":
            continue
        kinds = ["local"] if answer_with == "local" else ["cdcda", "local"]
        prefixes = [f"person-{k}" if scope == "user" else f"{task}-{k}" for k in kinds]
        for prefix in prefixes:
            found = sorted(f for f in store.glob(f"{prefix}-*/{person}") if (f / ADAPTER_FILE).is_file())
            reported = (entry["methods"].get(prefix.rsplit("-", 1)[1]) or {}).get("train") or {}
            own = [f for f in found if _trained_as(f, reported)]
            if own or found:
                out.add((own or found)[-1])  # no match: a result from before training records were kept
                break
    return out


def _trained_as(folder: Path, reported: Mapping[str, Any]) -> bool:
    """Was the adapter in ``folder`` the one a result's ``train`` entry reports (steps, loss, seconds)?"""
    try:
        meta = json.loads((folder / TRAIN_META).read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == reported.get(k) for k in ("steps", "final_loss", "seconds")) and "steps" in reported


def cost(run: Path, scope: str) -> dict[str, Any]:
    """Per person (medians): adapters CDCDA answers with and their bytes; seconds of local-only
    training, of CDCDA's final adapter and of its check (a reloaded adapter or a stored decision
    costs nothing; the check is per task under either scope), and of answering (each method's rest)."""
    results, store = user_results(run), storage_of(run)
    people = sorted({u for users in results.values() for u in users})
    columns: dict[str, list[float]] = {k: [] for k in ("adapters", "bytes", "local_s", "cdcda_s", "check_s",
                                                          "answer_s")}
    for person in people:
        folders = answer_folders(results, store, person, scope)
        sums = dict.fromkeys(("local_s", "cdcda_s", "check_s", "answer_s"), 0.0)
        for users in results.values():
            entry = users.get(person)
            if entry is None:
                continue
            for name, m in entry["methods"].items():
                train = m.get("train") or {}
                own = 0.0 if train.get("reused") else float(train.get("seconds") or 0.0)
                check = float(m.get("check_seconds") or 0.0)
                if name in ("local", "cdcda"):
                    sums[f"{name}_s"] += own
                sums["check_s"] += check
                sums["answer_s"] += max(0.0, float(m.get("seconds") or 0.0) - own - check)
        columns["adapters"].append(len(folders))
        columns["bytes"].append(sum((f / ADAPTER_FILE).stat().st_size for f in folders))
        for key, value in sums.items():
            columns[key].append(value)
    out: dict[str, Any] = {"people": len(people)}
    for key, values in columns.items():
        out[key] = (statistics.mean(values) if key == "adapters" else statistics.median(values)) if values else 0.0
    return out


def render(rows: list[dict[str, Any]], costs: Mapping[str, Mapping[str, Any]], brief: bool = False) -> str:
    """Markdown: the quality table (intervals, W/T/L) and the cost table."""
    lines = ["| Task | Method | Profile items | Users | task scope | user scope | user − task (paired) | W/T/L |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        arrow = "↓" if r["metric"] in LOWER_IS_BETTER else "↑"
        lines.append(f"| {r['task']} ({r['metric']} {arrow}) | {r['method']} | {r['profile']} | {r['users']} | "
                     f"{format_interval(tuple(r['task_scope'].values()))} | "
                     f"{format_interval(tuple(r['user_scope'].values()))} | "
                     f"{format_interval(tuple(r['user_minus_task'].values()), signed=True)} | "
                     f"{r['wins_user']}/{r['ties']}/{r['wins_task']} |")
    lines += ["", "| Scope | People | Adapters per person | Adapter bytes per person | Local-only training s | "
              "CDCDA adapter training s | CDCDA check s | Answering s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for scope, c in costs.items():
        lines.append(f"| {scope} | {c['people']} | {c['adapters']:.2f} | {int(c['bytes']):,} | {c['local_s']:.1f} | "
                     f"{c['cdcda_s']:.1f} | {c['check_s']:.1f} | {c['answer_s']:.1f} |")
    if brief:
        return "\n".join(lines)
    lines += ["", "Seconds and bytes are medians per person over their tasks; an adapter reloaded from the device's "
              "store and a stored check decision cost 0 s (a later run of the same people reuses the per-task "
              "checks, which do not depend on the scope)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task_run", type=Path, help="run directory with train.adapter-scope = task")
    ap.add_argument("user_run", type=Path, help="the same people with train.adapter-scope = user")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    for run in (args.task_run, args.user_run):
        if not (run / "users").is_dir() or not (run / "config.json").is_file():
            print(f"multitask_compare: {run} is not a finished run directory (no users/ or config.json)",
                  file=sys.stderr)
            return 2
    rows = quality(args.task_run, args.user_run)
    costs = {"task": cost(args.task_run, "task"), "user": cost(args.user_run, "user")}
    print(render(rows, costs))
    if args.json:
        write_json_atomic(args.json, {"task_run": str(args.task_run), "user_run": str(args.user_run),
                                      "quality": rows, "cost": costs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

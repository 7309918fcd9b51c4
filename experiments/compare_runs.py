"""Did a setting change a method's quality? Two finished runs of the same users, paired per user.

    .venv/bin/python experiments/compare_runs.py runs/before runs/after [--method local] [--json]

For each task both runs have, takes the method's primary metric per user (results.json
``per_user``), and prints each run's mean with its 95 % interval over users, the paired
difference after − before (positive = after is better; for MAE, before − after) with its
interval, and win/tie/loss over users (cdcda_fl/evaluation/stats.py). Users present in only one run are
left out and counted. This is how a speed change is checked for "the same metrics": run the
same config twice, changing only the setting, and compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric
from cdcda_fl.evaluation.stats import format_interval, mean_ci, paired_diff_ci, win_tie_loss


def per_user_metric(run: Path, method: str) -> dict[str, dict[str, float]]:
    """{task: {user: the method's primary metric}} of a finished run."""
    results = json.loads((run / "results.json").read_text())
    out: dict[str, dict[str, float]] = {}
    for task, users in (results.get("per_user") or {}).items():
        metric = primary_metric(task)
        for user, entry in users.items():
            value = ((entry.get("metrics") or {}).get(method) or {}).get(metric)
            if value is not None:
                out.setdefault(task, {})[user] = float(value)
    return out


def compare(before: Path, after: Path, method: str) -> list[dict[str, Any]]:
    """One row per task both runs scored: means, the paired difference (positive = after better), W/T/L."""
    a, b = per_user_metric(before, method), per_user_metric(after, method)
    rows = []
    for task in sorted(set(a) & set(b)):
        users = sorted(set(a[task]) & set(b[task]))
        if not users:
            continue
        metric = primary_metric(task)
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        xa = [a[task][u] for u in users]
        xb = [b[task][u] for u in users]
        gain_after, _ties, gain_before = win_tie_loss([sign * v for v in xb], [sign * v for v in xa])
        diff = paired_diff_ci([sign * v for v in xb], [sign * v for v in xa])
        rows.append({"task": task, "metric": metric, "users": len(users),
                     "only_in_one_run": len(set(a[task]) ^ set(b[task])),
                     "before": mean_ci(xa)._asdict(), "after": mean_ci(xb)._asdict(),
                     "after_minus_before": diff._asdict(), "wins_after": gain_after, "ties": _ties,
                     "wins_before": gain_before})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="run directory (results.json)")
    ap.add_argument("after", type=Path, help="run directory of the same users with one setting changed")
    ap.add_argument("--method", default="local", help="method to compare (default local)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    for run in (args.before, args.after):
        if not (run / "results.json").is_file():
            print(f"compare_runs: {run}/results.json not found (is it a finished run directory?)", file=sys.stderr)
            return 2
    rows = compare(args.before, args.after, args.method)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{args.method}: {args.before} (before) vs {args.after} (after); positive = after is better")
    for r in rows:
        arrow = "↓" if r["metric"] in LOWER_IS_BETTER else "↑"
        print(f"{r['task']} {r['metric']} {arrow}  before {format_interval(tuple(r['before'].values()))}  "
              f"after {format_interval(tuple(r['after'].values()))}  "
              f"after − before {format_interval(tuple(r['after_minus_before'].values()), signed=True)}  "
              f"W/T/L {r['wins_after']}/{r['ties']}/{r['wins_before']}  ({r['users']} users)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What each device decided about the cloud's records, and why: one line per user (the demo's story).

The results table says *how well* CDCDA did; this says *what it did*: per user, how many records
the cloud sent, what CDCDA answered with (its own adapter, local-only's, or the base model's) and
the device's reason, read from the users' results (``synthetic_decision``, present at the
``predictions`` report level, i.e. in simulation). Large runs get a count per task instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

#: above this many users with a decision, a task is summarized instead of listed
MAX_ROWS = 12
ANSWER_NAMES = {"cdcda": "CDCDA adapter (real + cloud)", "local": "local-only adapter", "base": "base model"}


def _answer(decision: Mapping[str, Any]) -> str:
    return str(decision.get("answer_with") or ("cdcda" if decision.get("used_synthetic") else "local"))


def decisions_by_task(results: Mapping[str, Any]) -> dict[str, list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]]:
    """task -> [(user, decision, user entry)] for every user that reported a decision."""
    out: dict[str, list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]] = {}
    for task, users in sorted((results.get("per_user") or {}).items()):
        for uid, entry in sorted(users.items()):
            d = entry.get("synthetic_decision")
            if isinstance(d, Mapping) and d.get("rule"):
                out.setdefault(task, []).append((uid, d, entry))
    return out


def print_decisions(results: Mapping[str, Any], console: Console | None = None) -> None:
    """The per-user decision table (or per-task counts for large runs); nothing when CDCDA did not run."""
    by_task = decisions_by_task(results)
    if not by_task:
        return
    console = console or Console(width=max(Console().width, 140))
    for task, rows in by_task.items():
        writer = next((str(e["cloud"]["writer"]) for _, _, e in rows if (e.get("cloud") or {}).get("writer")), "")
        if len(rows) > MAX_ROWS:
            counts = Counter(_answer(d) for _, d, _ in rows)
            console.print(f"{task}: CDCDA answered with " + ", ".join(
                f"{ANSWER_NAMES.get(k, k)} for {v} of {len(rows)} users" for k, v in counts.most_common()))
            continue
        table = Table(title=f"{task}: what each device did with the cloud's records"
                            + (f" (writer: {writer})" if writer else ""), title_justify="left")
        for col, kw in (("user", {}), ("items", {"justify": "right"}), ("cloud records", {"justify": "right"}),
                        ("CDCDA answered with", {}), ("why (the device's own check)", {"overflow": "fold"})):
            table.add_column(col, **kw)
        for uid, d, entry in rows:
            items = d.get("n_validation") or entry.get("n_profile") or ""
            table.add_row(uid, str(items), str(entry.get("n_synthetic_received", "")),
                          ANSWER_NAMES.get(_answer(d), _answer(d)), str(d.get("reason", ""))[:220])
        console.print(table)

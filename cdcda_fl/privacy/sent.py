"""What a device sent, from its own audit log (``<storage-dir>/audit.jsonl``): the owner's view.

A device owner should not have to trust the server's report to know what left the device: every
reply is appended to the device's log before it is sent (cdcda_fl/device/node.py). This module
sums that log up per user and task -- records and bytes shared with the cloud, result replies
and their report level -- for ``cdcda audit sent`` and the lab's end-of-run report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.privacy.audit_log import AUDIT_FILENAME, read_audit


def audit_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or ``path/audit.jsonl`` when it is a folder (a device's storage dir)."""
    p = Path(path).expanduser()
    return p / AUDIT_FILENAME if p.is_dir() else p


def summarize_sent(path: str | os.PathLike[str], *, skip: int = 0) -> dict[str, Any]:
    """Totals and per-user lines of an audit log; ``skip`` leaves out its first lines (earlier runs)."""
    log = audit_path(path)
    lines = read_audit(log)[skip:]
    shares = [{"user": ln["user"], "task": ln["task"], "records": int(ln.get("n_shared", 0)),
               "of": ln.get("n_total"), "bytes": int(ln.get("bytes", 0)), "fields": ln.get("fields", [])}
              for ln in lines if ln.get("kind") == "share"]
    results = [{"user": ln["user"], "task": ln["task"], "report": ln.get("report", ""), "bytes": int(ln.get("bytes", 0))}
               for ln in lines if ln.get("kind") == "result"]
    replies = [ln for ln in lines if ln.get("kind") == "reply"]
    # FedAvg updates (methods fedavg, fedavg+local, cdcda+fedavg): adapter arrays, one line per round
    updates = [{"task": ln.get("task", ""), "round": ln.get("round"), "bytes": int(ln.get("bytes", 0)),
                "users": list(ln.get("users") or [])} for ln in lines if ln.get("kind") == "update"]
    return {"log": str(log.resolve()), "lines": len(lines), "records": sum(s["records"] for s in shares),
            "share_bytes": sum(s["bytes"] for s in shares), "shares": shares, "results": results,
            "replies": len(replies), "reply_bytes": sum(int(r.get("bytes", 0)) for r in replies),
            "updates": updates, "update_bytes": sum(u["bytes"] for u in updates)}


def format_sent(summary: dict[str, Any], name: str = "") -> str:
    """A few lines a person reads: per user/task how many records (of how many) and which result level."""
    updates = summary.get("updates", [])
    fedavg = f", {len(updates)} FedAvg update(s) of {summary.get('update_bytes', 0)} bytes" if updates else ""
    head = f"{name + ': ' if name else ''}shared {summary['records']} record(s), {summary['share_bytes']} bytes " \
           f"({summary['replies']} replies, {summary['reply_bytes']} bytes in all{fedavg})   [{summary['log']}]"
    out = [head]
    for s in summary["shares"]:
        of = f" of {s['of']}" if s["of"] is not None else ""
        out.append(f"  {s['task']}/{s['user']}: {s['records']}{of} record(s), {s['bytes']} bytes"
                   + (f", fields {','.join(s['fields'])}" if s["records"] else ""))
    for r in summary["results"]:
        out.append(f"  {r['task']}/{r['user']}: result ({r['report'] or 'error'}), {r['bytes']} bytes")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for u in summary.get("updates", []):
        by_task.setdefault(u["task"], []).append(u)
    for task, ups in sorted(by_task.items()):
        users = sorted({x for u in ups for x in u["users"]})
        out.append(f"  {task}: {len(ups)} FedAvg update(s) (adapter arrays + record count), "
                   f"{sum(u['bytes'] for u in ups)} bytes, trained on {', '.join(users) or 'no user'}")
    return "\n".join(out)


def cmd_sent(paths: Sequence[str], as_json: bool = False) -> int:
    """`cdcda audit sent PATH ...`: print what each device's log says it sent (exit 1 if a log is missing)."""
    import json
    import sys

    missing = [p for p in paths if not audit_path(p).is_file()]
    for p in missing:
        print(f"error: no audit log at {audit_path(p)}", file=sys.stderr)
    summaries = [summarize_sent(p) for p in paths if p not in missing]
    if as_json:
        print(json.dumps(summaries, indent=1))
    else:
        print("\n".join(format_sent(s) for s in summaries))
    return 1 if missing else 0

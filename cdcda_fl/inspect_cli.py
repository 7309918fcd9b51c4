"""`cdcda inspect RUN --user U`: one user's view of a run -- what they shared, what the cloud wrote,
what their device kept and decided, and how each method scored.

Sources inside a run directory (finished or partial; nothing is written):

- ``audit.jsonl``: the server's log of each share it received (record ids, fields, bytes,
  SHA-256, redactions; the values themselves only if the run logged them);
- ``users/<task>/<user>.json`` and ``results.json`` ``per_user``: the user's result, with the
  cloud's accounting for them (records sent, filter counts by reason, error) and their metrics;
- ``failures.jsonl``: anything that failed for the user;
- the device store (:mod:`cdcda_fl.device.synthetic_store`): the synthetic records the device
  received, kept and dropped (with reasons) and its decision. Simulated devices keep it in the run
  dir (``devices/synthetic/<task>/<user>.json``, or under ``device.storage-dir``; a lab
  deployment's ``devices/node<i>/``); a real device keeps it on its own disk, so it is not here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import safe_filename
from cdcda_fl.data.tasks import TASKS, get_task
from cdcda_fl.device.synthetic_store import SyntheticStoreError, load_synthetic_log, synthetic_log_path
from cdcda_fl.core.run_config import run_config

MAX_FIELD_CHARS = 160
KNOWN_USERS_SHOWN = 8


class InspectError(ValueError):
    """An expected problem with the run dir or the request: one line for the user."""


# ---------------------------------------------------------------------- reading the run dir
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InspectError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: skip it, as the readers of these logs do
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


class RunDir:
    """Read-only access to the parts of a run directory that `inspect` shows."""

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise InspectError(f"run directory {self.path} does not exist")
        if not self.path.is_dir():
            raise InspectError(f"{self.path} is not a directory (give the run's out-dir)")
        markers = ("config.json", "audit.jsonl", "users", "results.json")
        if not any((self.path / m).exists() for m in markers):
            raise InspectError(f"{self.path} is not a cdcda run directory (none of {', '.join(markers)} in it)")
        self.config: dict[str, Any] = {}
        if (self.path / "config.json").is_file():
            self.config = dict(_read_json(self.path / "config.json").get("config") or {})
        self.results: dict[str, Any] = (_read_json(self.path / "results.json")
                                        if (self.path / "results.json").is_file() else {})
        self.audit = _jsonl(self.path / "audit.jsonl")
        self.failures = _jsonl(self.path / "failures.jsonl")

    def result(self, task: str, user: str) -> dict[str, Any] | None:
        path = self.path / "users" / task / f"{safe_filename(user)}.json"
        return _read_json(path) if path.is_file() else None

    def known_users(self) -> dict[str, set[str]]:
        """user id -> the tasks the run knows them in (index, shares, results, failures)."""
        known: dict[str, set[str]] = {}

        def add(task: Any, user: Any) -> None:
            if task and user:
                known.setdefault(str(user), set()).add(str(task))

        for header in sorted((self.path / "index").glob("*/header.json")):
            try:
                data = json.loads(header.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            for entry in data.get("users") or []:
                if isinstance(entry, list) and entry:
                    add(data.get("task"), entry[0])
        for line in self.audit:
            add(line.get("task"), line.get("user"))
        for folder in sorted((self.path / "users").glob("*")) if (self.path / "users").is_dir() else []:
            for path in sorted(folder.glob("*.json")):
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                add(data.get("task"), data.get("user_id"))
        for task, users in (self.results.get("per_user") or {}).items():
            for user in users:
                add(task, user)
        for f in self.failures:
            who = str(f.get("who", ""))
            if "/" in who and not who.startswith("node "):
                add(*who.split("/", 1))
        return known

    def store_dirs(self) -> list[Path]:
        """Where simulated (or lab) devices of this run keep their disk, in the order searched."""
        dirs = []
        configured = run_config(self.config).device.storage_dir
        if configured:
            dirs.append(Path(configured).expanduser())
        dirs.append(self.path / "devices")
        dirs += sorted(p.parent for p in (self.path / "devices").glob("*/synthetic") if p.is_dir())
        return dirs


# ---------------------------------------------------------------------- one user's view
def _latest_share(run: RunDir, task: str, user: str) -> tuple[dict[str, Any] | None, int]:
    lines = [ln for ln in run.audit if ln.get("kind", "share") == "share"
             and str(ln.get("task")) == task and str(ln.get("user")) == user]
    return (lines[-1] if lines else None), len(lines)


def _device_store(run: RunDir, task: str, user: str) -> dict[str, Any]:
    searched = []
    folders = run.store_dirs()
    for folder in folders:
        path = synthetic_log_path(folder, user, task)
        searched.append(str(path))
        try:
            log = load_synthetic_log(folder, user, task)
        except SyntheticStoreError as exc:
            raise InspectError(str(exc)) from exc
        if log is not None:
            return {"available": True, "path": str(path), **log}
    return {"available": False, "searched": searched,
            "reason": (f"no device store for {task}/{user} in this run dir (looked under "
                       f"{', '.join(map(str, folders))}): simulated devices "
                       "write it there once they personalize; on a real device the store lives on the device's "
                       "own disk (its storage-dir, default <data-dir>/.cdcda) and never leaves it")}


def _metrics(run: RunDir, task: str, user: str, result: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    entry = ((run.results.get("per_user") or {}).get(task) or {}).get(user) or {}
    if entry.get("metrics"):
        return dict(entry["metrics"]), "results.json"
    if result and result.get("methods"):
        out = {m: dict(e["metrics"]) for m, e in result["methods"].items() if isinstance(e, dict) and e.get("metrics")}
        if out:
            return out, f"users/{task}/ (run not aggregated yet)"
    block = (run.results.get("intervals") or {}).get(task) or {}
    primary = block.get("metric")
    out = {m: {primary: values[user]} for m, values in (block.get("per_user") or {}).items() if user in values}
    return out, "results.json intervals" if out else ""


def inspect_user(run_dir: Path | str, user: str, task: str | None = None) -> dict[str, Any]:
    """Everything the run dir holds about ``user`` (per task), as one JSON-able dict.

    Raises InspectError for a missing or foreign run dir, an unknown user or task.
    """
    run = RunDir(run_dir)
    if task is None and "/" in user and user.split("/", 1)[0] in TASKS:  # a user key: LaMP_2/dev-u0000
        task, user = user.split("/", 1)
    if task is not None:
        try:
            task = get_task(task).name
        except KeyError as exc:
            raise InspectError(str(exc.args[0])) from None
    known = run.known_users()
    if user not in known:
        names = sorted(known)
        shown = ", ".join(names[:KNOWN_USERS_SHOWN])
        if len(names) > KNOWN_USERS_SHOWN:
            shown += f", ... ({len(names)} in all)"
        raise InspectError(f"user {user!r} is not in run {run.path}" + (f" (known users: {shown})" if names else
                                                                         " (the run has no users yet)"))
    tasks = sorted(known[user])
    if task is not None:
        if task not in known[user]:
            raise InspectError(f"user {user!r} has nothing for {task} in run {run.path} (their tasks: {', '.join(tasks)})")
        tasks = [task]
    out: dict[str, Any] = {"run": str(run.path), "user": user, "tasks": {}}
    for t in tasks:
        result = run.result(t, user)
        per_user = ((run.results.get("per_user") or {}).get(t) or {}).get(user) or {}
        share, n_shares = _latest_share(run, t, user)
        failures = [f for f in run.failures if f.get("who") == f"{t}/{user}"]
        metrics, metrics_from = _metrics(run, t, user, result)
        store = _device_store(run, t, user)
        out["tasks"][t] = {
            "status": "finished" if result is not None else ("failed" if failures else "not finished"),
            "shared": share, "share_requests": n_shares,
            "cloud": (result or {}).get("cloud") or per_user.get("cloud"),
            "device_store": store,
            "decision": store.get("decision") if store["available"] else None,
            "reported_decision": (result or {}).get("synthetic_decision") or per_user.get("synthetic_decision"),
            "n_synthetic_received": (result or per_user).get("n_synthetic_received"),
            "n_synthetic_used": (result or per_user).get("n_synthetic_used"),
            "metrics": metrics, "metrics_from": metrics_from,
            "failures": failures,
        }
    return out


# ---------------------------------------------------------------------- printing
def _short(value: Any, limit: int = MAX_FIELD_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_text(rec: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {_short(v)}" for k, v in rec.items() if k not in ("synthetic",))


def print_report(view: Mapping[str, Any], console: Any = None, max_records: int = 20) -> list[str]:
    """Print ``view`` for a person; returns the notes (e.g. no device store) for stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    notes: list[str] = []
    console.print(f"[bold]user {escape(view['user'])}[/bold] in run {escape(view['run'])}")
    for task, v in view["tasks"].items():
        console.rule(f"{task}: {v['status']}")
        share = v["shared"]
        if share:
            console.print(f"[bold]shared with the cloud[/bold]: {share.get('n_shared', 0)} record(s), "
                          f"{share.get('bytes', 0):,} bytes, fields {', '.join(map(str, share.get('fields', [])))}"
                          + (f", to {escape(str(share['destination']))}" if share.get("destination") else "")
                          + (f" ({v['share_requests']} share requests in all)" if v["share_requests"] > 1 else ""),
                          highlight=False)
            console.print(f"  record ids: {escape(', '.join(map(str, share.get('record_ids', [])))) or '–'}",
                          highlight=False)
            if share.get("redactions"):
                console.print(f"  PII scrubbed: {escape(json.dumps(share['redactions']))}", highlight=False)
            for rec in (share.get("records") or [])[:max_records]:
                console.print(f"  - {escape(_record_text(rec))}", highlight=False)
            if not share.get("records"):
                console.print("  (the server's audit keeps ids, fields and a SHA-256, not the values)", style="dim")
        else:
            console.print("[bold]shared with the cloud[/bold]: nothing on record (no share in audit.jsonl)")
        cloud = v["cloud"]
        if cloud:
            counts = cloud.get("counts") or {}
            rejected = {k[len("rejected_"):]: n for k, n in counts.items() if k.startswith("rejected_")}
            other = {k: n for k, n in counts.items() if not k.startswith("rejected_") and k != "accepted"}
            console.print(f"[bold]cloud[/bold]: {counts.get('accepted', 0)} accepted, {cloud.get('n_records', 0)} sent "
                          f"to the device; rejected: {escape(', '.join(f'{k} {n}' for k, n in rejected.items())) or 'none'}"
                          + (f"; {escape(', '.join(f'{k} {n}' for k, n in other.items()))}" if other else ""),
                          highlight=False)
            if cloud.get("error"):
                console.print(f"  [red]cloud error:[/red] {escape(str(cloud['error']))}", highlight=False)
        else:
            console.print("[bold]cloud[/bold]: no accounting for this user (not finished, or a run without CDCDA)")
        store = v["device_store"]
        if store["available"]:
            c = store.get("counts") or {}
            console.print(f"[bold]device store[/bold] ({escape(store['path'])}): received {c.get('received', 0)}, "
                          f"kept {c.get('kept', 0)}, dropped {c.get('dropped', 0)}", highlight=False)
            table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
            table.add_column("", no_wrap=True)
            table.add_column("record")
            table.add_column("why dropped")
            rows = [("kept", rec, "") for rec in store.get("kept", [])]
            rows += [("dropped", d.get("record", {}), d.get("reason", "")) for d in store.get("dropped", [])]
            for status, rec, reason in rows[:max_records]:
                table.add_row(status, escape(_record_text(rec)), escape(str(reason)))
            if rows:
                console.print(table)
            if len(rows) > max_records:
                console.print(f"  ... and {len(rows) - max_records} more (--max-records N, or --json)", style="dim")
            console.print(f"[bold]device decision[/bold]: {escape(json.dumps(store.get('decision'), ensure_ascii=False))}",
                          highlight=False)
        else:
            console.print(f"[bold]device store[/bold]: not available -- {escape(store['reason'])}", highlight=False)
            notes.append(f"note: {store['reason']}")
            if v["reported_decision"] is not None:
                console.print(f"[bold]device decision (as reported)[/bold]: "
                              f"{escape(json.dumps(v['reported_decision'], ensure_ascii=False))}", highlight=False)
        if v["n_synthetic_used"] is not None:
            console.print(f"synthetic records received/used in training (device's report): "
                          f"{v['n_synthetic_received']}/{v['n_synthetic_used']}", highlight=False)
        if v["metrics"]:
            names: list[str] = []
            for m in v["metrics"].values():
                names += [n for n in m if n not in names]
            table = Table(title=f"metrics ({v['metrics_from']})", title_justify="left")
            table.add_column("method")
            for n in names:
                table.add_column(n, justify="right")
            for method, m in v["metrics"].items():
                table.add_row(method, *("" if m.get(n) is None else f"{float(m[n]):.3f}" for n in names))
            console.print(table)
        else:
            console.print("metrics: none yet")
        for f in v["failures"]:
            reason = escape(_short(f.get("reason", ""), 300))
            console.print(f"[red]failure[/red] ({escape(str(f.get('phase', '')))}): {reason}", highlight=False)
    return notes


# ---------------------------------------------------------------------- the command
def _cmd_inspect(args: argparse.Namespace) -> int:
    try:
        view = inspect_user(args.run, args.user, args.task)
    except InspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=1))
        return 0
    for note in print_report(view, max_records=max(0, args.max_records)):
        print(note, file=sys.stderr)
    return 0


def register(sub) -> None:
    """`cdcda inspect RUN --user U [--task T] [--json]`."""
    p = sub.add_parser(
        "inspect", help="one user of a run: shared records, the cloud's synthetic data, the device's decision, metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show what a run directory (finished or partial) holds about one user:\n"
                    "  - the share the server received (audit.jsonl: record ids, fields, bytes, PII scrubbed);\n"
                    "  - the cloud's accounting for the user (records accepted and sent, rejections by reason, error);\n"
                    "  - the synthetic records the device received, kept and dropped (with reasons) and its decision,\n"
                    "    from the device's store -- in a simulated run under RUN/devices/synthetic/ (or device.storage-dir);\n"
                    "    a real device keeps its store on its own disk, so the run dir cannot show it;\n"
                    "  - the user's metrics per method (results.json, or the user's result of a partial run).\n"
                    "Nothing is written.",
        epilog="examples:\n  cdcda inspect runs/demo --user dev-u0001\n"
               "  cdcda inspect runs/demo --user dev-u0001 --task LaMP_5 --json")
    p.add_argument("run", type=Path, help="the run directory (the run's out-dir)")
    p.add_argument("--user", required=True, help="user id (or TASK/USER)")
    p.add_argument("--task", help="only this task (default: every task of the user)")
    p.add_argument("--json", action="store_true", help="print one JSON object (every record, untruncated)")
    p.add_argument("--max-records", type=int, default=20, metavar="N",
                   help="synthetic records listed per task in the text view (default 20)")
    p.set_defaults(func=_cmd_inspect)

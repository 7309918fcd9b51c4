"""The run's report from its per-user result files: LaMP-format predictions, ``results.json``, ``summary.csv``.

Every query is keyed by ``(user, query id)``: a result only ever speaks for its own user (the
server accepted it only from the node it asked about that user, ``node_guard.py``), so one user's
reported golds or predictions can never replace another user's, even when a node reuses that
user's query ids (issue 29.4: before, results were merged by query id across users). A query id
that more than one user reported is left out of the LaMP-format files, which are keyed by id
alone, and named in ``problems``.

Each table row counts the users whose metrics it shows (``n_users``) and, separately, the
finished users who reported at a level that carries no metrics (``n_users_lower``, e.g.
``eval.report=none`` or an owner's ``report = "none"``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_text_atomic
from cdcda_fl.core.config import CLOUD_DATA_METHODS, Scalar, csv_list
from cdcda_fl.data.lamp import write_json_atomic, write_outputs
from cdcda_fl.data.tasks import TaskSpec, parse_task_list
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, PredictionMismatchError, primary_metric, score
from cdcda_fl.privacy.audit_log import read_audit
from cdcda_fl.privacy.report import pool_user_metrics
from cdcda_fl.server.runs import ResultStore, package_versions
from cdcda_fl.evaluation.stats import task_intervals
from cdcda_fl.core.run_config import run_config

QueryKey = tuple[str, str]  # (user id, query id)


@dataclass
class MethodSummary:
    task: str
    method: str
    metrics: dict[str, float]
    n_users: int  # users whose metrics this row shows
    n_queries: int
    epsilon: float | None
    mia_auc: float | None
    train_seconds: float
    n_synthetic: float | None  # None: no user reported it (report level below `predictions`)
    train_steps: float = 0.0  # optimizer steps per user (CDCDA's budget differs with equal real exposure)
    n_users_lower: int = 0  # finished users of the task whose report level carried no metrics for this method


def _str_map(value: Any) -> dict[str, str]:
    """A reply's id -> text mapping, with anything that is not one dropped (results come from nodes)."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}


@dataclass
class TaskTally:
    """One task's user results, added one at a time; queries keyed by (user, query id)."""

    methods: list[str]
    primary: str
    n_users: int = 0
    golds: dict[QueryKey, str] = field(default_factory=dict)
    preds: dict[str, dict[QueryKey, str]] = field(default_factory=dict)
    user_metrics: dict[str, list[tuple[dict[str, float], float]]] = field(default_factory=dict)
    metrics_only: dict[str, int] = field(default_factory=dict)  # users with metrics but no predictions
    no_metrics: dict[str, int] = field(default_factory=dict)  # finished users without metrics for the method
    per_user: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # for the intervals
    numbers: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # eps/mia/secs/steps per method
    n_syn: list[int] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, result: Mapping[str, Any]) -> None:
        """One user's result file."""
        uid = str(result["user_id"])
        self.n_users += 1
        golds = _str_map(result.get("golds"))  # absent under eval.report=metrics|none
        self.golds.update(((uid, q), g) for q, g in golds.items())
        if "n_synthetic_used" in result:  # absent under eval.report=metrics|none: not reported is not zero
            self.n_syn.append(int(result.get("n_synthetic_used") or 0))
        methods = result.get("methods") if isinstance(result.get("methods"), Mapping) else {}
        for m in self.methods:
            entry = methods.get(m) if isinstance(methods.get(m), Mapping) else {}
            self._add_method(m, uid, entry, result, len(golds))

    def _add_method(self, m: str, uid: str, entry: Mapping[str, Any], result: Mapping[str, Any], n_golds: int) -> None:
        preds = _str_map(entry.get("predictions"))
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), Mapping) else {}
        if "skipped" in entry:
            self.skipped[m] = str(entry["skipped"])[:500]
        if not metrics:
            self.no_metrics[m] = self.no_metrics.get(m, 0) + 1
        else:
            n_q = float(len(preds) or result.get("n_queries") or 1)
            self.user_metrics.setdefault(m, []).append((dict(metrics), n_q))
            self.metrics_only[m] = self.metrics_only.get(m, 0) + ("predictions" not in entry)
        self.preds.setdefault(m, {}).update(((uid, q), p) for q, p in preds.items())
        if metrics.get(self.primary) is not None:  # works without predictions too
            self.per_user.setdefault(m, {})[uid] = (float(metrics[self.primary]),
                                                    float(n_golds or result.get("n_queries") or 1))
        numbers = self.numbers.setdefault(m, {"eps": [], "mia": [], "secs": [], "steps": []})
        if entry.get("epsilon") is not None:
            numbers["eps"].append(float(entry["epsilon"]))
        if entry.get("mia_auc") is not None:
            numbers["mia"].append(float(entry["mia_auc"]))
        if isinstance(entry.get("train"), Mapping):
            numbers["secs"].append(float(entry["train"].get("seconds", 0.0)))
            # federated rows: the shared adapter's rounds × local steps count too
            numbers["steps"].append(float(entry["train"].get("steps") or 0)
                                    + float(entry["train"].get("federated_steps") or 0))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _shared_query_ids(tally: TaskTally) -> dict[str, list[str]]:
    """Query id -> the users that reported it, for ids more than one user reported."""
    owners: dict[str, set[str]] = {}
    for uid, qid in [*tally.golds, *(k for preds in tally.preds.values() for k in preds)]:
        owners.setdefault(qid, set()).add(uid)
    return {qid: sorted(users) for qid, users in sorted(owners.items()) if len(users) > 1}


def _write_lamp_outputs(out: Path, task: str, tally: TaskTally, problems: list[dict[str, str]]) -> None:
    """LaMP-format predictions per method (keyed by query id alone: ids several users reported are
    left out, and named once in ``problems``)."""
    shared = _shared_query_ids(tally)
    if shared:
        first = next(iter(shared))
        problems.append({"task": task, "method": "*", "error": "DuplicateQueryIds",
                         "detail": f"{len(shared)} query id(s) reported by several users, left out of the "
                                   f"LaMP-format predictions: e.g. {first[:40]!r} by {shared[first][:4]}"})
    for m, preds in tally.preds.items():
        if preds:  # written even when every id was ambiguous: a stale file must not stand in
            rows = sorted((q, p) for (_uid, q), p in preds.items() if q not in shared)
            write_outputs(out / "predictions" / task / f"{m}_outputs.json", task, rows)


def _method_metrics(spec: TaskSpec, tally: TaskTally, m: str,
                    problems: list[dict[str, str]]) -> tuple[dict[str, float], int] | None:
    """(the method's pooled metrics, its number of queries), or None when it has nothing to show."""
    preds = tally.preds.get(m, {})
    if tally.metrics_only.get(m):  # some users kept their predictions: pool everyone's per-user metrics
        return pool_user_metrics(tally.user_metrics[m]), int(sum(n for _, n in tally.user_metrics[m]))
    if not preds:
        return None
    try:
        return score(spec, {k: tally.golds[k] for k in preds}, preds), len(preds)
    except (PredictionMismatchError, KeyError) as exc:
        # Never a silent "–": the row is missing for a reason the report must name.
        missing = [f"{u}/{q}" for u, q in sorted(set(preds) - set(tally.golds))[:5]]
        problems.append({"task": spec.name, "method": m, "error": type(exc).__name__,
                         "detail": f"predictions without golds: {missing}" if missing else str(exc)})
        return None


def _summaries(spec: TaskSpec, tally: TaskTally, problems: list[dict[str, str]]) -> list[MethodSummary]:
    rows = []
    for m in tally.methods:
        scored = _method_metrics(spec, tally, m, problems)
        if scored is None:
            continue
        metrics, n_queries = scored
        numbers = tally.numbers.get(m, {"eps": [], "mia": [], "secs": [], "steps": []})
        rows.append(MethodSummary(
            spec.name, m, metrics, len(tally.user_metrics.get(m, [])) or len({u for u, _ in tally.preds.get(m, {})}),
            n_queries, max(numbers["eps"]) if numbers["eps"] else None,
            _mean(numbers["mia"]) if numbers["mia"] else None, _mean(numbers["secs"]),
            (_mean(tally.n_syn) if tally.n_syn else None) if m in CLOUD_DATA_METHODS else 0.0, _mean(numbers["steps"]),
            n_users_lower=tally.no_metrics.get(m, 0)))
    return rows


#: paired differences results.json reports per task (when both methods were scored): CDCDA against
#: what it extends, and the per-user vs federated comparisons of the family table (paper_table.py)
PAIRS = (("cdcda", "local"), ("cdcda", "fedavg+local"), ("fedavg", "local"), ("fedavg+local", "local"),
         ("cdcda+fedavg", "cdcda"))


def aggregate(cfg: Mapping[str, Scalar], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read all user results, write LaMP-format predictions, ``results.json`` and ``summary.csv``.

    ``extra`` (e.g. the run's phase timings) is stored in results.json as given.
    """
    rc = run_config(cfg)
    out = Path(rc.out_dir)
    store = ResultStore(out)
    methods = csv_list(rc.methods)
    summaries: list[MethodSummary] = []
    skipped: dict[str, str] = {}
    users_per_task: dict[str, int] = {}
    intervals: dict[str, Any] = {}  # per task: 95 % intervals over users (cdcda_fl.evaluation.stats.task_intervals)
    problems: list[dict[str, str]] = []  # method rows that could not be scored, and why
    per_user_entries: dict[str, dict[str, dict[str, Any]]] = {}  # task -> user -> cloud, decision, metrics
    for spec in parse_task_list(rc.tasks):
        primary = primary_metric(spec)
        tally = TaskTally(methods, primary)
        task_users = per_user_entries.setdefault(spec.name, {})
        for result in store.iter_results(spec.name):
            tally.add(result)
            task_users[str(result["user_id"])] = user_entry(result)
        skipped.update(tally.skipped)
        users_per_task[spec.name] = tally.n_users
        intervals[spec.name] = task_intervals(tally.per_user, primary, lower_is_better=primary in LOWER_IS_BETTER,
                                              seed=rc.seed, pairs=PAIRS)
        _write_lamp_outputs(out, spec.name, tally, problems)
        summaries += _summaries(spec, tally, problems)
    results = {
        "config": dict(cfg),
        "versions": package_versions(),
        "users": users_per_task,
        "table": [s.__dict__ for s in summaries],
        "intervals": intervals,
        "skipped": skipped,
        "failures": store.failures(),
        "problems": problems,
        "shared": audit_totals(out),
        "cloud": {task: cloud_summary(entries.values()) for task, entries in per_user_entries.items()},
        "per_user": per_user_entries,
        **dict(extra or {}),
    }
    write_json_atomic(out / "results.json", results)
    _write_summary_csv(out / "summary.csv", summaries)
    return results


USER_ENTRY_KEYS = ("cloud", "synthetic_decision", "n_synthetic_received", "n_synthetic_used", "n_queries", "report")


def user_entry(result: Mapping[str, Any]) -> dict[str, Any]:
    """One user's entry in results.json ``per_user``: the cloud's accounting for the user (server
    data: records sent, filter counts by reason, error), the device's synthetic decision if it
    reported one, and the metrics per method."""
    entry = {k: result[k] for k in USER_ENTRY_KEYS if k in result}
    cdcda = (result.get("methods") or {}).get("cdcda")
    if "synthetic_decision" not in entry and isinstance(cdcda, Mapping) and isinstance(cdcda.get("decision"), Mapping):
        entry["synthetic_decision"] = dict(cdcda["decision"])  # a metrics-level reply: the flag only
    dp = cdcda.get("dp") if isinstance(cdcda, Mapping) else None
    if isinstance(dp, Mapping) and isinstance(dp.get("fell_back"), bool):
        entry["dp_decision"] = {"chosen": dp.get("chosen"), "fell_back": dp["fell_back"]}  # CDCDA+DP's choice
    metrics = {m: dict(e["metrics"]) for m, e in (result.get("methods") or {}).items()
               if isinstance(e, Mapping) and e.get("metrics")}
    if metrics:
        entry["metrics"] = metrics
    return entry


def _used_synthetic(entry: Mapping[str, Any]) -> bool | None:
    decision = entry.get("synthetic_decision")
    if isinstance(decision, Mapping) and isinstance(decision.get("used_synthetic"), bool):
        return decision["used_synthetic"]
    return None


def _dp_fell_back(entry: Mapping[str, Any]) -> bool | None:
    """CDCDA+DP's decision (``dp_decision``, from ``methods.cdcda.dp``): True = answered with the base model."""
    dp = entry.get("dp_decision")
    if isinstance(dp, Mapping) and isinstance(dp.get("fell_back"), bool):
        return dp["fell_back"]
    return None


def cloud_summary(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A task's cloud accounting over its users (results.json ``cloud``).

    ``records_written``: records the cloud parsed from its generations; ``records_accepted``: those
    that passed its filters; ``rejected``: filter rejections by reason; ``users_with_error`` and
    ``outage`` (every user with a cloud entry got an error: CDCDA then is local-only training);
    ``fell_back``/``used_synthetic``: devices that reported a ``synthetic_decision``;
    ``dp_fell_back``/``dp_decisions``: under DP, devices whose CDCDA+DP choice was the base model.
    """
    entries = list(entries)
    clouds = [e["cloud"] for e in entries if isinstance(e.get("cloud"), Mapping)]
    rejected: dict[str, int] = {}
    errors: dict[str, int] = {}
    written = accepted = sent = 0
    for c in clouds:
        counts = c.get("counts") or {}
        written += int(counts.get("generated", 0))
        accepted += int(counts.get("accepted", 0))
        sent += int(c.get("n_records", 0))
        for key, value in counts.items():
            if key.startswith("rejected_"):
                rejected[key[len("rejected_"):]] = rejected.get(key[len("rejected_"):], 0) + int(value)
        if c.get("error"):
            text = str(c["error"])[:200]
            errors[text] = errors.get(text, 0) + 1
    with_error = sum(errors.values())
    decisions = [d for d in map(_used_synthetic, entries) if d is not None]
    dp_decisions = [d for d in map(_dp_fell_back, entries) if d is not None]
    return {
        "users": len(clouds), "records_written": written, "records_accepted": accepted, "records_sent": sent,
        "rejected": dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
        "users_with_error": with_error,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "outage": bool(clouds) and with_error == len(clouds),
        "decisions": len(decisions), "used_synthetic": sum(decisions), "fell_back": len(decisions) - sum(decisions),
        "dp_decisions": len(dp_decisions), "dp_fell_back": sum(dp_decisions),
    }


def audit_totals(out_dir: Path | str) -> dict[str, dict[str, int]]:
    """What left the devices, per task, from ``audit.jsonl``: the privacy cost a report sets against utility.

    A rerun (resume) shares again and appends new lines, so ``records``/``bytes``/``users`` count
    each user's *latest* share once (what the cloud holds of that user for this run), while
    ``requests``/``bytes_sent`` count every line (what actually crossed the network, reruns included).
    """
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    totals: dict[str, dict[str, int]] = {}
    # Profile sizes never leave a device; simulated devices (and the lab's) keep their own audit
    # logs inside the run dir, and only those tell how many records each user had.
    n_total: dict[tuple[str, str], int] = {}
    for log in [Path(out_dir) / "devices" / "audit.jsonl", *sorted(Path(out_dir).glob("devices/*/audit.jsonl"))]:
        for line in read_audit(log):
            if line.get("kind", "share") == "share" and "n_total" in line:
                n_total[(str(line.get("task", "")), str(line.get("user", "")))] = int(line["n_total"])
    for line in read_audit(Path(out_dir) / "audit.jsonl"):
        if line.get("kind", "share") != "share":  # result replies are audited too, not counted here
            continue
        task = str(line.get("task", ""))
        latest[(task, str(line.get("user", "")))] = line
        t = totals.setdefault(task, {"users": 0, "records": 0, "records_total": 0, "bytes": 0,
                                     "requests": 0, "bytes_sent": 0})
        t["requests"] += 1
        t["bytes_sent"] += int(line.get("bytes", 0))
    for (task, _user), line in latest.items():
        t = totals[task]
        t["users"] += 1
        t["records"] += int(line.get("n_shared", 0))
        t["records_total"] += int(line.get("n_total", n_total.get((task, _user), 0)))
        t["bytes"] += int(line.get("bytes", 0))
    return totals


def _write_summary_csv(path: Path, summaries: Sequence[MethodSummary]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "method", "metric", "value", "higher_is_better", "n_users", "n_queries", "epsilon",
                     "mia_auc", "train_seconds_per_user", "synthetic_per_user", "n_users_lower"])
    for s in summaries:
        for name, value in s.metrics.items():
            writer.writerow([s.task, s.method, name, f"{value:.6f}", name not in LOWER_IS_BETTER, s.n_users,
                             s.n_queries, "" if s.epsilon is None else f"{s.epsilon:.4f}",
                             "" if s.mia_auc is None else f"{s.mia_auc:.4f}", f"{s.train_seconds:.2f}",
                             "" if s.n_synthetic is None else f"{s.n_synthetic:.1f}", s.n_users_lower])
    write_text_atomic(path, buffer.getvalue())

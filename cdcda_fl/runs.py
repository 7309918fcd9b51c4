"""The run directory: its data, its per-user results (streamed to disk, resumable) and its reports.

Layout of ``out-dir``::

    config.json            the exact resolved config, seed, package versions
    data/                  seeded personas (when no data-dir was given)
    audit.jsonl            every record that left a device, per user (what, which fields, bytes)
    users/<task>/<user>.json   one finished user's result (written atomically; a rerun skips it)
    failures.jsonl         users/nodes that failed, with the reason
    devices/               the simulated devices' own disks (private adapters; never uploaded)
    devices/synthetic/<task>/<user>.json   what a simulated device received, kept and dropped of the
                           cloud's records, and its decision (device/synthetic_store.py; never uploaded)
    predictions/<task>/<method>_outputs.json   LaMP-format predictions
    results.json, summary.csv, plots/*.png       the report (results.json ``per_user``: each user's
                           cloud accounting, device decision and metrics; ``cloud``: their sums per task)

Results are written per user as they arrive, so the server holds no per-user state beyond what
the final report needs, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cdcda_fl.atomic import safe_filename, write_text_atomic
from cdcda_fl.config import Scalar, csv_list
from cdcda_fl.data.index import DataIssue, TaskIndex, UserRef, select_users, task_index
from cdcda_fl.data.lamp import User, write_json_atomic, write_outputs
from cdcda_fl.data.tasks import parse_task_list
from cdcda_fl.metrics import LOWER_IS_BETTER, PredictionMismatchError, primary_metric, score
from cdcda_fl.stats import task_intervals

VERSIONED_PACKAGES = ("cdcda-fl", "torch", "transformers", "peft", "flwr", "ray", "opacus", "bitsandbytes",
                      "datasets", "bm25s", "rouge-score", "gguf")


def user_key(task: str, user_id: str) -> str:
    return f"{task}/{user_id}"


_safe = safe_filename  # a user id as a file name (also the device's synthetic store: one rule)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def data_dir_of(cfg: Mapping[str, Scalar]) -> Path:
    """The data directory a run reads: the configured one, else the personas inside the run dir."""
    return Path(str(cfg["data-dir"])) if cfg["data-dir"] else Path(str(cfg["out-dir"])) / "data"


def prepare_run_dir(cfg: dict[str, Scalar]) -> dict[str, Scalar]:
    """Make paths absolute, write personas if needed and ``config.json``; return the config to ship."""
    from cdcda_fl.data.personas import write_personas

    cfg = dict(cfg)
    out = Path(str(cfg["out-dir"])).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg["out-dir"] = str(out)
    if cfg["data-dir"]:
        cfg["data-dir"] = str(Path(str(cfg["data-dir"])).expanduser().resolve())
        if not Path(str(cfg["data-dir"])).is_dir():
            raise FileNotFoundError(f"data-dir {cfg['data-dir']} does not exist")
    else:
        tasks = [t.name for t in parse_task_list(str(cfg["tasks"]))]
        missing = [t for t in tasks if not (out / "data" / t / f"{cfg['split']}_questions.json").exists()]
        if missing:
            write_personas(out / "data", users=int(cfg["users"]), tasks=missing, seed=int(cfg["seed"]),
                           splits=(str(cfg["split"]),), queries_per_user=int(cfg["personas.queries"]))
    write_simulated_consent(out, cfg)
    write_json_atomic(out / "config.json", {"config": cfg, "versions": package_versions(),
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return cfg


def write_simulated_consent(out: Path, cfg: Mapping[str, Scalar]) -> Path:
    """The simulated users' own consent file, ``devices/consent.toml`` (their shared "disk").

    Devices own their consent (cdcda_fl.privacy.consent): a simulated device reads this file as
    its owner's policy, written from the run's ``consent.*`` keys (and overrides file) so that a
    run config shares exactly what it did before. Real devices never read it.
    """
    from cdcda_fl.privacy.consent import DEVICE_POLICY_FILENAME, device_policy_values, write_device_policy

    return write_device_policy(out / "devices" / DEVICE_POLICY_FILENAME, device_policy_values(cfg))


def index_root(cfg: Mapping[str, Scalar]) -> Path:
    """Where a run keeps its data indexes (``cdcda_fl.data.index``): built once, read by every node."""
    return Path(str(cfg["out-dir"])) / "index"


def task_indexes(cfg: Mapping[str, Scalar], root: Path | None = None) -> list[TaskIndex]:
    """One validated index per task of the run (raises LampDataError for a broken file)."""
    return [task_index(data_dir_of(cfg), spec.name, str(cfg["split"]), root or index_root(cfg))
            for spec in parse_task_list(str(cfg["tasks"]))]


def user_refs(cfg: Mapping[str, Scalar], root: Path | None = None) -> list[UserRef]:
    """All valid users of the run, task-major, in a fixed order (the order nodes are assigned in).

    Only the index is read, not the users' records: cheap in every Ray worker.
    """
    max_users = int(cfg["users"]) or None
    return [ref for index in task_indexes(cfg, root) for ref in select_users(index.users, max_users)]


def load_users(cfg: Mapping[str, Scalar], refs: Sequence[UserRef], root: Path | None = None) -> list[User]:
    """The records of just these users, read by offset from the LaMP files (order kept)."""
    by_task = {index.task: index for index in task_indexes(cfg, root)}
    return [user for ref in refs for user in by_task[ref.task].load_users([ref])]


def list_users(cfg: Mapping[str, Scalar]) -> list[User]:
    """All users of the run with their records (see :func:`user_refs` for the order)."""
    return load_users(cfg, user_refs(cfg))


def data_issues(cfg: Mapping[str, Scalar]) -> list[DataIssue]:
    """Every invalid record of the run's data and the user it makes the run skip."""
    return [issue for index in task_indexes(cfg) for issue in index.issues]


class RunDataError(ValueError):
    """``data.strict=true`` and some records are invalid: the message lists them (bounded)."""


def describe_issues(issues: Sequence[DataIssue], limit: int = 10) -> str:
    lines = [f"  {i.message}" + (f" -> skipping user {i.task}/{i.user}" if i.user else "") for i in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more (all in failures.jsonl)")
    return "\n".join(lines)


def unknown_consent_users(cfg: Mapping[str, Scalar]) -> list[str]:
    """User ids that the run's consent overrides name but no task of the run holds (typos).

    Such a table would silently fall back to ``[default]``; the run names them instead.
    """
    path = Path(str(cfg["out-dir"])) / "devices" / "consent.toml"
    if not path.is_file():
        return []
    from cdcda_fl.privacy.consent import load_device_policy

    return load_device_policy(path).unknown_users(ref.user_id for ref in user_refs(cfg))


def check_run_data(cfg: Mapping[str, Scalar]) -> list[DataIssue]:
    """Validate every data file of the run before anything runs.

    Invalid records make the run skip their users, each reported once in ``failures.jsonl``
    (phase ``data``, the file, and a message naming record and field); with ``data.strict`` the
    run is refused instead (RunDataError). A broken file as a whole raises LampDataError.
    """
    issues = data_issues(cfg)
    if issues and cfg["data.strict"]:
        raise RunDataError(f"{len(issues)} invalid record(s) and data.strict=true, so the run is refused "
                           f"(drop data.strict to skip these users):\n{describe_issues(issues)}")
    store = ResultStore(cfg["out-dir"])
    known = {(f.get("who"), f.get("reason")) for f in store.failures() if f.get("phase") == "data"}
    for issue in issues:
        who = user_key(issue.task, issue.user) if issue.user else f"{issue.task} (record of no known user)"
        if (who, issue.message) not in known:
            store.record_failure(who, issue.message, phase="data", file=issue.file)
    return issues


class ResultStore:
    """Per-user result files under ``out/users``; presence of a file means the user is finished."""

    def __init__(self, out_dir: Path | str):
        self.root = Path(out_dir)

    def path(self, task: str, user_id: str) -> Path:
        """``users/<task>/<user>.json``; ``task`` must be a registered task (replies come from
        untrusted nodes: a ``task`` of ``../../x`` must never choose where the server writes)."""
        from cdcda_fl.data.tasks import TASKS

        if str(task) not in TASKS:
            raise ValueError(f"unknown task {str(task)[:40]!r} in a result")
        path = self.root / "users" / str(task) / f"{_safe(str(user_id))}.json"
        if not path.resolve().is_relative_to((self.root / "users").resolve()):
            raise ValueError(f"result path for user {str(user_id)[:40]!r} leaves the run directory")
        return path

    def done(self, task: str, user_id: str) -> bool:
        return self.path(task, user_id).is_file()

    def write(self, result: Mapping[str, Any]) -> None:
        write_json_atomic(self.path(result["task"], result["user_id"]), dict(result), indent=None)

    def record_failure(self, who: str, reason: str, **extra: Any) -> None:
        line = json.dumps({"who": who, "reason": reason, "time": time.time(), **extra}) + "\n"
        with (self.root / "failures.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def failures(self) -> list[dict[str, Any]]:
        path = self.root / "failures.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def iter_results(self, task: str) -> Iterator[dict[str, Any]]:
        folder = self.root / "users" / task
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            yield json.loads(path.read_text(encoding="utf-8"))


@dataclass
class MethodSummary:
    task: str
    method: str
    metrics: dict[str, float]
    n_users: int
    n_queries: int
    epsilon: float | None
    mia_auc: float | None
    train_seconds: float
    n_synthetic: float
    train_steps: float = 0.0  # optimizer steps per user (CDCDA's budget differs with equal real exposure)


#: paired differences results.json reports per task (when both methods were scored)
PAIRS = (("cdcda", "local"), ("cdcda", "fedavg+local"))


def aggregate(cfg: Mapping[str, Scalar], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read all user results, write LaMP-format predictions, ``results.json`` and ``summary.csv``.

    ``extra`` (e.g. the run's phase timings) is stored in results.json as given.
    """
    out = Path(str(cfg["out-dir"]))
    store = ResultStore(out)
    methods = csv_list(cfg["methods"])
    summaries: list[MethodSummary] = []
    skipped: dict[str, str] = {}
    users_per_task: dict[str, int] = {}
    intervals: dict[str, Any] = {}  # per task: 95 % intervals over users (cdcda_fl.stats.task_intervals)
    problems: list[dict[str, str]] = []  # method rows that could not be scored, and why
    per_user_entries: dict[str, dict[str, dict[str, Any]]] = {}  # task -> user -> cloud, decision, metrics
    for spec in parse_task_list(str(cfg["tasks"])):
        primary = primary_metric(spec)
        per_user: dict[str, dict[str, tuple[float, float]]] = {}  # method -> user -> (value, n queries)
        golds: dict[str, str] = {}
        preds: dict[str, dict[str, str]] = {m: {} for m in methods}
        eps: dict[str, list[float]] = {m: [] for m in methods}
        mia: dict[str, list[float]] = {m: [] for m in methods}
        secs: dict[str, list[float]] = {m: [] for m in methods}
        steps: dict[str, list[float]] = {m: [] for m in methods}
        n_syn: list[int] = []
        user_metrics: dict[str, list[tuple[dict[str, float], float]]] = {m: [] for m in methods}
        metrics_only: dict[str, int] = {m: 0 for m in methods}  # users who reported metrics, no predictions
        n_users = 0
        task_users = per_user_entries.setdefault(spec.name, {})
        for result in store.iter_results(spec.name):
            n_users += 1
            task_users[str(result["user_id"])] = user_entry(result)
            golds.update(result.get("golds") or {})  # absent under eval.report=metrics|none
            n_syn.append(int(result.get("n_synthetic_used", 0)))
            for m in methods:
                entry = (result.get("methods") or {}).get(m, {})
                if entry.get("metrics"):
                    n_q = float(len(entry.get("predictions") or {}) or result.get("n_queries") or 1)
                    user_metrics[m].append((entry["metrics"], n_q))
                    metrics_only[m] += "predictions" not in entry
                if "skipped" in entry:
                    skipped[m] = entry["skipped"]
                preds[m].update(entry.get("predictions", {}))
                if entry.get("metrics", {}).get(primary) is not None:  # works without predictions too
                    per_user.setdefault(m, {})[str(result["user_id"])] = (
                        float(entry["metrics"][primary]), float(len(result.get("golds") or {}) or result.get("n_queries") or 1))
                if entry.get("epsilon") is not None:
                    eps[m].append(float(entry["epsilon"]))
                if entry.get("mia_auc") is not None:
                    mia[m].append(float(entry["mia_auc"]))
                if "train" in entry:  # federated rows: the shared adapter's rounds × local steps count too
                    secs[m].append(float(entry["train"].get("seconds", 0.0)))
                    steps[m].append(float(entry["train"].get("steps") or 0)
                                    + float(entry["train"].get("federated_steps") or 0))
        users_per_task[spec.name] = n_users
        intervals[spec.name] = task_intervals(per_user, primary, lower_is_better=primary in LOWER_IS_BETTER,
                                              seed=int(cfg.get("seed", 0)), pairs=PAIRS)
        for m in methods:
            if preds[m]:
                write_outputs(out / "predictions" / spec.name / f"{m}_outputs.json", spec.name, sorted(preds[m].items()))
            if metrics_only[m]:  # some users kept their predictions: pool everyone's per-user metrics
                from cdcda_fl.privacy.report import pool_user_metrics

                metrics = pool_user_metrics(user_metrics[m])
                n_queries = int(sum(n for _, n in user_metrics[m]))
            elif not preds[m]:
                continue
            else:
                try:
                    metrics = score(spec, {i: golds[i] for i in preds[m]}, preds[m])
                except (PredictionMismatchError, KeyError) as exc:
                    # Never a silent "–": the row is missing for a reason the report must name.
                    missing = sorted(set(preds[m]) - set(golds))[:5]
                    problems.append({"task": spec.name, "method": m, "error": type(exc).__name__,
                                     "detail": f"predictions without golds: {missing}" if missing else str(exc)})
                    continue
                n_queries = len(preds[m])
            summaries.append(MethodSummary(
                spec.name, m, metrics, n_users, n_queries,
                max(eps[m]) if eps[m] else None, sum(mia[m]) / len(mia[m]) if mia[m] else None,
                sum(secs[m]) / len(secs[m]) if secs[m] else 0.0,
                sum(n_syn) / len(n_syn) if (n_syn and m in ("cdcda", "cdcda+fedavg")) else 0.0,
                sum(steps[m]) / len(steps[m]) if steps[m] else 0.0))
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
    from cdcda_fl.privacy.audit_log import read_audit

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
                     "mia_auc", "train_seconds_per_user", "synthetic_per_user"])
    for s in summaries:
        for name, value in s.metrics.items():
            writer.writerow([s.task, s.method, name, f"{value:.6f}", name not in LOWER_IS_BETTER, s.n_users,
                             s.n_queries, "" if s.epsilon is None else f"{s.epsilon:.4f}",
                             "" if s.mia_auc is None else f"{s.mia_auc:.4f}", f"{s.train_seconds:.2f}",
                             f"{s.n_synthetic:.1f}"])
    write_text_atomic(path, buffer.getvalue())

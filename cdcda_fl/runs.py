"""The run directory: its data, its per-user results (streamed to disk, resumable) and its reports.

Layout of ``out-dir``::

    config.json            the exact resolved config, seed, package versions
    data/                  seeded personas (when no data-dir was given)
    audit.jsonl            every record that left a device, per user (what, which fields, bytes)
    users/<task>/<user>.json   one finished user's result (written atomically; a rerun skips it)
    failures.jsonl         users/nodes that failed, with the reason
    devices/               the simulated devices' own disks (private adapters; never uploaded)
    predictions/<task>/<method>_outputs.json   LaMP-format predictions
    results.json, summary.csv, plots/*.png       the report

Results are written per user as they arrive, so the server holds no per-user state beyond what
the final report needs, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cdcda_fl.config import Scalar, csv_list
from cdcda_fl.data.lamp import User, load_task_users, write_json_atomic, write_outputs
from cdcda_fl.data.tasks import parse_task_list
from cdcda_fl.metrics import LOWER_IS_BETTER, PredictionMismatchError, primary_metric, score
from cdcda_fl.stats import task_intervals

VERSIONED_PACKAGES = ("cdcda-fl", "torch", "transformers", "peft", "flwr", "ray", "opacus", "bitsandbytes",
                      "datasets", "bm25s", "rouge-score", "gguf")


def user_key(task: str, user_id: str) -> str:
    return f"{task}/{user_id}"


def _safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


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
    write_json_atomic(out / "config.json", {"config": cfg, "versions": package_versions(),
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return cfg


def list_users(cfg: Mapping[str, Scalar]) -> list[User]:
    """All users of the run, task-major, in a fixed order (the order nodes are assigned in)."""
    users: list[User] = []
    for spec in parse_task_list(str(cfg["tasks"])):
        users += load_task_users(data_dir_of(cfg), spec.name, str(cfg["split"]), max_users=int(cfg["users"]) or None)
    return users


class ResultStore:
    """Per-user result files under ``out/users``; presence of a file means the user is finished."""

    def __init__(self, out_dir: Path | str):
        self.root = Path(out_dir)

    def path(self, task: str, user_id: str) -> Path:
        return self.root / "users" / task / f"{_safe(user_id)}.json"

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
    for spec in parse_task_list(str(cfg["tasks"])):
        primary = primary_metric(spec)
        per_user: dict[str, dict[str, tuple[float, float]]] = {}  # method -> user -> (value, n queries)
        golds: dict[str, str] = {}
        preds: dict[str, dict[str, str]] = {m: {} for m in methods}
        eps: dict[str, list[float]] = {m: [] for m in methods}
        mia: dict[str, list[float]] = {m: [] for m in methods}
        secs: dict[str, list[float]] = {m: [] for m in methods}
        n_syn: list[int] = []
        n_users = 0
        for result in store.iter_results(spec.name):
            n_users += 1
            golds.update(result["golds"])
            n_syn.append(int(result.get("n_synthetic_used", 0)))
            for m in methods:
                entry = result["methods"].get(m, {})
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
                if "train" in entry:
                    secs[m].append(float(entry["train"].get("seconds", 0.0)))
        users_per_task[spec.name] = n_users
        intervals[spec.name] = task_intervals(per_user, primary, lower_is_better=primary in LOWER_IS_BETTER,
                                              seed=int(cfg.get("seed", 0)))
        for m in methods:
            if not preds[m]:
                continue
            write_outputs(out / "predictions" / spec.name / f"{m}_outputs.json", spec.name, sorted(preds[m].items()))
            try:
                metrics = score(spec, {i: golds[i] for i in preds[m]}, preds[m])
            except (PredictionMismatchError, KeyError):
                continue
            summaries.append(MethodSummary(
                spec.name, m, metrics, n_users, len(preds[m]),
                max(eps[m]) if eps[m] else None, sum(mia[m]) / len(mia[m]) if mia[m] else None,
                sum(secs[m]) / len(secs[m]) if secs[m] else 0.0,
                sum(n_syn) / len(n_syn) if (n_syn and m == "cdcda") else 0.0))
    results = {
        "config": dict(cfg),
        "versions": package_versions(),
        "users": users_per_task,
        "table": [s.__dict__ for s in summaries],
        "intervals": intervals,
        "skipped": skipped,
        "failures": store.failures(),
        "shared": audit_totals(out),
        **dict(extra or {}),
    }
    write_json_atomic(out / "results.json", results)
    _write_summary_csv(out / "summary.csv", summaries)
    return results


def audit_totals(out_dir: Path | str) -> dict[str, dict[str, int]]:
    """What left the devices, per task, from ``audit.jsonl``: the privacy cost a report sets against utility.

    A rerun (resume) shares again and appends new lines, so ``records``/``bytes``/``users`` count
    each user's *latest* share once (what the cloud holds of that user for this run), while
    ``requests``/``bytes_sent`` count every line (what actually crossed the network, reruns included).
    """
    from cdcda_fl.privacy.audit_log import read_audit

    latest: dict[tuple[str, str], dict[str, Any]] = {}
    totals: dict[str, dict[str, int]] = {}
    for line in read_audit(Path(out_dir) / "audit.jsonl"):
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
        t["records_total"] += int(line.get("n_total", 0))
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
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)

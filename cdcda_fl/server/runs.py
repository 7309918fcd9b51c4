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
    results.json, summary.csv, plots/*.png       the report (cdcda_fl/server/aggregate.py; ``per_user``: each user's
                           cloud accounting, device decision and metrics; ``cloud``: their sums per task)

Results are written per user as they arrive, so the server holds no per-user state beyond what
the final report needs, and an interrupted run resumes where it stopped. Nothing the run writes
may be a symbolic link (:func:`check_run_dir`, ``ResultStore.path``; appends use ``O_NOFOLLOW``).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import UnsafePathError, append_text, refuse_symlinks, safe_filename
from cdcda_fl.core.config import ConfigError, Scalar, config_mismatch
from cdcda_fl.data.index import DataIssue
from cdcda_fl.data.lamp import write_json_atomic
from cdcda_fl.data.multitask_personas import write_multitask_personas
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.run_data import data_issues, user_key, user_refs
from cdcda_fl.data.tasks import TASKS, parse_task_list
from cdcda_fl.privacy.consent import DEVICE_POLICY_FILENAME
from cdcda_fl.privacy.policy_file import (
    load_device_policy,
    owners_policy_file,
    simulated_policy_tables,
    write_device_policy,
)
from cdcda_fl.core.run_config import run_config

VERSIONED_PACKAGES = ("cdcda-fl", "torch", "transformers", "peft", "flwr", "ray", "opacus", "bitsandbytes",
                      "datasets", "bm25s", "rouge-score", "gguf")


_safe = safe_filename  # a user id as a file name (also the device's synthetic store: one rule)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def prepare_run_dir(cfg: dict[str, Scalar]) -> dict[str, Scalar]:
    """Make paths absolute, write personas if needed and ``config.json``; return the config to ship."""
    cfg = dict(cfg)
    rc = run_config(cfg)
    out = Path(rc.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_run_dir(out)
    cfg["out-dir"] = str(out)
    check_resumable(out, cfg)
    if rc.data_dir:
        cfg["data-dir"] = str(Path(rc.data_dir).expanduser().resolve())
        if not Path(rc.data_dir).is_dir():
            raise FileNotFoundError(f"data-dir {rc.data_dir} does not exist")
    else:
        tasks = [t.name for t in parse_task_list(rc.tasks)]
        missing = [t for t in tasks if not (out / "data" / t / f"{rc.split}_questions.json").exists()]
        if missing and rc.personas.multitask:  # one person across tasks: written together
            write_multitask_personas(out / "data", users=rc.users, tasks=tasks, seed=rc.seed,
                                     splits=(rc.split,), queries_per_user=rc.personas.queries)
        elif missing:
            write_personas(out / "data", users=rc.users, tasks=missing, seed=rc.seed,
                           splits=(rc.split,), queries_per_user=rc.personas.queries)
    write_simulated_consent(out, cfg)
    write_json_atomic(out / "config.json", {"config": cfg, "versions": package_versions(),
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return cfg


class OtherRunInDir(ConfigError):
    """The out-dir holds finished users of a run with another configuration; resuming would mix them."""


def check_resumable(out: Path, cfg: Mapping[str, Scalar]) -> None:
    """Refuse to resume into a run dir whose finished users came from another configuration.

    Why: a rerun resumes by skipping users with a result on disk; with another writer or another
    method list those users' stale results were reported as the new run's (found with the lab,
    issue 34). Keys that do not change results (paths, waits, ``sim.*``: config.VOLATILE_KEYS)
    may differ.
    """
    stored_file = out / "config.json"
    users = out / "users"
    if not stored_file.is_file() or not users.is_dir() or not any(users.rglob("*.json")):
        return
    try:
        stored = json.loads(stored_file.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return  # an unreadable config.json is overwritten below; results are keyed per user anyway
    diff = config_mismatch(stored, cfg)
    if diff:
        shown = ", ".join(f"{k}: {stored[k]!r} -> {cfg[k]!r}" for k in diff[:6]) + (" ..." if len(diff) > 6 else "")
        raise OtherRunInDir(f"{out} holds finished users of a run with another configuration ({shown}); a rerun "
                            f"there would report their old results as new: choose another out-dir (--out DIR or "
                            f"--set out-dir=DIR) or remove {out}")


# What a run writes inside its out-dir; none of it may be a symbolic link (issue 29.10).
RUN_ENTRIES = ("users", "predictions", "plots", "devices", "audit.jsonl", "failures.jsonl", "results.json",
               "summary.csv", "table.md", "config.json")


def check_run_dir(out: Path | str) -> None:
    """Refuse a run dir in which something the run writes is a symbolic link (UnsafePathError).

    Why: a planted ``users`` link put every result outside the run dir; a ``failures.jsonl`` link
    made the server append to a file of the attacker's choosing.
    """
    out = Path(out)
    for name in RUN_ENTRIES:
        if (out / name).is_symlink():
            raise UnsafePathError(f"{out / name} is a symbolic link: a run's files and folders must be real ones "
                                  f"inside its out-dir (remove the link)")


def write_simulated_consent(out: Path, cfg: Mapping[str, Scalar]) -> Path:
    """The simulated users' own consent file, ``devices/consent.toml`` (their shared "disk").

    Devices own their consent (cdcda_fl.privacy.consent): a simulated device reads this file as
    its owner's policy, written from the run's ``consent.*`` keys (and overrides file) and, when
    the data dir holds its owners' ``consent.toml``, the most restrictive combination of the two
    (privacy/policy_file.py): simulating real owners never shares what they did not consent to.
    Real devices never read it.
    """
    tables = simulated_policy_tables(cfg, owners_policy_file(run_config(cfg).data_dir))
    return write_device_policy(out / "devices" / DEVICE_POLICY_FILENAME, tables)


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
    path = Path(run_config(cfg).out_dir) / "devices" / "consent.toml"
    if not path.is_file():
        return []
    return load_device_policy(path).unknown_users(ref.user_id for ref in user_refs(cfg))


def check_run_data(cfg: Mapping[str, Scalar]) -> list[DataIssue]:
    """Validate every data file of the run before anything runs.

    Invalid records make the run skip their users, each reported once in ``failures.jsonl``
    (phase ``data``, the file, and a message naming record and field); with ``data.strict`` the
    run is refused instead (RunDataError). A broken file as a whole raises LampDataError.
    """
    rc = run_config(cfg)
    issues = data_issues(cfg)
    if issues and rc.data.strict:
        raise RunDataError(f"{len(issues)} invalid record(s) and data.strict=true, so the run is refused "
                           f"(drop data.strict to skip these users):\n{describe_issues(issues)}")
    store = ResultStore(rc.out_dir)
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
        if str(task) not in TASKS:
            raise ValueError(f"unknown task {str(task)[:40]!r} in a result")
        path = refuse_symlinks(self.root, self.root / "users" / str(task) / f"{_safe(str(user_id))}.json")
        if not path.resolve().is_relative_to((self.root / "users").resolve()):
            raise ValueError(f"result path for user {str(user_id)[:40]!r} leaves the run directory")
        return path  # (a linked users/ or users/<task>/ was refused above, not followed)

    def done(self, task: str, user_id: str) -> bool:
        return self.path(task, user_id).is_file()

    def write(self, result: Mapping[str, Any]) -> None:
        write_json_atomic(self.path(result["task"], result["user_id"]), dict(result), indent=None)

    def record_failure(self, who: str, reason: str, **extra: Any) -> None:
        """One line of ``failures.jsonl`` (appended without following a link, fsynced)."""
        line = json.dumps({"who": who, "reason": reason, "time": time.time(), **extra}) + "\n"
        append_text(self.root / "failures.jsonl", line, fsync=True)

    def failures(self) -> list[dict[str, Any]]:
        path = self.root / "failures.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def iter_results(self, task: str) -> Iterator[dict[str, Any]]:
        folder = refuse_symlinks(self.root, self.root / "users" / task / "*.json").parent
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            yield json.loads(path.read_text(encoding="utf-8"))

"""What a device node does, without Flower: which users it serves, where its own files are,
what it shares under its owner's consent, and what it reports after personalizing.

``clients/device.py`` is the Flower ClientApp that adapts messages to these functions; here
they take the node's ``node_config``, the run config the message carried (a
:class:`~cdcda_fl.config.ReceivedConfig`) and the decoded request, and return the reply's
payload, so the whole device side is testable without a federation.

Consent belongs to the device owner: the policy comes from the device's own disk
(:func:`policy_path`), never from the server's message, whose ``consent.*`` keys can only make it
stricter. No policy file = share nothing. Every reply is appended to the device's own audit log
(:func:`device_home`/``audit.jsonl``) before it is sent, and errors leave as generic codes (the
full text goes to the device's ``errors.jsonl``).

Which users a node serves comes from its ``node_config``:
- simulation: ``partition-id`` p of ``num-partitions`` N serves users p, p+N, … of the run's user
  list (one user per node when N equals the number of users);
- real device: ``data-dir`` (the device's own LaMP files), optional ``user-id`` to serve one user
  of them, optional ``storage-dir`` for the private adapters (and its audit log), optional
  ``consent-file`` (default ``<data-dir>/consent.toml``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from cdcda_fl.config import Scalar, csv_list
from cdcda_fl.data.index import UserRef
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.personalize import personalize_users
from cdcda_fl.privacy.audit_log import AuditLog
from cdcda_fl.privacy.consent import (
    DEVICE_POLICY_FILENAME,
    ConsentPolicy,
    DevicePolicy,
    load_device_policy,
    share_nothing,
)
from cdcda_fl.privacy.report import effective_level, filter_result, generic_error
from cdcda_fl.runs import load_users, user_key, user_refs


@lru_cache(maxsize=8)
def _users_cached(frozen_cfg: tuple[tuple[str, Scalar], ...], root: str | None) -> tuple[UserRef, ...]:
    """The run's user list from its on-disk index, read once per worker process.

    Only the index (ids, history sizes, byte offsets) is cached, never the users' records, so a
    Ray actor serving many nodes holds memory that does not grow with the data set.
    """
    return tuple(user_refs(dict(frozen_cfg), Path(root) if root else None))


def _device_refs(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]
                 ) -> tuple[dict[str, Scalar], tuple[UserRef, ...], str | None]:
    """(config keys that locate the data, every user of the data, index root) for this node.

    A real device indexes its own files under its own home (:func:`device_home`), never under a
    directory the server named.
    """
    cfg = dict(cfg)
    root = None
    if is_real_device(node_config):
        cfg["data-dir"] = str(node_config["data-dir"])
        root = str(device_home(node_config, cfg) / "index")
    keys = ("data-dir", "out-dir", "tasks", "split", "users")
    frozen = tuple((k, cfg[k]) for k in keys)
    return dict(frozen), _users_cached(frozen, root), root


def hosted_users(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> list[User]:
    """The users this node serves (see module docstring), read from disk by offset."""
    located, refs, root = _device_refs(node_config, cfg)
    if "user-id" in node_config:
        refs = tuple(r for r in refs if r.user_id == str(node_config["user-id"]))
    elif "partition-id" in node_config:
        p, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
        refs = refs[p::n]
    return load_users(located, list(refs), Path(root) if root else None)


def storage_dir(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    """Where the private adapters live: the device's own choice on a real device."""
    if "storage-dir" in node_config or is_real_device(node_config):
        return device_home(node_config, cfg)
    if cfg["device.storage-dir"]:
        return Path(str(cfg["device.storage-dir"]))
    return Path(str(cfg["out-dir"])) / "devices"


def is_real_device(node_config: Mapping[str, Any]) -> bool:
    """A SuperNode with its own files (``data-dir`` in its node config), not a simulated user."""
    return "data-dir" in node_config


def device_home(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    """Where the device keeps its own records (audit log, error log).

    Real device: its ``storage-dir``, else ``<data-dir>/.cdcda`` -- never a path from the server.
    Simulation: the run's ``devices/`` folder, the simulated devices' shared disk.
    """
    if "storage-dir" in node_config:
        return Path(str(node_config["storage-dir"]))
    if is_real_device(node_config):
        return Path(str(node_config["data-dir"])) / ".cdcda"
    return Path(str(cfg["out-dir"])) / "devices"


def policy_path(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    """The owner's consent file: node config ``consent-file``, else ``consent.toml`` at the root of
    the device's data dir; simulated devices read the one the run wrote into ``devices/``."""
    if "consent-file" in node_config:
        return Path(str(node_config["consent-file"])).expanduser()
    if is_real_device(node_config):
        return Path(str(node_config["data-dir"])) / DEVICE_POLICY_FILENAME
    return Path(str(cfg["out-dir"])) / "devices" / DEVICE_POLICY_FILENAME


def _own_policy(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> DevicePolicy | None:
    path = policy_path(node_config, cfg)
    return load_device_policy(path) if path.is_file() else None


def _log_error(home: Path, where: str, exc: BaseException) -> None:
    """The full error stays on the device (its owner may read it; the server gets a code)."""
    line = {"time": time.time(), "where": where, "error": f"{type(exc).__name__}: {exc}"}
    try:
        home.mkdir(parents=True, exist_ok=True)
        with (home / "errors.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    except OSError:  # an unwritable home must not turn into a reply that names its path
        print(f"cdcda device error ({where}): {line['error']}", file=sys.stderr)


class InjectedCrash(RuntimeError):
    """``debug.crash-users``: the ClientApp fails as a crashing device would (Flower reports it)."""


def _crash_check(users: list[User], cfg: Mapping[str, Scalar]) -> None:
    """Fault injection for tests and drills: the whole ClientApp fails for these users."""
    crash = set(csv_list(cfg["debug.crash-users"]))
    hit = [u.user_id for u in users if u.user_id in crash]
    if hit:
        raise InjectedCrash(f"injected crash (debug.crash-users) for {hit}")


def _home_or_default(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None) -> Path:
    try:
        return device_home(node_config, cfg if cfg is not None else {})
    except Exception:  # noqa: BLE001 - no usable home: still reply (and audit) somewhere
        return Path(".cdcda-device")


def error_reply(kind: str, node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None,
                exc: BaseException) -> dict[str, Any]:
    """The payload of a node that failed as a whole: the full error on the device, a code in the reply."""
    _log_error(_home_or_default(node_config, cfg), kind, exc)
    if kind == "share":
        return {"users": [], "shares": [], "errors": [{"user": "*", "reason": generic_error(exc)}]}
    if kind == "fedavg":
        return {"error": generic_error(exc)}
    return {"results": [{"user_id": "*", "task": "*", "error": generic_error(exc)}]}


def audit_reply(kind: str, node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None,
                payload: dict[str, Any]) -> dict[str, Any]:
    """Append the whole reply of one message to the device's audit log (kind ``reply``) and return it.

    Why: the per-user lines (``share``, ``result``) say what each user's part of a reply holds; this
    line makes "every byte that leaves is in the audit log" literal for the rest: the hosted-user
    list and error codes of a share reply, and a node-level error reply (generic code, user
    ``"*"``), which before 2026-12-04 left without a line. Its ``bytes``/``sha256`` are those of the
    payload's canonical JSON, the same measure as the per-user lines. A failing audit write is
    logged on the device and does not stop the reply (which then is only codes and already-audited
    parts).
    """
    home = _home_or_default(node_config, cfg)
    try:
        AuditLog(home / "audit.jsonl").record_payload("reply", "*", "*", payload, destination="server",
                                                      request=kind)
    except Exception as exc:  # noqa: BLE001 - see above
        _log_error(home, f"audit {kind} reply", exc)
    return payload


def _warn_unknown_users(own: DevicePolicy | None, node_config: Mapping[str, Any], cfg: Mapping[str, Scalar],
                        home: Path) -> None:
    """A real device's consent file naming users it does not hold is a typo its owner must see
    (on the device: the server never learns it)."""
    if own is None or not is_real_device(node_config):
        return
    unknown = own.unknown_users(r.user_id for r in _device_refs(node_config, cfg)[1])
    if unknown:
        warning = (f"{policy_path(node_config, cfg)} has tables for user(s) this device does not hold: "
                   f"{unknown[:10]} (misspelled? they fall back to [default])")
        print(f"cdcda device warning: {warning}", file=sys.stderr)
        _log_error(home, "consent", UserWarning(warning))


def share(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar], request: Mapping[str, Any]) -> dict[str, Any]:
    """Each hosted user's records under the owner's policy, made stricter by the server's keys."""
    home = device_home(node_config, cfg)
    try:
        users = hosted_users(node_config, cfg)
        own = _own_policy(node_config, cfg)
        ceiling = ConsentPolicy.ceiling_from_config(cfg)
    except Exception as exc:  # the whole node cannot share: say so without the private details
        return error_reply("share", node_config, cfg, exc)
    _warn_unknown_users(own, node_config, cfg, home)
    audit = AuditLog(home / "audit.jsonl")
    shares, errors = [], []
    for user in users:
        if not request.get("share", True):
            continue
        try:
            policy = own.policy_for(user.user_id) if own is not None else share_nothing()
            shared = policy.stricter(ceiling).apply(get_task(user.task), user.user_id, user.profile)
            audit.record(shared, destination="server", request="share", local=True)
            shares.append(shared.to_dict())
        except Exception as exc:  # one user's bad consent file must not silence the others
            _log_error(home, f"share {user_key(user.task, user.user_id)}", exc)
            errors.append({"user": user_key(user.task, user.user_id), "reason": generic_error(exc)})
    hosted = [user_key(u.task, u.user_id) for u in users]
    return {"users": hosted, "shares": shares, "errors": errors}


def _global_adapters(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar], meta: Mapping[str, Any],
                     arrays: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The global adapters a personalize message carried, checked and kept on the device's disk."""
    from cdcda_fl.device.federated import store_global

    return {str(task): store_global(None, cfg, storage_dir(node_config, cfg), str(task), info, arrays.get(task))
            for task, info in meta.items()}


def personalize(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar],
                request: Mapping[str, Any], arrays: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Train and answer per user; reply with what the report level allows (see cdcda_fl.privacy.report).

    ``arrays``: task -> the FedAvg global adapter's arrays the message carried (``request["global"]``
    names their SHA-256, rounds and steps), for the federated methods.
    """
    home = device_home(node_config, cfg)
    real = is_real_device(node_config)
    targets: dict[str, list[dict[str, Any]]] = request["synthetic"]
    try:
        users = [u for u in hosted_users(node_config, cfg) if user_key(u.task, u.user_id) in targets]
        own = _own_policy(node_config, cfg)
        global_adapters = _global_adapters(node_config, cfg, request.get("global") or {}, arrays or {})
    except Exception as exc:
        return error_reply("personalize", node_config, cfg, exc)
    _crash_check(users, cfg)
    audit = AuditLog(home / "audit.jsonl")
    results = []
    jobs = [(u, targets[user_key(u.task, u.user_id)]) for u in users]
    try:  # all hosted users together: their answers share mixed-adapter batches
        outcomes = personalize_users(jobs, cfg, storage_dir=storage_dir(node_config, cfg),
                                     global_adapters=global_adapters)
    except Exception as exc:  # the node cannot personalize at all (e.g. its model does not load)
        outcomes = [exc] * len(users)
    for user, outcome in zip(users, outcomes):
        key = user_key(user.task, user.user_id)
        try:
            if isinstance(outcome, Exception):
                raise outcome
            level = effective_level(cfg["eval.report"], own.report_for(user.user_id) if own else None, real_device=real)
            result = filter_result(outcome, level)
        except Exception as exc:  # reported per user; the node goes on with its other users
            _log_error(home, f"personalize {key}", exc)
            result = {"user_id": user.user_id, "task": user.task, "error": generic_error(exc)}
        audit.record_payload("result", user.user_id, user.task, result, destination="server",
                             report=result.get("report", "error"))
        results.append(result)
    return {"results": results}


# ---------------------------------------------------------------------- FedAvg rounds (issue 31)
def fedavg_round(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar], task: str, server_round: int,
                 arrays: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """One FedAvg round on this node: (updated adapter arrays, counts, the users who trained).

    The node's users of ``task`` train the global adapter on their real records
    (device/federated.py). What leaves is the arrays and the record count FedAvg weighs them by,
    nothing else: the training loss stays in the device's error-free log below.
    """
    from cdcda_fl.device.federated import local_round

    users = [u for u in hosted_users(node_config, cfg) if u.task == task]
    _crash_check(users, cfg)
    if not users:
        raise ValueError(f"this node holds no user of {task}")
    home = device_home(node_config, cfg)
    updated, n, loss = local_round(users, cfg, arrays, server_round, storage_dir(node_config, cfg))
    _log_fedavg(home, {"task": task, "round": server_round, "users": len(users), "num-examples": n, "loss": loss})
    return updated, {"num-examples": n}, [u.user_id for u in users]


def _log_fedavg(home: Path, line: Mapping[str, Any]) -> None:
    """The round's local facts (loss included) stay on the device, for its owner."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / "fedavg.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": time.time(), **line}) + "\n")


def audit_update(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None, task: str, users: list[str],
                 parts: list[tuple[str, bytes]], counts: Mapping[str, int], server_round: int) -> dict[str, Any]:
    """Append a FedAvg reply to the device's audit log: bytes and SHA-256 of exactly what is sent.

    ``parts`` are the serialized arrays as they travel (name, bytes) and ``counts`` the metric
    record; the hash covers names, bytes and the counts' canonical JSON, in name order.
    """
    import hashlib

    from cdcda_fl.privacy.audit_log import canonical_json

    digest = hashlib.sha256()
    total = 0
    for name, blob in sorted(parts):
        digest.update(name.encode())
        digest.update(blob)
        total += len(blob)
    metrics = canonical_json(dict(counts))
    digest.update(metrics)
    home = _home_or_default(node_config, cfg)
    return AuditLog(home / "audit.jsonl").record_bytes(
        "update", "*", task, n_bytes=total + len(metrics), sha256=digest.hexdigest(),
        fields=["arrays", *(f"metrics.{k}" for k in counts)], destination="server", request="fedavg",
        round=int(server_round), users=list(users), n_arrays=len(parts))

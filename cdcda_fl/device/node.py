"""What a device node does, without Flower: which users it serves, where its own files are,
what it shares under its owner's consent, and what it reports after personalizing.

``clients/device.py`` is the Flower ClientApp that adapts messages to these functions; here
they take the node's ``node_config``, the run config the message carried (a
:class:`~cdcda_fl.core.config.ReceivedConfig`) and the decoded request, and return the reply's
payload, so the whole device side is testable without a federation.

Consent belongs to the device owner: the policy comes from the device's own disk
(:func:`policy_path`), never from the server's message, whose ``consent.*`` keys can only make it
stricter. No policy file = share nothing. Every reply is appended to the device's own audit log
(:func:`device_home`/``audit.jsonl``) before it is sent, and errors leave as generic codes (the
full text goes to the device's ``errors.jsonl``).

Which users a node serves comes from its ``node_config``:
- simulation (``SIMULATED`` set, which only the Flower adapter ``clients/device.py`` does, for the
  nodes Flower's simulation engine runs): ``partition-id`` p of ``num-partitions`` N serves users
  p, p+N, … of the run's user list (one user per node when N equals the number of users);
- real device: ``data-dir`` (the device's own LaMP files), optional ``user-id`` to serve one user
  of them, optional ``storage-dir`` for the private adapters (and its audit log), optional
  ``consent-file`` (default ``<data-dir>/consent.toml``), optional ``allowed-models`` (models
  beyond the bundled presets the server may name: :mod:`cdcda_fl.device.model_policy`).
A node that is neither refuses every message (:class:`NodeNotConfigured`): before 2026-12 a
SuperNode without ``data-dir`` ran as a simulated device, reading consent from a folder the server
named and reporting at ``predictions`` level (issue 29.3). Fault drills (``debug.crash-users``)
run only on simulated nodes (issue 29.12).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import append_text, private_dir
from cdcda_fl.core.config import Scalar, adapter_scope, csv_list
from cdcda_fl.data.index import UserRef
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.federated import store_global
from cdcda_fl.device.model_policy import enforce_owner_models
from cdcda_fl.device.personalize import personalize_users
from cdcda_fl.privacy.audit_log import AuditLog
from cdcda_fl.privacy.consent import DEVICE_POLICY_FILENAME, ConsentPolicy, SharedRecords, share_nothing
from cdcda_fl.privacy.policy_file import DevicePolicy, load_device_policy
from cdcda_fl.privacy.record_ids import device_key
from cdcda_fl.privacy.report import effective_level, filter_result, generic_error
from cdcda_fl.privacy.share_cap import cap_shared
from cdcda_fl.privacy.shared_ledger import record_shared, shared_ids
from cdcda_fl.data.run_data import load_users, node_share, user_key, user_refs
from cdcda_fl.core.run_config import run_config


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
        refs = tuple(node_share(refs, p, n, adapter_scope(cfg)))
    return load_users(located, list(refs), Path(root) if root else None)


def storage_dir(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    """Where the private adapters live: the device's own choice on a real device."""
    rc = run_config(cfg)
    if "storage-dir" in node_config or is_real_device(node_config):
        return device_home(node_config, cfg)
    if rc.device.storage_dir:
        return Path(rc.device.storage_dir)
    return Path(rc.out_dir) / "devices"


SIMULATED = "cdcda-simulated"  # node-config key set only by clients/device.py, for simulation-engine nodes


class NodeNotConfigured(RuntimeError):
    """A SuperNode without its own ``data-dir`` that is not a simulated node: it refuses to run."""


def is_real_device(node_config: Mapping[str, Any]) -> bool:
    """True for a SuperNode with its own files (``data-dir``), False for a simulated node.

    Why explicit: a real node must never fall back to simulation (server-named folders, the
    simulation's report level). Neither marker raises :class:`NodeNotConfigured`.
    """
    if "data-dir" in node_config:
        return True
    if node_config.get(SIMULATED) is True:
        return False
    raise NodeNotConfigured(
        "this SuperNode has no data-dir in its node config, so it refuses to run: a real device serves "
        "only its own files (flower-supernode --node-config 'data-dir=\"/path/to/lamp\" user-id=\"...\"')")


def device_home(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    """Where the device keeps its own records (audit log, error log).

    Real device: its ``storage-dir``, else ``<data-dir>/.cdcda`` -- never a path from the server.
    Simulation: the run's ``devices/`` folder, the simulated devices' shared disk.
    """
    real = is_real_device(node_config)  # first: an unconfigured node refuses, whatever else it names
    if "storage-dir" in node_config:
        return Path(str(node_config["storage-dir"]))
    if real:
        return Path(str(node_config["data-dir"])) / ".cdcda"
    return Path(run_config(cfg).out_dir) / "devices"


def policy_path(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    """The owner's consent file: node config ``consent-file``, else ``consent.toml`` at the root of
    the device's data dir; simulated devices read the one the run wrote into ``devices/``."""
    if "consent-file" in node_config:
        return Path(str(node_config["consent-file"])).expanduser()
    if is_real_device(node_config):
        return Path(str(node_config["data-dir"])) / DEVICE_POLICY_FILENAME
    return Path(run_config(cfg).out_dir) / "devices" / DEVICE_POLICY_FILENAME


def own_policy(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> DevicePolicy | None:
    path = policy_path(node_config, cfg)
    return load_device_policy(path) if path.is_file() else None


def _log_error(home: Path, where: str, exc: BaseException) -> None:
    """The full error stays on the device (its owner may read it; the server gets a code), in a
    0600 file of a 0700 home: the text can quote private values."""
    line = {"time": time.time(), "where": where, "error": f"{type(exc).__name__}: {exc}"}
    try:
        append_text(private_dir(home) / "errors.jsonl", json.dumps(line, ensure_ascii=False) + "\n", private=True)
    except OSError:  # an unwritable home must not turn into a reply that names its path
        print(f"cdcda device error ({where}): {line['error']}", file=sys.stderr)


class InjectedCrash(RuntimeError):
    """``debug.crash-users``: the ClientApp fails as a crashing device would (Flower reports it)."""


def crash_check(users: list[User], cfg: Mapping[str, Scalar], node_config: Mapping[str, Any],
                 home: Path) -> None:
    """Fault injection for tests and drills: the whole ClientApp fails for these users.

    Simulation only: on a real device the server's request is ignored and noted in the device's
    own error log (a server must not be able to crash its owners' devices). A simulated crash is
    audited before it is raised, since Flower's error reply carries its text to the server.
    """
    crash = set(csv_list(run_config(cfg).debug.crash_users))
    hit = [u.user_id for u in users if u.user_id in crash]
    if not hit:
        return
    if is_real_device(node_config):
        _log_error(home, "debug.crash-users", UserWarning(f"the server asked this real device to crash for {hit}: "
                                                           "ignored (drills run only in simulation)"))
        return
    message = f"injected crash (debug.crash-users) for {hit}"
    AuditLog(home / "audit.jsonl").record_payload("crash-drill", ",".join(hit), "*", {"error": message},
                                                  destination="server", request="personalize")
    raise InjectedCrash(message)


def home_or_default(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None) -> Path:
    """The device's home, else (unconfigured node, no run config) its own ``storage-dir`` or
    ``./.cdcda-device``: never a folder the server named."""
    try:
        return device_home(node_config, cfg if cfg is not None else {})
    except Exception:  # noqa: BLE001 - no usable home: still reply (and audit) somewhere
        return Path(str(node_config.get("storage-dir") or ".cdcda-device"))


def error_reply(kind: str, node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None,
                exc: BaseException) -> dict[str, Any]:
    """The payload of a node that failed as a whole: the full error on the device, a code in the reply."""
    _log_error(home_or_default(node_config, cfg), kind, exc)
    if isinstance(exc, NodeNotConfigured):  # its operator must see why on the node's console
        print(f"cdcda device: {exc}", file=sys.stderr)
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
    home = home_or_default(node_config, cfg)
    try:
        AuditLog(private_dir(home) / "audit.jsonl").record_payload("reply", "*", "*", payload, destination="server",
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


def consent_ceiling(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> ConsentPolicy | None:
    """The server's ``consent.*`` keys as a ceiling on a real device's own policy.

    A simulated device has none: its policy file was written by the run from these very keys
    (combined with the owners' file of the data dir, ``privacy/policy_file.py``), so it already is
    at most the ceiling, and applying the server's fraction again would take a fraction of a
    fraction (it caps the device's own selection: ``ConsentPolicy.select``).
    """
    return ConsentPolicy.ceiling_from_config(cfg) if is_real_device(node_config) else None


def owners_share(user: User, own: DevicePolicy | None, ceiling: ConsentPolicy | None, id_key: bytes) -> SharedRecords:
    """This user's records as they leave the device (owner's policy, none = nothing; the server's
    ceiling; the cap): the share reply sends them, ``federated = "shared"`` trains on them."""
    policy = own.policy_for(user.user_id) if own is not None else share_nothing()
    if ceiling is not None:
        policy = policy.stricter(ceiling)
    return cap_shared(policy.apply(get_task(user.task), user.user_id, user.profile, id_key=id_key))


def share(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar], request: Mapping[str, Any]) -> dict[str, Any]:
    """Each hosted user's records under the owner's policy, made stricter by the server's keys."""
    try:
        home = private_dir(device_home(node_config, cfg))
        users = hosted_users(node_config, cfg)
        own = own_policy(node_config, cfg)
        ceiling = consent_ceiling(node_config, cfg)
        id_key = device_key(home)  # records leave under opaque ids only this device can map back
    except Exception as exc:  # the whole node cannot share: say so without the private details
        return error_reply("share", node_config, cfg, exc)
    _warn_unknown_users(own, node_config, cfg, home)
    audit = AuditLog(home / "audit.jsonl")
    shares, errors = [], []
    for user in users:
        if not request.get("share", True):
            continue
        try:
            shared = owners_share(user, own, ceiling, id_key)
            audit.record(shared, destination="server", request="share", local=True)
            record_shared(home, user.task, user.user_id, shared.local_ids)  # what DP treats as seen
            shares.append(shared.to_dict())
        except Exception as exc:  # one user's bad consent file must not silence the others
            _log_error(home, f"share {user_key(user.task, user.user_id)}", exc)
            errors.append({"user": user_key(user.task, user.user_id), "reason": generic_error(exc)})
    hosted = [user_key(u.task, u.user_id) for u in users]
    return {"users": hosted, "shares": shares, "errors": errors}


def _shared_sets(home: Path, users: list[User]
                 ) -> tuple[dict[tuple[str, str], frozenset[str]], dict[tuple[str, str], Any]]:
    """Each user's records this device has shared (its ledger); an unreadable ledger fails that user only."""
    seen: dict[tuple[str, str], frozenset[str]] = {}
    failed: dict[tuple[str, str], Any] = {}
    for user in users:
        try:
            seen[(user.task, user.user_id)] = shared_ids(home, user.task, user.user_id)
        except Exception as exc:  # noqa: BLE001 - reported as this user's error
            failed[(user.task, user.user_id)] = exc
    return seen, failed


def _global_adapters(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar], meta: Mapping[str, Any],
                     arrays: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The global adapters a personalize message carried, checked and kept on the device's disk."""
    return {str(task): store_global(None, cfg, storage_dir(node_config, cfg), str(task), info, arrays.get(task))
            for task, info in meta.items()}


def _people(hosted: list[User]) -> dict[str, list[User]]:
    """user id -> every task-user of that person this device holds, in the device's order: what one
    adapter per person (``train.adapter-scope = user``) trains on, whichever tasks a message names."""
    people: dict[str, list[User]] = {}
    for user in hosted:
        people.setdefault(user.user_id, []).append(user)
    return people


def personalize(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar],
                request: Mapping[str, Any], arrays: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Train and answer per user; reply with what the report level allows (see cdcda_fl.privacy.report).

    ``arrays``: task -> the FedAvg global adapter's arrays the message carried (``request["global"]``
    names their SHA-256, rounds and steps), for the federated methods.
    """
    targets: dict[str, list[dict[str, Any]]] = request["synthetic"]
    try:
        real = is_real_device(node_config)
        home = private_dir(device_home(node_config, cfg))
        if real:  # before anything reads a server-named model path (docs: device/model_policy.py)
            enforce_owner_models(node_config, cfg, home)
        hosted = hosted_users(node_config, cfg)
        users = [u for u in hosted if user_key(u.task, u.user_id) in targets]
        people = _people(hosted) if adapter_scope(cfg) == "user" else None
        own = own_policy(node_config, cfg)
        global_adapters = _global_adapters(node_config, cfg, request.get("global") or {}, arrays or {})
    except Exception as exc:
        return error_reply("personalize", node_config, cfg, exc)
    crash_check(users, cfg, node_config, home)
    audit = AuditLog(home / "audit.jsonl")
    results = []
    seen, outcome_of = _shared_sets(home, users)
    ready = [u for u in users if (u.task, u.user_id) in seen]
    jobs = [(u, targets[user_key(u.task, u.user_id)]) for u in ready]
    try:  # all hosted users together: their answers share mixed-adapter batches
        outcomes = personalize_users(jobs, cfg, storage_dir=storage_dir(node_config, cfg), shared=seen,
                                     global_adapters=global_adapters, people=people)
    except Exception as exc:  # the node cannot personalize at all (e.g. its model does not load)
        outcomes = [exc] * len(ready)
    outcome_of.update({(u.task, u.user_id): o for u, o in zip(ready, outcomes)})
    for user in users:
        outcome = outcome_of[(user.task, user.user_id)]
        key = user_key(user.task, user.user_id)
        try:
            if isinstance(outcome, Exception):
                raise outcome
            level = effective_level(run_config(cfg).eval.report, own.report_for(user.user_id) if own else None, real_device=real)
            result = filter_result(outcome, level)
        except Exception as exc:  # reported per user; the node goes on with its other users
            _log_error(home, f"personalize {key}", exc)
            result = {"user_id": user.user_id, "task": user.task, "error": generic_error(exc)}
        audit.record_payload("result", user.user_id, user.task, result, destination="server",
                             report=result.get("report", "error"))
        results.append(result)
    return {"results": results}

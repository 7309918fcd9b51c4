"""A device node's FedAvg round (issue 31), without Flower: which of its users a round may train
on, the round itself, and the audit line of the update that leaves.

What leaves is the adapter's arrays and the record count FedAvg weighs them by; the owner's
``federated`` consent key decides which records an update may see (privacy/consent.py). The
node's other work (hosting users, sharing, personalizing) is device/node.py, whose helpers this
module uses; ``clients/device.py`` adapts Flower's messages to both.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import append_text, private_dir
from cdcda_fl.core.config import Scalar
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.federated import local_round
from cdcda_fl.device.model_policy import enforce_owner_models
from cdcda_fl.device.node import (consent_ceiling, crash_check, device_home, home_or_default, hosted_users,
                                  is_real_device, own_policy, owners_share, storage_dir)
from cdcda_fl.privacy.audit_log import AuditLog, canonical_json
from cdcda_fl.privacy.policy_file import DevicePolicy
from cdcda_fl.privacy.record_ids import device_key


def fedavg_round(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar], task: str, server_round: int,
                 arrays: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """One FedAvg round on this node: (updated adapter arrays, counts, the users who trained).

    The node's users of ``task`` train the global adapter on their real records
    (device/federated.py). What leaves is the arrays and the record count FedAvg weighs them by,
    nothing else: the training loss stays in the device's error-free log below.
    """
    home = private_dir(device_home(node_config, cfg))
    if is_real_device(node_config):  # before anything reads a server-named model path
        enforce_owner_models(node_config, cfg, home)
    users = [u for u in hosted_users(node_config, cfg) if u.task == task]
    crash_check(users, cfg, node_config, home)
    if not users:
        raise ValueError(f"this node holds no user of {task}")
    users, modes = federated_training_users(users, own_policy(node_config, cfg), node_config, cfg, home)
    if not users:
        raise FederatedNotConsented(f"no user of {task} on this node lets FedAvg train on its records ({modes})")
    updated, n, loss = local_round(users, cfg, arrays, server_round, storage_dir(node_config, cfg))
    _log_fedavg(home, {"task": task, "round": server_round, "users": len(users), "num-examples": n, "loss": loss,
                       "federated": modes})
    return updated, {"num-examples": n}, [u.user_id for u in users]


class FederatedNotConsented(RuntimeError):
    """No user of the task on this node lets a FedAvg update be computed from its records."""

    error_code = "federated_not_consented"  # what the server sees (privacy/report.py: generic_error)


def federated_training_users(users: list[User], own: DevicePolicy | None, node_config: Mapping[str, Any],
                             cfg: Mapping[str, Scalar], home: Path) -> tuple[list[User], dict[str, str]]:
    """The users as a FedAvg update may see them, under each owner's ``federated`` key.

    An update leaks what model updates leak, so the owner decides (consent.py, FEDERATED_MODES):
    ``all`` = every real record, ``shared`` = :func:`owners_share`, ``none`` = left out; silent
    owners: ``shared`` on a real device, ``all`` in simulation. Returns the users and their modes.
    """
    default = "shared" if is_real_device(node_config) else "all"
    ceiling = consent_ceiling(node_config, cfg)
    id_key = device_key(home)
    kept: list[User] = []
    modes: dict[str, str] = {}
    for user in users:
        mode = (own.federated_for(user.user_id) if own is not None else None) or default
        modes[user.user_id] = mode
        if mode == "all":
            kept.append(user)
        elif mode == "shared":
            records = list(owners_share(user, own, ceiling, id_key).records)
            try:
                usable = bool(records) and bool(get_task(user.task).profile_to_pairs(records))
            except (KeyError, TypeError, ValueError):  # the owner withholds a field training needs
                usable, modes[user.user_id] = False, "shared (no trainable record)"
            if usable:
                kept.append(replace(user, profile=records))
    return kept, modes


def _log_fedavg(home: Path, line: Mapping[str, Any]) -> None:
    """The round's local facts (loss included) stay on the device, for its owner."""
    append_text(private_dir(home) / "fedavg.jsonl", json.dumps({"time": time.time(), **line}) + "\n", private=True)


def audit_update(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar] | None, task: str, users: list[str],
                 parts: list[tuple[str, bytes]], counts: Mapping[str, int], server_round: int) -> dict[str, Any]:
    """Append a FedAvg reply to the device's audit log: bytes and SHA-256 of exactly what is sent.

    ``parts`` are the serialized arrays as they travel (name, bytes) and ``counts`` the metric
    record; the hash covers names, bytes and the counts' canonical JSON, in name order.
    """
    digest = hashlib.sha256()
    total = 0
    for name, blob in sorted(parts):
        digest.update(name.encode())
        digest.update(blob)
        total += len(blob)
    metrics = canonical_json(dict(counts))
    digest.update(metrics)
    home = home_or_default(node_config, cfg)
    return AuditLog(home / "audit.jsonl").record_bytes(
        "update", "*", task, n_bytes=total + len(metrics), sha256=digest.hexdigest(),
        fields=["arrays", *(f"metrics.{k}" for k in counts)], destination="server", request="fedavg",
        round=int(server_round), users=list(users), n_arrays=len(parts))

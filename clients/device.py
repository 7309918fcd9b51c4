"""The device: a Flower ClientApp per user (thin; the work is in ``cdcda_fl``).

Handlers:
- ``query.share``: reply with the records this node's users consented to share (scrubbed).
- ``train.personalize``: receive each user's synthetic records, train the private adapters on
  real + synthetic data, answer the held-out queries offline, reply with predictions, metrics, ε
  and counts. Adapters and non-consented records never go into a reply.

Which users a node serves comes from its ``node_config``:
- simulation: ``partition-id`` p of ``num-partitions`` N serves users p, p+N, … of the run's user
  list (one user per node when N equals the number of users);
- real device: ``data-dir`` (the device's own LaMP files), optional ``user-id`` to serve one user
  of them, optional ``storage-dir`` for the private adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from cdcda_fl.config import Scalar, csv_list
from cdcda_fl.data.lamp import User
from cdcda_fl.device.personalize import personalize_user, share_records
from cdcda_fl.quiet import quiet_libraries
from cdcda_fl.runs import list_users, user_key
from clients.codec import config_of, pack, unpack

quiet_libraries()
app = ClientApp()


@lru_cache(maxsize=8)
def _users_cached(frozen_cfg: tuple[tuple[str, Scalar], ...]) -> tuple[User, ...]:
    """The run's user list, read once per worker process (Ray actors serve many nodes)."""
    return tuple(list_users(dict(frozen_cfg)))


def hosted_users(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> list[User]:
    """The users this node serves (see module docstring)."""
    cfg = dict(cfg)
    if "data-dir" in node_config:  # a real device with its own files
        cfg["data-dir"] = str(node_config["data-dir"])
    keys = ("data-dir", "out-dir", "tasks", "split", "users")
    users = _users_cached(tuple((k, cfg[k]) for k in keys))
    if "user-id" in node_config:
        return [u for u in users if u.user_id == str(node_config["user-id"])]
    if "partition-id" in node_config:
        p, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
        return list(users[p::n])
    return list(users)


def _storage_dir(node_config: Mapping[str, Any], cfg: Mapping[str, Scalar]) -> Path:
    if "storage-dir" in node_config:
        return Path(str(node_config["storage-dir"]))
    if cfg["device.storage-dir"]:
        return Path(str(cfg["device.storage-dir"]))
    return Path(str(cfg["out-dir"])) / "devices"


def _crash_check(users: list[User], cfg: Mapping[str, Scalar]) -> None:
    """Fault injection for tests and drills: the whole ClientApp fails for these users."""
    crash = set(csv_list(cfg["debug.crash-users"]))
    hit = [u.user_id for u in users if u.user_id in crash]
    if hit:
        raise RuntimeError(f"injected crash (debug.crash-users) for {hit}")


@app.query("share")
def share(msg: Message, context: Context) -> Message:
    cfg = config_of(msg)
    request = unpack(msg)
    users = hosted_users(context.node_config, cfg)
    shares, errors = [], []
    for user in users:
        if not request.get("share", True):
            continue
        try:
            shares.append(share_records(user, cfg).to_dict())
        except Exception as exc:  # one user's bad consent file must not silence the others
            errors.append({"user": user_key(user.task, user.user_id), "reason": f"{type(exc).__name__}: {exc}"})
    hosted = [user_key(u.task, u.user_id) for u in users]
    return Message(pack(users=hosted, shares=shares, errors=errors), reply_to=msg)


@app.train("personalize")
def personalize(msg: Message, context: Context) -> Message:
    cfg = config_of(msg)
    request = unpack(msg)
    targets: dict[str, list[dict[str, Any]]] = request["synthetic"]
    users = [u for u in hosted_users(context.node_config, cfg) if user_key(u.task, u.user_id) in targets]
    _crash_check(users, cfg)
    results = []
    for user in users:
        key = user_key(user.task, user.user_id)
        try:
            results.append(personalize_user(user, targets[key], cfg, storage_dir=_storage_dir(context.node_config, cfg)))
        except Exception as exc:  # reported per user; the node goes on with its other users
            results.append({"user_id": user.user_id, "task": user.task, "error": f"{type(exc).__name__}: {exc}"})
    return Message(pack(results=results), reply_to=msg)

"""The server's distrust of device nodes: who may speak for which user, and how much.

On real SuperNodes a node is only as trustworthy as whoever runs it. An authenticated but
misbehaving node could otherwise (a) claim another node's user and receive that user's synthetic
set, (b) overwrite another user's result, (c) choose where the server writes (``task`` of
``../../x``), or (d) flood the server. Every reply field the server acts on passes through
:class:`NodeGuard` first; what it refuses becomes a reported failure, never a write.

Rules (docs/privacy.md, "What the server accepts from a node"):

- a user key is ``<task>/<user id>`` with a registered task and a user id of at most
  ``MAX_USER_ID`` printable characters without path separators;
- a node speaks only for the users it announced in its share reply; a user announced by two
  nodes is given to neither (the server cannot tell which is genuine, and giving the synthetic
  set to the wrong one would leak it);
- each user shares once and reports one result per personalize request, only for users that
  request named; share replies are bounded in users, records and bytes.

Pure Python with no Flower import, so it is unit-tested without a Grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_USER_ID = 128
MAX_USERS_PER_NODE = 10_000
MAX_RECORDS_PER_USER = 10_000
MAX_SHARE_BYTES_PER_USER = 16 * 1024 * 1024


class Refused(ValueError):
    """A reply field the server will not act on; the message names user/node, never private text."""


def check_user_key(key: Any) -> tuple[str, str]:
    """``(task, user_id)`` of a well-formed user key from a reply, or :class:`Refused`."""
    from cdcda_fl.data.tasks import TASKS

    if not isinstance(key, str) or "/" not in key:
        raise Refused(f"malformed user key {str(key)[:40]!r}")
    task, user_id = key.split("/", 1)
    if task not in TASKS:
        raise Refused(f"unknown task {task[:40]!r}")
    if not user_id or len(user_id) > MAX_USER_ID or not user_id.isprintable() or any(c in user_id for c in "/\\\0"):
        raise Refused(f"malformed user id {user_id[:40]!r}")
    return task, user_id


@dataclass
class NodeGuard:
    """Bookkeeping of which node announced which users (one instance per run on the server)."""

    max_users_per_node: int = MAX_USERS_PER_NODE
    max_records: int = MAX_RECORDS_PER_USER
    max_bytes: int = MAX_SHARE_BYTES_PER_USER
    _owner: dict[str, int] = field(default_factory=dict)
    _contested: set[str] = field(default_factory=set)
    _shared: set[str] = field(default_factory=set)

    def announce(self, node: int, users: Iterable[Any]) -> list[tuple[str, str]]:
        """Record a node's announced users; returns ``(who, reason)`` for every refused claim.

        Call it for every share reply before :meth:`owner_map`; a user claimed by two nodes
        is taken from both.
        """
        refused: list[tuple[str, str]] = []
        users = list(users)
        if len(users) > self.max_users_per_node:
            return [(f"node {node}", f"announced {len(users)} users (limit {self.max_users_per_node})")]
        for key in dict.fromkeys(users):
            try:
                check_user_key(key)
            except Refused as exc:
                refused.append((f"node {node}", str(exc)))
                continue
            if key in self._contested:
                refused.append((key, f"claimed by several nodes (also node {node}): given to none"))
            elif key in self._owner and self._owner[key] != node:
                other = self._owner.pop(key)
                self._contested.add(key)
                refused.append((key, f"claimed by nodes {other} and {node}: given to none"))
            else:
                self._owner[key] = node
        return refused

    def contested(self) -> set[str]:
        """User keys that several nodes claimed (given to none)."""
        return set(self._contested)

    def owner_map(self) -> dict[str, int]:
        """user key -> the one node that may speak for it."""
        return dict(self._owner)

    def check_share(self, node: int, raw: Mapping[str, Any]) -> str:
        """The user key of an acceptable share from ``node``, or :class:`Refused`."""
        if not isinstance(raw, Mapping):
            raise Refused(f"node {node}: a share that is not an object")
        key = f"{raw.get('task')}/{raw.get('user_id')}"
        check_user_key(key)
        if self._owner.get(key) != node:
            raise Refused(f"node {node} sent records for {key[:80]}, a user it does not hold")
        if key in self._shared:
            raise Refused(f"node {node} shared {key[:80]} twice")
        records = raw.get("records")
        if not isinstance(records, list) or len(records) > self.max_records:
            raise Refused(f"{key[:80]}: records missing or over the limit of {self.max_records}")
        from cdcda_fl.privacy.consent import payload_bytes

        size = payload_bytes(records)  # measured here: a node's own "bytes" figure is not trusted
        if size > self.max_bytes:
            raise Refused(f"{key[:80]}: share of {size} bytes over the limit of {self.max_bytes}")
        self._shared.add(key)
        return key

    @staticmethod
    def check_result(node: int, result: Mapping[str, Any], expected: set[str], seen: set[str]) -> str:
        """The user key of an acceptable result: one the server sent this node, reported once."""
        if not isinstance(result, Mapping):
            raise Refused(f"node {node}: a result that is not an object")
        key = f"{result.get('task')}/{result.get('user_id')}"
        check_user_key(key)
        if key not in expected:
            raise Refused(f"node {node} reported a result for {key[:80]}, a user it was not asked about")
        if key in seen:
            raise Refused(f"node {node} reported {key[:80]} twice")
        seen.add(key)
        return key

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
  request named; share replies are bounded in users, records and bytes;
- a result's golds and predictions are id -> text maps of bounded size (the report keys them by
  ``(task, user, query)``, so they can only ever speak for the result's own user: ``aggregate.py``);
- text a node sends that the server stores or prints (error reasons, who failed) goes through
  :func:`node_text` (no control, format or bidi characters, bounded), and a node's error may name
  only a user that node holds.

Pure Python with no Flower import, so it is unit-tested without a Grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdcda_fl.data.tasks import TASKS
from cdcda_fl.privacy.consent import payload_bytes

MAX_USER_ID = 128
MAX_USERS_PER_NODE = 10_000
MAX_RECORDS_PER_USER = 10_000
MAX_SHARE_BYTES_PER_USER = 16 * 1024 * 1024
MAX_QUERIES_PER_USER = 10_000
MAX_QUERY_ID = 256
MAX_NODE_TEXT = 300


class Refused(ValueError):
    """A reply field the server will not act on; the message names user/node, never private text."""


def node_text(value: Any, limit: int = MAX_NODE_TEXT) -> str:
    """Text from a node made safe to store and print: control, format (bidi, zero-width) and
    unassigned characters dropped, whitespace runs made one space, at most ``limit`` characters
    (a longer text keeps its start and its end, where Flower's error replies put the message).

    Why: ``failures.jsonl`` lines and the console's failure list quote what nodes sent; a node
    must not be able to forge extra lines, hide text or drive the terminal with escape codes.
    """
    import unicodedata

    text = "".join(" " if c.isspace() else c for c in str(value)
                   if c.isspace() or unicodedata.category(c)[0] != "C")
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = limit // 3
    return f"{text[:head]} … {text[len(text) - (limit - head - 3):]}"


def _check_id_map(value: Any, what: str, key: str) -> None:
    """An id -> text map from a result (golds or predictions), or :class:`Refused`."""
    if value is None:
        return
    if not isinstance(value, Mapping) or len(value) > MAX_QUERIES_PER_USER:
        raise Refused(f"{key[:80]}: {what} must be a map of at most {MAX_QUERIES_PER_USER} query ids")
    for qid, text in value.items():
        if not isinstance(qid, str) or not qid or len(qid) > MAX_QUERY_ID or not qid.isprintable() \
                or not isinstance(text, str):
            raise Refused(f"{key[:80]}: malformed {what} entry {str(qid)[:40]!r}")


def check_result_body(key: str, result: Mapping[str, Any]) -> None:
    """The shapes the report relies on: golds and per-method predictions as bounded id -> text maps."""
    _check_id_map(result.get("golds"), "golds", key)
    methods = result.get("methods", {})
    if not isinstance(methods, Mapping):
        raise Refused(f"{key[:80]}: methods must be a map")
    for name, entry in methods.items():
        if not isinstance(entry, Mapping):
            raise Refused(f"{key[:80]}: method {str(name)[:40]!r} is not a map")
        _check_id_map(entry.get("predictions"), f"{str(name)[:40]} predictions", key)


def check_user_key(key: Any) -> tuple[str, str]:
    """``(task, user_id)`` of a well-formed user key from a reply, or :class:`Refused`."""
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
        if "error" not in result:
            check_result_body(key, result)
        seen.add(key)
        return key

    def share_failures(self, node: int, errors: Any) -> list[tuple[str, str]]:
        """``(who, reason)`` for ``failures.jsonl`` from a node's share-reply errors, once every
        announcement is in: ``who`` is a user this node holds, else ``node N``; the reason is
        :func:`node_text`; at most one line per held user plus one for the node."""
        held = {k for k, n in self._owner.items() if n == node}
        out: dict[str, str] = {}
        for err in errors if isinstance(errors, list) else [errors]:
            who = err.get("user") if isinstance(err, Mapping) else None
            who = who if isinstance(who, str) and who in held else f"node {node}"
            reason = node_text(err.get("reason", "")) if isinstance(err, Mapping) else "malformed error"
            out.setdefault(who, reason or "no reason given")
        return list(out.items())

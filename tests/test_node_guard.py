"""The server distrusts device nodes (issue 16.4): unit rules, then a misbehaving node over real Flower messages.

The end-to-end case runs the real ServerApp loop (``run_cdcda``) over a small in-memory Grid: one
honest node runs the real ClientApp; a second node claims the honest node's user, sends records
for a user it never announced, and reports results for users it was not asked about, including a
``task`` of ``../../pwned``. Nothing it sends may be written or change another user's result.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from cdcda_fl.core.config import resolve
from cdcda_fl.server.node_guard import NodeGuard, Refused, check_user_key
from clients.codec import pack, unpack


# ---------------------------------------------------------------------- unit rules
def test_user_keys_must_name_a_registered_task_and_a_plain_id() -> None:
    assert check_user_key("LaMP_2/u1") == ("LaMP_2", "u1")
    for bad in ("../../pwned/x", "LaMP_9/u", "LaMP_2/", "LaMP_2/a/b", "LaMP_2/" + "x" * 200, "nokey", 7, None,
                "LaMP_2/a\\b", "LaMP_2/a\nb"):
        with pytest.raises(Refused):
            check_user_key(bad)


def test_a_user_claimed_by_two_nodes_goes_to_neither() -> None:
    guard = NodeGuard()
    assert guard.announce(1, ["LaMP_2/alice", "LaMP_2/bob"]) == []
    refused = guard.announce(2, ["LaMP_2/alice", "../../x/y"])
    assert ("LaMP_2/alice", "claimed by nodes 1 and 2: given to none") in refused
    assert any(who == "node 2" and "unknown task" in why for who, why in refused)
    assert guard.announce(3, ["LaMP_2/alice"])[0][0] == "LaMP_2/alice"  # stays contested
    assert guard.owner_map() == {"LaMP_2/bob": 1}


def test_shares_only_for_announced_users_once_and_bounded() -> None:
    guard = NodeGuard(max_records=2, max_bytes=100)
    guard.announce(1, ["LaMP_2/alice"])
    ok = {"task": "LaMP_2", "user_id": "alice", "records": [{"id": "1"}], "bytes": 20}
    assert guard.check_share(1, ok) == "LaMP_2/alice"
    with pytest.raises(Refused, match="twice"):
        guard.check_share(1, ok)
    with pytest.raises(Refused, match="does not hold"):
        guard.check_share(2, {**ok, "user_id": "alice"})
    guard.announce(1, ["LaMP_2/big", "LaMP_2/huge"])
    with pytest.raises(Refused, match="limit"):
        guard.check_share(1, {**ok, "user_id": "big", "records": [{}, {}, {}]})
    # measured by the server, not taken from the node: a small claimed size does not pass
    with pytest.raises(Refused, match="bytes"):
        guard.check_share(1, {**ok, "user_id": "huge", "records": [{"id": "x" * 200}], "bytes": 10})
    assert NodeGuard(max_users_per_node=1).announce(1, ["LaMP_2/a", "LaMP_2/b"]) == [
        ("node 1", "announced 2 users (limit 1)")]


def test_results_only_for_users_the_request_named_once() -> None:
    seen: set[str] = set()
    expected = {"LaMP_2/alice"}
    assert NodeGuard.check_result(1, {"task": "LaMP_2", "user_id": "alice"}, expected, seen) == "LaMP_2/alice"
    with pytest.raises(Refused, match="twice"):
        NodeGuard.check_result(1, {"task": "LaMP_2", "user_id": "alice"}, expected, seen)
    with pytest.raises(Refused, match="not asked"):
        NodeGuard.check_result(1, {"task": "LaMP_2", "user_id": "bob"}, expected, set())
    with pytest.raises(Refused):
        NodeGuard.check_result(1, {"task": "../../pwned", "user_id": "alice"}, expected, set())


# ---------------------------------------------------------------------- a misbehaving node, end to end
Handler = Callable[[Message], Message]


class LoopbackGrid(Grid):
    """A Grid whose nodes are in-process handlers: each pushed Message is answered at once."""

    def __init__(self, nodes: dict[int, Handler]) -> None:
        self.nodes = nodes
        self.replies: dict[str, Message] = {}

    def set_run(self, run) -> None:  # pragma: no cover - not used by run_cdcda
        self._run = run

    @property
    def run(self):  # pragma: no cover
        return self._run

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = uuid.uuid4().hex
            self.replies[mid] = self.nodes[msg.metadata.dst_node_id](msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def test_misbehaving_node_cannot_steal_overwrite_or_escape(tmp_path: Path) -> None:
    from clients.device import simulation_app as client_app
    from strategies.cloud_augment import run_cdcda

    out = tmp_path / "run"
    cfg = resolve({"tasks": "LaMP_2", "users": 2, "out-dir": str(out), "device.model": "tiny-random",
                   "methods": "base", "personas.queries": 2, "node-wait": 0.5})
    honest_ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1},
                         state=RecordDict(), run_config={})

    def honest(msg: Message) -> Message:
        return client_app(msg, honest_ctx)

    seen_by_mallory: list[dict] = []

    def mallory(msg: Message) -> Message:
        body = unpack(msg)
        seen_by_mallory.append(body)
        if msg.metadata.message_type == "query.share":
            victim = honest(msg)  # learn the honest node's user list the way a snoop might
            first = unpack(victim)["users"][0]
            task, uid = first.split("/", 1)
            fake = {"task": task, "user_id": uid, "records": [{"id": "x", "description": "fake", "tag": "comedy"}],
                    "record_ids": ["x"], "fields": ["description", "tag"], "n_shared": 1, "bytes": 40}
            stranger = {**fake, "user_id": "stranger"}
            return Message(pack(users=[first, "LaMP_2/mallory", "../../pwned/x"], errors=[],
                                shares=[fake, stranger]), reply_to=msg)
        victims = [{"task": "LaMP_2", "user_id": u.split("/", 1)[1], "methods": {}, "n_queries": 0}
                   for u in body["synthetic"]]
        bogus = [{"task": "../../pwned", "user_id": "mallory", "methods": {}},
                 {"task": "LaMP_2", "user_id": "someone-else", "methods": {}}]
        return Message(pack(results=bogus + victims + victims), reply_to=msg)

    run_cdcda(LoopbackGrid({1: honest, 2: mallory}), cfg, expected_nodes=2)

    assert not list(tmp_path.rglob("pwned*")), "a node chose where the server writes"
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = " | ".join(f"{f['who']}: {f['reason']}" for f in failures)
    assert "given to none" in reasons and "does not hold" in reasons and "not asked" in reasons, reasons
    assert "twice" in reasons, reasons
    contested = next(f["who"] for f in failures if "given to none" in f["reason"])
    # the contested user got nothing; mallory never received a synthetic set for it
    assert all(contested not in b.get("synthetic", {}) for b in seen_by_mallory)
    assert not (out / "users" / contested.replace("/", "/", 1)).with_suffix(".json").exists()
    # the honest node's other user finished with a real result
    results = list((out / "users" / "LaMP_2").glob("*.json"))
    names = {p.stem for p in results}
    assert contested.split("/", 1)[1] not in names
    honest_results = [json.loads(p.read_text()) for p in results if p.stem != "mallory"]
    assert honest_results and all("base" in r["methods"] for r in honest_results)

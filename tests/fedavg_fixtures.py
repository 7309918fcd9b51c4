"""An in-process Flower Grid for the federated-baseline tests: real ServerApp loop, real FedAvg,
real ClientApp handlers, no Ray. Each node is a function from a Message to its reply (or None: a
node that died and never answers)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

Handler = Callable[[Message], "Message | None"]


class LoopbackGrid(Grid):
    """A Grid whose nodes answer each pushed Message at once (or never); ``sent`` keeps every message."""

    def __init__(self, nodes: dict[int, Handler]) -> None:
        self.nodes = nodes
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        #: (message type, node, its config as pushed): Flower serializes at push time; a test must
        #: not read FedAvg's shared ConfigRecord later, when a later round has changed it
        self.pushed: list[tuple[str, int, dict[str, Any]]] = []

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used here
        self._run = run

    @property
    def run(self) -> Any:  # pragma: no cover
        return self._run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = uuid.uuid4().hex
            self.sent.append(msg)
            config = dict(msg.content["config"]) if "config" in msg.content else {}
            self.pushed.append((msg.metadata.message_type, msg.metadata.dst_node_id, config))
            try:
                reply = self.nodes[msg.metadata.dst_node_id](msg)
            except Exception as exc:  # noqa: BLE001 - as Flower does: an error reply for the server
                reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            if reply is not None:
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        out: list[Message] = []
        while True:
            got = list(self.pull_messages(ids))
            out.extend(got)
            ids -= {m.metadata.reply_to_message_id for m in got}
            if not ids or time.time() >= end:
                return out
            time.sleep(0.05)


def client_node(node_config: dict[str, Any], node_id: int = 1) -> Handler:
    """A node running the real ClientApp (clients/device.py) with this node config."""
    from clients.device import simulation_app as app  # in-process simulated nodes (issue 29.3)

    ctx = Context(run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})
    return lambda msg: app(msg, ctx)


def simulated_nodes(n: int) -> dict[int, Handler]:
    """``n`` simulated device nodes (partition p of n), node ids 1..n."""
    return {p + 1: client_node({"partition-id": p, "num-partitions": n}, p + 1) for p in range(n)}

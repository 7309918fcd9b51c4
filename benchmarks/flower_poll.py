"""Minimal reproduction: Flower's simulation engine polls in O(nodes × queued messages).

Flower's Ray simulation engine (``flwr/server/superlink/fleet/vce/vce_api.py:
add_messages_to_queue``) asks the in-memory LinkState for each registered node's next message,
every 0.1 s, and ``InMemoryLinkState.get_message_ins`` checks *every* queued message (expiry,
federation) to find that node's. One sweep therefore costs nodes × queued messages checks. At
10 000 users on 1000 nodes with 100 messages queued, this loop took a driver core of the 2
(py-spy, 2026-12-07). Our side of the fix is to queue few messages at once
(``sim.max-in-flight``, default 4 per Ray actor); Flower's would be an index by destination node.

This script builds the state exactly as ``flwr.simulation.run_simulation`` does (the same
LinkStateFactory, run record and node registration), queues M messages through the same
InMemoryGrid the ServerApp uses, and times one sweep of the engine's poll loop for each
(nodes, messages). No Ray, no model: only Flower's state.

    python benchmarks/flower_poll.py            # nodes 100,1000 x messages 8,100,1000
Writes benchmarks/results/flower_poll.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.common.constant import RUN_ID_NUM_BYTES, TASK_ID_NUM_BYTES
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.superlink.federation import NoOpFederationManager
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.superlink.grid import InMemoryGrid

from cdcda_fl.core.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent


def sweep_seconds(n_nodes: int, n_messages: int, repeats: int = 3) -> float:
    """Median seconds of one poll sweep over ``n_nodes`` with ``n_messages`` queued (none for them)."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID  # as run_simulation
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    nodes = list(_register_nodes(n_nodes + 1, factory))
    target, idle = nodes[0], nodes[1:]  # every message waits for one busy node, as in a window
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    grid.push_messages([Message(RecordDict(), dst_node_id=target, message_type="query")
                        for _ in range(n_messages)])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for node in idle:  # the engine's loop body (vce_api.add_messages_to_queue)
            state.get_message_ins(node_id=node, limit=1)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="100,1000")
    parser.add_argument("--messages", default="8,100,1000")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flower_poll.json")
    args = parser.parse_args()
    rows = []
    print(f"{'nodes':>6} {'queued':>7} {'one sweep ms':>13} {'of the 0.1 s poll':>18}")
    for n in (int(x) for x in args.nodes.split(",")):
        for m in (int(x) for x in args.messages.split(",")):
            s = sweep_seconds(n, m)
            rows.append({"nodes": n, "queued_messages": m, "sweep_ms": round(s * 1000, 2)})
            print(f"{n:>6} {m:>7} {s * 1000:>13.1f} {s / 0.1:>17.0%}")
    import flwr

    write_json_atomic(args.out, {"rows": rows, "flwr": flwr.__version__,
                                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


if __name__ == "__main__":
    main()

"""The cloud: a Flower ServerApp whose "aggregation" is data augmentation (and, for the federated
baselines, Flower's own FedAvg: strategies/fedavg.py).

All of the run's logic (rounds, resume, failures, reporting) is in :mod:`cdcda_fl.server.orchestrator`;
this module only adapts Flower's Grid to its :class:`~cdcda_fl.server.orchestrator.Transport`: requests
become ``query.share`` / ``train.personalize`` Messages carrying the run config and a JSON payload
(``clients/codec.py``), replies are decoded back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from cdcda_fl.server import orchestrator
from cdcda_fl.core.config import Scalar, resolve
from clients.codec import GLOBAL_PREFIX, array_record, pack, unpack
from strategies.fedavg import run_rounds
from cdcda_fl.core.run_config import run_config

MESSAGE_TYPES = {orchestrator.SHARE: "query.share", orchestrator.PERSONALIZE: "train.personalize"}

# Re-exported for the driver's signal handling (strategies/simulation.py).
STOP = orchestrator.STOP
RunInterrupted = orchestrator.RunInterrupted


class GridTransport:
    """Flower's Grid as the orchestrator's transport (push, then pull replies by message id)."""

    def __init__(self, grid: Grid, cfg: Mapping[str, Scalar] | None = None) -> None:
        self.grid = grid
        self._sent: dict[str, int] = {}
        #: Flower's simulation engine drives an in-memory grid; a SuperLink deployment does not.
        #: Only then may the simulation-only reference writers (cloud.backend = oracle | noise) run.
        self.simulated = isinstance(grid, InMemoryGrid)
        #: messages the orchestrator keeps queued at once (0 = all): in simulation a few per Ray
        #: actor, since the engine's poll scans every queued message for each of its nodes
        #: (flwr 1.x InMemoryLinkState.get_message_ins; 1000 nodes took a driver core at 10 000
        #: users, docs/performance.md); real devices work in parallel, so they get all at once.
        self.max_in_flight = simulation_window(cfg) if self.simulated and cfg is not None else 0

    def node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def send(self, kind: str, cfg: Mapping[str, Scalar], requests: list[tuple[int, Mapping[str, Any]]],
             arrays: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
        """``arrays``: named arrays (the global adapter per task) a request names in its payload's
        ``global``; each message carries only those it names, as ArrayRecords ``global/<task>``."""
        msgs = []
        for node, payload in requests:
            content = pack(cfg, **payload)
            for task in (payload.get("global") or {}) if arrays else ():
                content[GLOBAL_PREFIX + task] = array_record(arrays[task])
            msgs.append(Message(content, dst_node_id=node, message_type=MESSAGE_TYPES[kind]))
        handles = list(self.grid.push_messages(msgs))
        self._sent.update(zip(handles, (node for node, _ in requests)))
        return handles

    def federated_rounds(self, cfg: Mapping[str, Scalar], task: str, nodes: list[int], first_round: int,
                         initial: Mapping[str, Any], on_round: Any, on_failure: Any) -> None:
        """FedAvg rounds of one task's global adapter with Flower's own strategy (strategies/fedavg.py)."""
        run_rounds(self.grid, cfg, task, nodes, first_round, initial, on_round, on_failure)

    def poll(self, handles: list[str]) -> list[tuple[str, orchestrator.Reply]]:
        out = []
        for reply in self.grid.pull_messages(handles):
            handle = reply.metadata.reply_to_message_id
            node = self._sent.pop(handle, reply.metadata.src_node_id)
            if reply.has_error():
                out.append((handle, orchestrator.Reply(node, None, str(reply.error.reason))))
                continue
            try:
                body = unpack(reply)
            except (ValueError, TypeError):  # not our codec: a malformed reply, not a crash
                body = {}
            out.append((handle, orchestrator.Reply(node, body)))
        return out


def simulation_window(cfg: Mapping[str, Scalar]) -> int:
    """``sim.max-in-flight``, or 4 messages per Ray actor (actors = CPUs / ``sim.client-cpus``)."""
    sim = run_config(cfg).sim
    if sim.max_in_flight > 0:
        return sim.max_in_flight
    cpus = _ray_cpus() or sim.cpus or (os.cpu_count() or 1)
    actors = max(1, int(cpus // max(sim.client_cpus, 1e-9)))
    return 4 * actors


def _ray_cpus() -> int:
    """The CPUs of the Ray cluster the simulation runs on (a cluster: all its nodes), 0 if unknown."""
    try:
        import ray  # lazy: only a simulation's driver has Ray running
    except ImportError:
        return 0
    return int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0


def run_cdcda(grid: Grid, cfg: dict[str, Scalar], *, expected_nodes: int | None = None,
              prepared: bool = False) -> dict[str, Any]:
    """The whole CDCDA run on an existing Grid; returns the aggregated results."""
    return orchestrator.run_cdcda(GridTransport(grid, cfg), cfg, expected_nodes=expected_nodes, prepared=prepared)


def make_server_app(cfg: Mapping[str, Scalar] | None = None, *, expected_nodes: int | None = None,
                    prepared: bool = False) -> ServerApp:
    """A ServerApp bound to ``cfg`` (for `cdcda run`), else reading Flower's run config (`flwr run`).

    ``prepared``: ``cfg`` comes from :func:`prepare_run_dir` + :func:`check_run_data` already
    (`cdcda run` needs both before Ray starts), so the run does not read and check the data twice."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = dict(cfg) if cfg is not None else resolve(dict(context.run_config))
        run_cdcda(grid, run_cfg, expected_nodes=expected_nodes, prepared=prepared and cfg is not None)

    return server


app = make_server_app()

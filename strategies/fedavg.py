"""The federated baselines' rounds with Flower's own message-based FedAvg (issue 31).

``flwr.serverapp.strategy.FedAvg`` runs the rounds and does the weighted averaging
(``aggregate_arrayrecords``, weighted by each reply's ``num-examples``); :class:`TaskFedAvg`
changes only what a CDCDA run needs around it:

- **which nodes**: only the nodes that hold users of the task being trained, sampled with a
  seeded generator (``fedavg.fraction`` of them, at least ``fedavg.min-nodes``), so two runs
  with the same seed sample the same nodes (Flower's default draws from the global ``random``);
  a round waits ``node-wait`` seconds at most for ``fedavg.min-nodes`` of them, then goes on with
  whoever is connected, instead of waiting forever;
- **which replies**: error replies and replies that do not look like the adapter (other array
  names or shapes, a missing or non-positive ``num-examples``) are left out of the average and
  reported as that node's failure, so one bad or dead node never stops the run (Flower's own
  consistency check would raise for the whole round).

:func:`run_rounds` runs rounds ``first .. fedavg.rounds`` of one task through
``strategy.start(grid=..., initial_arrays=..., num_rounds=...)``; Flower's ``evaluate_fn`` hook,
called after every round with the new global arrays, is where the server checkpoints them
(``cdcda_fl/server/federated.py``), so a killed run resumes after its last finished round.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from cdcda_fl.core.config import Scalar
from cdcda_fl.device.federated import adapter_digest
from cdcda_fl.server.federated import fedavg_message_config, round_facts
from cdcda_fl.core.run_config import run_config
from clients.codec import array_record

WEIGHT_KEY = "num-examples"


class TaskFedAvg(FedAvg):
    """Flower's FedAvg over one task's nodes, with seeded sampling and per-reply screening."""

    def __init__(self, *, task: str, nodes: Iterable[int], seed: Scalar, wait_s: float,
                 on_failure: Callable[[int, str, int], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.nodes = sorted(set(nodes))
        self.seed = seed
        self.wait_s = wait_s
        self.on_failure = on_failure
        self.layout: dict[str, tuple[int, ...]] = {}  # the adapter's array shapes (from the first good reply)
        self.round_log: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ which nodes
    def _connected(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_s
        while True:
            connected = sorted(set(grid.get_node_ids()) & set(self.nodes))
            if len(connected) >= self.min_available_nodes or time.monotonic() >= deadline:
                return connected
            time.sleep(0.2)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's FedAvg round set-up, sampling only this task's nodes, seeded by (seed, task, round)."""
        if self.fraction_train == 0.0:
            return []
        connected = self._connected(grid)
        take = min(len(connected), max(int(len(connected) * self.fraction_train), self.min_train_nodes))
        absolute = server_round + int(config.get("cdcda.round-offset", 0))
        rng = random.Random(f"{self.seed}:{self.task}:{absolute}")
        picked = sorted(rng.sample(connected, take)) if take < len(connected) else connected
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self.round_log[server_round] = {"sampled": len(picked), "nodes": picked, "started": time.perf_counter(),
                                        "down": sum(len(a.data) for a in arrays.values())}
        return self._construct_messages(record, picked, MessageType.TRAIN)

    # ------------------------------------------------------------------ which replies
    def _problem(self, msg: Message) -> str | None:
        """Why a reply cannot be averaged (None: it can)."""
        if msg.has_error():
            return f"fedavg round failed on the device: {msg.error.reason}"[:500]
        content = msg.content
        arrays = list(content.array_records.values())
        metrics = list(content.metric_records.values())
        if len(arrays) != 1 or len(metrics) != 1 or set(content.keys()) != {"arrays", "metrics"}:
            return "malformed fedavg reply (expected one ArrayRecord 'arrays' and one MetricRecord 'metrics')"
        weight = metrics[0].get(WEIGHT_KEY)
        if not isinstance(weight, (int, float)) or not weight > 0 or set(metrics[0]) != {WEIGHT_KEY}:
            return f"malformed fedavg reply (the metrics must be exactly a positive {WEIGHT_KEY})"
        shapes = {k: tuple(a.shape) for k, a in arrays[0].items()}
        if self.layout and shapes != self.layout:
            return "fedavg reply does not fit the global adapter (other array names or shapes)"
        values = [a.numpy() for a in arrays[0].values()]
        if not all(np.isfinite(v).all() for v in values):
            return "fedavg reply holds non-finite values"
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's FedAvg aggregation over the replies that fit; the others are reported per node."""
        replies = list(replies)
        good, up = [], []
        for msg in replies:
            problem = self._problem(msg)
            if problem is None and not self.layout:
                self.layout = {k: tuple(a.shape) for k, a in msg.content["arrays"].items()}
            if problem is not None:
                self.on_failure(msg.metadata.src_node_id, problem, server_round)
                continue
            good.append(msg)
            up.append(sum(len(a.data) for a in msg.content["arrays"].values()))
        entry = self.round_log.setdefault(server_round, {"sampled": 0, "started": time.perf_counter(), "down": 0})
        silent = sorted(set(entry.get("nodes", [])) - {m.metadata.src_node_id for m in replies})
        for node in silent:  # died or too slow: the round goes on without it
            self.on_failure(node, "no fedavg reply before fedavg.timeout", server_round)
        entry.update(replied=len(good), failed=len(replies) - len(good) + len(silent), up=up)
        # In an order that depends on the updates only (floating-point sums depend on their order, and
        # node ids differ between two runs): the same seed gives the same global adapter everywhere.
        good.sort(key=lambda m: adapter_digest({k: a.numpy() for k, a in m.content["arrays"].items()}))
        return super().aggregate_train(server_round, good) if good else (None, None)


def run_rounds(grid: Grid, cfg: Mapping[str, Scalar], task: str, nodes: list[int], first_round: int,
               initial: Mapping[str, np.ndarray], on_round: Callable[[int, dict[str, np.ndarray], dict[str, Any]], None],
               on_failure: Callable[[int, str, int], None]) -> None:
    """Rounds ``first_round`` .. ``fedavg.rounds`` of ``task``'s global adapter with Flower's FedAvg."""
    rc = run_config(cfg)
    total = rc.fedavg.rounds
    if first_round > total:
        return
    min_nodes = max(1, rc.fedavg.min_nodes)
    strategy = TaskFedAvg(task=task, nodes=nodes, seed=rc.seed, wait_s=rc.node_wait,
                          on_failure=on_failure, fraction_train=rc.fedavg.fraction, fraction_evaluate=0.0,
                          min_train_nodes=min_nodes, min_available_nodes=min_nodes, weighted_by_key=WEIGHT_KEY)
    strategy.layout = {k: tuple(np.shape(v)) for k, v in initial.items()}
    offset = first_round - 1

    def checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower calls this after every round with the new global arrays: checkpoint them."""
        entry = strategy.round_log.get(server_round)
        if server_round == 0 or entry is None or not entry.get("replied"):
            return None  # the initial arrays, or a round without a usable reply (the adapter did not move)
        facts = round_facts(entry["sampled"], entry["replied"], entry["failed"], entry["up"], entry["down"],
                            time.perf_counter() - entry["started"])
        on_round(offset + server_round, {k: a.numpy() for k, a in arrays.items()}, facts)
        return None

    timeout = rc.fedavg.timeout or 3600.0
    strategy.start(grid=grid, initial_arrays=array_record(initial), num_rounds=total - offset, timeout=timeout,
                   train_config=ConfigRecord(fedavg_message_config(cfg, task, first_round)), evaluate_fn=checkpoint)

"""The server's federated phase (issue 31): FedAvg of one LoRA adapter per task, before personalize.

The rounds themselves run in Flower's own ``FedAvg`` (``strategies/fedavg.py``, reached through
the transport's ``federated_rounds``), so this module stays Flower-free. It decides which nodes
take part in which task's rounds, checkpoints every round's global adapter atomically (a killed
run resumes after the last finished round), logs each round's facts (nodes, replies, bytes,
seconds: ``out/federated/<task>/rounds.jsonl``), and hands the final adapters to the personalize
messages (:func:`personalize_attachments`).

A run whose methods include ``fedavg``, ``fedavg+local`` or ``cdcda+fedavg`` calls
:func:`run_federated_phase` after the share phase (which says which node holds which user).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cdcda_fl.core.atomic import atomic_dir, write_json_atomic
from cdcda_fl.core.config import Scalar, federated_methods, message_config
from cdcda_fl.device.federated import adapter_digest
from cdcda_fl.privacy.audit_log import read_audit
from cdcda_fl.core.progress import log
from cdcda_fl.core.run_config import run_config

Arrays = dict[str, np.ndarray]
ARRAYS_FILE = "adapter.npz"
STATE_FILE = "state.json"
#: what the global adapter depends on: a checkpoint trained under other values is not resumed
_FINGERPRINT_KEYS = ("device.model", "device.quantization", "device.dtype", "seed", "train.rank", "train.alpha",
                     "train.dropout", "train.max-length", "train.target-modules", "train.lora-layers", "train.lr",
                     "train.batch-size", "fedavg.local-steps", "fedavg.fraction", "fedavg.min-nodes",
                     "tasks", "users", "split", "data-dir")


class FederatedRounds(Protocol):
    """What a transport offers to run FedAvg rounds (``strategies/fedavg.py`` over Flower's Grid)."""

    def __call__(self, cfg: Mapping[str, Scalar], task: str, nodes: list[int], first_round: int,
                 initial: Arrays, on_round: Callable[[int, Arrays, dict[str, Any]], None],
                 on_failure: Callable[[int, str, int], None]) -> None:
        """Run rounds ``first_round`` .. ``fedavg.rounds`` of ``task`` over ``nodes``; ``on_round``
        gets each finished round's number, global arrays and facts; ``on_failure`` (node, reason, round)."""


@dataclass(frozen=True)
class GlobalModel:
    """A task's final global adapter on the server."""

    task: str
    arrays: Arrays
    rounds: int
    local_steps: int

    @property
    def sha256(self) -> str:
        return adapter_digest(self.arrays)

    def meta(self) -> dict[str, Any]:
        """What a personalize message says about it (the arrays travel beside, as ArrayRecords)."""
        return {"sha256": self.sha256, "rounds": self.rounds, "local_steps": self.local_steps}


class Checkpoints:
    """A task's per-round global adapters under ``out/federated/<task>/round-NNN/`` (atomic folders).

    Each round's folder appears complete or not at all (arrays + state), so a run killed at any
    moment resumes after the last complete round; older rounds are removed once a newer one is in.
    """

    def __init__(self, out_dir: Path | str, task: str, fingerprint: str) -> None:
        self.root = Path(out_dir) / "federated" / task
        self.fingerprint = fingerprint

    def latest(self) -> tuple[int, Arrays] | None:
        """(round, arrays) of the newest complete checkpoint trained under this fingerprint, or None."""
        for path in sorted(self.root.glob("round-[0-9][0-9][0-9][0-9]"), reverse=True):
            try:
                state = json.loads((path / STATE_FILE).read_text())
                if state.get("fingerprint") != self.fingerprint:
                    continue
                with np.load(path / ARRAYS_FILE) as data:
                    arrays = {k: data[k] for k in data.files}
            except (OSError, ValueError, KeyError):
                continue
            if adapter_digest(arrays) == state.get("sha256"):
                return int(state["round"]), arrays
        return None

    def save(self, rnd: int, arrays: Arrays, facts: Mapping[str, Any]) -> None:
        with atomic_dir(self.root / f"round-{rnd:04d}") as tmp:
            np.savez(tmp / ARRAYS_FILE, **arrays)
            write_json_atomic(tmp / STATE_FILE, {"round": rnd, "sha256": adapter_digest(arrays),
                                                 "fingerprint": self.fingerprint, **facts})
        for old in self.root.glob("round-[0-9][0-9][0-9][0-9]"):
            if old.name < f"round-{rnd:04d}":
                shutil.rmtree(old, ignore_errors=True)
        with (self.root / "rounds.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"round": rnd, "sha256": adapter_digest(arrays), **facts}) + "\n")


def fingerprint(cfg: Mapping[str, Scalar], task: str) -> str:
    import hashlib

    keys = {k: cfg[k] for k in _FINGERPRINT_KEYS if k in cfg}
    return hashlib.sha256(json.dumps([task, keys], sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_nodes(user_node: Mapping[str, int]) -> dict[str, list[int]]:
    """task -> the nodes holding its users (only they train that task's adapter)."""
    out: dict[str, set[int]] = {}
    for key, node in user_node.items():
        out.setdefault(key.split("/", 1)[0], set()).add(node)
    return {task: sorted(nodes) for task, nodes in sorted(out.items())}


def run_federated_phase(transport: Any, cfg: Mapping[str, Scalar], user_node: Mapping[str, int],
                        record_failure: Callable[..., None]) -> dict[str, GlobalModel]:
    """FedAvg per task over the nodes that hold its users; returns task -> final global adapter
    (empty when no federated method runs). ``transport.federated_rounds`` runs the rounds.

    A task whose rounds produced no adapter (every node failed) is reported and left out: its
    federated methods then fail per user with a clear reason, and the other methods still run.
    """
    rc = run_config(cfg)
    if not federated_methods(cfg):
        return {}
    rounds_runner: FederatedRounds | None = getattr(transport, "federated_rounds", None)
    if rounds_runner is None:
        raise RuntimeError("this transport cannot run FedAvg rounds (methods fedavg, fedavg+local, cdcda+fedavg "
                           "need Flower's Grid: `cdcda run`, `flwr run .` or a SuperLink deployment)")
    total = rc.fedavg.rounds
    if total < 1:
        raise ValueError(f"fedavg.rounds must be >= 1, got {total}")
    out: dict[str, GlobalModel] = {}
    for task, nodes in task_nodes(user_node).items():
        ckpt = Checkpoints(rc.out_dir, task, fingerprint(cfg, task))
        done, arrays = ckpt.latest() or (0, {})
        if done:
            log(f"fedavg {task}: resuming after round {done} (checkpoint {ckpt.root})")
        latest: dict[str, Any] = {"round": done, "arrays": arrays}

        def on_round(rnd: int, new: Arrays, facts: dict[str, Any], _ckpt: Checkpoints = ckpt,
                     _latest: dict[str, Any] = latest, _task: str = task) -> None:
            _ckpt.save(rnd, new, facts)
            _latest.update(round=rnd, arrays=new)
            log(f"fedavg {_task}: round {rnd}/{total}: {facts.get('replied', 0)}/{facts.get('sampled', 0)} node(s), "
                f"{facts.get('seconds', 0):.1f}s")

        def on_failure(node: int, reason: str, rnd: int, _task: str = task) -> None:
            record_failure(f"node {node}", reason, phase="fedavg", task=_task, round=rnd, node=node)

        if done < total:
            rounds_runner(cfg, task, nodes, done + 1, arrays, on_round, on_failure)
        if not latest["arrays"]:
            record_failure(f"fedavg {task}", "no round produced a global adapter (every node failed)", phase="fedavg")
            continue
        out[task] = GlobalModel(task, latest["arrays"], int(latest["round"]), rc.fedavg.local_steps)
    return out


def fedavg_message_config(cfg: Mapping[str, Scalar], task: str, first_round: int) -> dict[str, Scalar]:
    """The ConfigRecord of a task's FedAvg train messages: the keys a round reads, the task, the
    rounds done before (Flower numbers the rounds of each ``start`` from 1)."""
    return {**message_config("fedavg", cfg), "cdcda.task": task, "cdcda.round-offset": int(first_round) - 1}


def personalize_requests(by_node: Mapping[int, Mapping[str, Any]], adapters: Mapping[str, GlobalModel]
                         ) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Arrays]]:
    """Personalize requests (node, payload) and the arrays they name: each node's payload says under
    ``global`` which tasks' global adapters it gets (SHA-256, rounds, steps); the transport sends
    those arrays with it. ``by_node``: node -> {user key: synthetic records}."""
    requests = []
    for node, synthetic in by_node.items():
        tasks = sorted({u.split("/", 1)[0] for u in synthetic} & set(adapters))
        payload: dict[str, Any] = {"synthetic": synthetic}
        if tasks:
            payload["global"] = {t: adapters[t].meta() for t in tasks}
        requests.append((node, payload))
    return requests, {t: g.arrays for t, g in adapters.items()}


def round_facts(sampled: int, replied: int, failed: int, up_bytes: list[int], down_bytes: int,
                seconds: float) -> dict[str, Any]:
    """One round's facts for ``rounds.jsonl`` and the communication table (measured, not computed)."""
    return {"sampled": sampled, "replied": replied, "failed": failed, "up_bytes": up_bytes,
            "down_bytes_per_node": down_bytes, "seconds": round(seconds, 3), "time": time.time()}


def measured_bytes(out_dir: Path | str, device_logs: list[Path] | None = None) -> dict[str, Any]:
    """FedAvg's bytes per user per round, measured: up from the devices' audit logs (each ``update``
    line: the bytes of exactly what one node sent, divided by the users it trained for), down from
    the server's rounds logs (the global adapter sent to each sampled node, divided likewise).

    ``device_logs``: the devices' audit logs (default: the simulated devices' shared
    ``out/devices/audit.jsonl``; a real device's is in its storage dir). Empty dict: no FedAvg ran.
    """
    import statistics

    out = Path(out_dir)
    updates = [ln for log_path in (device_logs or [out / "devices"]) for ln in read_audit(log_path)
               if ln.get("kind") == "update"]
    if not updates:
        return {}
    up = [int(ln["bytes"]) / max(1, len(ln.get("users") or [1])) for ln in updates]
    users_per_node = statistics.median(max(1, len(ln.get("users") or [1])) for ln in updates)
    down = []
    for path in sorted((out / "federated").glob("*/rounds.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            facts = json.loads(line)
            if facts.get("down_bytes_per_node"):
                down.append(int(facts["down_bytes_per_node"]) / users_per_node)
    rounds = {(ln["task"], ln.get("round")) for ln in updates}
    return {"updates": len(updates), "task_rounds": len(rounds), "up_bytes_per_user_round_median": statistics.median(up),
            "down_bytes_per_user_round_median": statistics.median(down) if down else None,
            "users_per_node_median": users_per_node}

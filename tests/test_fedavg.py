"""The federated baselines (issue 31): Flower's FedAvg over the device nodes, then fedavg,
fedavg+local and cdcda+fedavg per user in the same table.

Everything runs the real ServerApp loop, Flower's real ``FedAvg`` and the real ClientApp handlers
over an in-process Grid (tests/fedavg_fixtures.py): no Ray, seconds per test with tiny-random.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from cdcda_fl.core.config import message_config, resolve
from cdcda_fl.server.federated import Checkpoints, fingerprint
from cdcda_fl.privacy.audit_log import canonical_json, read_audit
from clients.codec import array_record
from fedavg_fixtures import LoopbackGrid, client_node, simulated_nodes


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower stamps messages with the run's identity; set it as its simulation engine does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def _cfg(tmp_path: Path, **extra: Any) -> dict:
    return resolve({"tasks": "LaMP_2", "users": 2, "out-dir": str(tmp_path / "run"), "device.model": "tiny-random",
                    "methods": "base,fedavg,fedavg+local", "personas.queries": 2, "node-wait": 0.5,
                    "train.steps": 2, "fedavg.rounds": 2, "fedavg.local-steps": 2, **extra})


# ---------------------------------------------------------------------- Flower's FedAvg does the average
def _fixed_node(arrays: dict[str, np.ndarray], n: int):
    """A node that always replies the same update, weighted by ``n`` records."""
    def node(msg: Message) -> Message:
        return Message(RecordDict({"arrays": array_record(arrays), "metrics": MetricRecord({"num-examples": n})}),
                       reply_to=msg)
    return node


def test_fedavg_of_two_nodes_is_the_hand_computed_weighted_mean_per_tensor(tmp_path: Path) -> None:
    from strategies.fedavg import run_rounds

    rng = np.random.default_rng(0)
    a = {"x.lora_A.weight": rng.normal(size=(4, 8)).astype(np.float32),
         "x.lora_B.weight": rng.normal(size=(8, 4)).astype(np.float32)}
    b = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in a.items()}
    bad = {"other": np.zeros(3, np.float32)}  # a node whose reply is not the adapter: left out, reported
    rounds: list[tuple[int, dict, dict]] = []
    failures: list[tuple[int, str, int]] = []
    grid = LoopbackGrid({1: _fixed_node(a, 3), 2: _fixed_node(b, 1), 3: _fixed_node(bad, 5)})
    cfg = _cfg(tmp_path, **{"fedavg.rounds": 1})
    run_rounds(grid, cfg, "LaMP_2", [1, 2, 3], 1, dict(a), lambda r, arr, facts: rounds.append((r, arr, facts)),
               lambda node, why, r: failures.append((node, why, r)))
    (rnd, avg, facts), = rounds
    assert rnd == 1 and set(avg) == set(a)
    for k in a:
        np.testing.assert_allclose(avg[k], (3 * a[k] + 1 * b[k]) / 4, rtol=1e-6, atol=1e-7)
    assert failures == [(3, "fedavg reply does not fit the global adapter (other array names or shapes)", 1)]
    # measured from the arrays that arrived: their serialized bytes, at least the raw fp32 values
    assert facts["replied"] == 2 and facts["failed"] == 1 and len(facts["up_bytes"]) == 2
    assert all(n >= 4 * (32 + 32) for n in facts["up_bytes"])
    # the train messages were Flower's FedAvg messages: type "train", the arrays and our config keys
    msg = grid.sent[0]
    assert msg.metadata.message_type == "train" and set(msg.content.keys()) == {"arrays", "config"}
    sent_keys = set(msg.content["config"]) - {"server-round", "cdcda.task", "cdcda.round-offset"}
    assert sent_keys == set(message_config("fedavg", cfg))


def test_a_seeded_run_samples_the_same_nodes_and_only_the_tasks_nodes(tmp_path: Path) -> None:
    from strategies.fedavg import run_rounds

    arrays = {"w": np.ones((2, 2), np.float32)}

    def sampled(seed: int) -> list[list[int]]:
        grid = LoopbackGrid({n: _fixed_node(arrays, 1) for n in range(1, 7)})
        cfg = _cfg(tmp_path, seed=seed, **{"fedavg.rounds": 3, "fedavg.fraction": 0.5})
        run_rounds(grid, cfg, "LaMP_2", [1, 2, 3, 4], 1, arrays, lambda *a: None, lambda *a: None)
        per_round: dict[int, list[int]] = {}
        for _kind, node, config in grid.pushed:
            per_round.setdefault(int(config["server-round"]), []).append(node)
        return [sorted(v) for _, v in sorted(per_round.items())]

    first = sampled(0)
    assert first == sampled(0) and all(len(r) == 2 and set(r) <= {1, 2, 3, 4} for r in first)


# ---------------------------------------------------------------------- what leaves a device
CANARY = "CANARY-PROFILE-5e1d"


def test_a_fedavg_reply_holds_only_the_adapter_arrays_and_the_record_count(tmp_path: Path) -> None:
    from cdcda_fl.data.lamp import write_outputs, write_questions

    data = tmp_path / "data"
    profile = [{"id": f"p{i}", "abstract": f"We study {CANARY} topic {i}.", "title": f"{CANARY} Title {i}"}
               for i in range(3)]
    write_questions(data / "LaMP_5" / "dev_questions.json",
                    [{"id": "q0", "input": f"Generate a title for: {CANARY}", "profile": profile, "user_id": "alice"}])
    write_outputs(data / "LaMP_5" / "dev_outputs.json", "LaMP_5", {"q0": f"{CANARY} gold"})
    cfg = _cfg(tmp_path, tasks="LaMP_5", users=1, **{"data-dir": str(data)})
    config = ConfigRecord({**message_config("fedavg", cfg), "server-round": 1, "cdcda.task": "LaMP_5",
                           "cdcda.round-offset": 0})
    msg = Message(RecordDict({"arrays": ArrayRecord(), "config": config}), dst_node_id=1, message_type="train")
    node_config = {"partition-id": 0, "num-partitions": 1}
    reply = client_node(node_config)(msg)

    assert not reply.has_error()
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert dict(reply.content["metrics"]) == {"num-examples": 3}
    names = list(reply.content["arrays"].keys())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    blobs = [(k, bytes(a.data)) for k, a in reply.content["arrays"].items()]
    wire = b"".join(b for _, b in blobs) + json.dumps(dict(reply.content["metrics"])).encode()
    assert CANARY.encode() not in wire and b"alice" not in wire and b"Title" not in wire
    # the device's own audit log has the reply: bytes and SHA-256 of exactly what was sent
    (line,) = [ln for ln in read_audit(Path(cfg["out-dir"]) / "devices") if ln["kind"] == "update"]
    digest = hashlib.sha256()
    for name, blob in sorted(blobs):
        digest.update(name.encode())
        digest.update(blob)
    metrics = canonical_json({"num-examples": 3})
    digest.update(metrics)
    assert line["bytes"] == sum(len(b) for _, b in blobs) + len(metrics) and line["sha256"] == digest.hexdigest()
    assert line["fields"] == ["arrays", "metrics.num-examples"] and line["round"] == 1


def test_a_node_that_cannot_train_replies_a_generic_error_and_audits_it(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    config = ConfigRecord({**message_config("fedavg", cfg), "server-round": 1, "cdcda.task": "LaMP_5",
                           "cdcda.round-offset": 0})  # the node holds no LaMP_5 user
    from cdcda_fl.server.runs import prepare_run_dir

    prepare_run_dir(cfg)
    msg = Message(RecordDict({"arrays": ArrayRecord(), "config": config}), dst_node_id=1, message_type="train")
    reply = client_node({"partition-id": 0, "num-partitions": 2})(msg)
    assert reply.has_error() and str(cfg["out-dir"]) not in str(reply.error.reason)
    assert [ln["kind"] for ln in read_audit(Path(cfg["out-dir"]) / "devices")] == ["reply"]


# ---------------------------------------------------------------------- whole runs
def _dead_in_fedavg(handler):
    """A node that answers share and personalize but dies in every FedAvg round (never replies)."""
    return lambda msg: None if msg.metadata.message_type == "train" else handler(msg)


def test_fedavg_methods_run_per_user_and_a_node_killed_mid_round_does_not_stop_the_run(tmp_path: Path) -> None:
    from strategies.cloud_augment import run_cdcda

    cfg = _cfg(tmp_path, users=3, **{"fedavg.timeout": 1.0, "debug.crash-users": ""})
    nodes = simulated_nodes(3)
    nodes[3] = _dead_in_fedavg(nodes[3])
    results = run_cdcda(LoopbackGrid(nodes), cfg, expected_nodes=3)

    rows = {(r["task"], r["method"]) for r in results["table"]}
    assert {("LaMP_2", "fedavg"), ("LaMP_2", "fedavg+local"), ("LaMP_2", "base")} <= rows
    assert results["users"] == {"LaMP_2": 3}  # the dead node's user is still answered with the global adapter
    lost = [f for f in results["failures"] if f.get("phase") == "fedavg"]
    assert lost and all(f["who"] == "node 3" for f in lost)
    assert "federated" in results["timing"]
    rounds = [json.loads(x) for x in (Path(cfg["out-dir"]) / "federated" / "LaMP_2" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["replied"] == 2 for r in rounds)
    # every user's federated rows name the same global adapter: the checkpoint of the last round
    user = json.loads(next((Path(cfg["out-dir"]) / "users" / "LaMP_2").glob("*.json")).read_text())
    assert user["methods"]["fedavg"]["train"]["global_sha256"] == rounds[-1]["sha256"]
    assert user["methods"]["fedavg+local"]["train"]["steps"] == 2
    assert results["intervals"]["LaMP_2"]["methods"]["fedavg"]["n_users"] == 3


def test_resume_reuses_the_checkpointed_round(tmp_path: Path) -> None:
    from strategies.cloud_augment import run_cdcda

    cfg = _cfg(tmp_path, methods="fedavg", **{"fedavg.rounds": 1})
    run_cdcda(LoopbackGrid(simulated_nodes(2)), cfg, expected_nodes=2)
    ckpt = Checkpoints(cfg["out-dir"], "LaMP_2", fingerprint(cfg, "LaMP_2"))
    done, after_one = ckpt.latest()
    assert done == 1

    # The run is resumed with two rounds: only round 2 runs, starting from round 1's checkpoint.
    # (As if killed after round 1, before any user finished: a run dir with finished users resumes
    # only its own configuration, tests/test_run_dir_resume.py.)
    import shutil

    shutil.rmtree(Path(cfg["out-dir"]) / "users")
    grid = LoopbackGrid(simulated_nodes(2))
    run_cdcda(grid, dict(cfg, **{"fedavg.rounds": 2}), expected_nodes=2)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert train and {int(m.content["config"]["cdcda.round-offset"]) for m in train} == {1}
    received = {k: a.numpy() for k, a in train[0].content["arrays"].items()}
    assert set(received) == set(after_one) and all(np.array_equal(received[k], after_one[k]) for k in received)
    assert ckpt.latest()[0] == 2

    # Everything done: a rerun sends no FedAvg message at all.
    again = LoopbackGrid(simulated_nodes(2))
    run_cdcda(again, dict(cfg, **{"fedavg.rounds": 2}), expected_nodes=2)
    assert not [m for m in again.sent if m.metadata.message_type == "train"]
    # ... and a checkpoint trained under another configuration is never resumed.
    assert Checkpoints(cfg["out-dir"], "LaMP_2", fingerprint(dict(cfg, **{"train.rank": 4}), "LaMP_2")).latest() is None


def test_users_per_node_above_one_train_together_and_are_answered_each(tmp_path: Path) -> None:
    from strategies.cloud_augment import run_cdcda

    cfg = _cfg(tmp_path, users=4, **{"fedavg.rounds": 1, "sim.users-per-node": 2})
    results = run_cdcda(LoopbackGrid(simulated_nodes(2)), cfg, expected_nodes=2)
    assert results["users"] == {"LaMP_2": 4} and not results["failures"]
    updates = [ln for ln in read_audit(Path(cfg["out-dir"]) / "devices") if ln["kind"] == "update"]
    assert len(updates) == 2 and sorted(len(u["users"]) for u in updates) == [2, 2]


def test_cdcda_from_the_global_adapter_follows_cdcdas_decision(tmp_path: Path) -> None:
    """cdcda+fedavg trains real + synthetic from the global adapter when CDCDA uses the cloud's
    records (rule none: always), and its paired difference against fedavg+local is reported."""
    from cdcda_fl.server import orchestrator
    from cdcda_fl.data.run_data import user_key
    from strategies.cloud_augment import GridTransport

    class Writer:  # the cloud, stubbed: two labelled records per user
        def __init__(self, cfg: Any) -> None:
            pass

        def run(self, shares: Any) -> dict[str, list[dict]]:
            return {user_key(s.task, s.user_id): [{"id": f"s{i}", "description": f"a film {i}", "tag": "comedy"}
                                                  for i in range(2)] for s in shares}

    cfg = _cfg(tmp_path, methods="fedavg+local,cdcda,cdcda+fedavg", **{"fedavg.rounds": 1,
                                                                        "train.synthetic-gate": "none"})
    results = orchestrator.run_cdcda(GridTransport(LoopbackGrid(simulated_nodes(2))), cfg, writer_factory=Writer)
    assert not results["failures"]
    for path in (Path(cfg["out-dir"]) / "users" / "LaMP_2").glob("*.json"):
        user = json.loads(path.read_text())
        entry = user["methods"]["cdcda+fedavg"]
        if user["n_synthetic_used"]:
            assert entry["decision"]["answer_with"] == "cdcda" and entry["train"]["n_synthetic"] > 0
            assert entry["train"]["global_sha256"] == user["methods"]["fedavg+local"]["train"]["global_sha256"]
    assert results["intervals"]["LaMP_2"]["cdcda_vs_fedavg+local"]["n_users"] == 2
    assert "Δ CDCDA vs FedAvg + local" in (Path(cfg["out-dir"]) / "table.md").read_text()


def test_cdcda_from_fedavg_that_falls_back_reports_the_budget_of_what_it_answers_with(tmp_path: Path) -> None:
    """Refused cloud records (the crossfit check on an empty cloud): cdcda+fedavg answers as
    fedavg+local and reports that adapter's steps (found at 0 steps on a real-writing run)."""
    from cdcda_fl.server import orchestrator
    from strategies.cloud_augment import GridTransport

    class NoRecords:  # the cloud, stubbed: nothing written for anybody
        def __init__(self, cfg: Any) -> None:
            pass

        def run(self, shares: Any) -> dict[str, list[dict]]:
            return {}

    cfg = _cfg(tmp_path, methods="fedavg+local,cdcda+fedavg", **{"fedavg.rounds": 1})
    orchestrator.run_cdcda(GridTransport(LoopbackGrid(simulated_nodes(2))), cfg, writer_factory=NoRecords)
    checked = 0
    for path in (Path(cfg["out-dir"]) / "users" / "LaMP_2").glob("*.json"):
        user = json.loads(path.read_text())
        entry, local = user["methods"]["cdcda+fedavg"], user["methods"]["fedavg+local"]
        if entry["decision"]["answer_with"] == "local":
            assert entry["train"]["steps"] == local["train"]["steps"] > 0
            assert entry["train"]["federated_steps"] == local["train"]["federated_steps"] > 0
            assert entry["train"]["same_as"] == "fedavg+local"
            checked += 1
    assert checked  # no record: every user falls back to (fedavg+)local

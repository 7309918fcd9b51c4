"""Simulated or real is the node's fact, not the server's (issue 29.3, 29.12).

A SuperNode without ``data-dir`` used to run as a simulated device: it read its consent file from
the server-named out-dir, audited there and reported golds and predictions. Now only Flower's
simulation engine (or ``cdcda run``'s ``simulation_app``) makes a node simulated; any other node
without ``data-dir`` refuses every message with a code. ``debug.crash-users`` drills crash only
simulated nodes. The real SuperNode process version is in tests/test_real_node_process.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from cdcda_fl.core.config import resolve
from cdcda_fl.data.personas import write_personas
from cdcda_fl.privacy.audit_log import read_audit
from cdcda_fl.server.runs import write_simulated_consent
from clients.codec import pack, unpack

PARTITION = {"partition-id": 0, "num-partitions": 1}


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture()
def cfg(tmp_path: Path) -> dict:
    out = tmp_path / "run"
    write_personas(out / "data", users=1, tasks=["LaMP_2"], seed=0, splits=("dev",), queries_per_user=2)
    cfg = resolve({"tasks": "LaMP_2", "users": 1, "out-dir": str(out), "device.model": "tiny-random",
                   "methods": "base", "consent.share-fraction": 1.0, "eval.report": "predictions"})
    write_simulated_consent(out, cfg)  # a permissive consent file in the server's folder: the bait
    return cfg


def _call(client_app, kind: str, content: RecordDict, node_config: dict) -> Message:
    msg = Message(content, dst_node_id=1, message_type=kind)
    return client_app(msg, Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("node_config", [{}, PARTITION, {**PARTITION, "cdcda-simulated": True},
                                         {"storage-dir": "STORAGE", "user-id": "dev-u0000"}])
def test_a_node_without_data_dir_refuses_outside_the_simulation_engine(cfg, tmp_path, monkeypatch,
                                                                       node_config) -> None:
    from clients.device import app

    monkeypatch.chdir(tmp_path)
    node_config = {k: (str(tmp_path / "storage") if v == "STORAGE" else v) for k, v in node_config.items()}
    out = Path(cfg["out-dir"])
    before = _files(out)
    share = _call(app, "query.share", pack(cfg, share=True), node_config)
    body = unpack(share)
    assert body["shares"] == [] and body["users"] == []
    assert body["errors"] == [{"user": "*", "reason": "device_error NodeNotConfigured (see the device's own log)"}]
    synthetic = {"LaMP_2/dev-u0000": []}
    (result,) = unpack(_call(app, "train.personalize", pack(cfg, synthetic=synthetic), node_config))["results"]
    assert result == {"user_id": "*", "task": "*", "error": "device_error NodeNotConfigured (see the device's own log)"}
    # nothing read from or written into the server-named folder: the node's own log is elsewhere
    assert _files(out) == before
    home = Path(node_config.get("storage-dir") or tmp_path / ".cdcda-device")
    assert "data-dir" in (home / "errors.jsonl").read_text()
    assert [line["request"] for line in read_audit(home / "audit.jsonl")] == ["share", "personalize"]


def test_flower_simulation_engine_marks_its_nodes_simulated(cfg) -> None:
    """Called the way Flower's Ray actor calls a ClientApp (its ``run``, without Ray): simulated."""
    from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

    from clients.device import app

    msg = Message(pack(cfg, share=True), dst_node_id=1, message_type="query.share")
    ctx = Context(run_id=1, node_id=1, node_config=PARTITION, state=RecordDict(), run_config={})
    _cid, reply, _ctx = VirtualClientEngineActor.run(object(), lambda: app, msg, "0", ctx)
    body = unpack(reply)
    assert body["users"] == ["LaMP_2/dev-u0000"] and body["shares"][0]["records"] and not body["errors"]


def _crash_cfg(cfg: dict) -> dict:
    return dict(cfg, **{"debug.crash-users": "dev-u0000"})


def test_crash_drill_never_reaches_a_real_device(cfg, tmp_path) -> None:
    from clients.device import app

    data = Path(cfg["out-dir"]) / "data"
    (data / "consent.toml").write_text("[default]\nshare-fraction = 0.5\n")
    real = {"data-dir": str(data), "user-id": "dev-u0000", "storage-dir": str(tmp_path / "phone")}
    reply = _call(app, "train.personalize", pack(_crash_cfg(cfg), synthetic={"LaMP_2/dev-u0000": []}), real)
    assert not reply.has_error()
    (result,) = unpack(reply)["results"]
    assert result["user_id"] == "dev-u0000" and "error" not in result and result["report"] == "metrics"
    errors = (tmp_path / "phone" / "errors.jsonl").read_text()
    assert "ignored (drills run only in simulation)" in errors
    assert [ln["kind"] for ln in read_audit(tmp_path / "phone" / "audit.jsonl")] == ["result", "reply"]


def test_crash_drill_in_simulation_is_audited_before_it_crashes(cfg) -> None:
    from clients.device import simulation_app

    with pytest.raises(Exception, match="injected crash"):
        _call(simulation_app, "train.personalize", pack(_crash_cfg(cfg), synthetic={"LaMP_2/dev-u0000": []}),
              PARTITION)
    lines = read_audit(Path(cfg["out-dir"]) / "devices" / "audit.jsonl")
    assert [(ln["kind"], ln["user"]) for ln in lines] == [("crash-drill", "dev-u0000")]
    assert json.dumps(lines[0]).count("injected crash") == 0  # the line hashes the error, like every reply

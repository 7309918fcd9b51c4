"""The device's synthetic store: what it received, kept and dropped, on its own disk and never in a reply."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from cdcda_fl.device.synthetic_store import (
    SyntheticStoreError,
    load_synthetic_log,
    save_synthetic_log,
    synthetic_log_path,
)

KEPT_TEXT = "KEPT-SYNTH-CANARY-5d1e about zebra migration"
DROPPED_TEXT = "DROPPED-SYNTH-CANARY-a9c2"
RECEIVED = [
    {"id": "syn-u-0", "abstract": KEPT_TEXT, "title": "Zebra Nets", "synthetic": True},
    {"id": "syn-u-1", "abstract": DROPPED_TEXT, "synthetic": True},
    {"id": "syn-u-2", "abstract": "an outlier", "title": "Off Topic", "synthetic": True},
]


def _save(root: Path, user: str = "alice", task: str = "LaMP_5", **overrides) -> Path:
    kw = {"received": RECEIVED, "kept": [RECEIVED[0]],
          "dropped": [(RECEIVED[1], "invalid:title missing"), (RECEIVED[2], "outlier")],
          "decision": {"rule": "score-vs-local", "used_synthetic": True, "reason": "validation loss improved"}}
    kw.update(overrides)
    return save_synthetic_log(root, user, task, **kw)


def test_round_trip_keeps_every_part_and_counts(tmp_path: Path) -> None:
    path = _save(tmp_path)
    assert path == tmp_path / "synthetic" / "LaMP_5" / "alice.json"
    log = load_synthetic_log(tmp_path, "alice", "LaMP_5")
    assert log is not None
    assert log["received"] == RECEIVED and log["kept"] == [RECEIVED[0]]
    assert log["dropped"] == [{"record": RECEIVED[1], "reason": "invalid:title missing"},
                              {"record": RECEIVED[2], "reason": "outlier"}]
    assert log["decision"] == {"rule": "score-vs-local", "used_synthetic": True, "reason": "validation loss improved"}
    assert log["counts"] == {"received": 3, "kept": 1, "dropped": 2,
                             "dropped_by_reason": {"invalid:title missing": 1, "outlier": 1}}
    assert (log["user_id"], log["task"]) == ("alice", "LaMP_5")


def test_absent_log_is_none_and_a_rewrite_replaces_it(tmp_path: Path) -> None:
    assert load_synthetic_log(tmp_path, "alice", "LaMP_5") is None
    _save(tmp_path)
    _save(tmp_path, kept=[], dropped=[(r, "outlier") for r in RECEIVED],
          decision={"used_synthetic": False, "reason": "no gain"})
    log = load_synthetic_log(tmp_path, "alice", "LaMP_5")
    assert log["kept"] == [] and log["counts"]["dropped_by_reason"] == {"outlier": 3}
    assert log["decision"]["used_synthetic"] is False
    assert load_synthetic_log(tmp_path, "alice", "LaMP_2") is None  # per task
    assert load_synthetic_log(tmp_path, "bob", "LaMP_5") is None  # per user
    leftovers = [p.name for p in (tmp_path / "synthetic" / "LaMP_5").iterdir()]
    assert leftovers == ["alice.json"]  # no temp files left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_is_private_to_the_owner(tmp_path: Path) -> None:
    path = _save(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "synthetic").stat().st_mode) == 0o700


@pytest.mark.parametrize("user", ["../../etc/passwd", "a/b", "..", "x\\y"])
def test_user_ids_never_leave_the_store(tmp_path: Path, user: str) -> None:
    path = _save(tmp_path / "dev", user=user, task="../LaMP_5")
    store = (tmp_path / "dev" / "synthetic").resolve()
    assert path.resolve().is_relative_to(store)
    assert path == synthetic_log_path(tmp_path / "dev", user, "../LaMP_5")
    assert load_synthetic_log(tmp_path / "dev", user, "../LaMP_5")["user_id"] == user
    assert _save(tmp_path / "dev", user="a_b", task="../LaMP_5") != _save(tmp_path / "dev", user="a/b", task="../LaMP_5")


@pytest.mark.parametrize(("override", "message"), [
    ({"received": "not a list"}, "received must be a list"),
    ({"kept": [1]}, "kept[0] must be a record"),
    ({"dropped": [RECEIVED[1]]}, "dropped[0] must be a (record, reason) pair"),
    ({"dropped": [(RECEIVED[1], "")]}, "reason must be a non-empty string"),
    ({"decision": ["used"]}, "decision must be a dict"),
    ({"decision": {"when": object()}}, "not JSON-serializable"),
])
def test_malformed_arguments_are_refused_and_nothing_is_written(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(SyntheticStoreError, match=re.escape(message)):
        _save(tmp_path, **override)
    assert not (tmp_path / "synthetic" / "LaMP_5" / "alice.json").exists()


def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _save(tmp_path)
    path.write_text("{not json")
    with pytest.raises(SyntheticStoreError, match="not a readable synthetic log"):
        load_synthetic_log(tmp_path, "alice", "LaMP_5")
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SyntheticStoreError, match="not a synthetic log"):
        load_synthetic_log(tmp_path, "alice", "LaMP_5")


# ------------------------------------------------------------------ never in a Flower reply
@pytest.fixture()
def _task_identity():
    """Flower stamps messages with the run's identity; set it as its simulation engine does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def test_no_device_reply_carries_the_synthetic_log(tmp_path: Path, monkeypatch, _task_identity) -> None:
    """personalize_user writes a log full of canaries; neither reply (share, personalize) nor the
    device's audit of them holds any of it, while the log itself is on the simulated device's disk."""
    from flwr.app import Context, Message, RecordDict

    import clients.device as device
    from cdcda_fl.device import node as device_node
    from cdcda_fl.core.config import resolve
    from cdcda_fl.data.lamp import write_outputs, write_questions
    from cdcda_fl.server.runs import write_simulated_consent
    from clients.codec import pack, unpack

    data = tmp_path / "data"
    profile = [{"id": "p0", "abstract": "We study graphs.", "title": "Graph Nets"},
               {"id": "p1", "abstract": "We study speech.", "title": "Speech Nets"}]
    write_questions(data / "LaMP_5" / "dev_questions.json",
                    [{"id": "q0", "input": "Generate a title for: x", "profile": profile, "user_id": "alice"}])
    write_outputs(data / "LaMP_5" / "dev_outputs.json", "LaMP_5", {"q0": "Gold"})
    cfg = resolve({"tasks": "LaMP_5", "users": 1, "data-dir": str(data), "out-dir": str(tmp_path / "run"),
                   "consent.share-fraction": 1.0, "methods": "base,local,cdcda", "eval.report": "predictions"})
    write_simulated_consent(Path(cfg["out-dir"]), cfg)
    seen: dict = {}

    def fake_personalize_user(user, synthetic, cfg_, *, storage_dir, **_kw):
        received = [dict(r) for r in synthetic]
        seen["storage_dir"] = Path(storage_dir)
        save_synthetic_log(storage_dir, user.user_id, user.task, received=received, kept=received[:1],
                           dropped=[(r, f"outlier {DROPPED_TEXT}") for r in received[1:]],
                           decision={"rule": "fake", "used_synthetic": True, "reason": f"because {KEPT_TEXT}"})
        metrics = {"rouge-1": 0.5, "rouge-l": 0.5}
        return {"user_id": user.user_id, "task": user.task, "n_queries": 1, "n_synthetic_received": len(received),
                "n_synthetic_used": 1, "golds": {"q0": "Gold"},
                "synthetic_decision": {"used_synthetic": True},
                "methods": {m: {"predictions": {"q0": "A title"}, "metrics": metrics} for m in ("base", "local", "cdcda")}}

    def fake_personalize_users(jobs, cfg_, *, storage_dir, **_kw):
        return [fake_personalize_user(user, synthetic, cfg_, storage_dir=storage_dir) for user, synthetic in jobs]

    monkeypatch.setattr(device_node, "personalize_users", fake_personalize_users)
    node = {"partition-id": 0, "num-partitions": 1}

    def call(kind: str, content: RecordDict) -> Message:
        msg = Message(content, dst_node_id=1, message_type=kind)
        return device.simulation_app(msg, Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={}))

    # Sent by the cloud: the kept record's text is in the request, and must not be echoed back.
    synthetic = {"LaMP_5/alice": [dict(r) for r in RECEIVED]}
    replies = [call("query.share", pack(cfg, share=True)),
               call("train.personalize", pack(cfg, synthetic=synthetic))]
    log_path = Path(cfg["out-dir"]) / "devices" / "synthetic" / "LaMP_5" / "alice.json"
    assert seen["storage_dir"] == Path(cfg["out-dir"]) / "devices"
    assert KEPT_TEXT in log_path.read_text() and DROPPED_TEXT in log_path.read_text()  # the canaries are stored
    (result,) = unpack(replies[1])["results"]
    assert "error" not in result and result["synthetic_decision"] == {"used_synthetic": True}  # the reply went through
    for reply in replies:
        assert not reply.has_error()
        blob = json.dumps({name: dict(rec) for name, rec in reply.content.items()}, default=str)
        for secret in (KEPT_TEXT, DROPPED_TEXT, "zebra", "syn-u-0", "outlier", "dropped_by_reason"):
            assert secret not in blob, secret
    audit = (Path(cfg["out-dir"]) / "devices" / "audit.jsonl").read_text()
    assert KEPT_TEXT not in audit and DROPPED_TEXT not in audit

"""The privacy invariant at the ClientApp boundary: only consented, scrubbed records and results leave.

The handlers are called the way Flower calls them (a Message and a Context), without Ray, and
every byte of every reply is searched for canaries planted in what the user did not consent to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict

from cdcda_fl.config import resolve
from cdcda_fl.data.lamp import write_outputs, write_questions
from clients.codec import pack, unpack
from clients.device import app, hosted_users

CANARY_DENIED = "CANARY-DENIED-7f3a"  # in a record with a denied term -> never shared
CANARY_FIELD = "CANARY-FIELD-91bc"  # in a field outside the allow-list -> never shared
CANARY_EMAIL = "canary.person@example.org"  # PII in a shared field -> scrubbed


def _user_files(root: Path) -> None:
    profile = [
        {"id": "p0", "abstract": f"We study graphs. {CANARY_FIELD}", "title": f"Graph Nets, mail {CANARY_EMAIL}"},
        {"id": "p1", "abstract": "We study speech.", "title": f"Secret project {CANARY_DENIED}"},
        {"id": "p2", "abstract": f"We study robots. {CANARY_FIELD}", "title": "Robot Learning"},
    ]
    questions = [{"id": "q0", "input": "Generate a title for the following abstract of a paper: x", "profile": profile,
                  "user_id": "alice"}]
    write_questions(root / "LaMP_5" / "dev_questions.json", questions)
    write_outputs(root / "LaMP_5" / "dev_outputs.json", "LaMP_5", {"q0": "A Title"})


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower stamps messages with the run's identity; set it as its simulation engine does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture()
def cfg(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    _user_files(data)
    return resolve({
        "tasks": "LaMP_5", "users": 1, "data-dir": str(data), "out-dir": str(tmp_path / "run"),
        "consent.share-fraction": 1.0, "consent.fields": "title", "consent.deny-terms": "secret project",
        "device.model": "tiny-random", "cloud.model": "tiny-random", "methods": "base,local,cdcda",
        "train.steps": 1, "eval.max-queries": 1,
    })


def _call(message_type: str, content: RecordDict, node_config: dict) -> Message:
    msg = Message(content, dst_node_id=1, message_type=message_type)
    ctx = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    return app(msg, ctx)


def _reply_bytes(reply: Message) -> str:
    return json.dumps({name: dict(rec) for name, rec in reply.content.items()}, default=str)


def test_share_reply_holds_only_consented_scrubbed_fields(cfg: dict) -> None:
    reply = _call("query.share", pack(cfg, share=True), {"partition-id": 0, "num-partitions": 1})
    text = _reply_bytes(reply)
    assert CANARY_DENIED not in text and CANARY_FIELD not in text and CANARY_EMAIL not in text
    shares = unpack(reply)["shares"]
    assert len(shares) == 1 and shares[0]["user_id"] == "alice"
    assert [r["id"] for r in shares[0]["records"]] == ["p0", "p2"]  # p1 denied by term
    assert all(set(r) == {"id", "title"} for r in shares[0]["records"])
    assert "[EMAIL]" in shares[0]["records"][0]["title"]


def test_share_nothing_sends_no_records(cfg: dict) -> None:
    reply = _call("query.share", pack(dict(cfg, **{"consent.share-fraction": 0.0}), share=True),
                  {"partition-id": 0, "num-partitions": 1})
    assert all(not s["records"] for s in unpack(reply)["shares"])


def test_personalize_reply_has_no_adapter_and_no_profile(cfg: dict) -> None:
    synthetic = {"LaMP_5/alice": [{"id": "syn-alice-0", "abstract": "We study cats.", "title": "Cat Nets"}]}
    reply = _call("train.personalize", pack(cfg, synthetic=synthetic), {"partition-id": 0, "num-partitions": 1})
    assert not reply.has_error()
    assert not any(isinstance(rec, ArrayRecord) for rec in reply.content.values())
    text = _reply_bytes(reply)
    for secret in (CANARY_DENIED, CANARY_FIELD, CANARY_EMAIL, "lora_A", "lora_B"):
        assert secret not in text
    (result,) = unpack(reply)["results"]
    assert set(result["methods"]) == {"base", "local", "cdcda"}
    assert result["n_synthetic_used"] == 1
    # the adapter exists, but only on the device's own disk
    assert list((Path(cfg["out-dir"]) / "devices").rglob("adapter_model.safetensors"))
    assert len(text) < 20_000


def test_real_device_serves_only_its_own_user(cfg: dict) -> None:
    assert [u.user_id for u in hosted_users({"data-dir": cfg["data-dir"], "user-id": "alice"}, cfg)] == ["alice"]
    assert hosted_users({"data-dir": cfg["data-dir"], "user-id": "bob"}, cfg) == []
    assert hosted_users({"partition-id": 1, "num-partitions": 2}, cfg) == []

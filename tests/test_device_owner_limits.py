"""What a real device does with server-chosen sizes and model paths (issue 29, items 7 and 8).

The ClientApp is called the way a SuperNode calls it (a Message and a Context with a real
device's node config: ``data-dir`` + ``user-id``); nothing is mocked below the ClientApp.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from cdcda_fl.core.config import resolve
from cdcda_fl.data.lamp import write_outputs, write_questions
from cdcda_fl.privacy.audit_log import read_audit
from clients.codec import pack, unpack
from clients.device import app

HUGE = 9 * 1024 * 1024


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture()
def device(tmp_path: Path) -> tuple[dict, dict]:
    """(run config the server sends, the device's node config); alice's first abstract is 9 MB."""
    data = tmp_path / "data"
    profile = [{"id": "p0", "abstract": "x" * HUGE, "title": "Long One"},
               {"id": "p1", "abstract": "We study speech.", "title": "Speech"},
               {"id": "p2", "abstract": "We study robots.", "title": "Robots"}]
    write_questions(data / "LaMP_5" / "dev_questions.json",
                    [{"id": "q0", "input": "Generate a title for: cats", "profile": profile, "user_id": "alice"}])
    write_outputs(data / "LaMP_5" / "dev_outputs.json", "LaMP_5", {"q0": "Cats"})
    (data / "consent.toml").write_text("[default]\nshare-fraction = 1.0\nscrub = false\n")
    cfg = resolve({"tasks": "LaMP_5", "users": 1, "data-dir": str(data), "out-dir": str(tmp_path / "run"),
                   "consent.share-fraction": 1.0, "device.model": "tiny-random", "methods": "base",
                   "eval.max-queries": 1, "eval.report": "metrics"})
    return cfg, {"data-dir": str(data), "user-id": "alice"}


def _call(message_type: str, content: RecordDict, node_config: dict) -> Message:
    msg = Message(content, dst_node_id=1, message_type=message_type)
    return app(msg, Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}))


def _personalize(cfg: dict, node_config: dict, **keys) -> dict:
    reply = _call("train.personalize", pack(dict(cfg, **keys), synthetic={"LaMP_5/alice": []}), node_config)
    assert not reply.has_error()
    (result,) = unpack(reply)["results"]
    return result


# ---------------------------------------------------------------------- item 8: the device caps each field
def test_a_device_never_shares_more_than_its_field_cap(device) -> None:
    from cdcda_fl.privacy.share_cap import MAX_FIELD_BYTES

    cfg, node = device
    reply = _call("query.share", pack(cfg, share=True), node)
    (share,) = unpack(reply)["shares"]
    # ids leave opaque (issue 29.2), so the two records are told apart by their sizes
    sizes = sorted(len(r["abstract"].encode()) for r in share["records"])
    assert sizes[:2] == [len("We study speech.")] * 2 and MAX_FIELD_BYTES // 2 < sizes[2] <= MAX_FIELD_BYTES
    (line,) = [ln for ln in read_audit(Path(node["data-dir"]) / ".cdcda" / "audit.jsonl") if ln["kind"] == "share"]
    assert line["bytes"] == share["bytes"] < 3 * MAX_FIELD_BYTES  # the audit records the capped payload


@pytest.mark.parametrize("value,limit", [("é" * 3000, 4096), ("word " * 2000, 4096), ("x" * 10, 4096)])
def test_cap_text_cuts_at_a_character_and_word_boundary(value: str, limit: int) -> None:
    from cdcda_fl.privacy.share_cap import cap_text

    out = cap_text(value, limit)
    assert len(out.encode("utf-8")) <= limit and value.startswith(out)
    assert out == value or len(out.encode()) > limit // 2


# ---------------------------------------------------------------------- item 7: server-named model paths
def test_the_server_cannot_probe_the_device_disk_through_device_model(device, tmp_path: Path) -> None:
    """Reproduction: an existing folder, a file and a missing path used to fail with different error
    types (ValueError vs OSError), so the server learned what exists on the device's disk."""
    cfg, node = device
    folder, file = tmp_path / "home-of-owner", tmp_path / "secret.txt"
    folder.mkdir()
    file.write_text("x")
    replies = []
    for probe in (str(folder), str(file), str(tmp_path / "missing"), "~/.ssh", "some-org/some-hub-model"):
        for key in ("device.model", "cloud.model"):
            extra = {"methods": "base,cloud", "cloud.backend": "hf"} if key == "cloud.model" else {}
            result = _personalize(cfg, node, **{key: probe, **extra})
            replies.append(json.dumps(result, sort_keys=True))
            assert result["error"] == "model_not_allowed", result
    assert len(set(replies)) == 1  # the same bytes whatever exists at the path
    log = (Path(node["data-dir"]) / ".cdcda" / "errors.jsonl").read_text()
    assert "model_not_allowed" not in log and "neither a bundled preset" in log  # the owner sees why


def test_models_the_owner_listed_load(device, tmp_path: Path) -> None:
    from cdcda_fl.device.models import resolve_model

    cfg, node = device
    folder = resolve_model("tiny-random")  # a local checkpoint folder, as an owner's own model
    assert _personalize(cfg, node, **{"device.model": folder})["error"] == "model_not_allowed"
    ok = _personalize(cfg, dict(node, **{"allowed-models": f"/nowhere, {folder}/"}), **{"device.model": folder})
    assert "error" not in ok and "base" in ok["methods"], ok
    home = Path(node["data-dir"]) / ".cdcda"
    (home / "models.txt").write_text(f"# my models\n{folder}\n")
    assert "error" not in _personalize(cfg, node, **{"device.model": folder})
    assert "error" not in _personalize(cfg, node)  # bundled presets are always allowed


def test_a_fedavg_message_is_checked_against_the_device_model_only(tmp_path: Path) -> None:
    """A FedAvg round's config carries no ``methods``; the owner's model check read it and failed
    every round on real devices (issue 31, found with deploy/lab.sh)."""
    from cdcda_fl.core.config import message_config, received_config
    from cdcda_fl.device.model_policy import enforce_owner_models, requested_models

    cfg = resolve({"tasks": "LaMP_5", "device.model": "tiny-random", "methods": "base,fedavg,cloud"})
    fedavg_cfg = received_config("fedavg", message_config("fedavg", cfg))
    assert requested_models(fedavg_cfg) == [("device.model", "tiny-random")]
    enforce_owner_models({"data-dir": str(tmp_path)}, fedavg_cfg, tmp_path)  # a preset: allowed, no error
    personalize_cfg = received_config("personalize", message_config("personalize", cfg))
    assert ("cloud.model", str(cfg["cloud.model"])) in requested_models(personalize_cfg)

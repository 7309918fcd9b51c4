"""The privacy invariant at the ClientApp boundary: only consented, scrubbed records and results leave.

The handlers are called the way Flower calls them (a Message and a Context), without Ray, and
every byte of every reply is searched for canaries planted in what the user did not consent to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict

from cdcda_fl.core.config import resolve
from cdcda_fl.data.lamp import write_outputs, write_questions
from cdcda_fl.device.node import SIMULATED, hosted_users
from cdcda_fl.privacy.audit_log import read_audit
from cdcda_fl.privacy.record_ids import device_key, own_ids
from cdcda_fl.server.runs import write_simulated_consent
from clients.codec import pack, unpack
from clients.device import simulation_app as app

CANARY_DENIED = "CANARY-DENIED-7f3a"  # in a record with a denied term -> never shared
CANARY_FIELD = "CANARY-FIELD-91bc"  # in a field outside the allow-list -> never shared
CANARY_EMAIL = "canary.person@example.org"  # PII in a shared field -> scrubbed
GOLD_TITLE = "Hidden Gold Title Xq7"  # the user's held-out gold
QUERY_TEXT = "abstract about zebrafish regeneration Wv3"  # the user's held-out query
SIM = {"partition-id": 0, "num-partitions": 1}


def _user_files(root: Path) -> None:
    profile = [
        {"id": "p0", "abstract": f"We study graphs. {CANARY_FIELD}", "title": f"Graph Nets, mail {CANARY_EMAIL}"},
        {"id": "p1", "abstract": "We study speech.", "title": f"Secret project {CANARY_DENIED}"},
        {"id": "p2", "abstract": f"We study robots. {CANARY_FIELD}", "title": "Robot Learning"},
    ]
    questions = [{"id": "q0", "input": f"Generate a title for the following abstract of a paper: {QUERY_TEXT}",
                  "profile": profile, "user_id": "alice"}]
    write_questions(root / "LaMP_5" / "dev_questions.json", questions)
    write_outputs(root / "LaMP_5" / "dev_outputs.json", "LaMP_5", {"q0": GOLD_TITLE})


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower stamps messages with the run's identity; set it as its simulation engine does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture()
def run_cfg(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    _user_files(data)
    return resolve({
        "tasks": "LaMP_5", "users": 1, "data-dir": str(data), "out-dir": str(tmp_path / "run"),
        "consent.share-fraction": 1.0, "consent.fields": "title", "consent.deny-terms": "secret project",
        "device.model": "tiny-random", "cloud.model": "tiny-random", "methods": "base,local,cdcda",
        "train.steps": 1, "eval.max-queries": 1,
    })


@pytest.fixture()
def cfg(run_cfg: dict) -> dict:
    """The run config with the simulated users' own consent file written (as prepare_run_dir does)."""
    write_simulated_consent(Path(run_cfg["out-dir"]), run_cfg)
    return run_cfg


def _call(message_type: str, content: RecordDict, node_config: dict) -> Message:
    msg = Message(content, dst_node_id=1, message_type=message_type)
    ctx = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    return app(msg, ctx)


def _own(cfg: dict, share: dict, home: Path | None = None) -> list[str]:
    """The owner's ids of a share's records: only the device's key maps the opaque ids back."""
    key = device_key(home or Path(cfg["out-dir"]) / "devices")
    back = own_ids(key, share["task"], share["user_id"], ["p0", "p1", "p2"])
    return [back[r["id"]] for r in share["records"]]


def _reply_bytes(reply: Message) -> str:
    return json.dumps({name: dict(rec) for name, rec in reply.content.items()}, default=str)


def test_share_reply_holds_only_consented_scrubbed_fields(cfg: dict) -> None:
    reply = _call("query.share", pack(cfg, share=True), {"partition-id": 0, "num-partitions": 1})
    text = _reply_bytes(reply)
    assert CANARY_DENIED not in text and CANARY_FIELD not in text and CANARY_EMAIL not in text
    shares = unpack(reply)["shares"]
    assert len(shares) == 1 and shares[0]["user_id"] == "alice"
    assert _own(cfg, shares[0]) == ["p0", "p2"]  # p1 denied by term
    assert not {"p0", "p1", "p2"} & {r["id"] for r in shares[0]["records"]}  # the owner's ids stay home
    assert all(set(r) == {"id", "title"} for r in shares[0]["records"])
    assert "[EMAIL]" in shares[0]["records"][0]["title"]


def test_share_nothing_sends_no_records(cfg: dict) -> None:
    nothing = dict(cfg, **{"consent.share-fraction": 0.0})
    write_simulated_consent(Path(cfg["out-dir"]), nothing)  # a run writes its devices' file from its own keys
    reply = _call("query.share", pack(nothing, share=True), {"partition-id": 0, "num-partitions": 1})
    assert all(not s["records"] for s in unpack(reply)["shares"])


def test_personalize_reply_has_no_adapter_and_no_profile(cfg: dict) -> None:
    synthetic = {"LaMP_5/alice": [{"id": "syn-alice-0", "abstract": "We study cats.", "title": "Cat Nets"}]}
    # rule none: a 3-item profile is too small for the holdout check, which would fall back
    reply = _call("train.personalize", pack(dict(cfg, **{"eval.report": "predictions", "train.synthetic-gate": "none"}),
                                            synthetic=synthetic), {"partition-id": 0, "num-partitions": 1})
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
    assert hosted_users({"partition-id": 1, "num-partitions": 2, SIMULATED: True}, cfg) == []


# ------------------------------------------------------------------ consent belongs to the device (issue 16)
def _share(cfg: dict, node_config: dict = SIM) -> list[dict]:
    reply = _call("query.share", pack(cfg, share=True), node_config)
    assert not reply.has_error()
    return unpack(reply)["shares"]


def test_server_config_that_widens_sharing_is_ignored(cfg: dict) -> None:
    wide = dict(cfg, **{"consent.share-fraction": 1.0, "consent.scrub": False, "consent.fields": "",
                        "consent.deny-terms": "", "consent.record-ids": "p0,p1,p2"})
    (share,) = _share(wide)
    assert _own(wide, share) == ["p0", "p2"] and all(set(r) == {"id", "title"} for r in share["records"])
    text = json.dumps(share)
    assert CANARY_DENIED not in text and CANARY_FIELD not in text and CANARY_EMAIL not in text


def test_server_can_make_sharing_stricter(cfg: dict, tmp_path: Path) -> None:
    """On a real device the server's fraction is a fraction of the device's own selection (2 of 3:
    p1 is denied). A simulated device has no ceiling: the run wrote its file from these very keys."""
    (Path(cfg["data-dir"]) / "consent.toml").write_text('[default]\nshare-fraction = 1.0\ndeny-terms = "secret project"\n')
    real = {"data-dir": cfg["data-dir"], "user-id": "alice", "storage-dir": str(tmp_path / "dev")}
    (share,) = _share(dict(cfg, **{"consent.share-fraction": 0.5}), real)
    assert len(share["records"]) == 1
    (share,) = _share(dict(cfg, **{"consent.share-fraction": 0.34}), real)
    assert share["records"] == []
    (share,) = _share(dict(cfg, **{"consent.share-fraction": 0.34}))  # simulated: its file (fraction 1.0) alone
    assert len(share["records"]) == 2


def test_device_policy_of_zero_shares_nothing_whatever_the_server_sends(cfg: dict) -> None:
    (Path(cfg["out-dir"]) / "devices" / "consent.toml").write_text("[default]\nshare-fraction = 0\n")
    for server in ({"consent.share-fraction": 1.0}, {"consent.record-ids": "p0,p1,p2"}, {"consent.scrub": False}):
        assert all(not s["records"] for s in _share(dict(cfg, **server)))


def test_no_device_policy_means_share_nothing(run_cfg: dict) -> None:
    shares = _share(dict(run_cfg, **{"consent.share-fraction": 1.0}))
    assert shares and all(not s["records"] for s in shares)


def test_real_device_reads_its_own_consent_file(cfg: dict, tmp_path: Path) -> None:
    real = {"data-dir": cfg["data-dir"], "user-id": "alice", "storage-dir": str(tmp_path / "dev")}
    assert all(not s["records"] for s in _share(cfg, real))  # none at the data-dir root yet
    (Path(cfg["data-dir"]) / "consent.toml").write_text('[default]\nshare-fraction = 1.0\nfields = "abstract"\n')
    (share,) = _share(dict(cfg, **{"consent.fields": "", "consent.deny-terms": ""}), real)
    assert [set(r) for r in share["records"]] == [{"id", "abstract"}] * 3
    other = tmp_path / "mine.toml"
    other.write_text('[alice]\nshare-fraction = 0.34\n')
    (share,) = _share(dict(cfg, **{"consent.deny-terms": ""}), dict(real, **{"consent-file": str(other)}))
    assert len(share["records"]) == 1


def test_share_reply_has_no_oracle_counts(cfg: dict) -> None:
    (share,) = _share(cfg)
    assert not {"n_total", "n_denied", "n_profile"} & set(share)


def test_server_named_overrides_file_is_never_opened(cfg: dict, tmp_path: Path) -> None:
    probe = tmp_path / "secret.json"
    probe.write_text(json.dumps({"github.com": {"oauth_token": "tok-SECRET-1"}}))
    reply = _call("query.share", pack(dict(cfg, **{"consent.overrides": str(probe)}), share=True), SIM)
    text = _reply_bytes(reply)
    assert "oauth_token" not in text and "github.com" not in text and "SECRET" not in text
    assert unpack(reply)["errors"] == [] and len(unpack(reply)["shares"][0]["records"]) == 2


def test_errors_leave_as_codes_without_values_or_paths(cfg: dict) -> None:
    (Path(cfg["out-dir"]) / "devices" / "consent.toml").write_text(
        '[default]\nshare-fraction = 1.0\n\n[alice]\nfields = "call 415-555-0100 bob@ex.com"\n')
    reply = _call("query.share", pack(cfg, share=True), SIM)
    text = _reply_bytes(reply)
    assert "415-555-0100" not in text and "bob@ex.com" not in text and cfg["out-dir"] not in text
    (err,) = unpack(reply)["errors"]
    assert err["user"] == "LaMP_5/alice" and err["reason"].startswith("consent_error")
    local = (Path(cfg["out-dir"]) / "devices" / "errors.jsonl").read_text()
    assert "415-555-0100" in local  # the full message stays on the device
    bad = Path(cfg["data-dir"]) / "LaMP_5" / "dev_questions.json"
    bad.write_text('[{"id": "q0", "input": "private call 415-555-0100", "profile": [{"id": 1}]}]')
    reply = _call("query.share", pack(cfg, share=True), {"data-dir": cfg["data-dir"], "storage-dir": cfg["out-dir"] + "/d"})
    text = _reply_bytes(reply)
    assert "415-555-0100" not in text and str(bad) not in text and cfg["data-dir"] not in text


# ------------------------------------------------------------------ what results leave (issue 12.3 / 16.2)
@pytest.mark.parametrize(("level", "node"), [("metrics", "sim"), ("auto", "real"), ("none", "sim")])
def test_results_under_metrics_or_none_hold_no_golds_or_queries(cfg: dict, tmp_path: Path, level: str, node: str) -> None:
    node_config = SIM if node == "sim" else {"data-dir": cfg["data-dir"], "user-id": "alice",
                                             "storage-dir": str(tmp_path / "dev")}
    synthetic = {"LaMP_5/alice": [{"id": "syn-0", "abstract": "We study cats.", "title": "Cat Nets"}]}
    reply = _call("train.personalize", pack(dict(cfg, **{"eval.report": level}), synthetic=synthetic), node_config)
    text = _reply_bytes(reply)
    for secret in (GOLD_TITLE, QUERY_TEXT, "zebrafish", "q0", "n_profile", "tokens", "predictions", "golds"):
        assert secret not in text, secret
    (result,) = unpack(reply)["results"]
    expected = "none" if level == "none" else "metrics"
    assert result["report"] == expected
    if expected == "metrics":
        assert set(result["methods"]) == {"base", "local", "cdcda"}
        assert all("rouge-1" in e["metrics"] for e in result["methods"].values())


def test_owner_can_lower_the_report_but_not_the_server_raise_it(cfg: dict, tmp_path: Path) -> None:
    synthetic = {"LaMP_5/alice": []}
    (Path(cfg["out-dir"]) / "devices" / "consent.toml").write_text('[default]\nshare-fraction = 0\nreport = "none"\n')
    reply = _call("train.personalize", pack(dict(cfg, **{"eval.report": "predictions", "methods": "base"}),
                                            synthetic=synthetic), SIM)
    (result,) = unpack(reply)["results"]
    assert result == {"user_id": "alice", "task": "LaMP_5", "report": "none"}


def test_device_audit_records_every_reply(cfg: dict) -> None:
    share_reply = _call("query.share", pack(cfg, share=True), SIM)
    synthetic = {"LaMP_5/alice": []}
    result_reply = _call("train.personalize", pack(dict(cfg, **{"methods": "base"}), synthetic=synthetic), SIM)
    lines = read_audit(Path(cfg["out-dir"]) / "devices" / "audit.jsonl")
    assert [ln["kind"] for ln in lines] == ["share", "reply", "result", "reply"]
    assert lines[0]["record_ids"] == [r["id"] for r in unpack(share_reply)["shares"][0]["records"]]
    assert lines[0]["n_total"] == 3  # kept on the device only
    from cdcda_fl.privacy.audit_log import canonical_json

    (result,) = unpack(result_reply)["results"]
    assert lines[2]["bytes"] == len(canonical_json(result))
    # ... and each whole reply (hosted users, error codes, every user's part) has its own line
    for line, reply, request in ((lines[1], share_reply, "share"), (lines[3], result_reply, "personalize")):
        assert line["request"] == request and line["destination"] == "server"
        assert line["bytes"] == len(canonical_json(unpack(reply)))


def test_a_node_level_error_reply_is_audited_too(cfg: dict) -> None:
    """Before 2026-12-04 a node that failed as a whole replied with a code and wrote no audit line."""
    import hashlib

    from cdcda_fl.privacy.audit_log import canonical_json

    reply = _call("train.personalize", pack(cfg, not_synthetic="x"), SIM)
    (line,) = read_audit(Path(cfg["out-dir"]) / "devices" / "audit.jsonl")
    assert line["kind"] == "reply" and line["request"] == "personalize" and line["user"] == "*"
    assert line["sha256"] == hashlib.sha256(canonical_json(unpack(reply))).hexdigest()


# ------------------------------------------------------------------ nothing escapes as exception text
def test_unexpected_failure_leaves_as_a_code_not_as_flower_error_text(cfg: dict) -> None:
    reply = _call("train.personalize", pack(cfg, not_synthetic="private call 415-555-0100"), SIM)
    assert not reply.has_error()  # Flower would forward an exception's message as the error reason
    (result,) = unpack(reply)["results"]
    assert result["error"].startswith("device_error KeyError") and "415" not in _reply_bytes(reply)
    assert "synthetic" in (Path(cfg["out-dir"]) / "devices" / "errors.jsonl").read_text()


def test_real_device_keeps_adapters_and_index_at_home_whatever_the_server_says(cfg: dict, tmp_path: Path) -> None:
    (Path(cfg["data-dir"]) / "consent.toml").write_text("[default]\nshare-fraction = 0\n")
    server_dir = tmp_path / "server-chosen"
    real = {"data-dir": cfg["data-dir"], "user-id": "alice"}
    sent = dict(cfg, **{"out-dir": str(server_dir), "device.storage-dir": str(server_dir / "st"), "methods": "local"})
    reply = _call("train.personalize", pack(sent, synthetic={"LaMP_5/alice": []}), real)
    (result,) = unpack(reply)["results"]
    assert "error" not in result, result
    home = Path(cfg["data-dir"]) / ".cdcda"
    assert list(home.rglob("adapter_model.safetensors")) and (home / "index").is_dir()
    assert not server_dir.exists() or not list(server_dir.rglob("*.safetensors"))


def test_consent_file_naming_unknown_users_warns_on_the_device(cfg: dict, capsys) -> None:
    (Path(cfg["data-dir"]) / "consent.toml").write_text("[default]\nshare-fraction = 1.0\n\n[alcie]\nshare-fraction = 0\n")
    reply = _call("query.share", pack(cfg, share=True), {"data-dir": cfg["data-dir"], "user-id": "alice"})
    assert "alcie" not in _reply_bytes(reply)  # the server never learns it
    assert "alcie" in capsys.readouterr().err
    assert "alcie" in (Path(cfg["data-dir"]) / ".cdcda" / "errors.jsonl").read_text()


def test_dp_decision_leaves_at_metrics_without_training_losses() -> None:
    """The DP decision is post-processing (docs/dp.md): it leaves at `metrics`; a training loss never does."""
    from cdcda_fl.privacy.report import filter_result

    dp = {"chosen": None, "fell_back": True, "reason": "no candidate beats the base", "candidates": [],
          "epsilon": 7.9, "delta": 0.01, "noise_multiplier": 1.8}
    result = {"user_id": "u", "task": "LaMP_2", "n_queries": 3, "methods": {
        "local": {"metrics": {"accuracy": 0.5}, "epsilon": 7.9, "dp": dp,
                  "train": {"final_loss": 0.123456, "seconds": 9.87}, "predictions": {"q": "secret"}}}}
    out = filter_result(result, "metrics")
    assert out["methods"]["local"] == {"metrics": {"accuracy": 0.5}, "epsilon": 7.9, "dp": dp}
    assert "0.123456" not in json.dumps(out) and "secret" not in json.dumps(out)
    assert "methods" not in filter_result(result, "none")


def test_every_message_silences_library_chatter_again(tmp_path: Path, monkeypatch) -> None:
    """Regression: in Flower's Ray actors the logger levels set at import did not hold when the
    models loaded, so bitsandbytes' notice reached every actor's console; each message re-applies them."""
    import logging

    monkeypatch.chdir(tmp_path)  # the unconfigured node audits its reply under ./.cdcda-device

    from clients.device import _guarded

    logging.getLogger("bitsandbytes").setLevel(logging.NOTSET)
    handler = _guarded("share", lambda node_config, cfg, request, msg: {"users": [], "shares": [], "errors": []})
    reply = handler(Message(pack(resolve({}), share=True), dst_node_id=1, message_type="query.share"),
                    Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    assert unpack(reply) == {"users": [], "shares": [], "errors": []}
    assert logging.getLogger("bitsandbytes").level == logging.ERROR

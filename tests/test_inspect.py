"""`cdcda inspect RUN --user U`: one user's shares, cloud accounting, device store and metrics, from a run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.cli import main
from cdcda_fl.device.synthetic_store import save_synthetic_log
from cdcda_fl.inspect_cli import InspectError, inspect_user
from cdcda_fl.privacy.audit_log import AuditLog
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.server.aggregate import aggregate
from cdcda_fl.server.runs import ResultStore

KEPT = {"id": "syn-alice-0", "description": "A heist crew KEPT-7e1 plans one last job.", "tag": "action",
        "synthetic": True}
DROPPED = {"id": "syn-alice-1", "description": "A lonely robot DROPPED-c44 finds love.", "tag": "romance",
           "synthetic": True}


def _metrics(acc: float) -> dict:
    return {"accuracy": acc, "f1": acc / 2}


def make_run(root: Path, *, with_store: bool = True, aggregated: bool = True) -> Path:
    """A small finished run: LaMP_2 users alice (shared, cloud wrote 2, device kept 1) and bob
    (cloud error); carol failed. Written with the project's own writers."""
    run = root / "run"
    cfg = {"out-dir": str(run), "tasks": "LaMP_2", "methods": "local,cdcda", "seed": 0,
           "device.model": "smollm2-135m", "cloud.model": "gemma3-270m", "device.storage-dir": ""}
    write_json_atomic(run / "config.json", {"config": cfg})
    audit = AuditLog(run / "audit.jsonl")
    for uid in ("alice", "bob"):
        audit.record(SharedRecords(uid, "LaMP_2", [{"id": "p1", "tag": "action"}], ["p1"], ["id", "tag"], 0, 1, 28,
                                   {"EMAIL": 1}), destination="cloud:hf:gemma3-270m", request="augment")
    store = ResultStore(run)
    clouds = {"alice": {"n_records": 2, "counts": {"generated": 5, "accepted": 2, "rejected_near_copy": 3}, "error": None},
              "bob": {"n_records": 0, "counts": {"generated": 0, "accepted": 0}, "error": "BackendError: timed out"}}
    for uid, (local, cdcda) in {"alice": (0.5, 0.75), "bob": (0.25, 0.25)}.items():
        store.write({"task": "LaMP_2", "user_id": uid, "n_queries": 4, "n_synthetic_received": clouds[uid]["n_records"],
                     "n_synthetic_used": 1 if uid == "alice" else 0, "cloud": clouds[uid],
                     "synthetic_decision": {"used_synthetic": uid == "alice"},
                     "methods": {"local": {"metrics": _metrics(local)}, "cdcda": {"metrics": _metrics(cdcda)}}})
    store.record_failure("LaMP_2/carol", "device_error RuntimeError (see the device's own log)", phase="personalize")
    if with_store:
        save_synthetic_log(run / "devices", "alice", "LaMP_2", received=[KEPT, DROPPED], kept=[KEPT],
                           dropped=[(DROPPED, "label_not_in_profile")],
                           decision={"rule": "validation-gain", "used_synthetic": True, "reason": "val loss -0.2"})
    if aggregated:
        aggregate(cfg)
    return run


def test_view_joins_share_cloud_store_and_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    view = inspect_user(run, "alice")
    assert list(view["tasks"]) == ["LaMP_2"]
    v = view["tasks"]["LaMP_2"]
    assert v["status"] == "finished"
    assert v["shared"]["record_ids"] == ["p1"] and v["shared"]["fields"] == ["id", "tag"] and v["share_requests"] == 1
    assert v["cloud"]["counts"]["rejected_near_copy"] == 3 and v["cloud"]["error"] is None
    assert v["device_store"]["available"] and v["device_store"]["kept"] == [KEPT]
    assert v["device_store"]["dropped"] == [{"record": DROPPED, "reason": "label_not_in_profile"}]
    assert v["decision"] == {"rule": "validation-gain", "used_synthetic": True, "reason": "val loss -0.2"}
    assert v["metrics"] == {"local": _metrics(0.5), "cdcda": _metrics(0.75)} and v["metrics_from"] == "results.json"
    # The same user given as a user key, and a single task
    assert inspect_user(run, "LaMP_2/alice", None)["tasks"].keys() == {"LaMP_2"}


def test_text_view_names_records_reasons_decision_and_metrics(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    assert main(["inspect", str(run), "--user", "alice"]) == 0
    out, err = capsys.readouterr()
    text = " ".join(out.split())  # rich wraps long lines
    for expected in ("KEPT-7e1", "DROPPED-c44", "label_not_in_profile", "validation-gain", "near_copy 3",
                     "2 accepted", "record ids: p1", "0.750", "0.500", "cloud:hf:gemma3-270m"):
        assert expected in text, expected
    assert err == ""


def test_cloud_error_and_failure_are_shown(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    assert main(["inspect", str(run), "--user", "bob", "--task", "LaMP_2"]) == 0
    out, err = capsys.readouterr()
    assert "BackendError: timed out" in " ".join(out.split())
    assert "no device store for LaMP_2/bob" in err and "on a real device the store lives on the device" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["inspect", str(run), "--user", "carol"]) == 0
    out, _ = capsys.readouterr()
    assert "failed" in out and "device_error RuntimeError" in out


def test_json_output_is_complete_and_machine_readable(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    long_text = "word " * 200
    save_synthetic_log(run / "devices", "alice", "LaMP_2", received=[{**KEPT, "description": long_text}],
                       kept=[{**KEPT, "description": long_text}], dropped=[], decision={"used_synthetic": True})
    assert main(["inspect", str(run), "--user", "alice", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    v = data["tasks"]["LaMP_2"]
    assert v["device_store"]["kept"][0]["description"] == long_text  # untruncated
    assert v["cloud"]["counts"]["accepted"] == 2 and data["user"] == "alice"


def test_partial_run_without_results_json_uses_the_user_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, aggregated=False)
    v = inspect_user(run, "alice")["tasks"]["LaMP_2"]
    assert v["metrics"]["cdcda"]["accuracy"] == 0.75 and v["metrics_from"].startswith("users/LaMP_2")


def test_store_under_configured_storage_dir_or_a_lab_node_is_found(tmp_path: Path) -> None:
    run = make_run(tmp_path, with_store=False)
    assert not inspect_user(run, "alice")["tasks"]["LaMP_2"]["device_store"]["available"]
    save_synthetic_log(run / "devices" / "node3", "alice", "LaMP_2", received=[KEPT], kept=[KEPT], dropped=[],
                       decision={"used_synthetic": True})
    v = inspect_user(run, "alice")["tasks"]["LaMP_2"]
    assert v["device_store"]["available"] and "node3" in v["device_store"]["path"]
    elsewhere = tmp_path / "disk"
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"]["device.storage-dir"] = str(elsewhere)
    (run / "config.json").write_text(json.dumps(cfg))
    save_synthetic_log(elsewhere, "alice", "LaMP_2", received=[], kept=[], dropped=[], decision={"used_synthetic": False})
    v = inspect_user(run, "alice")["tasks"]["LaMP_2"]
    assert v["device_store"]["path"].startswith(str(elsewhere)) and v["decision"] == {"used_synthetic": False}


@pytest.mark.parametrize(("args", "message"), [
    (["--user", "alice"], "does not exist"),
    (["--user", "zed"], "user 'zed' is not in run"),
    (["--user", "alice", "--task", "LaMP_5"], "has nothing for LaMP_5"),
    (["--user", "alice", "--task", "LaMP_9"], "LaMP_9"),
])
def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    run = make_run(tmp_path)
    target = tmp_path / "missing" if message == "does not exist" else run
    assert main(["inspect", str(target), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if "zed" in args:
        assert "known users: alice, bob, carol" in err


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InspectError, match="not a cdcda run directory"):
        inspect_user(tmp_path / "empty", "alice")


def test_a_corrupt_store_is_a_clear_error(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    (run / "devices" / "synthetic" / "LaMP_2" / "alice.json").write_text("{cut")
    assert main(["inspect", str(run), "--user", "alice"]) == 2
    assert "not a readable synthetic log" in capsys.readouterr().err


def test_inspect_writes_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    inspect_user(run, "alice")
    inspect_user(run, "bob")
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before

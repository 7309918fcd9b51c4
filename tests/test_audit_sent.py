"""`cdcda audit sent`: a device owner reads what their device sent from its own audit log."""

from __future__ import annotations

import json
from pathlib import Path

from cdcda_fl.cli import main
from cdcda_fl.privacy.audit_log import AuditLog
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.privacy.sent import summarize_sent


def _log(storage: Path) -> None:
    log = AuditLog(storage / "audit.jsonl")
    log.record(SharedRecords("u1", "LaMP_2", [{"id": "p1", "tag": "comedy"}], ["p1"], ["tag"], n_total=4, n_shared=1,
                             bytes=30), destination="server", request="share", local=True)
    log.record(SharedRecords("u1", "LaMP_5", [], [], [], n_total=3, n_shared=0, bytes=2), destination="server",
               request="share", local=True)
    log.record_payload("reply", "*", "*", {"users": ["LaMP_2/u1"]}, destination="server", request="share")
    log.record_payload("result", "u1", "LaMP_2", {"metrics": {}}, destination="server", report="metrics")


def test_sent_sums_records_bytes_and_results_per_user(tmp_path: Path, capsys) -> None:
    _log(tmp_path)
    summary = summarize_sent(tmp_path)
    assert (summary["records"], summary["share_bytes"], summary["replies"]) == (1, 32, 1)
    assert [(s["task"], s["records"], s["of"]) for s in summary["shares"]] == [("LaMP_2", 1, 4), ("LaMP_5", 0, 3)]
    assert summary["results"] == [{"user": "u1", "task": "LaMP_2", "report": "metrics", "bytes": summary["results"][0]["bytes"]}]
    assert summarize_sent(tmp_path / "audit.jsonl", skip=3)["records"] == 0  # lines of earlier runs left out

    assert main(["audit", "sent", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "shared 1 record(s), 32 bytes" in out and "LaMP_2/u1: 1 of 4 record(s)" in out
    assert "LaMP_2/u1: result (metrics)" in out
    assert main(["audit", "sent", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["records"] == 1
    assert main(["audit", "sent", str(tmp_path / "nope")]) == 1
    assert "no audit log at" in capsys.readouterr().err


def test_fedavg_updates_are_counted_in_what_a_device_sent(tmp_path: Path) -> None:
    """The lab's summary left out FedAvg updates (30 kB each on tiny-random, 3.7 MB on SmolLM2):
    every byte that left is in the log, and the owner's summary must show it (issue 31)."""
    from cdcda_fl.privacy.sent import format_sent

    log = AuditLog(tmp_path / "audit.jsonl")
    for rnd in (1, 2):
        log.record_bytes("update", "*", "LaMP_2", n_bytes=1000 + rnd, sha256="0" * 64,
                         fields=["arrays", "metrics.num-examples"], destination="server", request="fedavg",
                         round=rnd, users=["alice"], n_arrays=16)
    summary = summarize_sent(tmp_path)
    assert summary["update_bytes"] == 2003 and len(summary["updates"]) == 2
    text = format_sent(summary, "node0")
    assert "2 FedAvg update(s) of 2003 bytes" in text.splitlines()[0]
    assert "LaMP_2: 2 FedAvg update(s) (adapter arrays + record count), 2003 bytes, trained on alice" in text

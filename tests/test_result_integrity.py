"""One node cannot touch another user's results; the run dir is written only where it should be.

- issue 29.4: results are keyed by (task, user, query). A node that reports its own user with
  an honest user's query ids (and golds equal to its predictions) used to replace the honest
  user's predictions in the LaMP-format files, because the report merged every user's golds and
  predictions by query id. Checked end to end through Flower's simulation engine with one
  malicious node (slow), and on result files (fast).
- a node's error text is stored and printed sanitized, and names only users the node holds.
- issue 34.4: a table row counts the users whose metrics it shows, and says how many reported at
  a lower level.
- issue 29.10: appends never follow a planted link; a run dir whose users/ (or another folder the
  run writes) is a link is refused by a real `cdcda run`, with a clear error and no traceback.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cdcda_fl.server.aggregate import aggregate
from cdcda_fl.core.atomic import UnsafePathError, append_text
from cdcda_fl.evaluation.metrics import score
from cdcda_fl.server.node_guard import NodeGuard, Refused, node_text
from cdcda_fl.reporting.paper_table import paper_table
from cdcda_fl.reporting.results import print_table
from cdcda_fl.server.runs import ResultStore

ROOT = Path(__file__).resolve().parent.parent
HIJACK = "HIJACKED"


def _result(uid: str, golds: dict[str, str], preds: dict[str, str], report: str = "predictions") -> dict:
    metrics = score("LaMP_2", golds, preds)
    return {"task": "LaMP_2", "user_id": uid, "n_queries": len(golds), "golds": golds, "report": report,
            "methods": {"base": {"predictions": preds, "metrics": metrics}}}


def test_a_user_reusing_another_users_query_ids_replaces_nothing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    honest = _result("alice", {"a-q0": "comedy", "a-q1": "romance"}, {"a-q0": "comedy", "a-q1": "fantasy"})
    store.write(honest)
    # mallory's own result, under alice's query ids, golds equal to its predictions (accuracy 1.0)
    store.write(_result("mallory", {"a-q0": "action", "a-q1": "action"}, {"a-q0": "action", "a-q1": "action"}))
    results = aggregate({"out-dir": str(tmp_path), "methods": "base", "tasks": "LaMP_2", "seed": 0})
    outputs = json.loads((tmp_path / "predictions" / "LaMP_2" / "base_outputs.json").read_text())
    assert outputs["golds"] == []  # both ids are ambiguous now: left out, never mallory's
    (problem,) = results["problems"]
    assert problem["error"] == "DuplicateQueryIds" and "alice" in problem["detail"]
    assert results["per_user"]["LaMP_2"]["alice"]["metrics"]["base"]["accuracy"] == 0.5
    (row,) = results["table"]
    assert row["metrics"]["accuracy"] == pytest.approx(0.75)  # (1 of 2 for alice + mallory's own 2) / 4
    assert row["n_queries"] == 4 and row["n_users"] == 2


def test_the_table_counts_only_users_whose_metrics_it_shows(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write(_result("alice", {"a-q0": "comedy"}, {"a-q0": "comedy"}))
    store.write({"task": "LaMP_2", "user_id": "bob", "report": "none"})  # finished, nothing else
    results = aggregate({"out-dir": str(tmp_path), "methods": "base", "tasks": "LaMP_2", "seed": 0})
    (row,) = results["table"]
    assert (row["n_users"], row["n_users_lower"]) == (1, 1)
    buffer = io.StringIO()
    print_table(results, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "1 (+1 lower)" in text and "reported at a level without metrics" in text
    assert "| 1 (+1 lower) |" in paper_table(results)
    assert "n_users_lower" in (tmp_path / "summary.csv").read_text().splitlines()[0]


def test_node_text_and_share_failures_are_sanitized() -> None:
    assert node_text("ok\x1b[2J\u202eevil\nline\r\n{\"who\": \"x\"}") == 'ok[2Jevil line {"who": "x"}'
    long = node_text("start " + "a" * 1000 + " Message: injected crash")
    assert len(long) == 300 and long.startswith("start ") and long.endswith("Message: injected crash")
    guard = NodeGuard()
    guard.announce(1, ["LaMP_2/alice"])
    guard.announce(2, ["LaMP_2/mallory"])
    errors = [{"user": "LaMP_2/alice", "reason": "\x1b[31m[red]alice's device exploded[/red]\n"},
              {"user": "LaMP_2/mallory", "reason": "data_error"}, {"user": "LaMP_2/mallory", "reason": "again"}, 7]
    assert guard.share_failures(2, errors) == [("node 2", "[31m[red]alice's device exploded[/red]"),
                                               ("LaMP_2/mallory", "data_error")]
    with pytest.raises(Refused, match="malformed"):
        NodeGuard.check_result(2, {"task": "LaMP_2", "user_id": "mallory",
                                   "methods": {"base": {"predictions": {"q\n": "x"}}}}, {"LaMP_2/mallory"}, set())


def test_appends_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "failures.jsonl").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        ResultStore(run).record_failure("node 1", "x")
    os.mkfifo(run / "fifo")
    with pytest.raises(UnsafePathError):
        append_text(run / "fifo", "x\n")
    assert victim.read_text() == "keep\n"
    append_text(run / "private.jsonl", "x\n", private=True)
    assert (run / "private.jsonl").stat().st_mode & 0o777 == 0o600
    (run / "users").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "LaMP_2").mkdir(parents=True)
    with pytest.raises(UnsafePathError):
        ResultStore(run).write({"task": "LaMP_2", "user_id": "alice"})
    (run / "users").unlink()
    (run / "users").mkdir()
    (run / "users" / "LaMP_2").symlink_to(tmp_path / "elsewhere" / "LaMP_2", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        ResultStore(run).write({"task": "LaMP_2", "user_id": "alice"})
    with pytest.raises(UnsafePathError):
        list(ResultStore(run).iter_results("LaMP_2"))
    assert not list((tmp_path / "elsewhere").rglob("*.json"))


def test_cdcda_run_refuses_a_symlinked_users_folder(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "users").symlink_to(elsewhere, target_is_directory=True)
    proc = subprocess.run([sys.executable, "-m", "cdcda_fl.cli", "run", str(ROOT / "experiments/configs/tiny.toml"),
                           "--set", f"out-dir={out}", "--set", "users=1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "users is a symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(elsewhere.iterdir())


# ------------------------------------------------------------------ end to end: Flower simulation, one bad node
def _malicious_client_app():
    """The real simulated device ClientApp; node 1 reports its user with node 0's user's query ids
    and claims node 0's user failed (with terminal escapes and a forged JSON line)."""
    from flwr.app import Message
    from flwr.clientapp import ClientApp

    def handler(kind: str):
        def handle(msg, context):
            from clients.codec import pack, unpack
            from clients.device import simulation_app

            reply = simulation_app(msg, context)
            if int(context.node_config["partition-id"]) != 1:
                return reply
            body = unpack(reply)
            if kind == "share":
                body["errors"] = [{"user": "LaMP_2/dev-u0000",
                                   "reason": "\x1b[31mcrashed\n{\"who\": \"LaMP_2/dev-u0000\"}"}]
            else:
                data = Path(str(msg.content["config"]["out-dir"])) / "data" / "LaMP_2"
                questions = json.loads((data / "dev_questions.json").read_text())
                victim_ids = [q["id"] for q in questions if q.get("user_id") == "dev-u0000"]
                for result in body["results"]:
                    result["golds"] = {i: "action" for i in victim_ids}
                    for entry in result["methods"].values():
                        entry["predictions"] = {i: "action" for i in victim_ids}
                        entry["metrics"] = {"accuracy": 1.0, "f1": 1.0}
            return Message(pack(**body), reply_to=msg)
        return handle

    app = ClientApp()
    app.query("share")(handler("share"))
    app.train("personalize")(handler("personalize"))
    return app


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flower_simulation_with_one_malicious_node(tmp_path: Path, monkeypatch) -> None:
    import clients.device
    from cdcda_fl.core.config import load_config
    from strategies.simulation import run_simulation

    monkeypatch.setattr(clients.device, "simulation_app", _malicious_client_app())
    out = tmp_path / "run"
    cfg = load_config(ROOT / "experiments/configs/tiny.toml",
                      [f"out-dir={out}", "users=2", "tasks=LaMP_2", "methods=base,local", "sim.cpus=2"])
    results = run_simulation(cfg)

    honest = json.loads((out / "users" / "LaMP_2" / "dev-u0000.json").read_text())
    victim_ids = set(honest["golds"])
    mallory = json.loads((out / "users" / "LaMP_2" / "dev-u0001.json").read_text())
    assert set(mallory["golds"]) == victim_ids  # the attack reached the server as sent
    for method in ("base", "local"):
        outputs = json.loads((out / "predictions" / "LaMP_2" / f"{method}_outputs.json").read_text())
        ids = {g["id"] for g in outputs["golds"]}
        assert not ids & victim_ids  # ambiguous ids left out: never mallory's "action"
        # alice's own metrics are hers, and the pooled row counts her queries under her own golds
        assert results["per_user"]["LaMP_2"]["dev-u0000"]["metrics"][method] == honest["methods"][method]["metrics"]
    assert any(p["error"] == "DuplicateQueryIds" for p in results["problems"])
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert not any(f["who"] == "LaMP_2/dev-u0000" for f in failures), failures
    forged = [f for f in failures if "crashed" in f["reason"]]
    assert forged and all(f["who"].startswith("node ") and "\x1b" not in f["reason"] and "\n" not in f["reason"]
                          for f in forged)
    assert results["users"] == {"LaMP_2": 2}

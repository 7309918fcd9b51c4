"""End to end through Flower's Ray simulation engine on tiny-random: 8 users, a broken one, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config
from cdcda_fl.server.runs import ResultStore

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    from strategies.simulation import run_simulation

    out = tmp_path_factory.mktemp("sim")
    cfg = load_config(CONFIG, [f"out-dir={out}", "debug.crash-users=dev-u0001", "chunk-users=3"])
    return out, run_simulation(cfg)


def test_all_users_but_the_broken_one_finish(first_run) -> None:
    out, results = first_run
    assert results["users"] == {"LaMP_2": 3, "LaMP_5": 3}  # dev-u0001 of each task crashed
    crashed = {f["who"] for f in results["failures"]}
    assert crashed == {"LaMP_2/dev-u0001", "LaMP_5/dev-u0001"}
    assert all("injected crash" in f["reason"] for f in results["failures"])
    methods = {(r["task"], r["method"]) for r in results["table"]}
    assert methods == {(t, m) for t in ("LaMP_2", "LaMP_5") for m in ("base", "rag", "local", "cdcda")}


def test_run_directory_is_complete(first_run) -> None:
    out, _ = first_run
    for name in ("config.json", "results.json", "summary.csv", "audit.jsonl", "plots/methods.png"):
        assert (out / name).is_file(), name
    preds = json.loads((out / "predictions" / "LaMP_2" / "cdcda_outputs.json").read_text())
    assert preds["task"] == "LaMP_2" and len(preds["golds"]) == 3 * 3
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["metric"] for r in rows} == {"accuracy", "f1", "rouge-1", "rouge-L"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 0 and "flwr" in config["versions"]
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    # every user shared (share-fraction 0.5), the crash happens later; 6 users returned results
    assert [ln["kind"] for ln in audit].count("share") == 8 and [ln["kind"] for ln in audit].count("result") == 6
    # Adapters stay on the devices' own disks; no adapter in any reply or result file.
    assert list((out / "devices").rglob("adapter_model.safetensors"))
    for result in (out / "users").rglob("*.json"):
        text = result.read_text()
        assert "lora_A" not in text and "safetensors" not in text


def test_device_and_server_audit_logs_agree(first_run) -> None:
    """Every reply the server logged, the device logged before sending, with the same bytes and hash."""
    from cdcda_fl.privacy.audit_log import read_audit

    out, results = first_run
    key = lambda ln: (ln["kind"], ln["task"], ln["user"])  # noqa: E731
    server = {key(ln): ln for ln in read_audit(out / "audit.jsonl")}
    device = {key(ln): ln for ln in read_audit(out / "devices" / "audit.jsonl")}
    assert {k for k in server if k[0] == "result"} == {("result", t, u) for t in ("LaMP_2", "LaMP_5")
                                                       for u in ("dev-u0000", "dev-u0002", "dev-u0003")}
    assert {k for k in server if k[0] == "share"} == {k for k in device if k[0] == "share"}
    for k, line in server.items():
        assert k in device, k
        assert (line["bytes"], line["sha256"]) == (device[k]["bytes"], device[k]["sha256"]), k
    # results of the finished users left the device and reached the server, nothing else did
    assert {k for k in device if k[0] == "result"} == {k for k in server if k[0] == "result"}
    assert all("n_total" not in ln for ln in server.values())  # device-only counts never left


def test_rerun_resumes_and_skips_finished_users(first_run) -> None:
    from strategies.simulation import run_simulation

    out, _ = first_run
    store = ResultStore(out)
    finished = sorted((out / "users").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    cfg = load_config(CONFIG, [f"out-dir={out}"])
    results = run_simulation(cfg)
    assert results["users"] == {"LaMP_2": 4, "LaMP_5": 4}
    assert store.done("LaMP_2", "dev-u0001") and store.done("LaMP_5", "dev-u0001")
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finished)  # not redone

"""The scale and communication benchmarks run end to end at their smallest size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_scale_benchmark_smallest_size(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", "4", "--users-per-node", "2",
                    "--runs-dir", str(tmp_path / "runs"), "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["users"] == 4 and row["finished"] == 4 and row["nodes"] == 2 and row["failures"] == 0
    assert row["peak_mem_mib"] > 100 and 0 < row["work_s"] < row["wall_s"]
    assert {"share", "augment", "personalize"} <= set(row["phases_s"])


def test_communication_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "communication.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "communication.py"), "--quick", "--out", str(out)],
                   check=True, cwd=ROOT, timeout=600)
    row = json.loads(out.read_text())
    assert row["users"] == 4 and row["cdcda_up_bytes_median"] > 0
    assert row["lora_params"] == 921_600  # r=8 on q/k/v/o of SmolLM2-135M
    assert row["fedavg_lora_round_bytes"] == 8 * row["lora_params"]


def test_per_user_analysis_separates_cdcdas_check_from_training_and_answering(tmp_path: Path) -> None:
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import per_user
    finally:
        sys.path.pop(0)
    run = tmp_path / "run"
    (run / "users" / "LaMP_2").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"timing": {"personalize": 10.0}, "config": {"sim.cpus": 2}}))
    user = {"methods": {"local": {"seconds": 5.0, "train": {"seconds": 4.0}},
                        "cdcda": {"seconds": 12.0, "check_seconds": 8.0, "train": {"seconds": 3.0}}}}
    (run / "users" / "LaMP_2" / "u1.json").write_text(json.dumps(user))
    report = per_user.analyse(run)
    assert report["methods"]["cdcda"] == {"total": 12.0, "train": 3.0, "check": 8.0, "answer": 1.0}
    assert report["methods"]["local"]["check"] == 0.0 and report["methods"]["local"]["answer"] == 1.0
    assert report["actor_seconds_per_user"] == 17.0

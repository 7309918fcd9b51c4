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

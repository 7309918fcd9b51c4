"""One malformed record never takes a run down (issue 12.2), through the real `cdcda run` command.

Default: the run validates every file first, skips the user whose record is invalid, runs
everyone else and reports the skipped user (file, record, field) in failures.jsonl and the
final output. ``data.strict=true``: the run is refused with the same message, exit code 2 and
no traceback, before anything starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdcda_fl.data.personas import write_personas

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"


@pytest.fixture()
def broken_data(tmp_path: Path) -> tuple[Path, str]:
    """Persona files for 3 LaMP-2 users where one profile item of the first user lacks ``tag``."""
    data = tmp_path / "data"
    write_personas(data, users=3, tasks=["LaMP_2"], seed=0, splits=("dev",), queries_per_user=2)
    path = data / "LaMP_2" / "dev_questions.json"
    questions = json.loads(path.read_text())
    victim = questions[0]["user_id"]
    del questions[0]["profile"][0]["tag"]
    path.write_text(json.dumps(questions))
    return data, victim


def _run(data: Path, out: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cdcda_fl.cli", "run", str(CONFIG), "--data-dir", str(data), "--out", str(out),
           "--set", "tasks=LaMP_2", "--set", "methods=base", "--set", "users=3", *sets]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_strict_mode_refuses_with_file_record_field_and_no_traceback(broken_data, tmp_path: Path) -> None:
    data, victim = broken_data
    proc = _run(data, tmp_path / "strict", "--set", "data.strict=true")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "Traceback" not in err + proc.stdout
    assert "data.strict=true" in err and "dev_questions.json" in err
    assert "record 0" in err and "missing field 'tag'" in err and victim in err
    assert not (tmp_path / "strict" / "results.json").exists()


@pytest.mark.slow
def test_default_skips_the_bad_user_and_runs_everyone_else(broken_data, tmp_path: Path) -> None:
    data, victim = broken_data
    out = tmp_path / "lenient"
    proc = _run(data, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["users"] == {"LaMP_2": 2}
    (failure,) = [f for f in results["failures"] if f.get("phase") == "data"]
    assert failure["who"] == f"LaMP_2/{victim}"
    assert "missing field 'tag'" in failure["reason"] and failure["file"].endswith("dev_questions.json")
    assert f"LaMP_2/{victim}" in proc.stdout + proc.stderr  # shown at the end, not only in a file
    rerun = _run(data, out)  # reported once, not once per rerun
    assert rerun.returncode == 0
    lines = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert sum(1 for f in lines if f.get("phase") == "data") == 1

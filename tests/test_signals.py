"""Ctrl-C (SIGINT) and SIGTERM stop `cdcda run` within seconds; finished users are kept; a rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"
EXIT_WITHIN_S = 20.0
# No cloud model (no cdcda method): the devices start training at once; 10 users per task.
SETS = ["--set", "users=10", "--set", "methods=base,local", "--set", "train.steps=4"]


def _cdcda(out: Path) -> list[str]:
    return [sys.executable, "-m", "cdcda_fl.cli", "run", str(CONFIG), "--out", str(out), *SETS]


def _finished(out: Path) -> list[Path]:
    return sorted((out / "users").rglob("*.json")) if (out / "users").is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_run_keeps_finished_users_and_rerun_resumes(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_cdcda(out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 600
        while len(_finished(out)) < 2:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no user finished in time"
            time.sleep(0.2)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=EXIT_WITHIN_S + 30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert took < EXIT_WITHIN_S, f"took {took:.1f}s to stop"
    assert "Resume by running the same command again" in output and "Traceback" not in output
    assert not (out / "results.json").exists()  # the run did not pretend to finish
    assert not list(out.rglob("*.tmp"))  # no half-written file
    time.sleep(1)
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left running: {[p.name() for p in alive]}"  # Ray shut down
    kept = {p: p.stat().st_mtime_ns for p in _finished(out)}
    assert len(kept) >= 2

    rerun = subprocess.run(_cdcda(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "already finished" in rerun.stderr + rerun.stdout
    assert len(_finished(out)) == 20
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in kept.items())  # kept, not redone

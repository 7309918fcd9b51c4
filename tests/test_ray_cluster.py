"""`cdcda run --set sim.ray-address=...` joins an existing Ray cluster (head node on 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"

JOBS = """
import json, ray, ray._private.state as state
ray.init(address="{address}", log_to_driver=False)
print("JOBS=" + json.dumps([{{"ip": j["DriverIPAddress"], "entry": j.get("Entrypoint", "")}} for j in state.jobs()]))
"""


def test_cdcda_run_on_existing_ray_cluster(tmp_path) -> None:
    from deploy.lab import Lab, bin_dir

    out = tmp_path / "out"
    with Lab(tmp_path / "lab") as lab:
        address = lab.start_ray_head(num_cpus=2)
        assert address.startswith("127.0.0.1:")
        run = subprocess.run([str(bin_dir() / "cdcda"), "run", str(CONFIG), "--set", f"out-dir={out}",
                              "--set", f"sim.ray-address={address}"],
                             capture_output=True, text=True, env=lab.env(), cwd=tmp_path, timeout=480)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        probe = subprocess.run([sys.executable, "-c", JOBS.format(address=address)], capture_output=True,
                               text=True, env=lab.env(), timeout=120)
        assert probe.returncode == 0, probe.stderr[-2000:]
        jobs = json.loads(probe.stdout.split("JOBS=", 1)[1])
        head_log = (lab.work / "logs" / "ray-head.log").read_text()

    results = json.loads((out / "results.json").read_text())
    assert results["users"] == {"LaMP_2": 4, "LaMP_5": 4} and not results["failures"]
    assert {(r["task"], r["method"]) for r in results["table"]} == \
        {(t, m) for t in ("LaMP_2", "LaMP_5") for m in ("base", "rag", "local", "cdcda")}
    # The run was a driver of this cluster (not a private local Ray), and everything was on loopback.
    assert any("cdcda" in j["entry"] and " run " in j["entry"] for j in jobs), jobs
    assert all(j["ip"] == "127.0.0.1" for j in jobs), jobs
    assert "Local node IP: 127.0.0.1" in head_log
    assert "Usage stats collection is disabled" in head_log

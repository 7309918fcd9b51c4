"""Real SuperNode processes against a real SuperLink (issue 29.3, 29.10, 29.12).

Two `flower-supernode` processes join one `flwr run`: a real device (its own data-dir, user id and
storage-dir) and a node started the way Flower's own deployment docs start one, with only
``partition-id``/``num-partitions`` and no data-dir. The server runs a fault drill naming the real
device's user. Before the fixes the second node ran as a simulated device (read the server's
consent file, audited into the server's out-dir, claimed the user, reported at predictions
level), and the drill crashed the real device without an audit line. Now the second node refuses
with a code, the drill is ignored on the real device (noted in its own error log), and the device's
private files are 0600 in a 0700 home.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"


def test_node_without_data_dir_refuses_and_drills_never_crash_a_real_device(tmp_path) -> None:
    from deploy.lab import Lab, device_nodes, flwr_run_config, prepare_cfg, read_results

    cfg = prepare_cfg(load_config(CONFIG, [f"out-dir={tmp_path / 'out'}", "users=1", "tasks=LaMP_2",
                                           "methods=base,local", "debug.crash-users=dev-u0000", "node-wait=60"]))
    out = Path(cfg["out-dir"])
    (real,) = device_nodes(cfg)
    (Path(real["data-dir"]) / "consent.toml").write_text("[default]\nshare-fraction = 0.5\n")
    cfg["min-nodes"] = 2
    with Lab(tmp_path / "lab") as lab:
        lab.start_superlink()
        device = lab.start_supernode("phone", real)
        bare = lab.start_supernode("bare", {"partition-id": 0, "num-partitions": 1})
        row = lab.run(ROOT, flwr_run_config(cfg), timeout=420)
        results = read_results(cfg, row)
        bare_log, device_log = bare.log_text(), device.log_text()

    # the real device finished its user despite the drill, at its own default report level
    assert results["users"] == {"LaMP_2": 1}, results["failures"]
    (result,) = [json.loads(p.read_text()) for p in (out / "users" / "LaMP_2").glob("*.json")]
    assert result["user_id"] == "dev-u0000" and result["report"] == "metrics" and "golds" not in result
    reasons = [f"{f['who']}: {f['reason']}" for f in results["failures"]]
    assert not any("injected crash" in r for r in reasons), reasons
    home = Path(real["storage-dir"])
    assert "ignored (drills run only in simulation)" in (home / "errors.jsonl").read_text()
    # the bare node refused: a code to the server, the reason on its own console, nothing in out-dir
    assert any("NodeNotConfigured" in r for r in reasons), reasons
    assert "refuses to run" in bare_log
    assert not (out / "devices" / "audit.jsonl").exists() and not (out / "devices" / "errors.jsonl").exists()
    assert "Traceback" not in device_log
    # the device's private files (issue 29.10)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("audit.jsonl", "errors.jsonl"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name

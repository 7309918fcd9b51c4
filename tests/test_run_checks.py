"""A bad setting is one line and exit 2 before anything starts: no Ray, no run dir, no node (issue 30)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cdcda_fl.core.config import ConfigError, load_config
from cdcda_fl.server.run_checks import validate_run_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"


@pytest.mark.parametrize(("setting", "message"), [
    ("train.synthetic-gate=bogus", "train.synthetic-gate"),
    ("cloud.backend=nope", "cloud.backend must be one of hf, openai, oracle, noise, got 'nope'"),
    ("eval.report=maybe", "eval.report"),
    ("device.runtime=xx", "xx"),
    ("methods=base,fedavg", None),
    ("dp.selection=whatever", "dp.selection"),
    ("tasks=LaMP_9", "LaMP_9"),
])
def test_each_bad_setting_is_one_config_error(setting: str, message: str | None) -> None:
    cfg = load_config(CONFIG, [setting])
    if message is None:  # a good one passes
        validate_run_config(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate_run_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fedavg_keys_are_checked_only_when_a_federated_method_runs() -> None:
    validate_run_config(load_config(CONFIG, ["fedavg.rounds=0"]))
    with pytest.raises(ConfigError, match="fedavg.rounds must be >= 1"):
        validate_run_config(load_config(CONFIG, ["fedavg.rounds=0", "methods=base,fedavg"]))


def test_cdcda_run_refuses_before_ray_starts_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cdcda_fl.cli", "run", str(CONFIG), "--set", f"out-dir={out}",
                           "--set", "cloud.backend=nope"], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "config error: cloud.backend must be one of hf, openai, oracle, noise, got 'nope'"]
    assert "Ray" not in proc.stdout + proc.stderr and not out.exists()

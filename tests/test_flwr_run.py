"""`flwr run` on a local simulation SuperLink gives the same results as `cdcda run` (tiny.toml, same seed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cdcda_fl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # deploy/ is a folder of scripts, not an installed package

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"
TIMING = {"train_seconds"}  # wall-clock fields differ between any two runs


def _table(results: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in results["table"]]


def test_flwr_run_matches_cdcda_run(tmp_path) -> None:
    from deploy.lab import local_simulation
    from strategies.simulation import run_simulation

    via_flwr = local_simulation(load_config(CONFIG, [f"out-dir={tmp_path / 'flwr'}"]), work=tmp_path / "lab",
                                timeout=600)
    via_cdcda = run_simulation(load_config(CONFIG, [f"out-dir={tmp_path / 'cdcda'}"]))

    assert via_flwr["users"] == via_cdcda["users"] == {"LaMP_2": 4, "LaMP_5": 4}
    assert not via_flwr["failures"] and not via_cdcda["failures"]
    assert _table(via_flwr) == _table(via_cdcda)
    # Stronger than the (tiny-random) metrics: every prediction of every method is identical.
    for task in ("LaMP_2", "LaMP_5"):
        for method in ("base", "rag", "local", "cdcda"):
            name = Path("predictions") / task / f"{method}_outputs.json"
            assert json.loads((tmp_path / "flwr" / name).read_text()) == \
                json.loads((tmp_path / "cdcda" / name).read_text()), name
    # The run went through Flower's CLI and a SuperLink that never installs dependencies.
    superlink_log = (tmp_path / "lab" / "logs" / "superlink.log").read_text()
    assert "ControlServicer.StartRun" in superlink_log or "Created run" in superlink_log
    assert "uv sync" not in superlink_log


def test_run_config_rejects_keys_flwr_cannot_set() -> None:
    from deploy.lab import LabError, flwr_run_config

    cfg = load_config(CONFIG)
    assert flwr_run_config(cfg)["device.model"] == "tiny-random"
    declared = flwr_run_config(cfg)
    missing = [k for k in cfg if k not in declared]
    if missing:  # a key pyproject does not declare can only be passed at its default
        key = missing[0]
        bad = dict(cfg)
        bad[key] = "x" if isinstance(cfg[key], str) else (not cfg[key] if isinstance(cfg[key], bool) else cfg[key] + 1)
        with pytest.raises(LabError, match="not declared"):
            flwr_run_config(bad)

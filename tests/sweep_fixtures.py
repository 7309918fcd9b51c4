"""The tiny privacy sweep, run once per test session and shared by test_sweep and test_notebook.

Import ``tiny_sweep`` into a test module. A fixture imported into two modules is two fixture
definitions, so the result is memoised here: the ~2-minute sweep (four Flower simulations on
tiny-random) runs once however many modules use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdcda_fl.sweeps.sweep import load_sweep, run_sweep

PRIVACY_TINY = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "privacy_tiny.toml"
_MEMO: dict[str, tuple[Path, dict[str, Any]]] = {}


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(sweep dir, sweep.json content) of privacy_tiny.toml: share {0, 1} × DP {off, ε=4}, 1 user."""
    if "tiny" not in _MEMO:
        out = tmp_path_factory.getbasetemp() / "privacy_tiny_sweep"
        spec = load_sweep(PRIVACY_TINY, extra={"out-dir": str(out)})
        from strategies.simulation import run_simulation

        run_sweep(spec, out, runner=run_simulation)
        _MEMO["tiny"] = (out, json.loads((out / "sweep.json").read_text()))
    return _MEMO["tiny"]

"""A rerun into a run dir resumes only the same configuration (issue 34: the lab, rerun with another
writer, reported the first run's users as the new run's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.core.config import ConfigError, load_config
from cdcda_fl.server.runs import OtherRunInDir, prepare_run_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"


def _finish_one_user(out: Path) -> None:
    user = out / "users" / "LaMP_2" / "dev-u0000.json"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text(json.dumps({"task": "LaMP_2", "user_id": "dev-u0000"}))


def test_rerun_with_another_writer_is_refused_with_the_keys_that_differ(tmp_path: Path) -> None:
    out = tmp_path / "run"
    prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2"]))
    _finish_one_user(out)
    with pytest.raises(OtherRunInDir) as err:
        prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2", "cloud.model=smollm2-135m"]))
    message = str(err.value)
    assert "cloud.model: 'tiny-random' -> 'smollm2-135m'" in message and "--out" in message
    assert isinstance(err.value, ConfigError)  # the CLI's one-line error and exit 2


def test_same_config_or_only_volatile_keys_changed_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2"]))
    _finish_one_user(out)
    prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2"]))
    prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2", "node-wait=5", "sim.cpus=1", "chunk-users=3",
                                         "debug.crash-users=dev-u0001"]))


def test_a_run_dir_without_finished_users_takes_any_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2"]))
    cfg = prepare_run_dir(load_config(CONFIG, [f"out-dir={out}", "users=2", "train.steps=5"]))
    stored = json.loads((out / "config.json").read_text())["config"]
    assert stored["train.steps"] == cfg["train.steps"] == 5

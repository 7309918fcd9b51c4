"""experiments/multitask_compare.py: which stored adapter a person's answers came from, when
several configurations share one device store (the alpha = 0.5 and alpha = 0 runs do)."""

from __future__ import annotations

import json
from pathlib import Path

from experiment_scripts import load_experiment

from cdcda_fl.device.adapter_store import ADAPTER_WEIGHTS, TRAIN_META

compare = load_experiment("multitask_compare")


def _adapter(store: Path, folder: str, person: str, train: dict) -> Path:
    path = store / folder / person
    path.mkdir(parents=True)
    (path / ADAPTER_WEIGHTS).write_bytes(b"w")
    (path / TRAIN_META).write_text(json.dumps(train))
    return path


def _result(train: dict, answer_with: str, cdcda_train: dict | None = None) -> dict:
    return {"methods": {"local": {"train": train},
                        "cdcda": {"train": cdcda_train or train, "decision": {"answer_with": answer_with}}}}


def test_the_folder_is_the_one_whose_training_record_the_result_reports(tmp_path: Path) -> None:
    mine = {"steps": 36, "final_loss": 0.83, "seconds": 49.1}
    other = {"steps": 36, "final_loss": 0.75, "seconds": 51.2}
    own = _adapter(tmp_path, "person-local-aaaa", "u1", mine)
    _adapter(tmp_path, "person-local-ffff", "u1", other)  # another config's adapter, sorted last
    _adapter(tmp_path, "person-cdcda-ffff", "u1", other)  # and its CDCDA adapter
    results = {"LaMP_2": {"u1": _result(mine, "local")}, "LaMP_5": {"u1": _result(mine, "local")}}
    assert compare.answer_folders(results, tmp_path, "u1", "user") == {own}


def test_a_task_answered_by_the_base_model_keeps_no_adapter(tmp_path: Path) -> None:
    mine = {"steps": 12, "final_loss": 1.0, "seconds": 3.0}
    _adapter(tmp_path, "LaMP_2-local-aaaa", "u1", mine)
    assert compare.answer_folders({"LaMP_2": {"u1": _result(mine, "base")}}, tmp_path, "u1", "task") == set()

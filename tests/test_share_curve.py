"""experiments/share_curve.py: points share users and device storage, and reuse never changes a result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment_scripts import load_experiment as load_script

ROOT = Path(__file__).resolve().parent.parent
TINY = """[config]
tasks = "LaMP_5"
users = 3
methods = "base,local,cdcda"
device.model = "tiny-random"
train.steps = 2
personas.queries = 2
synthetic.per-user = 3
eval.batch-size = 4

[curve]
writers = ["oracle"]
share-fraction = [0.5, 1.0]
"""


def _predictions(point: Path) -> dict[str, dict[str, str]]:
    results = json.loads((point / "results.json").read_text())
    out = {}
    for task, users in results["per_user"].items():
        for uid in users:
            user = json.loads((point / "users" / task / f"{uid}.json").read_text())
            out[f"{task}/{uid}"] = {m: e["predictions"] for m, e in user["methods"].items()}
    return out


@pytest.mark.slow
def test_a_point_run_after_others_equals_the_point_run_alone(tmp_path: Path) -> None:
    """The share-1.0 point reuses the share-0.5 point's stored adapters and check folds; its
    answers must be those of the same point run on its own with an empty device store."""
    curve = load_script("share_curve")
    config = tmp_path / "curve.toml"
    config.write_text(TINY)
    assert curve.main([str(config), "--out", str(tmp_path / "curve")]) == 0
    table = json.loads((tmp_path / "curve" / "share_curve.json").read_text())
    assert set(table["points"]) == {"oracle_s0.5", "oracle_s1"}
    reused = tmp_path / "curve" / "points" / "oracle_s1"
    assert any((tmp_path / "curve" / "devices").rglob("crossfit.json"))  # the check's folds were stored

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "data").symlink_to(tmp_path / "curve" / "data")
    assert curve.main([str(config), "--out", str(alone), "--shares", "1.0"]) == 0
    assert _predictions(reused) == _predictions(alone / "points" / "oracle_s1")
    md = (tmp_path / "curve" / "share_curve.md").read_text()
    assert "| oracle | 0.5 |" in md and "| oracle | 1 |" in md


def test_writer_sets_and_buckets() -> None:
    curve = load_script("share_curve")
    assert curve.writer_sets("oracle") == ["cloud.backend=oracle"]
    assert curve.writer_sets("smollm2-135m") == ["cloud.backend=hf", "cloud.model=smollm2-135m"]
    assert [curve.bucket_of(n) for n in (1, 5, 6, 15, 16, 40)] == ["≤5", "≤5", "6–15", "6–15", ">15", ">15"]


def test_the_table_names_each_points_device_check(tmp_path: Path) -> None:
    """Points of one curve run at different times can differ in the device check (the tie rule
    changed between them): the table shows it per row; a curve from before the column keeps its form."""
    curve = load_script("share_curve")
    point = tmp_path / "oracle_s0.5"
    point.mkdir()
    (point / "config.json").write_text(json.dumps({"config": {"train.synthetic-gate": "crossfit",
                                                              "train.synthetic-gate-criterion": "loss+metric"}}))
    assert curve.device_check(point) == "crossfit, loss+metric"
    diff = {"n": 2, "diff": {"mean": 0.1, "lo": 0.0, "hi": 0.2}, "wtl": [1, 1, 0]}
    task = {"metric": "rouge-1", "users": 2, "cdcda_minus_local": diff, "used_synthetic": 1, "answer_with": {},
            "by_size": {name: {"cdcda_minus_local": {"n": 0}} for name, _, _ in curve.BUCKETS}}
    old = {"points": {"oracle_s0.5": {"writer": "oracle", "share": 0.5, "tasks": {"LaMP_5": task}}}}
    assert "device check" not in curve.markdown(old)
    new = {"points": {"oracle_s0.5": {**old["points"]["oracle_s0.5"], "check": "crossfit, loss+metric"}}}
    assert "| oracle | 0.5 | crossfit, loss+metric | 2 |" in curve.markdown(new)

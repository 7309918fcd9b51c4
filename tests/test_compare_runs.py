"""experiments/compare_runs.py: the paired per-user comparison of two runs, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_scripts import load_experiment


def _run(path: Path, per_user: dict) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"per_user": per_user}))
    return path


def _users(metric: str, values: dict[str, float]) -> dict:
    return {u: {"metrics": {"local": {metric: v}, "base": {metric: 0.0}}} for u, v in values.items()}


def test_paired_difference_sign_and_win_tie_loss(tmp_path: Path) -> None:
    cr = load_experiment("compare_runs")
    before = _run(tmp_path / "a", {"LaMP_2": _users("accuracy", {"u1": 0.5, "u2": 0.25, "u3": 0.5}),
                                   "LaMP_3": _users("mae", {"u1": 1.0, "u2": 2.0})})
    after = _run(tmp_path / "b", {"LaMP_2": _users("accuracy", {"u1": 0.75, "u2": 0.25, "u3": 0.25, "u4": 1.0}),
                                  "LaMP_3": _users("mae", {"u1": 0.5, "u2": 2.0})})
    rows = {r["task"]: r for r in cr.compare(before, after, "local")}
    acc = rows["LaMP_2"]
    assert acc["users"] == 3 and acc["only_in_one_run"] == 1  # u4 is in one run only
    assert acc["after_minus_before"]["mean"] == pytest.approx((0.25 + 0.0 - 0.25) / 3)
    assert (acc["wins_after"], acc["ties"], acc["wins_before"]) == (1, 1, 1)
    mae = rows["LaMP_3"]  # lower is better: a fall from 1.0 to 0.5 is a gain of +0.5 for "after"
    assert mae["after_minus_before"]["mean"] == pytest.approx(0.25)
    assert (mae["wins_after"], mae["ties"], mae["wins_before"]) == (1, 1, 0)
    assert mae["before"]["mean"] == pytest.approx(1.5) and mae["after"]["mean"] == pytest.approx(1.25)


def test_missing_run_is_a_clear_error(tmp_path: Path, capsys) -> None:
    cr = load_experiment("compare_runs")
    assert cr.main([str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    assert "results.json not found" in capsys.readouterr().err

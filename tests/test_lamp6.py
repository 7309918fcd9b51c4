"""Six LaMP tasks: the configs parse, the paper-layout table is right, and lamp6_tiny runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config
from cdcda_fl.data.tasks import TASK_NAMES
from cdcda_fl.reporting.paper_table import paper_table, write_paper_table

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@pytest.mark.parametrize("name", ["lamp6.toml", "lamp6_tiny.toml"])
def test_lamp6_configs_cover_six_tasks_and_all_methods(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg["tasks"].split(",") == list(TASK_NAMES)
    assert cfg["methods"] == "base,rag,local,cdcda,cloud" and cfg["data-dir"] == ""


def _row(task: str, method: str, **metrics: float) -> dict:
    return {"task": task, "method": method, "metrics": metrics, "n_users": 3, "n_queries": 6, "epsilon": None,
            "mia_auc": None, "train_seconds": 0.0, "n_synthetic": 0.0}


def test_paper_table_layout() -> None:
    results = {"table": [
        _row("LaMP_3", "base", mae=1.5, rmse=2.0), _row("LaMP_3", "cdcda", mae=0.9, rmse=1.1),
        _row("LaMP_3", "cloud", mae=0.5, rmse=0.7),
        _row("LaMP_2", "base", accuracy=0.2, f1=0.1), _row("LaMP_2", "local", accuracy=0.6, f1=0.5),
        _row("LaMP_2", "cloud", accuracy=0.9, f1=0.9),
    ]}
    lines = paper_table(results).splitlines()
    assert lines[0] == "| Task | Metric | Base | RAG | Local LoRA | CDCDA | Cloud LLM † | Users |"
    assert lines[2].startswith("| LaMP-2 (movie tagging) | accuracy ↑ | 0.200 | – | **0.600** | – | 0.900 |")
    # MAE: lower is better; the cloud upper bound is never bold even when it is best.
    assert lines[3].startswith("| LaMP-3 (") and "mae ↓" in lines[3] and "**0.900**" in lines[3]
    assert "**0.500**" not in lines[3]


@pytest.mark.slow
def test_lamp6_tiny_end_to_end(tmp_path: Path) -> None:
    from strategies.simulation import run_simulation

    cfg = load_config(CONFIGS / "lamp6_tiny.toml", [f"out-dir={tmp_path}"])
    results = run_simulation(cfg)
    assert results["users"] == {t: 1 for t in TASK_NAMES}, results["failures"]
    assert {(r["task"], r["method"]) for r in results["table"]} == {
        (t, m) for t in TASK_NAMES for m in ("base", "rag", "local", "cdcda", "cloud")}
    path = write_paper_table(tmp_path, results)
    table = path.read_text()
    for task in TASK_NAMES:
        assert f"| {task.replace('_', '-')} (" in table
    assert set(results["shared"]) == set(TASK_NAMES)

"""The crossfit check with the real device model: it takes the oracle's records for a sparse user
and refuses the noise writer's random labels (the two ends of docs/augmentation.md's ladder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcda_fl.cloud.reference_writers import make_reference_writer
from cdcda_fl.core.config import load_config
from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import SharedRecords

pytestmark = pytest.mark.slow
SETTINGS = ["device.model=smollm2-135m", "train.steps=12", "synthetic.per-user=8", "split=dev", "seed=0",
            "methods=local,cdcda", "eval.max-queries=2"]


def _decision(tmp_path: Path, task: str, writer: str, max_items: int) -> tuple[int, dict]:
    from cdcda_fl.device.personalize import personalize_user

    data = tmp_path / "data"
    if not data.exists():
        write_personas(data, users=12, tasks=("LaMP_2", "LaMP_5"), seed=0, splits=("dev",), queries_per_user=12)
    user = next(u for u in load_task_users(data, task, "dev") if 3 <= len(u.profile) <= max_items)
    spec = get_task(task)
    shared = [dict(r) for r in user.profile[: max(1, len(user.profile) // 2)]]
    request = SharedRecords(user.user_id, task, shared, [r["id"] for r in shared], ["id", *spec.profile_fields],
                            len(user.profile), len(shared), 0)
    cfg = load_config(None, [*SETTINGS, f"cloud.backend={writer}"])
    records = make_reference_writer(cfg, simulated=True, data_dir=str(data)).augment([request])[user.user_id].records
    assert records, f"the {writer} writer gave this user nothing to decide about"
    res = personalize_user(user, records, cfg, storage_dir=tmp_path / "device")
    return len(user.profile), res["synthetic_decision"]


def test_a_sparse_user_takes_the_oracles_records(tmp_path: Path) -> None:
    n, decision = _decision(tmp_path, "LaMP_5", "oracle", max_items=5)
    assert n <= 5 and decision["rule"] == "crossfit" and decision["n_validation"] == n
    assert decision["used_synthetic"] and decision["answer_with"] == "cdcda", decision["reason"]


def test_random_labels_are_refused(tmp_path: Path) -> None:
    n, decision = _decision(tmp_path, "LaMP_2", "noise", max_items=5)
    assert n <= 5 and not decision["used_synthetic"] and decision["answer_with"] != "cdcda", decision["reason"]

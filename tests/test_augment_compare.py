"""experiments/augment_compare.py: the cloud-records cache must not hand one task's records to another."""

from __future__ import annotations

from cdcda_fl.core.config import load_config
from experiment_scripts import load_experiment


def _module():
    return load_experiment("augment_compare")


def test_cache_key_differs_per_task_because_persona_user_ids_repeat_across_tasks():
    """Bug of 2026-12-04: --tasks LaMP_3,LaMP_2 gave LaMP-2's dev-u0000 the LaMP-3 records of dev-u0000."""
    compare = _module()
    cfg = load_config(None, ["seed=1"])
    keys = {compare.cache_key({**cfg, "tasks": task}, "smollm2-135m") for task in ("LaMP_2", "LaMP_3")}
    assert len(keys) == 2
    same = compare.cache_key({**cfg, "tasks": "LaMP_2"}, "smollm2-135m")
    assert same in keys and compare.cache_key({**cfg, "tasks": "LaMP_2"}, "qwen2.5-coder-1.5b") not in keys

"""Adapters and decisions a device keeps on its own disk, and reuses when nothing they depend on changed.

Every stored adapter folder holds its training metadata (:data:`TRAIN_META`), written atomically
with it; a stored decision without an adapter (a fall-back, the synthetic-data check) is that
file alone. The folder name is ``<task>-<method>-<key>``, the key derived from the resolved
settings and the data (``device/train_key.py``), so a rerun reuses exactly what would be trained
again, and ``train.retrain`` ignores what is stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import atomic_dir
from cdcda_fl.device.adapter_store import TRAIN_META  # training metadata, saved inside the adapter folder (atomically with it)
from cdcda_fl.device.methods.person import is_person_scope, person_mixture
from cdcda_fl.device.schedule import train_cdcda
from cdcda_fl.device.train_key import adapter_key
from cdcda_fl.device.methods.run_view import DeviceRun
from cdcda_fl.core.run_config import run_config



def write_meta_only(path: Path, text: str) -> None:
    """A decision that leaves no adapter: store just its metadata (atomically) so a rerun reuses it."""
    with atomic_dir(path) as tmp:
        (tmp / TRAIN_META).write_text(text, encoding="utf-8")


def stored_meta(run: DeviceRun, key: str) -> dict[str, Any] | None:
    """The metadata stored under ``key`` for this user (adapter or not), unless ``train.retrain``."""
    meta = run.store.path(run.user.user_id, key) / TRAIN_META
    if not meta.is_file() or run_config(run.cfg).train.retrain:
        return None
    return json.loads(meta.read_text())


def load_stored(run: DeviceRun, key: str) -> dict[str, Any] | None:
    """The stored adapter ``key`` loaded into the model (its metadata, ``reused``), or None.

    An adapter folder without its metadata is from before metadata was written with it
    (atomically): it is retrained rather than reporting a reused DP adapter's ε as unknown."""
    if not run.store.exists(run.user.user_id, key):
        return None
    info = stored_meta(run, key)
    if info is None:
        return None
    run.hold(run.store.path(run.user.user_id, key))
    return {**info, "reused": True}


def save_adapter(run: DeviceRun, key: str, info: dict[str, Any]) -> None:
    """Store the adapter the model holds under ``key`` with its metadata; answers come from there."""
    path = run.store.path(run.user.user_id, key)
    run.model.save_adapter(path, extra_files={TRAIN_META: json.dumps(info)})
    run.adapter_dir = path


def train_or_reuse(run: DeviceRun, method: str, pairs: Sequence[tuple[str, str]], weights: Sequence[float],
                   *, n_real: int | None = None, prefix: str | None = None, step_scale: float = 1.0,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or reload from the device's store) a fresh adapter; on return the model holds it.

    ``pairs`` start with the ``n_real`` real pairs (default: the user's own); the rest (CDCDA) are
    the cloud's, trained under ``train.synthetic-schedule`` (device/schedule.py). The folder is
    ``<prefix>-<method>-<key>`` (prefix: the task; ``person`` for one adapter per person), the
    step budget scaled by ``step_scale``; ``extra`` joins the stored metadata. Never under DP:
    the DP form of a trained method is ``methods/private.py``."""
    pairs, weights = list(pairs), list(weights)
    n_real = len(run.real_pairs) if n_real is None else n_real
    key = f"{prefix or run.spec.name}-{method}-{adapter_key(run.cfg, pairs, weights, n_real, step_scale)}"
    stored = load_stored(run, key)
    if stored is not None:
        return stored
    res = train_cdcda(run.model, run.cfg, pairs[:n_real], weights[:n_real], pairs[n_real:], weights[n_real:],
                      step_scale=step_scale)
    info = {"steps": res.steps, "tokens": res.trained_tokens, "seconds": round(res.seconds, 3),
            "final_loss": res.final_loss, "epsilon": res.epsilon, "delta": res.delta,
            "n_real": n_real, "n_synthetic": len(pairs) - n_real, **(extra or {})}
    save_adapter(run, key, info)
    return info


def train_local(run: DeviceRun) -> dict[str, Any]:
    """The local-only adapter (real records, weight 1): trained once per user, then reloaded from the store.

    Local-only's own answers, the completion of partial cloud records and the selection of the
    cloud's records all use this one adapter. Under ``train.adapter-scope = user`` it is the
    person's adapter over every task the device holds (methods/person.py)."""
    if is_person_scope(run):
        return train_person(run, "local")
    return train_or_reuse(run, "local", run.real_pairs, [1.0] * len(run.real_pairs))


def train_person(run: DeviceRun, method: str, *, with_records: bool = False) -> dict[str, Any]:
    """Train (or reload) the person's adapter for ``method`` (local | cdcda); on return the model holds it."""
    real, real_w, synth, synth_w, tasks = person_mixture(run, with_records)
    if not synth:  # no task's records passed its check: CDCDA's adapter is the person's local one
        method = "local"
    return train_or_reuse(run, method, [*real, *synth], [*real_w, *synth_w], n_real=len(real), prefix="person",
                          step_scale=tasks, extra={"scope": "user", "tasks": tasks})

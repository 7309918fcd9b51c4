"""Reference writers for simulations: a perfect writer (the ceiling) and a noise writer (the floor).

Neither is a language model. They answer the question "how much could cloud augmentation give
here, and how much harm must the device catch?" on the same users, shares, filters and device
check as any real writer, so a user can place their own endpoint between the two:

* ``oracle`` -- "oracle (not private: ceiling)": for each user who shared at least one record, K
  further *real* items of that same user that are neither in the device's profile nor among its
  queries (``LaMP_k/{split}_oracle.json``, written by the data builders: cdcda_fl/data/oracle_items.py).
  No writer can do better than the user's own unseen writing.
* ``noise`` -- "noise (simulation: floor)": in-format records that are *not* the user's: other users'
  further items, with the label of classification/rating tasks drawn uniformly from the task's
  label list. Records a careless device would happily train on.

Both read the data the simulated users were built from, which a real cloud never has: they are
refused unless the server runs Flower's simulation engine (``simulated``), labelled in every
report, and never a default. Their records pass the same :class:`~cdcda_fl.cloud.filters.RecordFilter`
chain as an LLM's (shared fields only, labels, length, duplicates of the shared records, label
quota from the shared labels), so the share fraction still matters: a user who shares one movie
tag gets oracle records of that tag only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdcda_fl.cloud.augment import AugmentConfig, AugmentResult
from cdcda_fl.cloud.filters import FilterSettings, RecordFilter
from cdcda_fl.core.config import ConfigError
from cdcda_fl.data.oracle_items import read_oracle_items
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.core.run_config import run_config

#: how every report names each reference writer (results.json "cloud.writer", tables, inspect)
LABELS = {"oracle": "oracle (not private: ceiling)", "noise": "noise (simulation: floor)"}


class NotSimulated(ConfigError):
    """A reference writer outside a simulation: it would need data a real cloud never holds."""


def shared_fields(task: Any, shared: SharedRecords) -> list[str]:
    """The task's profile fields this user shared (what any writer may write; ids excluded)."""
    return [f for f in task.profile_fields if f in shared.fields and f != "id"]


@dataclass
class ReferenceWriter:
    """Hands each user up to ``synthetic.per-user`` records from a candidate pool, through the filters.

    ``pool(task, user_id, rng)`` gives the candidates in the order they are tried.
    """

    kind: str
    cfg: AugmentConfig
    pool: Callable[[Any, str, random.Random], list[dict[str, Any]]]

    @property
    def name(self) -> str:
        return LABELS[self.kind]

    def augment(self, requests: Sequence[SharedRecords],
                context: Mapping[str, Sequence[str]] | None = None) -> dict[str, AugmentResult]:
        """One result per requesting user, like :meth:`CloudAugmenter.augment`. ``context`` (the
        person's other-task lines) is accepted and unused: a reference writer reads no prompt."""
        settings = FilterSettings(self.cfg.near_dup, self.cfg.embed_filter, self.cfg.embed_min_sim, self.cfg.embed_max_sim,
                                  self.cfg.label_quota)
        return {str(req.user_id): self._one(req, settings) for req in requests}

    def _one(self, req: SharedRecords, settings: FilterSettings) -> AugmentResult:
        uid = str(req.user_id)
        if not req.records:
            return AugmentResult(uid, req.task, counts={"no_shared_records": 1})
        task = get_task(req.task)
        fields = shared_fields(task, req)
        if not fields or not any(f != task.label_field for f in fields):
            return AugmentResult(uid, req.task, counts={"no_usable_fields": 1})
        rng = random.Random(f"{self.kind}:{self.cfg.seed}:{req.task}:{uid}")
        filt = RecordFilter(task, fields, [r for r in req.records if all(f in r for f in fields)],
                            self.cfg.per_user, settings)
        tried = 0
        for cand in self.pool(task, uid, rng):
            if len(filt.accepted) >= filt.target:
                break
            tried += 1
            reason, _ = filt.check({f: str(cand.get(f, "")) for f in fields})
            if reason is not None:
                filt.counts[reason] += 1
        counts = {"candidates": tried, "accepted": len(filt.accepted),
                  **{f"rejected_{k}": v for k, v in filt.counts.items()}}
        records = [{"id": f"syn-{uid}-{n}", **rec, "synthetic": True} for n, rec in enumerate(filt.accepted)]
        return AugmentResult(uid, req.task, records, counts)


class _Items:
    """The further items of the run's users, read once per task from the data dir."""

    def __init__(self, data_dir: str, split: str) -> None:
        self.data_dir, self.split = data_dir, split
        self._by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def of(self, task: str) -> dict[str, list[dict[str, Any]]]:
        if task not in self._by_task:
            self._by_task[task] = read_oracle_items(self.data_dir, task, self.split)
        return self._by_task[task]


def _oracle_pool(items: _Items) -> Callable[[Any, str, random.Random], list[dict[str, Any]]]:
    def pool(task: Any, uid: str, rng: random.Random) -> list[dict[str, Any]]:
        mine = list(items.of(task.name).get(uid, []))
        rng.shuffle(mine)
        return mine
    return pool


def _noise_pool(items: _Items) -> Callable[[Any, str, random.Random], list[dict[str, Any]]]:
    def pool(task: Any, uid: str, rng: random.Random) -> list[dict[str, Any]]:
        others = [dict(it) for u, its in sorted(items.of(task.name).items()) if u != uid for it in its]
        rng.shuffle(others)
        if task.labels and task.label_field:
            labels = sorted(task.labels)
            for it in others:
                it[task.label_field] = rng.choice(labels)
        return others
    return pool


#: ``cloud.backend`` values served by a reference writer -> its candidate pool
REFERENCE_POOLS: dict[str, Callable[[_Items], Callable[[Any, str, random.Random], list[dict[str, Any]]]]] = {
    "oracle": _oracle_pool,
    "noise": _noise_pool,
}


def is_reference(backend: str) -> bool:
    return str(backend).strip().lower() in REFERENCE_POOLS


def refuse_outside_simulation(cfg: Mapping[str, Any], simulated: bool) -> None:
    """:class:`NotSimulated` (one line, no traceback) when ``cloud.backend`` names a reference
    writer and the devices are not simulated; nothing otherwise."""
    kind = run_config(cfg).cloud.kind
    if is_reference(kind) and not simulated:
        raise NotSimulated(f"cloud.backend={kind} ({LABELS[kind]}) reads the simulated users' own further "
                           "items, which a real cloud never has: it runs only in Flower's simulation "
                           "(`cdcda run`, `flwr run .` on a simulation federation)")


def make_reference_writer(cfg: Mapping[str, Any], *, simulated: bool, data_dir: str) -> ReferenceWriter:
    """The writer ``cloud.backend`` names; refused (one line, no traceback) outside a simulation."""
    rc = run_config(cfg)
    refuse_outside_simulation(cfg, simulated)
    kind = rc.cloud.kind
    return ReferenceWriter(kind, AugmentConfig.from_config(cfg), REFERENCE_POOLS[kind](_Items(data_dir, rc.split)))

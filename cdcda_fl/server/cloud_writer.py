"""The cloud side of one run's augmentation step: the writer the orchestrator calls per round.

It loads the cloud model once per run (or a simulation-only reference writer), writes each task's
synthetic records for the users who shared, and keeps per-user accounting (records sent, filter
counts, errors) that the orchestrator stores with each user's result. Apart from orchestrator.py
so that the scheduling of rounds and the cloud's writing read separately.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from cdcda_fl.cloud.augment import AugmentConfig, CloudAugmenter, person_writing
from cdcda_fl.cloud.backends import make_backend
from cdcda_fl.cloud.reference_writers import is_reference, make_reference_writer
from cdcda_fl.core.config import Scalar
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.core.progress import log
from cdcda_fl.data.run_data import data_dir_of, user_key
from cdcda_fl.core.run_config import run_config
from cdcda_fl.server.writer_cache import WriterCache, call_key, writer_cache


def cloud_accounting(records: list[dict[str, Any]], counts: Mapping[str, Any] | None,
                     error: str | None) -> dict[str, Any]:
    """The server's per-user record of what the cloud did (stored with the user's result, so it
    reaches results.json): records sent to the device, the filter counts by reason, any error."""
    return {"n_records": len(records), "counts": {str(k): int(v) for k, v in dict(counts or {}).items()},
            "error": None if error is None else str(error)[:500]}


class CloudWriter:
    """The cloud model, loaded once per run, writing synthetic records task by task.

    After each :meth:`run`, :attr:`accounting` holds that call's per-user counts and errors
    (:func:`cloud_accounting`, by user key), which the orchestrator stores with each result.
    """

    def __init__(self, cfg: Mapping[str, Scalar], *, simulated: bool = False):
        #: how reports name the writer ("oracle (not private: ceiling)" for the reference writers)
        cloud = run_config(cfg).cloud
        self.cfg = cfg
        self.label = f"{cloud.backend}:{cloud.model}"
        self.accounting: dict[str, dict[str, Any]] = {}
        self._augmenter: Any = None
        # reference writers read the data dir, which no cache key covers, and cost nothing: never cached
        self.cache: WriterCache | None = None
        if is_reference(cloud.backend):
            self._augmenter = make_reference_writer(cfg, simulated=simulated, data_dir=str(data_dir_of(cfg)))
            self.label = self._augmenter.name
            log(f"cloud: {self.label} writer (simulation only; no language model)")
            return
        self.cache = writer_cache(cfg)
        if self.cache is None:
            self._load()  # every call needs it: load it now, not inside the first round

    @property
    def augmenter(self) -> Any:
        """The writer, an LLM loaded on first need (with a warm cache, possibly never)."""
        return self._load()

    def _load(self) -> Any:
        if self._augmenter is None:
            cloud = run_config(self.cfg).cloud
            log(f"cloud: loading {cloud.backend} backend ({cloud.model})")
            self._augmenter = CloudAugmenter(make_backend(self.cfg), AugmentConfig.from_config(self.cfg))
        return self._augmenter

    def run(self, shared: Iterable[SharedRecords]) -> dict[str, list[dict[str, Any]]]:
        shared = list(shared)
        by_task: dict[str, list[SharedRecords]] = {}
        for s in shared:
            by_task.setdefault(s.task, []).append(s)
        out: dict[str, list[dict[str, Any]]] = {}
        self.accounting = {}
        # Sorted, so the cloud's sampling does not depend on the order in which devices replied.
        for task, requests in sorted(by_task.items()):
            requests = sorted(requests, key=lambda r: r.user_id)
            started = time.perf_counter()
            results, cached = self._write(task, requests, self._context(task, requests, shared))
            accepted = 0
            for uid, res in results.items():
                out[user_key(task, uid)] = list(res["records"])
                self.accounting[user_key(task, uid)] = {**cloud_accounting(list(res["records"]), res["counts"],
                                                                           res["error"]),
                                                        "writer": self.label, **({"cached": True} if cached else {})}
                accepted += len(res["records"])
                if res["error"]:
                    log(f"cloud: {task}/{uid}: {res['error']} (falls back to real data only)")
            log(f"cloud: {task}: {accepted} synthetic records for {len(requests)} user(s) "
                f"in {time.perf_counter() - started:.1f}s{' (from the writer cache)' if cached else ''}")
        return out

    def _context(self, task: str, requests: list[SharedRecords],
                 shared: list[SharedRecords]) -> dict[str, list[str]]:
        """Per user of this task's call, what they wrote in their *other* tasks' shares of the same
        chunk (one request per person, issue 32.3), when ``synthetic.person-context`` > 0.

        Only a user's own shares feed their entry: the grouping key is the user id, which under
        ``train.adapter-scope = user`` names one person (the setting is refused under task scope).
        """
        if run_config(self.cfg).synthetic.person_context <= 0:
            return {}
        users = {str(r.user_id) for r in requests}
        others: dict[str, list[SharedRecords]] = {}
        for s in shared:
            if s.task != task and str(s.user_id) in users:
                others.setdefault(str(s.user_id), []).append(s)
        return {uid: lines for uid, own in others.items() if (lines := person_writing(own))}

    def _write(self, task: str, requests: list[SharedRecords],
               context: dict[str, list[str]]) -> tuple[dict[str, dict[str, Any]], bool]:
        """Each user's records, counts and error for one call: from the cache when it holds the
        same call (``cloud.cache-dir``), else written now (and stored unless a user got an error)."""
        if self.cache is None:
            return self._generate(requests, context), False
        key = call_key(self.cfg, self.label, task, requests, context)
        hit = self.cache.get(task, key)
        if hit is not None and set(hit) == {str(r.user_id) for r in requests}:
            return hit, True
        results = self._generate(requests, context)
        self.cache.put(task, key, results)
        return results, False

    def _generate(self, requests: list[SharedRecords], context: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        written = self.augmenter.augment(requests, context=context)
        return {str(uid): {"records": list(res.records), "counts": dict(res.counts or {}), "error": res.error}
                for uid, res in written.items()}

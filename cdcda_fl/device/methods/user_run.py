"""One user's personalization in progress: what every method reads, and the result being built.

A :class:`UserRun` is the device's per-user context that each method's ``run`` receives: the
user, the task, the queries to answer, the shared model (one base, adapters swapped), the
device's adapter store, the cloud's records (:class:`~.cloud_records.CloudRecords`) and the
queue of answers (:class:`~.answers.AnswerQueue`). Methods hold no per-user state of their own,
so one method object serves every user of a node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import Scalar, methods_of
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.adapter_store import AdapterStore
from cdcda_fl.device.methods.answers import AnswerQueue
from cdcda_fl.device.methods.cloud_records import CloudRecords
from cdcda_fl.device.answering import Answerer
from cdcda_fl.evaluation.metrics import score
from cdcda_fl.privacy.audit import membership_auc
from cdcda_fl.core.run_config import run_config


class UserRun:
    """One user's methods on one device: shared inputs, the model's current adapter, the result."""

    def __init__(self, user: User, synthetic: Sequence[Mapping[str, Any]], cfg: Mapping[str, Scalar], *,
                 storage_dir: Path, model: Any, answerer: Answerer,
                 on_step: Callable[[str], None] | None = None, shared_ids: frozenset[str] | None = None,
                 global_adapter: Any = None, person: Sequence[User] = ()) -> None:
        rc = run_config(cfg)
        self.user, self.cfg, self.model = user, cfg, model
        #: every task-user of this person the device holds, in the device's order (this one
        #: included): what a ``train.adapter-scope = user`` adapter trains on (methods/person.py)
        self.person: tuple[User, ...] = tuple(person) or (user,)
        #: the runs of this person's tasks in the same personalize call (set by personalize_users)
        self.siblings: tuple[UserRun, ...] = (self,)
        self.spec = spec = get_task(user.task)
        #: the owner's ids of the records the device shared (None: derive them from ``cfg``'s policy)
        self.shared_ids = shared_ids
        self.global_adapter = global_adapter  # the task's FedAvg adapter (device/federated.py GlobalAdapter), if any
        self.storage_dir = Path(storage_dir)
        self.store = AdapterStore(self.storage_dir / "adapters")
        #: the saved adapter folder the model holds now (None: the plain base); what a runtime
        #: other than PyTorch answers with (cdcda_fl/edge/runtime.py)
        self.adapter_dir: Path | None = None
        self.step = on_step or (lambda _name: None)
        max_q = rc.eval.max_queries
        self.queries = user.queries[:max_q] if max_q > 0 else list(user.queries)
        self.golds = {q.id: q.gold for q in self.queries if q.gold is not None}
        self.inputs = [q.input for q in self.queries]
        self.retrieval_queries = [spec.query_text_of_input(i) for i in self.inputs]  # RAG and cloud share them
        self.batch = rc.eval.batch_size
        self.real_pairs = spec.profile_to_pairs(user.profile)
        self.answers = AnswerQueue(model, answerer, max_new_tokens=spec.max_new_tokens,
                                   handle_prefix=f"{spec.name}/{user.user_id}")
        self.cloud = CloudRecords(self, synthetic)
        self.result: dict[str, Any] = {
            "user_id": user.user_id, "task": spec.name, "n_profile": len(user.profile),
            "n_queries": len(self.queries), "n_synthetic_received": len(synthetic),
            "n_synthetic_used": 0,
            "synthetic_bytes": len(json.dumps(list(synthetic), ensure_ascii=False, separators=(",", ":")).encode()),
            "methods": {}, "golds": self.golds,
        }

    # ------------------------------------------------------------------ the model's adapter
    def hold(self, adapter_dir: Path) -> None:
        """Load the adapter saved at ``adapter_dir``: the model answers with it until :meth:`clear`."""
        self.model.load_adapter(adapter_dir)
        self.adapter_dir = adapter_dir

    def clear(self) -> None:
        """Back to the plain base model."""
        self.model.clear_adapter()
        self.adapter_dir = None

    def answer_in_training_runtime(self, prompts: list[str]) -> list[str]:
        """Answers from the PyTorch model as it is now (a throw-away adapter of a check)."""
        texts = self.model.generate(prompts, max_new_tokens=self.spec.max_new_tokens, batch_size=self.batch)
        return [self.spec.parse_answer(t) for t in texts]

    # ------------------------------------------------------------------ answers and the result
    def defer(self, method: str, prompts: list[str], started: float, **extra: Any) -> None:
        """Queue ``method``'s answers to ``prompts`` with the adapter held now (or the base), for
        the node's batched answering step; the model goes back to the plain base for the next method."""
        self.answers.defer(method, prompts, self.adapter_dir, time.perf_counter() - started, extra)
        self.clear()

    def same_answers(self, method: str, as_method: str, started: float, **extra: Any) -> None:
        """``method`` answers exactly as ``as_method`` (same adapter, greedy): no second answering."""
        self.answers.same_answers(method, as_method, time.perf_counter() - started, extra)
        self.clear()

    def record(self, method: str, preds: list[str], seconds: float, **extra: Any) -> None:
        """``method``'s entry in the result: predictions by query id, seconds, report fields, metrics."""
        predictions = {q.id: p for q, p in zip(self.queries, preds)}
        entry: dict[str, Any] = {"predictions": predictions, "seconds": round(seconds, 3), **extra}
        if self.golds and len(self.golds) == len(predictions):
            entry["metrics"] = score(self.spec, self.golds, predictions)
        self.result["methods"][method] = entry

    def finish(self, texts: Mapping[int, list[str]], seconds_per_row: float) -> None:
        """Record every queued method from the batched answers, in the run's method order."""
        def recorded(method: str) -> list[str]:
            source = self.result["methods"][method]["predictions"]
            return [source[q.id] for q in self.queries]

        self.answers.finish(texts, seconds_per_row, self.spec.parse_answer, self.record, recorded)
        order = {m: i for i, m in enumerate(methods_of(self.cfg))}
        self.result["methods"] = dict(sorted(self.result["methods"].items(), key=lambda kv: order.get(kv[0], 99)))

    def mia(self) -> dict[str, Any]:
        """The membership-inference AUC of the adapter held now (``mia.enabled``): a trained method's report field."""
        if not run_config(self.cfg).mia.enabled:
            return {}
        held_out = [(q.input, q.gold) for q in self.queries if q.gold is not None]
        return {"mia_auc": membership_auc(self.model.example_losses(self.real_pairs),
                                          self.model.example_losses(held_out))}

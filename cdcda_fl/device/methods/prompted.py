"""The methods that train nothing: the on-device base model zero-shot, and with retrieved profile items."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdcda_fl.data.retrieval import retrieve
from cdcda_fl.device.methods.method import Method
from cdcda_fl.device.methods.user_run import UserRun
from cdcda_fl.core.run_config import run_config


class Base(Method):
    """``base``: the on-device model zero-shot, the floor every personalization must beat."""

    name: ClassVar[str] = "base"

    def run(self, run: UserRun) -> None:
        run.defer(self.name, run.inputs, time.perf_counter())


@dataclass(frozen=True)
class Rag(Method):
    """``rag``: the base model with the top-``k`` BM25 profile items in the prompt (no training)."""

    name: ClassVar[str] = "rag"
    k: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Rag:
        return cls(k=run_config(cfg).rag.k)

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        retrieved = retrieve(run.spec, run.user.profile, run.retrieval_queries, self.k)
        run.defer(self.name, [run.spec.rag_prompt(i, r) for i, r in zip(run.inputs, retrieved)], started)

"""``cloud``: the cloud model answering with the user's whole profile retrieved into the prompt.

It is the non-private upper bound, so it is computed *on the device* with the cloud model loaded
in-process (hf backend), never by sending the user's queries out; with a remote backend it is
reported as skipped.

When the cloud model *is* the device's base model (``cloud.model = device.model``, unquantized,
the torch runtime: the demo's SmolLM2 on both sides), its prompts are answered in the node's
mixed batch by the device's base, as ``rag`` is, instead of by a second copy of the same weights
outside the batch (8.4 actor-s per demo user, issue 33). Greedy answers are the same model's;
only the dtype is the device's (``device.dtype``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdcda_fl.data.retrieval import retrieve
from cdcda_fl.data.tasks import TaskSpec
from cdcda_fl.device.methods.method import Method
from cdcda_fl.device.methods.user_run import UserRun
from cdcda_fl.core.run_config import run_config

SKIPPED = ("the cloud upper bound runs only with an in-process (hf) cloud model: a remote one would need "
           "the user's queries")


def cloud_backend(cfg: Mapping[str, Any]) -> Any:
    """The cloud model for the upper-bound baseline, loaded once per process like the base model."""
    rc = run_config(cfg)
    from cdcda_fl.cloud.backends import make_backend
    from cdcda_fl.device.models import cached

    return cached(("cloud", rc.cloud.backend, rc.cloud.model), lambda: make_backend(cfg))


def answer_with_cloud(spec: TaskSpec, prompts: list[str], cfg: Mapping[str, Any]) -> list[str]:
    """Greedy answers of the in-process cloud model (seeded by the run)."""
    from cdcda_fl.cloud.backends import Prompt

    return cloud_backend(cfg).generate([Prompt.chat(p) for p in prompts], max_new_tokens=spec.max_new_tokens,
                                       temperature=0.0, seed=run_config(cfg).seed)


def is_device_base(cfg: Mapping[str, Any]) -> bool:
    """The cloud model is the device's own base as the node answers with it (same name, full
    precision, the torch runtime): its answers can come from the node's batched base model."""
    rc = run_config(cfg)
    return (rc.cloud.model.strip() == rc.device.model.strip()
            and not rc.device.quantization.strip() and rc.device.runtime == "torch")


@dataclass(frozen=True)
class CloudUpperBound(Method):
    """The cloud model with the top-``k`` (``rag.cloud-k``) profile items: answered right away, not queued."""

    name: ClassVar[str] = "cloud"
    k: int
    in_process: bool  # cloud.backend = hf
    on_device_base: bool = False  # the cloud model is the device's base: answered in the node's batch

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> CloudUpperBound:
        rc = run_config(cfg)
        in_process = rc.cloud.backend == "hf"
        return cls(k=rc.rag.cloud_k, in_process=in_process,
                   on_device_base=in_process and is_device_base(cfg))

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        if not self.in_process:
            run.result["methods"][self.name] = {"skipped": SKIPPED}
            return
        retrieved = retrieve(run.spec, run.user.profile, run.retrieval_queries, self.k)
        prompts = [run.spec.rag_prompt(i, r) for i, r in zip(run.inputs, retrieved)]
        if self.on_device_base:
            run.clear()
            run.defer(self.name, prompts, started)
            return
        texts = answer_with_cloud(run.spec, prompts, run.cfg)
        run.record(self.name, [run.spec.parse_answer(t) for t in texts], time.perf_counter() - started)

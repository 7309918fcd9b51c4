"""Answering every method of every user a node hosts in one pass, after all of them trained.

Each method queues its prompts with the adapter it trained (:class:`AnswerQueue`); the node then
answers all queued requests together (:func:`answer_together`): with PyTorch, mixed-adapter
batches over one base model, which keeps batches full where one user's few queries per method
would not. Greedy answers equal answering user by user (tests/test_personalize_batch.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cdcda_fl.device.answering import Answerer, AnswerRequest


@dataclass
class Deferred:
    """A method whose answers wait for the batched answering step.

    ``request`` None: the method's answers are, by construction, another method's (``same_as``):
    CDCDA that fell back to local-only, a DP method that fell back to the base model.
    """

    method: str
    request: AnswerRequest | None
    seconds: float  # the method's own time before answering (training, checks)
    extra: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None


#: record(method, predictions in query order, seconds, **report fields)
Recorder = Callable[..., None]


class AnswerQueue:
    """One user's queued methods, and the adapters the PyTorch model keeps for them until answered."""

    def __init__(self, model: Any, answerer: Answerer, *, max_new_tokens: int, handle_prefix: str) -> None:
        self.model, self.answerer = model, answerer
        self.max_new_tokens, self.handle_prefix = max_new_tokens, handle_prefix
        self.pending: list[Deferred] = []
        self.kept_handles: list[str] = []

    def defer(self, method: str, prompts: Sequence[str], adapter_dir: Path | None, seconds: float,
              extra: dict[str, Any]) -> None:
        """Queue ``method``'s answers to ``prompts`` with the adapter saved at ``adapter_dir`` (None: base).

        For mixed batches the adapter the model holds now is kept under a handle until answered."""
        handle = None
        if adapter_dir is not None and self.answerer.mixed_batches:
            handle = f"{self.handle_prefix}/{method}"
            self.model.keep(handle)
            self.kept_handles.append(handle)
        request = AnswerRequest(tuple(prompts), self.max_new_tokens, adapter_dir, handle)
        self.pending.append(Deferred(method, request, seconds, extra))

    def same_answers(self, method: str, as_method: str, seconds: float, extra: dict[str, Any]) -> None:
        """``method`` answers exactly as ``as_method`` (same adapter, greedy): no second answering."""
        self.pending.append(Deferred(method, None, seconds, extra, same_as=as_method))

    def queued(self, method: str) -> bool:
        """Are ``method``'s own answers queued (so another method can share them)?"""
        return any(d.method == method and d.request is not None for d in self.pending)

    def train_of(self, method: str) -> dict[str, Any] | None:
        """The training report of ``method``'s queued answers (what another method answering the same reports)."""
        return next((dict(d.extra.get("train") or {}) for d in self.pending
                     if d.method == method and d.request is not None), None)

    def requests(self) -> list[AnswerRequest]:
        return [d.request for d in self.pending if d.request is not None]

    def finish(self, texts: Mapping[int, list[str]], seconds_per_row: float, parse: Callable[[str], str],
               record: Recorder, recorded: Callable[[str], list[str]]) -> None:
        """Record every queued method from its answers (``texts`` by ``id`` of the request).

        A method's ``seconds`` is its own time plus its rows' share of the batched answering;
        ``recorded(method)`` gives an already recorded method's predictions in query order."""
        for d in self.pending:
            if d.request is not None:
                preds = [parse(t) for t in texts[id(d.request)]]
                record(d.method, preds, d.seconds + seconds_per_row * len(d.request.prompts), **d.extra)
        for d in self.pending:
            if d.same_as is not None:
                record(d.method, recorded(d.same_as), d.seconds, **d.extra)
        self.pending = []

    def release(self) -> None:
        """Drop this user's kept adapters from the shared model."""
        for handle in self.kept_handles:
            self.model.release(handle)
        self.kept_handles = []


class Answering(Protocol):
    """What :func:`answer_together` needs of a user's run."""

    answers: AnswerQueue

    def finish(self, texts: Mapping[int, list[str]], seconds_per_row: float) -> None: ...


def answer_together(runs: Sequence[Answering]) -> dict[int, Exception]:
    """Answer every queued request of ``runs`` in one call, then record them; {id(run): error} for failures.

    If the joint call fails (one user's prompt too long for llama.cpp's context, say), each user
    is answered on its own, so the failure stays that user's.
    """
    if not runs:
        return {}
    answerer = runs[0].answers.answerer  # one per node: every run holds the same
    failed: dict[int, Exception] = {}

    def answer(group: Sequence[Answering]) -> None:
        requests = [r for run in group for r in run.answers.requests()]
        started = time.perf_counter()
        texts = answerer.answer_all(requests)
        rows = sum(len(r.prompts) for r in requests)
        per_row = (time.perf_counter() - started) / rows if rows else 0.0
        by_request = {id(r): t for r, t in zip(requests, texts)}
        for run in group:
            run.finish(by_request, per_row)

    try:
        answer(runs)
    except Exception as exc:
        if len(runs) == 1:
            return {id(runs[0]): exc}
        for run in runs:
            try:
                answer([run])
            except Exception as exc:
                failed[id(run)] = exc
    return failed

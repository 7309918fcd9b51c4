"""How a device answers: one method's request, the engine interface, and PyTorch's engine.

The device layer's own side of ``device.runtime``: a method queues an :class:`AnswerRequest`
and an :class:`Answerer` answers every queued request of a node at once. The default engine,
:class:`TorchAnswerer`, is the DeviceModel that trained the adapters. Other engines (llama.cpp
on an edge board) export the saved adapter first, so they live above the device layer
(cdcda_fl/edge/runtime.py: the registry of engines) and reach the device's methods as an
:class:`Answerer`. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class AnswerRequest:
    """One method's queries for one user: answered with the adapter saved at ``adapter_dir``
    (None: the plain base), which the PyTorch model also keeps under ``handle`` for mixed batches."""

    prompts: tuple[str, ...]
    max_new_tokens: int
    adapter_dir: Path | None = None
    handle: str | None = None


class Answerer(Protocol):
    """Greedy answers to prompts from the base plus the adapter saved at ``adapter_dir`` (None: base)."""

    name: str
    #: True: :meth:`answer_all` answers kept PyTorch adapters (``AnswerRequest.handle``) in mixed
    #: batches, so the device keeps each trained adapter until then; False: it needs only the folder.
    mixed_batches: bool

    def answer(self, prompts: Sequence[str], *, max_new_tokens: int, adapter_dir: Path | None) -> list[str]: ...

    def answer_all(self, requests: Sequence[AnswerRequest]) -> list[list[str]]:
        """Every request's answers, in order; how they are batched is the runtime's business."""
        ...


class TorchAnswerer:
    """The PyTorch model that trained the adapter answers with it: it already holds ``adapter_dir``."""

    name = "torch"
    mixed_batches = True

    def __init__(self, device_model: Any, *, batch_size: int) -> None:
        self.model, self.batch_size = device_model, batch_size

    def answer(self, prompts: Sequence[str], *, max_new_tokens: int, adapter_dir: Path | None) -> list[str]:
        return self.model.generate(list(prompts), max_new_tokens=max_new_tokens, batch_size=self.batch_size)

    def answer_all(self, requests: Sequence[AnswerRequest]) -> list[list[str]]:
        """All rows of all requests in one mixed-adapter call: rows of different users and methods
        share batches (peft ``adapter_names``), sorted by length, batched per answer budget."""
        prompts = [p for r in requests for p in r.prompts]
        if not prompts:
            return [[] for _ in requests]
        flat = self.model.generate(prompts, max_new_tokens=[r.max_new_tokens for r in requests for _ in r.prompts],
                                   batch_size=self.batch_size,
                                   adapters=[r.handle for r in requests for _ in r.prompts])
        out, at = [], 0
        for r in requests:
            out.append(flat[at:at + len(r.prompts)])
            at += len(r.prompts)
        return out

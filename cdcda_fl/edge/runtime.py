"""``device.runtime``: which engine answers a user's queries on the device -- a registry.

Training is always PyTorch + PEFT (the adapter is saved to the device's store). Answering is
pluggable, because an edge board's natural engine is llama.cpp, not PyTorch:

- ``torch``: the DeviceModel that trained the adapter answers with it (transformers + PEFT);
- ``llamacpp``: the saved adapter is exported to a GGUF LoRA file in a temporary folder on the
  device's own disk, llama.cpp answers with the bundled base GGUF + that file, and the temporary
  file is deleted. The plain base (methods ``base``, ``rag``, a DP fall-back) is one llama.cpp
  model kept per process, like the PyTorch base.

Nothing here leaves the device. This module imports neither torch nor transformers: the
llama.cpp path must run on a board that has only the ``edge`` extra (tests/test_edge_llamacpp.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cdcda_fl.config import ConfigError
from cdcda_fl.edge.export import base_folder, bundled_base_gguf, export_adapter


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


def base_gguf_for(model: str | Path) -> Path:
    """The llama.cpp base file for ``device.model`` (a GGUF preset; else ExportError says what to run)."""
    return bundled_base_gguf(base_folder({}, model, Path(str(model))))


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


class LlamaCppAnswerer:
    """llama.cpp answers: bundled base GGUF + the user's adapter exported to GGUF for this call.

    llama-cpp-python fixes the adapter when a model is created, so each adapter gets its own
    short-lived model (0.3 s to load the 135M base from the page cache); the plain base is
    created once per process and reused across users.
    """

    name = "llamacpp"
    mixed_batches = False
    _bases: dict[tuple[str, int | None], Any] = {}

    def __init__(self, model: str | Path, *, storage_dir: Path, n_threads: int | None = None) -> None:
        self.base = base_gguf_for(model)
        self.storage_dir = Path(storage_dir)
        self.n_threads = n_threads

    def _plain_base(self) -> Any:
        from cdcda_fl.edge.llamacpp import LlamaCppModel

        key = (str(self.base), self.n_threads)
        if key not in self._bases:
            self._bases[key] = LlamaCppModel(self.base, None, n_threads=self.n_threads)
        return self._bases[key]

    def answer(self, prompts: Sequence[str], *, max_new_tokens: int, adapter_dir: Path | None) -> list[str]:
        from cdcda_fl.edge.llamacpp import LlamaCppModel

        if adapter_dir is None:
            return self._plain_base().generate(prompts, max_new_tokens=max_new_tokens)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=self.storage_dir) as tmp:
            adapter = export_adapter(Path(adapter_dir), Path(tmp) / "adapter.gguf", base=None).path
            llm = LlamaCppModel(self.base, adapter, n_threads=self.n_threads)
            try:
                return llm.generate(prompts, max_new_tokens=max_new_tokens)
            finally:
                llm.close()

    def answer_all(self, requests: Sequence[AnswerRequest]) -> list[list[str]]:
        """One llama.cpp model per adapter (llama-cpp-python fixes it at load), so request by request."""
        return [self.answer(r.prompts, max_new_tokens=r.max_new_tokens, adapter_dir=r.adapter_dir) for r in requests]


def _torch(cfg: Mapping[str, Any], *, device_model: Any, storage_dir: Path, n_threads: int | None) -> Answerer:
    return TorchAnswerer(device_model, batch_size=int(cfg["eval.batch-size"]))


def _llamacpp(cfg: Mapping[str, Any], *, device_model: Any, storage_dir: Path, n_threads: int | None) -> Answerer:
    return LlamaCppAnswerer(str(cfg["device.model"]), storage_dir=storage_dir, n_threads=n_threads)


#: ``device.runtime`` -> factory of the answerer. A new runtime is one class and one entry here.
RUNTIMES: dict[str, Callable[..., Answerer]] = {"torch": _torch, "llamacpp": _llamacpp}


def check_runtime(name: str) -> str:
    """``device.runtime`` checked before a run starts (a typo must not fail every user one by one)."""
    if name not in RUNTIMES:
        raise ConfigError(f"device.runtime: unknown {name!r}; choose from {', '.join(RUNTIMES)}")
    return name


def make_answerer(cfg: Mapping[str, Any], *, device_model: Any, storage_dir: Path,
                  n_threads: int | None = None) -> Answerer:
    """The answerer ``device.runtime`` names, for one user's run on this device."""
    return RUNTIMES[check_runtime(str(cfg["device.runtime"]))](
        cfg, device_model=device_model, storage_dir=storage_dir, n_threads=n_threads)


def answer_user_llamacpp(
    adapter_dir: Path | None,
    prompts: list[str],
    *,
    model: str | Path,
    max_new_tokens: int,
    storage_dir: Path,
    n_threads: int | None = None,
) -> list[str]:
    """Greedy answers from the ``device.model`` base plus the user's saved PEFT adapter (None: plain base)."""
    return LlamaCppAnswerer(model, storage_dir=storage_dir, n_threads=n_threads).answer(
        prompts, max_new_tokens=max_new_tokens, adapter_dir=adapter_dir)

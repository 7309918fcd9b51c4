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
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import ConfigError
from cdcda_fl.device.answering import Answerer, AnswerRequest, TorchAnswerer
from cdcda_fl.edge import llamacpp
from cdcda_fl.edge.export import base_folder, bundled_base_gguf, export_adapter
from cdcda_fl.core.run_config import run_config

# Answerer, AnswerRequest and TorchAnswerer are the device layer's (device/answering.py); this
# module adds the engine that needs the edge (llama.cpp) and the registry ``device.runtime`` picks from.


def base_gguf_for(model: str | Path) -> Path:
    """The llama.cpp base file for ``device.model`` (a GGUF preset; else ExportError says what to run)."""
    return bundled_base_gguf(base_folder({}, model, Path(str(model))))


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
        key = (str(self.base), self.n_threads)
        if key not in self._bases:
            self._bases[key] = llamacpp.LlamaCppModel(self.base, None, n_threads=self.n_threads)
        return self._bases[key]

    def answer(self, prompts: Sequence[str], *, max_new_tokens: int, adapter_dir: Path | None) -> list[str]:
        if adapter_dir is None:
            return self._plain_base().generate(prompts, max_new_tokens=max_new_tokens)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=self.storage_dir) as tmp:
            adapter = export_adapter(Path(adapter_dir), Path(tmp) / "adapter.gguf", base=None).path
            llm = llamacpp.LlamaCppModel(self.base, adapter, n_threads=self.n_threads)
            try:
                return llm.generate(prompts, max_new_tokens=max_new_tokens)
            finally:
                llm.close()

    def answer_all(self, requests: Sequence[AnswerRequest]) -> list[list[str]]:
        """One llama.cpp model per adapter (llama-cpp-python fixes it at load), so request by request."""
        return [self.answer(r.prompts, max_new_tokens=r.max_new_tokens, adapter_dir=r.adapter_dir) for r in requests]


def _torch(cfg: Mapping[str, Any], *, device_model: Any, storage_dir: Path, n_threads: int | None) -> Answerer:
    return TorchAnswerer(device_model, batch_size=run_config(cfg).eval.batch_size)


def _llamacpp(cfg: Mapping[str, Any], *, device_model: Any, storage_dir: Path, n_threads: int | None) -> Answerer:
    return LlamaCppAnswerer(run_config(cfg).device.model, storage_dir=storage_dir, n_threads=n_threads)


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
    return RUNTIMES[check_runtime(run_config(cfg).device.runtime)](
        cfg, device_model=device_model, storage_dir=storage_dir, n_threads=n_threads)


"""``device.runtime = llamacpp``: answer one user's queries with llama.cpp on the device.

The PyTorch path keeps training the adapter (PEFT); for answering, the saved adapter is exported
to a GGUF LoRA file in a temporary folder on the device's own disk (``storage_dir``), llama.cpp
answers with the bundled base GGUF + that file, and the temporary file is deleted. Nothing here
leaves the device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cdcda_fl.edge.export import base_folder, bundled_base_gguf, export_adapter
from cdcda_fl.edge.llamacpp import answer_llamacpp

RUNTIMES = ("torch", "llamacpp")


def base_gguf_for(model: str | Path) -> Path:
    """The llama.cpp base file for ``device.model`` (a GGUF preset; else ExportError says what to run)."""
    return bundled_base_gguf(base_folder({}, model, Path(str(model))))


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
    base = base_gguf_for(model)
    if adapter_dir is None:
        return answer_llamacpp(base, None, prompts, max_new_tokens=max_new_tokens, n_threads=n_threads)
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=storage_dir) as tmp:
        adapter = export_adapter(Path(adapter_dir), Path(tmp) / "adapter.gguf", base=None).path
        return answer_llamacpp(base, adapter, prompts, max_new_tokens=max_new_tokens, n_threads=n_threads)

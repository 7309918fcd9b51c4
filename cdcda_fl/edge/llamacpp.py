"""Answer a user's queries with llama.cpp: base GGUF + the user's exported GGUF LoRA adapter.

This is the on-device path for boards without PyTorch: it imports only llama-cpp-python (the
optional ``edge`` extra), jinja2 and the standard library, never torch or transformers
(tests/test_edge_llamacpp.py checks ``sys.modules`` in a fresh interpreter).

The model must see exactly the text the PyTorch path feeds it (``format_prompt`` in
cdcda_fl/device/encoding.py: the chat template with one user turn and the generation prompt). The
chat template travels inside the GGUF (``tokenizer.chat_template``), so it is rendered here the
way transformers renders it (sandboxed jinja2, ``trim_blocks``/``lstrip_blocks``, the
tokenizer's special tokens as variables, its ``tojson`` and ``raise_exception``), and tokenized
with ``special=True`` and no extra BOS, as transformers does with ``add_special_tokens=False``.
Decoding is greedy and stops at the model's end-of-generation tokens; special tokens are not
printed, as with ``skip_special_tokens=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_CTX = 2048


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python is not installed (it is the optional ``edge`` extra)."""


def _llama_class() -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise LlamaCppUnavailable(
            "device.runtime=llamacpp needs llama-cpp-python: pip install '.[edge]' (builds llama.cpp; see docs/edge.md)"
        ) from None
    return Llama


def _render(template: str, user_text: str, special: dict[str, str]) -> str:
    """The chat template rendered as transformers' ``apply_chat_template`` does (one user turn)."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user_text}], add_generation_prompt=True, tools=None, documents=None,
        **special,
    )


class LlamaCppModel:
    """A llama.cpp base (+ at most one LoRA adapter, fixed at load) that answers like DeviceModel.generate."""

    def __init__(self, base_gguf: Path, adapter_gguf: Path | None = None, *, n_threads: int | None = None,
                 n_ctx: int = DEFAULT_CTX, lora_scale: float = 1.0, **llama_kwargs: Any):
        """``n_threads`` is used for prompt processing too (llama.cpp's ``n_threads_batch`` would
        otherwise default to every core); ``llama_kwargs`` go to ``llama_cpp.Llama`` as they are."""
        for label, path in (("base GGUF", base_gguf), ("adapter GGUF", adapter_gguf)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{label} {path} does not exist")
        Llama = _llama_class()
        threads = n_threads or max(1, os.cpu_count() or 1)
        kwargs: dict[str, Any] = {"seed": 0, "verbose": False, "logits_all": False, "n_threads_batch": threads}
        if adapter_gguf is not None:
            kwargs.update(lora_path=str(adapter_gguf), lora_scale=float(lora_scale))
        kwargs.update(llama_kwargs)
        self.llm = Llama(model_path=str(base_gguf), n_ctx=n_ctx, n_threads=threads, **kwargs)
        self.n_ctx = n_ctx
        self.template = self.llm.metadata.get("tokenizer.chat_template") or None
        self._special = {
            name: self._token_text(tid)
            for name, tid in (("bos_token", self.llm.token_bos()), ("eos_token", self.llm.token_eos()))
            if tid is not None and tid >= 0
        }

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def format_prompt(self, user_text: str) -> str:
        """Same text as cdcda_fl.device.encoding.format_prompt with the base's HF tokenizer."""
        if self.template:
            return _render(self.template, user_text, self._special)
        return user_text + "\n"

    def prompt_tokens(self, user_text: str) -> list[int]:
        # A chat template writes the special tokens itself (transformers: add_special_tokens=False).
        add_bos = self.template is None and self.llm.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        return self.llm.tokenize(self.format_prompt(user_text).encode("utf-8"), add_bos=add_bos, special=True)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers (new text only, stripped), in input order."""
        answers = []
        for text in prompts:
            tokens = self.prompt_tokens(text)
            if len(tokens) + max_new_tokens > self.n_ctx:
                raise ValueError(
                    f"prompt of {len(tokens)} tokens + {max_new_tokens} new exceeds the llama.cpp context {self.n_ctx}"
                )
            out = self.llm.create_completion(
                tokens, max_tokens=max_new_tokens, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                repeat_penalty=1.0, seed=0,
            )
            answers.append(out["choices"][0]["text"].strip())
        return answers

    def close(self) -> None:
        self.llm.close()


def answer_llamacpp(base_gguf: Path, adapter_gguf: Path | None, prompts: list[str], *, max_new_tokens: int,
                    n_threads: int | None = None) -> list[str]:
    """Greedy answers to ``prompts`` from ``base_gguf`` with the user's ``adapter_gguf`` (None: plain base)."""
    model = LlamaCppModel(base_gguf, adapter_gguf, n_threads=n_threads)
    try:
        return model.generate(prompts, max_new_tokens=max_new_tokens)
    finally:
        model.close()

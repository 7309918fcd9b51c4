"""LLM backends for the cloud side: one small interface, two implementations.

* :class:`HFBackend` runs a transformers model in-process (any device preset or HF id/path),
  batched with left padding -- batching is the main throughput lever on CPU (docs/design.md, "Facts").
* :class:`OpenAIBackend` talks to any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp
  server, hosted APIs, or our own :mod:`cdcda_fl.cloud.serve`) over real HTTP, with bounded
  concurrency and retries with exponential backoff and jitter.

Prompts say what they are: a *chat* message (for instruction-tuned models, formatted with the
model's chat template / sent to ``/v1/chat/completions``) or a raw *continuation* text (for base
models such as Gemma-3-270M, which write clean few-shot records; sent to ``/v1/completions``).

Backends return only newly generated text. :meth:`generate_detailed` additionally says why a
generation ended (``"stop"`` vs ``"length"``) and how many tokens it produced, which the
augmenter uses to tell a finished last record from a truncated one, and the benchmark uses for
tokens/s. It is optional: anything with ``name`` and ``generate`` is an :class:`LLMBackend`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# The shared types and the HTTP backend live in their own modules; their names are imported here
# because the in-process backend and the registry use them (callers may import them from here).
from cdcda_fl.cloud.llm_types import (BackendError, Generation, LLMBackend, Prompt, UsageStats,  # noqa: F401
                                      _TextsFromDetails, apply_stop)
from cdcda_fl.cloud.openai_backend import LOCAL_BASE_URL, OpenAIBackend
from cdcda_fl.core.config import carries
from cdcda_fl.core.run_config import run_config

log = logging.getLogger(__name__)


class HFBackend(_TextsFromDetails):
    """A transformers causal LM in this process, generating in left-padded batches.

    ``model`` is a device-layer preset (``smollm2-135m``, ``gemma3-270m``, ``tiny-random``), an HF
    id or a local folder; the weights come from the process-level cache, so a simulation that
    also trains on the same base shares one copy. ``batch_size`` prompts go through one
    ``generate`` call; prompts are sorted by length first so a batch pads little.
    Generation holds a lock: torch's sampling RNG is global, and one model generating two
    batches at once on 2 cores is slower, not faster.
    """

    def __init__(self, model: str = "smollm2-135m", *, batch_size: int = 8, device: str | None = None, loaded: Any = None) -> None:
        if loaded is None:
            from cdcda_fl.device.models import get_base_model  # lazy: torch; only the in-process hf backend needs it

            loaded = get_base_model(model, device=device)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = f"hf:{getattr(loaded, 'name', model)}"
        self.model_id = str(getattr(loaded, "name", model))
        self.batch_size = max(1, int(batch_size))
        self.stats = UsageStats()
        self._lock = threading.Lock()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    #: ``prompt-style=auto`` uses few-shot continuation in-process, even for chat models: measured
    #: on six tiny users (T=0.8, 64 new tokens), SmolLM2-135M-Instruct wrote parseable records for
    #: all six tasks by continuation but for only one of six when asked in a chat message.
    prefers_chat = False

    def _render(self, prompt: Prompt) -> tuple[str, bool]:
        """Prompt -> (text, add_special_tokens). Chat templates already contain special tokens."""
        if prompt.is_chat and self.has_chat_template:
            text = self.tokenizer.apply_chat_template(prompt.message_dicts(), tokenize=False, add_generation_prompt=True)
            return text, False
        return prompt.flat_text(), True

    def generate_detailed(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int
    ) -> list[Generation]:
        """Generate for every prompt, ``batch_size`` at a time; results in the prompts' order."""
        if not prompts:
            return []
        rendered = [self._render(p) for p in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=s)["input_ids"]) for t, s in rendered]
        order = sorted(range(len(prompts)), key=lambda i: (rendered[i][1], lengths[i]))
        out: list[Generation | None] = [None] * len(prompts)
        start = time.perf_counter()
        for b, chunk_start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[chunk_start : chunk_start + self.batch_size]
            # Chat-templated and raw prompts differ in special tokens: keep them in separate calls.
            for special in (False, True):
                sub = [i for i in idx if rendered[i][1] is special]
                if sub:
                    gens = self._generate_batch([prompts[i] for i in sub], [rendered[i][0] for i in sub], special,
                                                max_new_tokens, temperature, seed + 1000 * b + int(special))
                    for i, g in zip(sub, gens):
                        out[i] = g
        result = [g for g in out if g is not None]
        self.stats.add(result, time.perf_counter() - start)
        return result

    def _generate_batch(
        self, prompts: Sequence[Prompt], texts: list[str], add_special: bool, max_new_tokens: int, temperature: float, seed: int
    ) -> list[Generation]:
        import torch  # lazy: the HTTP backends and the server never need torch
        from transformers import LogitsProcessorList  # lazy: as torch

        from cdcda_fl.cloud.sampling import NucleusGumbel  # lazy: imports torch

        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        do_sample = temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": do_sample, "pad_token_id": tok.pad_token_id}
        # Sampling is temperature + top-p 0.95, drawn by NucleusGumbel (cloud/sampling.py) under greedy
        # decoding: transformers' top-p warper sorts the whole vocabulary at every step, which cost
        # more than SmolLM2's forward pass.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if do_sample:
            kwargs["logits_processor"] = LogitsProcessorList([NucleusGumbel(float(temperature), top_p=0.95)])
        with self._lock, torch.inference_mode():
            torch.manual_seed(int(seed) % (2**63))
            try:
                seqs = self.model.generate(**enc, **kwargs)
            except Exception as exc:  # noqa: BLE001 - surfaced as a backend failure, with its cause
                raise BackendError(f"{self.name}: generation failed: {type(exc).__name__}: {exc}") from exc
        new = seqs[:, enc["input_ids"].shape[1] :]
        eos_ids = _eos_ids(self.model, tok)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        gens = []
        for row, prompt, plen in zip(new.tolist(), prompts, prompt_lens):
            n = len(row)
            ended = False
            for j, t in enumerate(row):
                if t in eos_ids:
                    n, ended = j, True
                    break
            text = tok.decode(row[:n], skip_special_tokens=True)
            text, stopped = apply_stop(text, prompt.stop)
            gens.append(Generation(text, "stop" if (ended or stopped) else "length", n, int(plen)))
        return gens


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else []))
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        ids.add(tok.pad_token_id)  # a pad after the prompt means the row finished
    return ids


# ====================================================================== factory
def _hf_from_config(cfg: Mapping[str, Any], loaded: Any) -> LLMBackend:
    """``hf``: ``cloud.model``, ``cloud.batch-size``, ``cloud.device``."""
    rc = run_config(cfg)
    return HFBackend(rc.cloud.model, batch_size=rc.cloud.batch_size,
                     device=(rc.cloud.device or None), loaded=loaded)


def _openai_from_config(cfg: Mapping[str, Any], loaded: Any) -> LLMBackend:
    """``openai``: ``cloud.model``, ``cloud.base-url`` (empty = :data:`LOCAL_BASE_URL`),
    ``cloud.api-key-env``, ``cloud.timeout``, ``cloud.max-retries``, ``cloud.concurrency``,
    ``cloud.allow-insecure-http``; a ``cloud.prompt-style`` of ``continuation`` says the served
    model is a base model."""
    rc = run_config(cfg)
    return OpenAIBackend(
        # a served model has no preset default: only a cloud.model the run set names it
        str(cfg["cloud.model"]) if carries(cfg, "cloud.model") else "",
        base_url=rc.cloud.base_url or LOCAL_BASE_URL,
        api_key_env=rc.cloud.api_key_env,
        timeout=rc.cloud.timeout,
        max_retries=rc.cloud.max_retries,
        concurrency=rc.cloud.concurrency,
        prefers_chat=rc.cloud.prompt_style.lower() != "continuation",
        allow_insecure_http=rc.cloud.allow_insecure_http,
    )


#: ``cloud.backend`` -> builder from the flat run config. A new backend: a class above and one entry here.
BACKENDS: dict[str, Callable[[Mapping[str, Any], Any], LLMBackend]] = {
    "hf": _hf_from_config,
    "openai": _openai_from_config,
}


def make_backend(cfg: Mapping[str, Any], *, loaded: Any = None) -> LLMBackend:
    """Build the backend that ``cloud.backend`` names (``hf`` by default) from flat run config
    (the keys each reads: :data:`BACKENDS`' builders). Defaults and meanings:
    :data:`cdcda_fl.core.config.DEFAULTS` (the only place they are set)."""
    kind = run_config(cfg).cloud.kind
    if kind not in BACKENDS:
        raise BackendError(f"cloud.backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    try:
        return BACKENDS[kind](cfg, loaded)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"bad cloud.* setting: {exc}") from exc

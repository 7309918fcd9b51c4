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

import ipaddress
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from cdcda_fl.config import DEFAULTS, config_get, parse_bool

log = logging.getLogger(__name__)

#: Where ``cloud.backend=openai`` looks when ``cloud.base-url`` is empty: ``cdcda serve`` on this machine.
LOCAL_BASE_URL = "http://127.0.0.1:8000/v1"

PromptKind = Literal["chat", "completion"]
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class BackendError(RuntimeError):
    """A backend could not produce generations (after retries, for the HTTP backend)."""


@dataclass(frozen=True)
class Prompt:
    """One generation request: a chat conversation or a raw text to continue.

    Use :meth:`chat` / :meth:`continuation` rather than the constructor. ``stop`` strings end the
    generation early where the backend supports it (the text returned never contains them).
    """

    kind: PromptKind
    text: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    stop: tuple[str, ...] = ()

    @classmethod
    def chat(cls, user: str, system: str | None = None, stop: Sequence[str] = ()) -> Prompt:
        msgs = ((("system", system),) if system else ()) + (("user", user),)
        return cls("chat", user, msgs, tuple(stop))

    @classmethod
    def from_messages(cls, messages: Sequence[Mapping[str, Any]], stop: Sequence[str] = ()) -> Prompt:
        msgs = tuple((str(m.get("role", "user")), _content_text(m.get("content", ""))) for m in messages)
        last_user = next((c for r, c in reversed(msgs) if r == "user"), "")
        return cls("chat", last_user, msgs, tuple(stop))

    @classmethod
    def continuation(cls, text: str, stop: Sequence[str] = ()) -> Prompt:
        return cls("completion", text, (), tuple(stop))

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def flat_text(self) -> str:
        """Everything the model sees, as plain text (for prompts sent to non-chat models, and audits)."""
        if not self.is_chat:
            return self.text
        return "\n\n".join(c for _, c in self.messages) + "\n\n"


def _content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)


@dataclass
class Generation:
    """One generated continuation: its text, why it ended, and its token counts."""

    text: str
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length" (hit max_new_tokens)
    completion_tokens: int = 0
    prompt_tokens: int = 0


@runtime_checkable
class LLMBackend(Protocol):
    """What the augmenter needs from a model: batched generation for many prompts."""

    name: str

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]: ...


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass
class UsageStats:
    """Running totals a backend keeps, for benchmarks and logs (thread-safe updates)."""

    calls: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, gens: Sequence[Generation], seconds: float) -> None:
        with self._lock:
            self.calls += 1
            self.prompts += len(gens)
            self.prompt_tokens += sum(g.prompt_tokens for g in gens)
            self.completion_tokens += sum(g.completion_tokens for g in gens)
            self.seconds += seconds


# ====================================================================== in-process (transformers)
class _TextsFromDetails:
    """``generate`` (texts only) for a backend that implements ``generate_detailed``."""

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        gens = self.generate_detailed(prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return [g.text for g in gens]


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
        import torch

        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        do_sample = temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": do_sample, "pad_token_id": tok.pad_token_id}
        if do_sample:
            kwargs.update(temperature=float(temperature), top_p=0.95, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
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


# ====================================================================== OpenAI-compatible HTTP
class OpenAIBackend(_TextsFromDetails):
    """Any OpenAI-compatible server over HTTP (vLLM, Ollama, llama.cpp, hosted APIs, ``cdcda serve``).

    Chat prompts go to ``/v1/chat/completions``, continuation prompts to ``/v1/completions``;
    one request per prompt, up to ``concurrency`` in flight (servers such as vLLM batch
    concurrent requests themselves). Retries with exponential backoff + jitter on connection
    errors, timeouts, 408/409/425/429/5xx and unparseable bodies; other 4xx fail at once (a
    wrong model name or key will not fix itself). The API key is read from the environment
    variable named by ``api_key_env`` and is never logged or put into error messages.
    Plain ``http://`` to a host that is not loopback is refused unless ``allow_insecure_http``:
    the requests carry users' shared records and the key.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = LOCAL_BASE_URL,
        api_key_env: str = "",
        timeout: float = float(DEFAULTS["cloud.timeout"][0]),  # one source of defaults: config.py
        max_retries: int = int(DEFAULTS["cloud.max-retries"][0]),
        concurrency: int = int(DEFAULTS["cloud.concurrency"][0]),
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        prefers_chat: bool = True,
        transport: Any = None,
        allow_insecure_http: bool = False,
    ) -> None:
        import httpx

        if not model:
            raise BackendError("cloud.model is required for the openai backend (the model name the server serves)")
        self.model_id = model
        self.base_url = normalize_base_url(base_url)
        check_transport_security(self.base_url, allow_insecure_http)
        self.name = f"openai:{model}@{self.base_url}"
        self.max_retries = max(0, int(max_retries))
        self.concurrency = max(1, int(concurrency))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.prefers_chat = prefers_chat
        self.stats = UsageStats()
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise BackendError(f"environment variable {api_key_env!r} (cloud.api-key-env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=httpx.Timeout(float(timeout)), headers=headers, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate_detailed(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int
    ) -> list[Generation]:
        """All prompts, ``concurrency`` at a time; raises :class:`BackendError` if any one fails."""
        if not prompts:
            return []
        start = time.perf_counter()
        jobs = [(p, max_new_tokens, temperature, seed + i) for i, p in enumerate(prompts)]
        if self.concurrency == 1 or len(jobs) == 1:
            gens = [self._one(*j) for j in jobs]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs)), thread_name_prefix="openai") as pool:
                gens = list(pool.map(lambda j: self._one(*j), jobs))
        self.stats.add(gens, time.perf_counter() - start)
        return gens

    def _body(self, prompt: Prompt, max_new_tokens: int, temperature: float, seed: int) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model_id, "max_tokens": int(max_new_tokens), "temperature": float(temperature), "seed": int(seed)}
        if temperature > 0:
            body["top_p"] = 0.95
        if prompt.stop:
            body["stop"] = list(prompt.stop)[:4]  # OpenAI accepts at most four
        if prompt.is_chat:
            body["messages"] = prompt.message_dicts()
            return f"{self.base_url}/chat/completions", body
        body["prompt"] = prompt.text
        return f"{self.base_url}/completions", body

    def _one(self, prompt: Prompt, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        import httpx

        url, body = self._body(prompt, max_new_tokens, temperature, seed)
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                resp = self._client.post(url, json=body)
            except httpx.TimeoutException as exc:
                last = f"timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code == 200:
                    try:
                        gen = _parse_response(resp.json(), prompt.is_chat)
                        gen.text, stopped = apply_stop(gen.text, prompt.stop)
                        if stopped:
                            gen.finish_reason = "stop"
                        return gen
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        last = f"HTTP 200 with an unparseable body ({type(exc).__name__}: {str(exc)[:80]})"
                else:
                    snippet = resp.text[:200].replace("\n", " ")
                    last = f"HTTP {resp.status_code}: {snippet}"
                    if resp.status_code not in RETRY_STATUSES:
                        raise BackendError(f"{url} refused the request: {last}")
                    retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt < self.max_retries:
                delay = min(self.backoff_max, self.backoff_base * (2**attempt)) * random.uniform(0.5, 1.5)
                if retry_after is not None:
                    delay = min(self.backoff_max, max(delay, retry_after))
                log.warning("%s: %s; retry %d/%d in %.2fs", url, last, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise BackendError(f"{url} failed after {self.max_retries + 1} attempt(s); last: {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _parse_response(data: Any, chat: bool) -> Generation:
    """OpenAI response JSON -> Generation; raises on anything that is not a usable answer."""
    choice = data["choices"][0]
    if chat:
        text = choice["message"]["content"]
    else:
        text = choice["text"]
    if not isinstance(text, str):
        raise TypeError("generated text is not a string")
    usage = data.get("usage") or {}
    return Generation(
        text=text,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
    )


def normalize_base_url(url: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or ``.../v1/``; always return ``.../v1``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BackendError(f"cloud.base-url must start with http:// or https://, got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (brackets allowed); anything else, names included, is remote."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport_security(base_url: str, allow_insecure_http: bool = False) -> None:
    """Refuse records and keys in clear text to another machine unless the config says so explicitly."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
        return
    if not allow_insecure_http:
        raise BackendError(
            f"cloud.base-url {base_url} is plain http:// to a host that is not loopback: users' shared records and "
            "the API key would cross the network unencrypted. Use https://, tunnel to 127.0.0.1 (ssh -L), or set "
            "cloud.allow-insecure-http = true on a network you trust"
        )
    log.warning("%s: plain http:// to a remote host (cloud.allow-insecure-http): records and key are not encrypted", base_url)


def _as_bool(value: Any) -> bool:
    """Config values may arrive as strings (``--set``, raw dicts): ``"false"`` must not be truthy."""
    return parse_bool(value, ValueError)


# ====================================================================== factory
def _hf_from_config(cfg: Mapping[str, Any], loaded: Any) -> LLMBackend:
    """``hf``: ``cloud.model``, ``cloud.batch-size``, ``cloud.device``."""
    return HFBackend(str(config_get(cfg, "cloud.model")), batch_size=int(config_get(cfg, "cloud.batch-size")),
                     device=(str(cfg["cloud.device"]) if cfg.get("cloud.device") else None), loaded=loaded)


def _openai_from_config(cfg: Mapping[str, Any], loaded: Any) -> LLMBackend:
    """``openai``: ``cloud.model``, ``cloud.base-url`` (empty = :data:`LOCAL_BASE_URL`),
    ``cloud.api-key-env``, ``cloud.timeout``, ``cloud.max-retries``, ``cloud.concurrency``,
    ``cloud.allow-insecure-http``; a ``cloud.prompt-style`` of ``continuation`` says the served
    model is a base model."""
    return OpenAIBackend(
        str(cfg.get("cloud.model") or ""),  # a served model has no preset default: name it
        base_url=str(cfg.get("cloud.base-url") or LOCAL_BASE_URL),
        api_key_env=str(config_get(cfg, "cloud.api-key-env")),
        timeout=float(config_get(cfg, "cloud.timeout")),
        max_retries=int(config_get(cfg, "cloud.max-retries")),
        concurrency=int(config_get(cfg, "cloud.concurrency")),
        prefers_chat=str(config_get(cfg, "cloud.prompt-style")).lower() != "continuation",
        allow_insecure_http=_as_bool(config_get(cfg, "cloud.allow-insecure-http")),
    )


#: ``cloud.backend`` -> builder from the flat run config. A new backend: a class above and one entry here.
BACKENDS: dict[str, Callable[[Mapping[str, Any], Any], LLMBackend]] = {
    "hf": _hf_from_config,
    "openai": _openai_from_config,
}


def make_backend(cfg: Mapping[str, Any], *, loaded: Any = None) -> LLMBackend:
    """Build the backend that ``cloud.backend`` names (``hf`` by default) from flat run config
    (the keys each reads: :data:`BACKENDS`' builders). Defaults and meanings:
    :data:`cdcda_fl.config.DEFAULTS` (the only place they are set)."""
    kind = str(config_get(cfg, "cloud.backend")).strip().lower()
    if kind not in BACKENDS:
        raise BackendError(f"cloud.backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    try:
        return BACKENDS[kind](cfg, loaded)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"bad cloud.* setting: {exc}") from exc

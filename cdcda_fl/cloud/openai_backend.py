"""The cloud as any OpenAI-compatible server over HTTP: retries, timeouts, transport security.

Apart from backends.py (the in-process backend and the registry) because it is the one part that
speaks HTTP. Why not the ``openai`` SDK (issue 30, measured 2026-12-07): it would add 71 MB and 17
packages to every install and 1.3 s of import on this machine, for the ~120 lines below that also
refuse plain HTTP to a non-loopback host and retry per user with jitter (``cdcda serve`` included).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from cdcda_fl.cloud.llm_types import (RETRY_STATUSES, BackendError, Generation, Prompt, UsageStats,
                                      _TextsFromDetails, apply_stop)
from cdcda_fl.core.config import DEFAULTS

log = logging.getLogger(__name__)

#: Where ``cloud.backend=openai`` looks when ``cloud.base-url`` is empty: ``cdcda serve`` on this machine.
LOCAL_BASE_URL = "http://127.0.0.1:8000/v1"


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

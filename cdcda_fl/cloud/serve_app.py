"""The routes of ``cdcda serve`` as a small ASGI app (uvicorn serves it: :mod:`cdcda_fl.cloud.serve`).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` (the ``/v1`` prefix is optional); every route needs the API key when one is set
(compared in constant time).

Errors are codes from :data:`ERRORS` with fixed messages: they may name this server's limits, but
never echo what the client sent (a model name, a parameter value, a path) nor an exception's
text, which can name files or other clients' data (issue 29, item 11). A 500 carries an error id
that ties it to the traceback in the server log.

Why an ASGI app and not ``http.server``: each connection of the hand-written server held a
thread, so 150 clients trickling a byte every 0.6 s held ~96 threads for as long as they liked.
Under uvicorn a connection is a few objects on one event loop; the deadline and connection cap
live in :mod:`cdcda_fl.cloud.serve`, the per-request caps (:class:`Limits`) here.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cdcda_fl.cloud.backends import Generation, LLMBackend, Prompt, apply_stop
from cdcda_fl.cloud.batcher import Batcher

log = logging.getLogger("cdcda_fl.cloud.serve")

MAX_BODY = 8 * 1024 * 1024
MAX_TOKENS_CAP = 2048
MAX_STOP = 4  # as OpenAI: each stop string is searched in every generation
#: No tokenizer in use needs more characters per token, so a prompt over ``16 x max_prompt_tokens``
#: characters is refused before it is tokenized (a 7 MB prompt costs a length check, not a tokenizer run).
CHARS_PER_TOKEN_MAX = 16

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ServeError(RuntimeError):
    """The server cannot start as configured (exposure without a key, bad TLS files, port taken)."""


@dataclass(frozen=True)
class Limits:
    """Per-request caps, so one request cannot queue hours of generation (the flag names say which)."""

    max_prompts: int = 64  # generations per request: prompts x n (--max-prompts)
    max_n: int = 16  # --max-n
    max_tokens: int = MAX_TOKENS_CAP  # --max-tokens
    max_prompt_tokens: int = 4096  # --max-prompt-tokens: tokens of one prompt (chat: all its messages)

    def __post_init__(self) -> None:
        for name in ("max_prompts", "max_n", "max_tokens", "max_prompt_tokens"):
            if int(getattr(self, name)) < 1:
                raise ServeError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)!r}")


#: code -> (HTTP status, OpenAI error type, message). Messages may use the server's limits only.
ERRORS: dict[str, tuple[int, str, str]] = {
    "unauthorized": (401, "authentication_error", "invalid or missing API key"),
    "no_route": (404, "invalid_request_error", "no such route on this server"),
    "model_not_found": (404, "not_found_error", "the requested model is not served here (GET /v1/models lists it)"),
    "body_missing": (400, "invalid_request_error", "the request needs a JSON body of 1..{max_body} bytes"),
    "body_too_large": (413, "invalid_request_error", "request body is larger than {max_body} bytes"),
    "bad_json": (400, "invalid_request_error", "request body is not a JSON object"),
    "stream": (400, "invalid_request_error", "stream=true is not supported by this server"),
    "bad_messages": (400, "invalid_request_error", "'messages' must be a non-empty list of {{role, content}} objects"),
    "bad_prompt": (400, "invalid_request_error", "'prompt' must be a string or a non-empty list of strings"),
    "bad_stop": (400, "invalid_request_error", "'stop' must be a string or a list of at most {max_stop} strings"),
    "bad_number": (400, "invalid_request_error", "bad numeric parameter (max_tokens, temperature, n, seed)"),
    "max_tokens": (400, "invalid_request_error", "max_tokens must be in 1..{max_tokens} on this server"),
    "n": (400, "invalid_request_error", "n must be in 1..{max_n} on this server"),
    "temperature": (400, "invalid_request_error", "temperature must be in 0..2"),
    "too_many_generations": (413, "invalid_request_error", "prompts x n is over this server's limit of {max_prompts} "
                             "generations per request: split it into smaller requests"),
    "prompt_too_long": (413, "invalid_request_error", "a prompt is longer than this server's limit of "
                        "{max_prompt_tokens} tokens"),
    "timeout": (504, "server_error", "generation timed out"),
    "server_error": (500, "server_error", "generation failed (error id {error_id}; details are in the server log)"),
}


class RequestError(Exception):
    """A request answered with the error ``code`` (see :data:`ERRORS`)."""

    def __init__(self, code: str, **values: Any) -> None:
        super().__init__(code)
        self.code, self.values = code, values


@dataclass(frozen=True)
class _Params:
    max_tokens: int
    temperature: float
    n: int
    seed: int
    stop: list[str]


class OpenAIApp:
    """ASGI callable: authenticates, reads the body under :data:`MAX_BODY`, checks the request
    against :class:`Limits`, and awaits the batcher's answers."""

    def __init__(self, backend: LLMBackend, batcher: Batcher, model_name: str, *, api_key: str | None,
                 limits: Limits, request_timeout: float) -> None:
        self.backend, self.batcher, self.model_name = backend, batcher, model_name
        self.api_key, self.limits, self.request_timeout = api_key, limits, request_timeout
        self._count_tokens = _token_counter(backend)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        try:
            status, payload = await self._route(scope, receive)
        except RequestError as exc:
            status, payload = self._error(exc)
        await _respond(send, status, payload)

    # ------------------------------------------------------------------ plumbing
    def _error(self, exc: RequestError) -> tuple[int, dict[str, Any]]:
        status, kind, template = ERRORS[exc.code]
        values = {"max_body": MAX_BODY, "max_stop": MAX_STOP, **vars(self.limits), **exc.values}
        return status, {"error": {"message": template.format(**values), "type": kind, "code": status}}

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if not self.api_key:
            return True
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(given, f"Bearer {self.api_key}".encode())

    async def _route(self, scope: dict[str, Any], receive: Receive) -> tuple[int, dict[str, Any]]:
        if not self._authorized(scope):
            raise RequestError("unauthorized")
        path = scope["path"].rstrip("/").removeprefix("/v1")
        if scope["method"] == "GET" and path == "/models":
            return 200, {"object": "list", "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "cdcda-fl"}]}
        if scope["method"] == "GET" and path in ("/health", ""):
            return 200, {"status": "ok", "model": self.model_name}
        if scope["method"] == "POST" and path in ("/chat/completions", "/completions"):
            return 200, await self._completions(await _body(scope, receive), chat=path == "/chat/completions")
        raise RequestError("no_route")

    # ------------------------------------------------------------------ completions
    async def _completions(self, req: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        if req.get("model") not in (None, "", self.model_name):
            raise RequestError("model_not_found")
        if req.get("stream"):
            raise RequestError("stream")
        p = _params(req, self.limits)
        prompts = _prompts(req, chat, p.stop)
        if len(prompts) * p.n > self.limits.max_prompts:
            raise RequestError("too_many_generations")
        await asyncio.to_thread(self._check_prompt_lengths, prompts)
        futures = [self.batcher.submit(q, p.max_tokens, p.temperature, p.seed + k) for q in prompts for k in range(p.n)]
        gens = await self._wait(futures)
        return _completion_body(gens, p, chat, self.model_name)

    def _check_prompt_lengths(self, prompts: Sequence[Prompt]) -> None:
        """413 for a prompt over ``max_prompt_tokens``: by characters first, then by the model's tokenizer."""
        cap = self.limits.max_prompt_tokens
        for prompt in prompts:
            text = prompt.flat_text()
            if len(text) > cap * CHARS_PER_TOKEN_MAX:
                raise RequestError("prompt_too_long")
            if self._count_tokens is not None and self._count_tokens(text) > cap:
                raise RequestError("prompt_too_long")

    async def _wait(self, futures: list[Any]) -> list[Generation]:
        """All of this request's generations within ``request_timeout`` (504 after; 500 with an id if one fails)."""
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                               timeout=self.request_timeout))
        except (TimeoutError, asyncio.TimeoutError):
            raise RequestError("timeout") from None
        except Exception as exc:  # noqa: BLE001 - a model failure is a 500, the server lives on
            err_id = uuid.uuid4().hex[:12]
            log.error("generation failed [error id %s]", err_id, exc_info=exc)
            raise RequestError("server_error", error_id=err_id) from None


def _token_counter(backend: LLMBackend) -> Callable[[str], int] | None:
    """Token count with a private copy of the backend's tokenizer, or None if it has none.

    Why a copy under its own lock: a fast tokenizer that the generating thread is using (it sets
    padding on it) fails with "Already borrowed" when another thread encodes at the same time.
    """
    tokenizer = getattr(backend, "tokenizer", None)
    if not callable(tokenizer):
        return None
    own, lock = copy.deepcopy(tokenizer), threading.Lock()

    def count(text: str) -> int:
        with lock:
            return len(own(text, add_special_tokens=False)["input_ids"])

    return count


async def _respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status >= 400:  # an error may leave an unread body on the wire: do not parse it as a request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(scope: dict[str, Any], receive: Receive) -> dict[str, Any]:
    """The JSON object of the request body; 413 as soon as it is known to be over :data:`MAX_BODY`."""
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if length is not None:
        if not length.isdigit():
            raise RequestError("body_missing")
        if int(length) > MAX_BODY:
            raise RequestError("body_too_large")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("body_missing")  # nobody is left to read the answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError("body_too_large")
        chunks.append(chunk)
        more = message.get("more_body", False)
    if not size:
        raise RequestError("body_missing")
    try:
        data = json.loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise RequestError("bad_json") from None
    if not isinstance(data, dict):
        raise RequestError("bad_json")
    return data


def _params(req: dict[str, Any], lim: Limits) -> _Params:
    """Numeric request parameters, checked against the server's limits (400 when out of range)."""
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise RequestError("bad_stop")
    try:
        max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 64)
        temperature = float(req.get("temperature") if req.get("temperature") is not None else 1.0)
        n = int(req.get("n") or 1)
        seed = int(req.get("seed") or 0)
    except (TypeError, ValueError, OverflowError):
        raise RequestError("bad_number") from None
    if not 1 <= max_tokens <= lim.max_tokens:
        raise RequestError("max_tokens")
    if not 1 <= n <= lim.max_n:
        raise RequestError("n")
    if not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise RequestError("temperature")
    return _Params(max_tokens, temperature, n, seed, stop)


def _prompts(req: dict[str, Any], chat: bool, stop: Sequence[str]) -> list[Prompt]:
    if chat:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError("bad_messages")
        return [Prompt.from_messages(messages, stop)]
    prompt = req.get("prompt")
    if isinstance(prompt, str):
        return [Prompt.continuation(prompt, stop)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [Prompt.continuation(p, stop) for p in prompt]
    raise RequestError("bad_prompt")


def _completion_body(gens: list[Generation], p: _Params, chat: bool, model_name: str) -> dict[str, Any]:
    """The OpenAI response object for ``gens`` (n per prompt, in order)."""
    choices = []
    for i, g in enumerate(gens):
        text, stopped = apply_stop(g.text, p.stop)  # again here: a backend may ignore stop strings
        finish = "stop" if stopped or g.finish_reason not in ("stop", "length") else g.finish_reason
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": finish})
    usage = {"prompt_tokens": sum(g.prompt_tokens for g in gens[:: p.n]), "completion_tokens": sum(g.completion_tokens for g in gens)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": usage,
    }

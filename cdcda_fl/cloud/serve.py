"""Serve an in-process model as a (small) OpenAI-compatible HTTP server.

Why: the ``openai`` backend should be testable end to end without vLLM, and a lab can run the
cloud writer on one machine and point several simulations at it (``cdcda serve``). Routes:
``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.

Batching: handler threads (stdlib ``ThreadingHTTPServer``) do not call the model. They put
their prompts on a queue; one worker thread takes the first waiting prompt, waits up to
``max_wait_ms`` for more (up to ``batch_size``), and runs them as ONE batched ``generate`` call
(prompts with different ``max_tokens``/``temperature`` go in separate calls). Concurrent clients
-- e.g. the openai backend with ``cloud.concurrency`` > 1 -- therefore get batched generation;
a single client gets one-at-a-time. Sampling in a batch uses the first request's seed.

Not implemented: streaming, logprobs, tools. Bind to 127.0.0.1 unless you set ``api_key``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cdcda_fl.cloud.backends import Generation, HFBackend, LLMBackend, Prompt, apply_stop

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
MAX_TOKENS_CAP = 2048


class RequestError(Exception):
    """A client error, answered as an OpenAI-style JSON error with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class _Item:
    prompt: Prompt
    max_tokens: int
    temperature: float
    seed: int
    future: Future


class Batcher:
    """Groups concurrent generation requests into batched backend calls (one worker thread)."""

    def __init__(self, backend: LLMBackend, batch_size: int = 8, max_wait_ms: float = 10.0) -> None:
        self.backend = backend
        self.batch_size = max(1, int(batch_size))
        self.max_wait = max(0.0, max_wait_ms / 1000.0)
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self.batches: list[int] = []  # sizes of the backend calls made, for tests and logs
        self._thread = threading.Thread(target=self._loop, name="cdcda-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt: Prompt, max_tokens: int, temperature: float, seed: int) -> Future:
        fut: Future = Future()
        self._q.put(_Item(prompt, max_tokens, temperature, seed, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._q.get(timeout=max(0.0, remaining)) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            groups: dict[tuple[int, float], list[_Item]] = {}
            for it in batch:
                groups.setdefault((it.max_tokens, it.temperature), []).append(it)
            for (max_tokens, temperature), items in groups.items():
                self._run(items, max_tokens, temperature)
            if stop:
                return

    def _run(self, items: list[_Item], max_tokens: int, temperature: float) -> None:
        self.batches.append(len(items))
        try:
            prompts = [it.prompt for it in items]
            kw = {"max_new_tokens": max_tokens, "temperature": temperature, "seed": items[0].seed}
            detailed = getattr(self.backend, "generate_detailed", None)
            gens = detailed(prompts, **kw) if callable(detailed) else [Generation(t) for t in self.backend.generate(prompts, **kw)]
            for it, g in zip(items, gens):
                it.future.set_result(g)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)


class OpenAIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its model, batcher and (optional) API key."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], backend: LLMBackend, model_name: str, *, batch_size: int = 8,
                 max_wait_ms: float = 10.0, api_key: str | None = None, request_timeout: float = 600.0) -> None:
        super().__init__(addr, _Handler)
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.request_timeout = request_timeout
        self.batcher = Batcher(backend, batch_size, max_wait_ms)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for clients, ending in ``/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OpenAIServer:
        """Serve in a daemon thread (tests, notebooks); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="cdcda-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, stop the batcher, release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.batcher.close()
        self.server_close()

    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # route access logs to logging, not stderr
        log.debug("%s - " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        if not self.server.api_key:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {self.server.api_key}"

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            raise RequestError(400, f"request body must be JSON of 1..{MAX_BODY} bytes")
        try:
            data = json.loads(self.rfile.read(length).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RequestError(400, "request body must be a JSON object")
        return data

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if not self._authorized():
            return self._error(401, "invalid or missing API key", "authentication_error")
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            return self._send(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "cdcda-fl"}]})
        if self.path.rstrip("/") in ("/health", ""):
            return self._send(200, {"status": "ok", "model": self.server.model_name})
        self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return self._error(401, "invalid or missing API key", "authentication_error")
        path = self.path.rstrip("/")
        try:
            if path in ("/v1/chat/completions", "/chat/completions"):
                return self._send(200, self._completions(self._body(), chat=True))
            if path in ("/v1/completions", "/completions"):
                return self._send(200, self._completions(self._body(), chat=False))
            self._error(404, f"no route {self.path}")
        except RequestError as exc:
            self._error(exc.status, str(exc), exc.kind)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client %s went away before its answer was ready", self.address_string())
        except Exception as exc:  # noqa: BLE001 - a model failure is a 500, the server lives on
            log.exception("generation failed")
            self._error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")

    def _completions(self, req: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        model = req.get("model")
        if model not in (None, "", self.server.model_name):
            raise RequestError(404, f"model {model!r} is not served here; available: {self.server.model_name!r}", "not_found_error")
        if req.get("stream"):
            raise RequestError(400, "stream=true is not supported by this server")
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        try:
            max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 64)
            temperature = float(req.get("temperature", 1.0) if req.get("temperature") is not None else 1.0)
            n = int(req.get("n") or 1)
            seed = int(req.get("seed") or 0)
        except (TypeError, ValueError) as exc:
            raise RequestError(400, f"bad numeric parameter: {exc}") from exc
        if not 1 <= max_tokens <= MAX_TOKENS_CAP or not 1 <= n <= 16 or not 0 <= temperature <= 2:
            raise RequestError(400, f"need 1 <= max_tokens <= {MAX_TOKENS_CAP}, 1 <= n <= 16, 0 <= temperature <= 2")
        prompts = self._prompts(req, chat, stop)
        futures = [self.server.batcher.submit(p, max_tokens, temperature, seed + k) for p in prompts for k in range(n)]
        gens: list[Generation] = [f.result(timeout=self.server.request_timeout) for f in futures]
        now = int(time.time())
        choices = []
        for i, g in enumerate(gens):
            text, stopped = apply_stop(g.text, stop)  # again here: a backend may ignore stop strings
            finish = "stop" if stopped or g.finish_reason not in ("stop", "length") else g.finish_reason
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
            else:
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": finish})
        usage = {"prompt_tokens": sum(g.prompt_tokens for g in gens[::n]), "completion_tokens": sum(g.completion_tokens for g in gens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": now,
            "model": self.server.model_name,
            "choices": choices,
            "usage": usage,
        }

    @staticmethod
    def _prompts(req: dict[str, Any], chat: bool, stop: Sequence[str]) -> list[Prompt]:
        if chat:
            messages = req.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects")
            return [Prompt.from_messages(messages, stop)]
        prompt = req.get("prompt")
        if isinstance(prompt, str):
            return [Prompt.continuation(prompt, stop)]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return [Prompt.continuation(p, stop) for p in prompt]
        raise RequestError(400, "'prompt' must be a string or a non-empty list of strings")


def make_server(
    model: str | None = "smollm2-135m",
    *,
    backend: LLMBackend | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    batch_size: int = 8,
    max_wait_ms: float = 10.0,
    api_key: str | None = None,
    model_name: str | None = None,
) -> OpenAIServer:
    """Build (not start) a server; ``port=0`` picks a free port (see ``server.url``).

    Pass ``backend`` to serve an existing backend (tests); otherwise ``model`` is loaded with
    :class:`HFBackend` (a preset, HF id or local folder).
    """
    if backend is None:
        if not model:
            raise ValueError("make_server needs a model or a backend")
        backend = HFBackend(model, batch_size=batch_size)
    name = model_name or model or getattr(backend, "model_id", None) or getattr(backend, "name", "model")
    return OpenAIServer((host, port), backend, str(name), batch_size=batch_size, max_wait_ms=max_wait_ms, api_key=api_key)


def serve(model: str = "smollm2-135m", host: str = "127.0.0.1", port: int = 8000, *, batch_size: int = 8,
          max_wait_ms: float = 10.0, api_key_env: str | None = None) -> None:
    """Run the server in the foreground until Ctrl-C (what ``cdcda serve`` calls)."""
    import os

    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise SystemExit(f"environment variable {api_key_env!r} is not set")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    server = make_server(model, host=host, port=port, batch_size=batch_size, max_wait_ms=max_wait_ms, api_key=api_key)
    print(f"cdcda serve: {model} at {server.url} (batch {batch_size}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.close()
        server.server_close()


def add_serve_subcommand(subparsers: Any) -> Any:
    """Register ``cdcda serve --model PRESET --host 127.0.0.1 --port 8000`` on an argparse subparsers."""
    p = subparsers.add_parser("serve", help="serve a model as an OpenAI-compatible HTTP endpoint")
    p.add_argument("--model", default="smollm2-135m", help="preset (smollm2-135m, gemma3-270m, tiny-random), HF id or folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long to wait for more requests to batch")
    p.add_argument("--api-key-env", default=None, help="require 'Authorization: Bearer $VAR' from clients")
    p.set_defaults(func=lambda a: serve(a.model, a.host, a.port, batch_size=a.batch_size, max_wait_ms=a.max_wait_ms, api_key_env=a.api_key_env))
    return p

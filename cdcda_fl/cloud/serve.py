"""Serve an in-process model as a (small) OpenAI-compatible HTTP server.

Why: the ``openai`` backend should be testable end to end without vLLM, and a lab can run the
cloud writer on one machine and point several simulations at it (``cdcda serve``). Routes:
``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.

Batching: handler threads (stdlib ``ThreadingHTTPServer``) do not call the model. They put
their prompts on a queue; one worker thread takes the first waiting prompt, waits up to
``max_wait_ms`` for more (up to ``batch_size``), and runs them as ONE batched ``generate`` call
(prompts with different ``max_tokens``/``temperature`` go in separate calls). Concurrent clients
-- e.g. the openai backend with ``cloud.concurrency`` > 1 -- therefore get batched generation;
a single client gets one-at-a-time. Sampling in a batch uses the first request's seed. If a
batch fails, its requests are retried one by one, so only the request that breaks the model
gets an error.

Security defaults (the server carries users' shared records): an API key is required unless
the server binds a loopback address; keys are compared in constant time; TLS is optional
(``tls_cert``/``tls_key``); requests are capped (:class:`Limits`); a connection that stops
sending is closed after ``socket_timeout`` seconds; a 500 never echoes exception text (the
detail goes to the server log under an error id).

Not implemented: streaming, logprobs, tools.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cdcda_fl.cloud.backends import BackendError, Generation, HFBackend, LLMBackend, Prompt, apply_stop, is_loopback_host

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
MAX_TOKENS_CAP = 2048
MAX_STOP = 4  # as OpenAI: each stop string is searched in every generation


class ServeError(RuntimeError):
    """The server cannot start as configured (exposure without a key, bad TLS files, port taken)."""


class RequestError(Exception):
    """A client error, answered as an OpenAI-style JSON error with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass(frozen=True)
class Limits:
    """Per-request caps, so one request cannot queue hours of generation (the flag names say which)."""

    max_prompts: int = 64  # generations per request: prompts x n (--max-prompts)
    max_n: int = 16  # --max-n
    max_tokens: int = MAX_TOKENS_CAP  # --max-tokens

    def __post_init__(self) -> None:
        for name in ("max_prompts", "max_n", "max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ServeError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)!r}")


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key: the prompts carry users' records."""
    if not api_key and not is_loopback_host(host):
        raise ServeError(
            f"refusing to serve on {host or 'all interfaces'} without an API key: anyone who can reach it could "
            "use the model; set --api-key-env VAR (with the key in $VAR), or bind --host 127.0.0.1 and tunnel "
            "(e.g. ssh -L)"
        )


def tls_context(cert: str | None, key: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context from a PEM certificate (chain) and key (key may be inside ``cert``)."""
    if not cert:
        raise ServeError("--tls-key needs --tls-cert (the PEM certificate, or chain, to serve)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        what = f"certificate {cert!r}" + (f" / key {key!r}" if key else "")
        raise ServeError(f"cannot load TLS {what}: {getattr(exc, 'strerror', None) or exc}") from None
    return ctx


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
        """One backend call; if a batch fails, retry its requests one by one (error isolation)."""
        self.batches.append(len(items))
        try:
            gens = self._generate(items, max_tokens, temperature)
        except Exception as exc:  # noqa: BLE001 - the waiting request(s) get the error, the worker lives on
            if len(items) == 1:
                items[0].future.set_exception(exc)
                return
            log.warning("a batch of %d failed (%s); retrying its requests one by one", len(items), type(exc).__name__)
            for it in items:
                self._run([it], max_tokens, temperature)
            return
        for it, g in zip(items, gens):
            it.future.set_result(g)

    def _generate(self, items: list[_Item], max_tokens: int, temperature: float) -> list[Generation]:
        prompts = [it.prompt for it in items]
        kw = {"max_new_tokens": max_tokens, "temperature": temperature, "seed": items[0].seed}
        detailed = getattr(self.backend, "generate_detailed", None)
        gens = detailed(prompts, **kw) if callable(detailed) else [Generation(t) for t in self.backend.generate(prompts, **kw)]
        if len(gens) != len(items):  # a short answer would leave requests waiting until their timeout
            raise BackendError(f"backend returned {len(gens)} generations for {len(items)} prompts")
        return list(gens)


class OpenAIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its model, batcher, limits, (optional) API key and TLS context."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], backend: LLMBackend, model_name: str, *, batch_size: int = 8,
                 max_wait_ms: float = 10.0, api_key: str | None = None, request_timeout: float = 600.0,
                 tls: ssl.SSLContext | None = None, limits: Limits | None = None, socket_timeout: float = 30.0) -> None:
        check_exposure(addr[0], api_key)
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        try:
            super().__init__(addr, _Handler)
        except OSError as exc:
            raise ServeError(f"cannot listen on {addr[0]}:{addr[1]}: {exc.strerror or exc}") from None
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.request_timeout = request_timeout
        self.tls = tls
        self.limits = limits or Limits()
        self.socket_timeout = float(socket_timeout) if socket_timeout and socket_timeout > 0 else None
        self.batcher = Batcher(backend, batch_size, max_wait_ms)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for clients, ending in ``/v1``."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}/v1"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake happens here, under the socket timeout.

        Why here and not on the listening socket: a handshake at ``accept`` would run in the
        serving loop, where one client that never says hello would stall every other client.
        """
        request.settimeout(self.socket_timeout)
        if self.tls is None:
            return super().finish_request(request, client_address)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # plain HTTP to the TLS port, a scanner, a silent client
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return None
        try:
            super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)
        return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that breaks is the client's business: log it, no traceback on stderr."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

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


@dataclass(frozen=True)
class _Params:
    max_tokens: int
    temperature: float
    n: int
    seed: int
    stop: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # Why: without a timeout, a client that connects and stops sending holds a thread forever.
        self.timeout = self.server.socket_timeout
        super().setup()

    def log_message(self, fmt: str, *args: Any) -> None:  # route access logs to logging, not stderr
        log.debug("%s - " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:  # an error may leave an unread body on the wire: do not parse it as a request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        if not self.server.api_key:
            return True
        given = self.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, f"Bearer {self.server.api_key}".encode())

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError(400, "Content-Length is not a number") from None
        if length > MAX_BODY:
            raise RequestError(413, f"request body is larger than {MAX_BODY} bytes")
        if length <= 0:
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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # generation timeouts are RequestErrors
            log.info("client %s went away or stalled before its answer was ready", self.address_string())
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a model failure is a 500, the server lives on
            # Why generic: the exception may name paths or other clients' data; the id ties the log to the reply.
            err_id = uuid.uuid4().hex[:12]
            log.exception("generation failed [error id %s]", err_id)
            self._error(500, f"generation failed (error id {err_id}; details are in the server log)", "server_error")

    def _params(self, req: dict[str, Any]) -> _Params:
        """Numeric request parameters, checked against the server's limits (400 when out of range)."""
        lim = self.server.limits
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP:
            raise RequestError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings")
        try:
            max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 64)
            temperature = float(req.get("temperature", 1.0) if req.get("temperature") is not None else 1.0)
            n = int(req.get("n") or 1)
            seed = int(req.get("seed") or 0)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RequestError(400, f"bad numeric parameter: {exc}") from exc
        if not 1 <= max_tokens <= lim.max_tokens:
            raise RequestError(400, f"max_tokens must be in 1..{lim.max_tokens} on this server, got {max_tokens}")
        if not 1 <= n <= lim.max_n:
            raise RequestError(400, f"n must be in 1..{lim.max_n} on this server, got {n}")
        if not 0 <= temperature <= 2:
            raise RequestError(400, f"temperature must be in 0..2, got {temperature}")
        return _Params(max_tokens, temperature, n, seed, [str(s) for s in stop])

    def _completions(self, req: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        model = req.get("model")
        if model not in (None, "", self.server.model_name):
            raise RequestError(404, f"model {model!r} is not served here; available: {self.server.model_name!r}", "not_found_error")
        if req.get("stream"):
            raise RequestError(400, "stream=true is not supported by this server")
        p = self._params(req)
        prompts = self._prompts(req, chat, p.stop)
        wanted, cap = len(prompts) * p.n, self.server.limits.max_prompts
        if wanted > cap:
            raise RequestError(413, f"this request asks for {wanted} generations ({len(prompts)} prompt(s) x n={p.n}); "
                                    f"this server allows at most {cap} per request: split it into smaller requests")
        n = p.n
        futures = [self.server.batcher.submit(q, p.max_tokens, p.temperature, p.seed + k) for q in prompts for k in range(n)]
        gens = self._wait(futures)
        now = int(time.time())
        choices = []
        for i, g in enumerate(gens):
            text, stopped = apply_stop(g.text, p.stop)  # again here: a backend may ignore stop strings
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

    def _wait(self, futures: list[Future]) -> list[Generation]:
        """All of this request's generations, within ``request_timeout`` in total (504 after)."""
        deadline = time.monotonic() + self.server.request_timeout
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except TimeoutError:
            raise RequestError(504, "generation timed out", "server_error") from None

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
    tls: ssl.SSLContext | None = None,
    limits: Limits | None = None,
    socket_timeout: float = 30.0,
    request_timeout: float = 600.0,
) -> OpenAIServer:
    """Build (not start) a server; ``port=0`` picks a free port (see ``server.url``).

    Pass ``backend`` to serve an existing backend (tests); otherwise ``model`` is loaded with
    :class:`HFBackend` (a preset, HF id or local folder). Raises :class:`ServeError` (before
    loading anything) for a non-loopback ``host`` without ``api_key``.
    """
    check_exposure(host, api_key)
    if backend is None:
        if not model:
            raise ValueError("make_server needs a model or a backend")
        backend = HFBackend(model, batch_size=batch_size)
    name = model_name or model or getattr(backend, "model_id", None) or getattr(backend, "name", "model")
    return OpenAIServer((host, port), backend, str(name), batch_size=batch_size, max_wait_ms=max_wait_ms, api_key=api_key,
                        tls=tls, limits=limits, socket_timeout=socket_timeout, request_timeout=request_timeout)


def _api_key_from_env(api_key_env: str | None) -> str | None:
    import os

    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ServeError(f"environment variable {api_key_env!r} (--api-key-env) is not set or empty")
    return key


def serve(model: str = "smollm2-135m", host: str = "127.0.0.1", port: int = 8000, *, batch_size: int = 8,
          max_wait_ms: float = 10.0, api_key_env: str | None = None, tls_cert: str | None = None,
          tls_key: str | None = None, limits: Limits | None = None, socket_timeout: float = 30.0) -> None:
    """Run the server in the foreground until Ctrl-C (what ``cdcda serve`` calls).

    Setup problems (no key off loopback, unreadable TLS files, port taken) exit with a one-line
    message, checked before the model is loaded.
    """
    try:
        api_key = _api_key_from_env(api_key_env)
        check_exposure(host, api_key)
        tls = tls_context(tls_cert, tls_key) if (tls_cert or tls_key) else None
        if tls is None and not is_loopback_host(host):
            log.warning("serving on %s without TLS: the API key and users' prompts cross the network in clear text; "
                        "use --tls-cert/--tls-key or a TLS proxy", host)
        server = make_server(model, host=host, port=port, batch_size=batch_size, max_wait_ms=max_wait_ms, api_key=api_key,
                             tls=tls, limits=limits, socket_timeout=socket_timeout)
    except ServeError as exc:
        raise SystemExit(f"cdcda serve: {exc}") from None
    lim = server.limits
    print(f"cdcda serve: {model} at {server.url} (batch {batch_size}; per request <= {lim.max_prompts} generations, "
          f"n <= {lim.max_n}, max_tokens <= {lim.max_tokens}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.close()
        server.server_close()


def _run_from_args(a: Any) -> None:
    try:
        limits = Limits(a.max_prompts, a.max_n, a.max_tokens)
    except ServeError as exc:
        raise SystemExit(f"cdcda serve: {exc}") from None
    serve(a.model, a.host, a.port, batch_size=a.batch_size, max_wait_ms=a.max_wait_ms, api_key_env=a.api_key_env,
          tls_cert=a.tls_cert, tls_key=a.tls_key, limits=limits, socket_timeout=a.socket_timeout)


def add_serve_subcommand(subparsers: Any) -> Any:
    """Register ``cdcda serve --model PRESET --host 127.0.0.1 --port 8000`` on an argparse subparsers."""
    d = Limits()
    p = subparsers.add_parser("serve", help="serve a model as an OpenAI-compatible HTTP endpoint")
    p.add_argument("--model", default="smollm2-135m", help="preset (smollm2-135m, gemma3-270m, tiny-random), HF id or folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback requires --api-key-env")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long to wait for more requests to batch")
    p.add_argument("--api-key-env", default=None, help="require 'Authorization: Bearer $VAR' from clients")
    p.add_argument("--tls-cert", default=None, help="PEM certificate (chain): serve https")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert (if not inside it)")
    p.add_argument("--max-prompts", type=int, default=d.max_prompts, help="generations per request, prompts x n (413 above)")
    p.add_argument("--max-n", type=int, default=d.max_n, help="largest n per request (400 above)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="largest max_tokens per request (400 above)")
    p.add_argument("--socket-timeout", type=float, default=30.0, help="seconds a connection may stay silent before it is closed")
    p.set_defaults(func=_run_from_args)
    return p

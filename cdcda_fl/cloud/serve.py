"""Serve an in-process model as a (small) OpenAI-compatible HTTP server: ``cdcda serve``.

Why: the ``openai`` backend should be testable end to end without vLLM, and a lab can run the
cloud writer on one machine and point several simulations at it. The routes and per-request
caps are :mod:`cdcda_fl.cloud.serve_app` (an ASGI app); batching of concurrent requests into one
``generate`` call is :mod:`cdcda_fl.cloud.batcher`; this module runs them under uvicorn.

Security defaults (the server carries users' shared records): an API key is required unless the
server binds a loopback address; keys are compared in constant time; TLS is optional
(``tls_cert``/``tls_key``); requests are capped (:class:`Limits`, prompt tokens included); errors
are fixed codes that echo nothing the client sent. Against slow clients (slowloris), each
request must arrive whole -- head and body -- within ``read_deadline`` seconds of the
connection (or of the previous answer on it): a total deadline, not a per-byte timeout, so a
byte every second does not keep a connection alive. At most ``max_connections`` connections
are open at once; the next is answered 503 and closed. A waiting connection costs a few objects
on one event loop, not a thread (measured: benchmarks/serve_slowloris.py, docs/cloud.md).
Not covered: a TLS client that never finishes its handshake is dropped by asyncio after 60 s
(it holds a socket, no thread, and does not count towards ``max_connections``).

Not implemented: streaming, logprobs, tools.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

from cdcda_fl.cloud.backends import HFBackend, LLMBackend
from cdcda_fl.cloud.openai_backend import is_loopback_host
from cdcda_fl.cloud.batcher import Batcher
from cdcda_fl.cloud.serve_app import MAX_BODY, Limits, OpenAIApp, ServeError

__all__ = ["MAX_BODY", "Batcher", "Limits", "OpenAIServer", "ServeError", "add_serve_subcommand", "check_exposure",
           "make_server", "serve", "tls_context"]

log = logging.getLogger(__name__)
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n"


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


def guarded_protocol(read_deadline: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with a total deadline per request and a cap on open connections.

    uvicorn itself has neither (its keep-alive timeout starts only after an answer, and its
    ``limit_concurrency`` answers 503 to a request but lets connections pile up), so a client
    trickling a header would hold its connection for ever.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline: Any = None
        _armed_for: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_TOO_MANY)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            """Start the clock for the next request: it must be read whole by the deadline."""
            self._disarm()
            self._armed_for = self.cycle  # the request before the one being timed
            self._deadline = self.loop.call_later(read_deadline, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._armed_for and not self.cycle.more_body:
                self._disarm()  # the timed request has arrived whole: generation time is not read time

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle is self._armed_for or not self.cycle.response_started:
                self.transport.write(_TIMED_OUT)
            log.debug("closing %s: request not read whole within %.1f s", self.client, read_deadline)
            self.transport.close()

    return GuardedH11Protocol


def _bind(addr: tuple[str, int]) -> socket.socket:
    """A bound socket for ``addr`` (IPv6 when the host has a colon), or :class:`ServeError`."""
    sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {addr[0]}:{addr[1]}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class OpenAIServer:
    """The app + batcher under uvicorn, on a socket bound at construction (``port=0`` = a free one)."""

    def __init__(self, addr: tuple[str, int], backend: LLMBackend, model_name: str, *, batch_size: int = 8,
                 max_wait_ms: float = 10.0, api_key: str | None = None, request_timeout: float = 600.0,
                 tls: ssl.SSLContext | None = None, limits: Limits | None = None, read_deadline: float = 15.0,
                 max_connections: int = 64) -> None:
        import uvicorn

        check_exposure(addr[0], api_key)
        if read_deadline <= 0 or max_connections < 1:
            raise ServeError("read-deadline must be > 0 and max-connections >= 1")
        self._sock = _bind(addr)
        self.server_address = self._sock.getsockname()
        self.backend, self.model_name, self.tls = backend, model_name, tls
        self.limits = limits or Limits()
        self.max_connections = max_connections
        self.batcher = Batcher(backend, batch_size, max_wait_ms)
        app = OpenAIApp(backend, self.batcher, model_name, api_key=api_key, limits=self.limits,
                        request_timeout=request_timeout)
        config = uvicorn.Config(app, http=guarded_protocol(read_deadline, max_connections), ws="none", lifespan="off",
                                interface="asgi3", log_config=None, access_log=False, proxy_headers=False,
                                server_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=5)
        config.load()
        config.ssl = tls  # our context (TLS 1.2+), not one uvicorn builds from file names
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for clients, ending in ``/v1``."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}/v1"

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (uvicorn handles them in the main thread)."""
        self._uvicorn.run(sockets=[self._sock])

    def start(self, timeout: float = 30.0) -> OpenAIServer:
        """Serve in a daemon thread (tests, notebooks) once it accepts connections; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="cdcda-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError("the server did not start (see the log)")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        """Stop serving, stop the batcher, release the port."""
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.batcher.close()
        self._sock.close()

    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_server(
    model: str | None = "smollm2-135m",
    *,
    backend: LLMBackend | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str | None = None,
    **options: Any,
) -> OpenAIServer:
    """Build (not start) a server; ``port=0`` picks a free port (see ``server.url``).

    Pass ``backend`` to serve an existing backend (tests); otherwise ``model`` is loaded with
    :class:`HFBackend` (a preset, HF id or local folder). Raises :class:`ServeError` (before
    loading anything) for a non-loopback ``host`` without ``api_key``. ``options`` are
    :class:`OpenAIServer`'s keywords (batch_size, max_wait_ms, api_key, tls, limits,
    read_deadline, max_connections, request_timeout).
    """
    check_exposure(host, options.get("api_key"))
    if backend is None:
        if not model:
            raise ValueError("make_server needs a model or a backend")
        backend = HFBackend(model, batch_size=int(options.get("batch_size", 8)))
    name = model_name or model or getattr(backend, "model_id", None) or getattr(backend, "name", "model")
    return OpenAIServer((host, port), backend, str(name), **options)


def _api_key_from_env(api_key_env: str | None) -> str | None:
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ServeError(f"environment variable {api_key_env!r} (--api-key-env) is not set or empty")
    return key


def serve(model: str = "smollm2-135m", host: str = "127.0.0.1", port: int = 8000, *, api_key_env: str | None = None,
          tls_cert: str | None = None, tls_key: str | None = None, **options: Any) -> None:
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
        server = make_server(model, host=host, port=port, api_key=api_key, tls=tls, **options)
    except ServeError as exc:
        raise SystemExit(f"cdcda serve: {exc}") from None
    lim = server.limits
    print(f"cdcda serve: {model} at {server.url} (per request <= {lim.max_prompts} generations, n <= {lim.max_n}, "
          f"max_tokens <= {lim.max_tokens}, prompts <= {lim.max_prompt_tokens} tokens; <= {server.max_connections} "
          "connections); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _run_from_args(a: Any) -> None:
    try:
        limits = Limits(a.max_prompts, a.max_n, a.max_tokens, a.max_prompt_tokens)
    except ServeError as exc:
        raise SystemExit(f"cdcda serve: {exc}") from None
    serve(a.model, a.host, a.port, batch_size=a.batch_size, max_wait_ms=a.max_wait_ms, api_key_env=a.api_key_env,
          tls_cert=a.tls_cert, tls_key=a.tls_key, limits=limits, read_deadline=a.read_deadline,
          max_connections=a.max_connections)


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
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens, help="tokens of one prompt (413 above)")
    p.add_argument("--read-deadline", type=float, default=15.0,
                   help="seconds to receive a whole request (head and body) from connecting or the previous answer; 408 after")
    p.add_argument("--max-connections", type=int, default=64, help="open connections at once; the next gets 503")
    p.set_defaults(func=_run_from_args)
    return p

"""Backends: the openai client's retries against a misbehaving loopback server, errors, and hf batching."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cdcda_fl.cloud.backends import BackendError, OpenAIBackend, Prompt, apply_stop, make_backend
from cdcda_fl.cloud.openai_backend import normalize_base_url


class FlakyServer(ThreadingHTTPServer):
    """Loopback server that answers with ``script`` entries in turn, then with a good completion."""

    daemon_threads = True

    def __init__(self, script: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _FlakyHandler)
        self.script = list(script)
        self.hits: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _FlakyHandler(BaseHTTPRequestHandler):
    server: FlakyServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.hits.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            action = self.server.script.pop(0) if self.server.script else "ok"
        if action.isdigit():
            payload, status = b'{"error": {"message": "busy"}}', int(action)
        elif action == "garbage":
            payload, status = b"<html>502 proxy says hi</html>", 200
        elif action == "nochoices":
            payload, status = b'{"choices": []}', 200
        else:
            chat = self.path.endswith("/chat/completions")
            choice = {"index": 0, "finish_reason": "stop"}
            choice.update({"message": {"role": "assistant", "content": "hello END tail"}} if chat else {"text": "world"})
            payload, status = json.dumps({"choices": [choice], "usage": {"completion_tokens": 2, "prompt_tokens": 3}}).encode(), 200
        self.send_response(status)
        if action == "429":
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer([])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("backoff_base", 0.01)
    return OpenAIBackend("test-model", base_url=url, timeout=5, **kw)


def test_survives_500s_429_and_garbage_then_answers(flaky: FlakyServer) -> None:
    flaky.script = ["500", "429", "garbage", "nochoices", "503"]
    with client(flaky.url, max_retries=5, concurrency=1) as be:
        out = be.generate([Prompt.continuation("Say")], max_new_tokens=4, temperature=0.0, seed=1)
    assert out == ["world"]
    assert len(flaky.hits) == 6 and all(h["path"] == "/v1/completions" for h in flaky.hits)
    assert flaky.hits[0]["body"]["prompt"] == "Say" and flaky.hits[0]["body"]["max_tokens"] == 4


def test_gives_up_with_a_clear_error_naming_url_and_status(flaky: FlakyServer) -> None:
    flaky.script = ["500"] * 10
    with client(flaky.url, max_retries=2) as be, pytest.raises(BackendError) as info:
        be.generate([Prompt.chat("hi")], max_new_tokens=4, temperature=0.5, seed=0)
    msg = str(info.value)
    assert f"{flaky.url}/chat/completions" in msg and "3 attempt" in msg and "HTTP 500" in msg
    assert len(flaky.hits) == 3


def test_client_errors_are_not_retried(flaky: FlakyServer) -> None:
    flaky.script = ["404", "404"]
    with client(flaky.url, max_retries=5) as be, pytest.raises(BackendError, match="refused the request: HTTP 404"):
        be.generate([Prompt.chat("hi")], max_new_tokens=4, temperature=0.5, seed=0)
    assert len(flaky.hits) == 1


def test_unreachable_server_fails_after_retries() -> None:
    with socket.socket() as s:  # a loopback port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with client(f"http://127.0.0.1:{port}", max_retries=2) as be, pytest.raises(BackendError, match="connection error"):
        be.generate([Prompt.continuation("x")], max_new_tokens=2, temperature=0.0, seed=0)


def test_chat_route_stop_strings_concurrency_and_api_key(flaky: FlakyServer, monkeypatch) -> None:
    monkeypatch.setenv("CDCDA_TEST_KEY", "sk-secret")
    with client(flaky.url, api_key_env="CDCDA_TEST_KEY", concurrency=4) as be:
        prompts = [Prompt.chat(f"q{i}", system="sys", stop=["END"]) for i in range(8)]
        out = be.generate_detailed(prompts, max_new_tokens=4, temperature=0.7, seed=10)
    assert [g.text for g in out] == ["hello "] * 8 and all(g.finish_reason == "stop" for g in out)
    assert {h["auth"] for h in flaky.hits} == {"Bearer sk-secret"}
    assert sorted(h["body"]["messages"][1]["content"] for h in flaky.hits) == sorted(f"q{i}" for i in range(8))
    assert all(h["body"]["stop"] == ["END"] for h in flaky.hits)
    assert be.stats.completion_tokens == 16
    monkeypatch.delenv("CDCDA_TEST_KEY")
    with pytest.raises(BackendError, match="CDCDA_TEST_KEY"):
        client(flaky.url, api_key_env="CDCDA_TEST_KEY")


def test_make_backend_validates_config() -> None:
    with pytest.raises(BackendError, match="must be one of hf, openai"):
        make_backend({"cloud.backend": "bard"})
    with pytest.raises(BackendError, match="cloud.model is required"):
        make_backend({"cloud.backend": "openai"})
    with pytest.raises(BackendError, match="http"):
        make_backend({"cloud.backend": "openai", "cloud.model": "m", "cloud.base-url": "127.0.0.1:8000"})
    be = make_backend({"cloud.backend": "openai", "cloud.model": "m", "cloud.base-url": "http://127.0.0.1:1/", "cloud.concurrency": "2"})
    assert isinstance(be, OpenAIBackend) and be.base_url == "http://127.0.0.1:1/v1" and be.concurrency == 2
    assert normalize_base_url("http://h:1/v1/") == "http://h:1/v1"
    assert apply_stop("a\n\nb", ["\n\n"]) == ("a", True)


def test_hf_backend_batches_and_returns_only_new_text() -> None:
    be = make_backend({"cloud.backend": "hf", "cloud.model": "tiny-random", "cloud.batch-size": 3})
    prompts = [Prompt.continuation("tag: sci-fi\ndescription:"), Prompt.chat("Write a title."), Prompt.continuation("a " * 30)] * 2
    gens = be.generate_detailed(prompts, max_new_tokens=5, temperature=0.8, seed=0)
    assert len(gens) == 6 and all(isinstance(g.text, str) for g in gens)
    assert all(g.completion_tokens <= 5 and g.prompt_tokens > 0 for g in gens)
    assert not any(g.text.startswith("tag: sci-fi") for g in gens)  # the prompt is not echoed
    again = be.generate(prompts, max_new_tokens=5, temperature=0.8, seed=0)
    assert again == [g.text for g in gens]  # seeded sampling is reproducible
    assert be.stats.calls == 2 and be.stats.prompts == 12


def test_plain_http_to_a_remote_host_is_refused_unless_allowed(caplog) -> None:
    """Records and the bearer key must not cross the network in clear text by accident."""
    for url in ("http://10.1.2.3:8000", "http://gpu-box.lab:8000/v1", "http://127.0.0.1.example.com/v1", "http://0.0.0.0:8000"):
        with pytest.raises(BackendError, match="cloud.allow-insecure-http"):
            OpenAIBackend("m", base_url=url)
    for url in ("http://127.0.0.1:8000", "http://127.9.9.9:1", "http://localhost:8000", "http://[::1]:8000", "https://10.1.2.3/v1"):
        OpenAIBackend("m", base_url=url).close()  # constructing connects nowhere
    with caplog.at_level("WARNING", logger="cdcda_fl.cloud.backends"):
        OpenAIBackend("m", base_url="http://10.1.2.3:8000", allow_insecure_http=True).close()
    assert "not encrypted" in caplog.text
    cfg = {"cloud.backend": "openai", "cloud.model": "m", "cloud.base-url": "http://10.1.2.3:8000"}
    with pytest.raises(BackendError, match="not loopback"):
        make_backend(cfg)
    make_backend({**cfg, "cloud.allow-insecure-http": True}).close()
    make_backend({**cfg, "cloud.allow-insecure-http": "true"}).close()  # flat config strings work too
    with pytest.raises(BackendError, match="bad cloud"):
        make_backend({**cfg, "cloud.allow-insecure-http": "maybe"})
    be = make_backend({"cloud.backend": "openai", "cloud.model": "m", "cloud.base-url": ""})  # the config default
    assert be.base_url == "http://127.0.0.1:8000/v1"
    be.close()


def test_openai_backend_defaults_are_the_config_defaults():
    """A library user constructing the backend directly gets what `cdcda run` would use (issue 15)."""
    import inspect

    from cdcda_fl.cloud.backends import OpenAIBackend
    from cdcda_fl.core.config import DEFAULTS

    params = inspect.signature(OpenAIBackend.__init__).parameters
    assert params["timeout"].default == DEFAULTS["cloud.timeout"][0] == 120.0
    assert params["max_retries"].default == DEFAULTS["cloud.max-retries"][0]
    assert params["concurrency"].default == DEFAULTS["cloud.concurrency"][0]

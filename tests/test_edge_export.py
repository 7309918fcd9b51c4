"""GGUF LoRA export: every tensor read back equals the PEFT tensor, in llama.cpp's names and layout."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from cdcda_fl.cli import main
from cdcda_fl.device.adapter_store import AdapterStore
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.training import LoraTrainConfig
from cdcda_fl.edge.export import ExportError, export_adapter, permute_rows
from device_fixtures import USER_A, one_thread, tiny_base, tiny_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_OF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
MODULE_OF = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


@pytest.fixture(scope="module")
def adapter_dir(tiny_base, tmp_path_factory) -> Path:  # noqa: F811
    """A real adapter on every linear layer of tiny-random, trained a few steps (non-zero B)."""
    dm = DeviceModel(tiny_base)
    dm.train(USER_A, LoraTrainConfig(steps=3, learning_rate=5e-3, target_modules=ALL_TARGETS, rank=4, alpha=8))
    path = tmp_path_factory.mktemp("adapter") / "u1"
    dm.save_adapter(path)
    dm.clear_adapter()
    return path


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_export_reads_back_equal_to_peft_tensors(adapter_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "u1.gguf"
    info = export_adapter(adapter_dir, out)
    peft = load_file(str(adapter_dir / "adapter_model.safetensors"))
    hparams = json.loads((Path(json.loads((adapter_dir / "adapter_config.json").read_text())[
        "base_model_name_or_path"]) / "config.json").read_text())
    n_head, n_kv = hparams["num_attention_heads"], hparams["num_key_value_heads"]
    assert n_head != n_kv  # tiny-random has GQA, so q and k permutations differ

    reader = gguf.GGUFReader(out)
    fields = _fields(reader)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 8.0
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * len(ALL_TARGETS) * hparams["num_hidden_layers"]
    assert info.n_pairs == len(ALL_TARGETS) * hparams["num_hidden_layers"] and info.rank == 4
    for layer in range(hparams["num_hidden_layers"]):
        for hf_name in ALL_TARGETS:
            key = f"base_model.model.model.layers.{layer}.{MODULE_OF[hf_name]}.{hf_name}"
            a, b = peft[f"{key}.lora_A.weight"].astype(np.float32), peft[f"{key}.lora_B.weight"].astype(np.float32)
            assert np.abs(b).max() > 0  # trained, so the permutation check below means something
            name = f"blk.{layer}.{GGUF_OF[hf_name]}.weight"
            got_a, got_b = np.asarray(tensors[name + ".lora_a"].data), np.asarray(tensors[name + ".lora_b"].data)
            assert got_a.shape == a.shape and got_a.shape[0] == 4  # A: [r, in]
            assert got_b.shape == b.shape and got_b.shape[1] == 4  # B: [out, r]
            assert tensors[name + ".lora_a"].tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(got_a, a)
            if hf_name == "q_proj":
                np.testing.assert_array_equal(got_b, permute_rows(b, n_head))
                assert not np.array_equal(got_b, b)
            elif hf_name == "k_proj":
                np.testing.assert_array_equal(got_b, permute_rows(b, n_kv))
            else:
                np.testing.assert_array_equal(got_b, b)


def test_f16_export_keeps_the_stored_values(adapter_dir: Path, tmp_path: Path) -> None:
    export_adapter(adapter_dir, tmp_path / "h.gguf", outtype="f16")
    peft = load_file(str(adapter_dir / "adapter_model.safetensors"))  # saved in fp16
    t = {x.name: x for x in gguf.GGUFReader(tmp_path / "h.gguf").tensors}["blk.1.ffn_down.weight.lora_a"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(t.data), peft["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"])


@pytest.mark.slow  # GGUFReader parses SmolLM2's 49k-token vocabulary in Python: ~10-30 s
def test_llama_qk_permutation_matches_the_bundled_smollm2_gguf() -> None:
    """The converted SmolLM2 preset (HF order) permuted row-wise equals the llama.cpp base file.

    This is what makes B's permutation right: B @ A adds to the same rows as the base weight.
    """
    from cdcda_fl.device.models import resolve_model
    from cdcda_fl.device.presets import _smollm2_gguf

    hf = load_file(str(Path(resolve_model("smollm2-135m")) / "model.safetensors"))
    tensors = {t.name: t for t in gguf.GGUFReader(_smollm2_gguf()).tensors}
    for kind, hf_name, heads in (("attn_q", "q_proj", 9), ("attn_k", "k_proj", 3)):
        t = tensors[f"blk.3.{kind}.weight"]
        base = gguf.dequantize(t.data, t.tensor_type)
        w = hf[f"model.layers.3.self_attn.{hf_name}.weight"]
        assert not np.array_equal(base, w)
        np.testing.assert_array_equal(base, permute_rows(w, heads))


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_rslora_alpha_is_rescaled_so_llamacpp_scale_matches(adapter_dir: Path, tmp_path: Path) -> None:
    src = _edit_config(adapter_dir, tmp_path / "rs", use_rslora=True)
    info = export_adapter(src, tmp_path / "rs.gguf")
    assert info.alpha / info.rank == pytest.approx(8 / np.sqrt(4))  # PEFT's rsLoRA scaling


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias='all'"),
        ({"peft_type": "IA3"}, "not LoRA"),
    ],
)
def test_unexportable_configs_are_refused(adapter_dir, tmp_path, changes, needle) -> None:
    src = _edit_config(adapter_dir, tmp_path / "bad", **changes)
    with pytest.raises(ExportError, match=needle):
        export_adapter(src, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


def test_unknown_architecture_and_embedding_targets_are_refused(adapter_dir, tmp_path) -> None:
    base = tmp_path / "gpt2-base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "gpt2", "num_attention_heads": 4}))
    with pytest.raises(ExportError, match="model_type 'gpt2'"):
        export_adapter(adapter_dir, tmp_path / "x.gguf", base=base)

    from safetensors.numpy import save_file

    emb = shutil.copytree(adapter_dir, tmp_path / "emb")
    tensors = load_file(str(emb / "adapter_model.safetensors"))
    tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((4, 64), np.float16)
    tensors["base_model.model.lm_head.lora_B.weight"] = np.zeros((10, 4), np.float16)
    save_file(tensors, str(emb / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="maps to 'output'"):
        export_adapter(emb, tmp_path / "y.gguf")


def test_cli_selectors_find_the_run_adapter_and_errors_are_one_line(adapter_dir, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    store = AdapterStore(run / "devices" / "adapters")
    shutil.copytree(adapter_dir, store.path("u 1", "LaMP_2-cdcda-0123456789abcdef"))
    (run / "config.json").write_text(json.dumps({"config": {"device.storage-dir": ""}}))
    out = tmp_path / "sel.gguf"
    assert main(["export", "--run", str(run), "--user", "u 1", "--task", "LaMP_2", "--out", str(out)]) == 0
    assert "llama LoRA adapter" in capsys.readouterr().out and out.is_file()

    assert main(["export", "--run", str(run), "--user", "u 1", "--task", "LaMP_2", "--method", "local",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("export: no local adapter for user 'u 1'") and err.count("\n") == 1

    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "is not a PEFT adapter folder" in capsys.readouterr().err

    # tiny-random has no llama.cpp base: the message says what to run
    assert main(["export", str(adapter_dir), "--out", str(out), "--base-out", str(tmp_path / "b.gguf")]) == 1
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err


def test_base_out_copies_the_bundled_smollm2_gguf(tmp_path) -> None:
    from cdcda_fl.device.presets import _smollm2_gguf
    from cdcda_fl.edge.export import base_folder, export_base

    out = export_base(base_folder({}, "smollm2-135m", tmp_path), tmp_path / "base.gguf")
    assert filecmp.cmp(out, _smollm2_gguf(), shallow=False)

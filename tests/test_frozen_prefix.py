"""LoRA in the top layers only: the frozen layers below run once per example, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from cdcda_fl.core.config import ConfigError, check_lora_layers, load_config
from cdcda_fl.device import frozen_prefix
from cdcda_fl.device.frozen_prefix import PrefixCache, frozen_prefix_for
from cdcda_fl.device.encoding import collate, encode_pairs
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.training import LoraTrainConfig, example_loss, lora_layer_indices
from device_fixtures import USER_A, USER_B, adapter_tensors, one_thread, tiny_base, tiny_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TOP = LoraTrainConfig(steps=6, learning_rate=5e-3, batch_size=4, lora_layers=1)  # tiny-random has 2 layers


def _train(base, cfg: LoraTrainConfig, examples=USER_A) -> dict[str, torch.Tensor]:
    dm = DeviceModel(base)
    dm.train(examples, cfg)
    out = {k: v.detach().clone() for k, v in adapter_tensors(dm).items()}
    dm.clear_adapter()
    return out


def test_top_layers_only_get_lora(tiny_base) -> None:
    weights = _train(tiny_base, TOP)
    assert weights and all(".layers.1." in k for k in weights), sorted(weights)
    assert lora_layer_indices(TOP, 2) == [1]
    assert lora_layer_indices(LoraTrainConfig(lora_layers=0), 2) is None  # every layer
    assert lora_layer_indices(LoraTrainConfig(lora_layers=5), 2) is None  # more than there are: every layer


def test_cached_prefix_trains_the_same_adapter(tiny_base, monkeypatch) -> None:
    """The same seed and data give the same adapter with and without the frozen prefix."""
    with_prefix = _train(tiny_base, TOP)
    monkeypatch.setattr(frozen_prefix, "frozen_prefix_for", lambda *a, **k: None)
    plain = _train(tiny_base, TOP)
    assert with_prefix.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(with_prefix[k], plain[k], rtol=1e-4, atol=1e-6)
    # and training did something
    assert any(float(v.abs().sum()) > 0 for k, v in plain.items() if "lora_B" in k)


def test_prefix_loss_equals_full_forward(tiny_base) -> None:
    """The loss of a batch fed as cached states to the top layers is the full model's loss."""
    dm = DeviceModel(tiny_base)
    dm.train(USER_B, TOP)  # an active top-layer adapter with non-zero B
    enc = encode_pairs(dm.tokenizer, USER_A, 256)
    batch = collate(enc, [1.0] * len(enc), dm.pad_id)
    with dm.slots.layers() as model, torch.no_grad():
        full = example_loss(model, batch)
        prefix = frozen_prefix_for(model, 1, PrefixCache())
        assert prefix is not None and prefix.split == 1
        states = prefix.states([p + c for p, c in enc], tiny_base.device, dm.pad_id, tiny_base.compute_context,
                               batch_size=2)  # other batches than `batch`: padding must not matter
        batch["inputs_embeds"] = prefix.batch_inputs(states, batch["input_ids"].shape[1])
        with prefix.top_only():
            cached = example_loss(model, batch)
    dm.clear_adapter()
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_cache_is_shared_across_adapters_and_bounded(tiny_base) -> None:
    if tiny_base.prefix_cache is not None:
        tiny_base.prefix_cache.clear()
    _train(tiny_base, TOP)
    cache = tiny_base.prefix_cache
    assert cache is not None
    misses = cache.misses
    _train(tiny_base, LoraTrainConfig(**{**TOP.__dict__, "seed": 3}))  # another adapter, same examples
    assert cache.misses == misses and cache.hits >= len(USER_A)

    small = PrefixCache(max_bytes=100)
    small.put((1, (1, 2)), torch.zeros(10))  # 40 bytes
    small.put((1, (3,)), torch.zeros(10))
    small.put((1, (4,)), torch.zeros(10))  # over 100 bytes: the oldest goes
    assert small.get((1, (1, 2))) is None and small.get((1, (4,))) is not None


def test_no_prefix_when_every_layer_trains_or_model_unsupported(tiny_base) -> None:
    dm = DeviceModel(tiny_base)
    dm.train(USER_B, TOP)
    with dm.slots.layers() as model:
        assert frozen_prefix_for(model, 0) is None
        assert frozen_prefix_for(model, 2) is None  # no frozen layer left below
        assert frozen_prefix_for(torch.nn.Linear(2, 2), 1) is None  # no decoder stack found
    dm.clear_adapter()


def test_lora_layers_config() -> None:
    from cdcda_fl.core.config import DEFAULTS

    assert DEFAULTS["train.lora-layers"][0] >= 0
    assert load_config(sets=["train.lora-layers=10"])["train.lora-layers"] == 10
    assert LoraTrainConfig.from_run_config(load_config(sets=["train.lora-layers=10"])).lora_layers == 10
    with pytest.raises(ConfigError):
        load_config(sets=["train.lora-layers=top"])
    with pytest.raises(ConfigError, match="lora-layers"):  # checked before a run starts (orchestrator)
        check_lora_layers(load_config(sets=["train.lora-layers=-2"]))
    with pytest.raises(ValueError, match="lora-layers"):
        lora_layer_indices(LoraTrainConfig(lora_layers=-1), 30)


def test_top_layer_adapter_saves_loads_and_exports(tiny_base, tmp_path) -> None:
    """A top-layers-only adapter is a plain PEFT folder: it reloads, and llama.cpp gets its layers' tensors."""
    import gguf

    from cdcda_fl.edge.export import export_adapter

    dm = DeviceModel(tiny_base)
    dm.train(USER_A, TOP)
    trained = {k: v.detach().clone() for k, v in adapter_tensors(dm).items()}
    dm.save_adapter(tmp_path / "u", dtype=None)
    dm.clear_adapter()
    dm.load_adapter(tmp_path / "u")
    for k, v in adapter_tensors(dm).items():
        torch.testing.assert_close(v, trained[k])
    dm.clear_adapter()
    info = export_adapter(tmp_path / "u", tmp_path / "u.gguf")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "u.gguf").tensors}
    assert names and all(n.startswith("blk.1.") for n in names), sorted(names)
    assert info.n_pairs == len(TOP.target_modules)

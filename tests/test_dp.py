"""DP-SGD with Opacus on LoRA: the private gradient is the hand-clipped one, only LoRA moves."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cdcda_fl.device.encoding import _PairDataset, collate, encode_pairs
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.training import LoraTrainConfig, example_loss
from cdcda_fl.privacy.dp import DPConfig, check_dp_trainable, default_delta, make_private
from device_fixtures import USER_A, USER_B, adapter_tensors, one_thread, tiny_base, tiny_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = USER_A + USER_B  # 10 examples of different lengths


def test_config_validation():
    DPConfig().validate()  # disabled: anything goes
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig(enabled=True).validate()
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig(enabled=True, noise_multiplier=1.0, target_epsilon=3.0).validate()
    with pytest.raises(ValueError):
        DPConfig(enabled=True, noise_multiplier=1.0, accountant="moments").validate()
    with pytest.raises(ValueError):
        DPConfig(enabled=True, noise_multiplier=1.0, delta=2.0).validate()


def test_default_delta_is_below_one_over_n():
    for n in (1, 2, 10, 100, 10_000):
        assert default_delta(n) <= 1e-2 and (n == 1 or default_delta(n) < 1 / n)
    assert default_delta(1000) == pytest.approx(1000**-1.1)


def _hand_clipped_mean(model, params, encoded, weights, pad_id, clip) -> list[torch.Tensor]:
    """Per-sample gradients one example at a time, clipped to `clip`, averaged over the batch."""
    total = [torch.zeros_like(p) for p in params]
    for e, w in zip(encoded, weights):
        batch = collate([e], [w], pad_id)
        loss = (example_loss(model, batch) * batch["weights"]).mean()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads):
            t += factor * g
    return [t / len(encoded) for t in total]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_private_gradient_equals_hand_clipped_per_sample_gradients(tiny_base, mode):
    dm = DeviceModel(tiny_base)
    cfg = LoraTrainConfig(dropout=0.0, steps=3, learning_rate=5e-3)
    dm.train(DATA, cfg)  # non-zero LoRA B so every LoRA tensor has a gradient
    tok = tiny_base.tokenizer
    encoded = encode_pairs(tok, DATA, 256)
    weights = [1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 0.25, 1.0, 1.0, 0.75]
    with dm.slots.layers() as model:
        model.eval()  # no dropout anywhere
        params = list(dm.slots.params(dm.slots.name).values())
        for p in params:
            p.requires_grad_(True)
        # Per-sample norms, to put the clip bound where it really clips some examples.
        norms = []
        for e, w in zip(encoded, weights):
            b = collate([e], [w], tok.pad_token_id)
            g = torch.autograd.grad((example_loss(model, b) * b["weights"]).mean(), params)
            norms.append(float(torch.sqrt(sum((x**2).sum() for x in g))))
        clip = sorted(norms)[len(norms) // 2]
        expected = _hand_clipped_mean(model, params, encoded, weights, tok.pad_token_id, clip)

        loader = torch.utils.data.DataLoader(
            _PairDataset(encoded, weights), batch_size=len(encoded),
            collate_fn=lambda items: collate([e for e, _ in items], [w for _, w in items], tok.pad_token_id),
        )
        opt = torch.optim.SGD(params, lr=0.0)
        model.train()  # Opacus insists; the adapter has dropout 0 and the base none
        dp = DPConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False,
                      grad_sample_mode=mode)
        priv = make_private(model, opt, loader, dp, steps=1)
        try:
            (batch,) = list(priv.data_loader)  # all 10 examples, left-padded together
            loss = (example_loss(priv.module, batch) * batch["weights"]).mean()
            loss.backward()
            priv.optimizer.pre_step()  # clip + (zero) noise + average: what step() applies
            got = [p.grad.clone() for p in params]
        finally:
            priv.close()
            model.eval()
            for p in params:
                p.requires_grad_(False)
                p.grad = None
    assert min(norms) < clip < max(norms)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4), float((g - e).abs().max())
    assert any(float(e.abs().max()) > 1e-4 for e in expected)  # not trivially zero


def _base_weights(base) -> dict[str, torch.Tensor]:
    """The base's own tensors, keyed without peft's ``base_layer`` (present once an adapter exists)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in base.model.state_dict().items()
            if "lora_" not in k}


def _assert_only_lora_changed(base, before: dict[str, torch.Tensor]) -> None:
    after = _base_weights(base)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # No Opacus leftovers on the shared model: hooks and per-sample attributes are gone.
    assert not any(hasattr(p, "grad_sample") for p in base.model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in base.model.modules())


def test_dp_training_changes_only_lora_tensors(tiny_base):
    before = _base_weights(tiny_base)
    dm = DeviceModel(tiny_base)
    res = dm.train(DATA, LoraTrainConfig(steps=6, learning_rate=1e-2),
                   dp=DPConfig(enabled=True, noise_multiplier=1.0))
    _assert_only_lora_changed(tiny_base, before)
    lora = adapter_tensors(dm)
    assert any(float(v.abs().max()) > 0 for k, v in lora.items() if "lora_B" in k)
    assert 0 < res.epsilon < math.inf and res.delta == default_delta(len(DATA))


def test_dp_adapter_at_loose_epsilon_learns_a_seeded_case(tiny_base):
    """ε = 50 on a learnable case (every answer 'comedy'): the few-record plan's shape with a step
    size tiny-random can move in 16 full-batch steps; the adapter differs from the base, lowers the
    training loss, and only LoRA tensors changed."""
    from cdcda_fl.privacy.dp import few_record_plans

    plan = few_record_plans(len(USER_B), 50.0)[2]  # r4 on q+v, full batch, clip 0.1
    assert plan.batch_size == len(USER_B) and plan.max_grad_norm == 0.1
    before = _base_weights(tiny_base)
    dm = DeviceModel(tiny_base)
    base_loss = sum(dm.example_losses(USER_B)) / len(USER_B)
    lora = replace(plan.lora_config(LoraTrainConfig(seed=0)), learning_rate=5e-2)  # the plan's 3e-3 is for SmolLM2
    res = dm.train(USER_B, lora, dp=plan.dp_config(DPConfig(enabled=True, target_epsilon=50.0)))
    assert res.epsilon == pytest.approx(50.0, abs=0.5) and res.steps == plan.steps
    trained = sum(dm.example_losses(USER_B)) / len(USER_B)
    assert trained < 0.99 * base_loss  # learned something, through the noise
    assert any(float(v.abs().max()) > 0 for k, v in adapter_tensors(dm).items() if "lora_B" in k)
    _assert_only_lora_changed(tiny_base, before)
    dm.clear_adapter()
    assert sum(dm.example_losses(USER_B)) / len(USER_B) == pytest.approx(base_loss)  # cleared: the base again


def test_target_epsilon_is_met_and_deterministic(tiny_base):
    dm = DeviceModel(tiny_base)
    cfg = LoraTrainConfig(steps=5, learning_rate=1e-2)
    dp = DPConfig(enabled=True, target_epsilon=4.0, delta=1e-3)
    res = dm.train(DATA, cfg, dp=dp)
    assert res.epsilon == pytest.approx(4.0, abs=0.1) and res.delta == 1e-3
    first = adapter_tensors(dm)
    dm.train(DATA, cfg, dp=dp)
    assert all(torch.equal(first[k], v) for k, v in adapter_tensors(dm).items())


def test_empty_poisson_batches_take_a_noise_step(tiny_base):
    """batch_size 1 over 4 examples: Poisson draws empty batches often; all steps are taken."""
    dm = DeviceModel(tiny_base)
    res = dm.train(USER_B, LoraTrainConfig(steps=12, batch_size=1),
                   dp=DPConfig(enabled=True, noise_multiplier=1.0, accountant="prv"))
    assert res.steps == 12 and len(res.losses) < 12  # some steps had no examples
    assert 0 < res.epsilon < math.inf


def test_zero_noise_reports_infinite_epsilon(tiny_base):
    dm = DeviceModel(tiny_base)
    res = dm.train(USER_B, LoraTrainConfig(steps=2), dp=DPConfig(enabled=True, noise_multiplier=0.0))
    assert res.epsilon == math.inf


def test_lora_on_embeddings_with_dp_is_a_clear_error(tiny_base):
    dm = DeviceModel(tiny_base)
    cfg = LoraTrainConfig(target_modules=("q_proj", "embed_tokens"), steps=1)
    with pytest.raises(ValueError, match="embedding"):
        dm.train(USER_B, cfg, dp=DPConfig(enabled=True, noise_multiplier=1.0))
    assert dm.slots.name is None  # nothing was created


def test_check_dp_trainable_rejects_base_weights(tiny_base):
    with pytest.raises(ValueError, match="no trainable"):
        check_dp_trainable(tiny_base.model)
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="only LoRA"):
        check_dp_trainable(lin)


def test_physical_batches_bound_memory_without_changing_the_step(tiny_base):
    """A full-batch logical step fed in chunks of 1 row gives the adapter of the unsplit step:
    same Poisson draws, same clipped sum and noise; the accountant counts logical steps only."""
    dm = DeviceModel(tiny_base)
    lora = LoraTrainConfig(rank=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"), steps=4,
                           learning_rate=1e-2, batch_size=len(DATA))
    whole = dm.train(DATA, lora, dp=DPConfig(enabled=True, noise_multiplier=1.0, max_physical_batch_size=64))
    first = adapter_tensors(dm)
    split = dm.train(DATA, lora, dp=DPConfig(enabled=True, noise_multiplier=1.0, max_physical_batch_size=1))
    assert split.steps == whole.steps == 4 and split.epsilon == pytest.approx(whole.epsilon)
    for k, v in adapter_tensors(dm).items():
        assert torch.allclose(first[k], v, atol=1e-5), k
    assert any(not torch.equal(first[k], torch.zeros_like(first[k])) for k in first if "lora_B" in k)
    with pytest.raises(ValueError, match="max_physical_batch_size"):
        DPConfig(enabled=True, noise_multiplier=1.0, max_physical_batch_size=0).validate()

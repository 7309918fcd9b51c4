"""Private LoRA adapters: formatting, training, save/load/switch isolation, quantized bases."""

from __future__ import annotations

import json

import pytest
import torch

from cdcda_fl.device.lora import (
    IGNORE,
    AdapterStore,
    DeviceModel,
    LoraTrainConfig,
    collate,
    encode_pairs,
    example_loss,
    format_prompt,
)
from cdcda_fl.device.models import load_base_model
from device_fixtures import (  # noqa: F401
    PROBES,
    USER_A,
    USER_B,
    adapter_tensors,
    one_thread,
    tiny_base,
    tiny_cache,
)

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = LoraTrainConfig(steps=12, learning_rate=5e-3, batch_size=4)


def _logits(model, tok, text: str) -> torch.Tensor:
    enc = tok([format_prompt(tok, text)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits[0, -1]


def test_format_prompt_uses_chat_template_or_plain_text(tiny_base):
    tok = tiny_base.tokenizer
    text = format_prompt(tok, "hello")
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")

    class Plain:
        chat_template = None

    assert format_prompt(Plain(), "hello") == "hello\n"


def test_labels_cover_only_the_answer_and_its_end_token(tiny_base):
    tok = tiny_base.tokenizer
    enc = encode_pairs(tok, [("short q", "sci-fi"), ("a much longer question " * 3, "comedy")], 256)
    batch = collate(enc, [1.0, 1.0], tok.pad_token_id)
    for row, (p, c) in enumerate(enc):
        labels = batch["labels"][row]
        answer = tok.decode(labels[labels != IGNORE])
        assert answer.strip() in ("sci-fi<|im_end|>", "comedy<|im_end|>")
        assert int((labels != IGNORE).sum()) == len(c)
        assert int(batch["attention_mask"][row].sum()) == len(p) + len(c)
    assert batch["attention_mask"][0, 0] == 0  # left padding on the shorter row


def test_truncation_keeps_the_end_of_the_prompt_and_the_answer(tiny_base):
    tok = tiny_base.tokenizer
    (p, c), = encode_pairs(tok, [("word " * 400 + "QUESTION?", "the answer")], max_length=64)
    assert len(p) + len(c) <= 64
    assert "QUESTION?" in tok.decode(p) and "the answer" in tok.decode(c)


def test_padding_does_not_change_example_losses(tiny_base):
    dm = DeviceModel(tiny_base)
    batched = dm.example_losses(USER_A, batch_size=6)
    single = [dm.example_losses([ex], batch_size=1)[0] for ex in USER_A]
    assert batched == pytest.approx(single, rel=1e-5, abs=1e-5)


def test_same_seed_same_data_gives_bitwise_identical_adapters(tiny_base, tmp_path):
    dm = DeviceModel(tiny_base)
    dm.train(USER_A, FAST)
    first = adapter_tensors(dm)
    dm.save_adapter(tmp_path / "a1")
    dm.train(USER_A, FAST)
    second = adapter_tensors(dm)
    dm.save_adapter(tmp_path / "a2")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "a1/adapter_model.safetensors").read_bytes() == (
        tmp_path / "a2/adapter_model.safetensors"
    ).read_bytes()
    dm.train(USER_A, LoraTrainConfig(**{**FAST.__dict__, "seed": 1}))
    assert not all(torch.equal(first[k], v) for k, v in adapter_tensors(dm).items())


def test_training_lowers_own_loss_and_embeddings_stay_frozen(tiny_base):
    dm = DeviceModel(tiny_base)
    embed_before = tiny_base.model.get_input_embeddings().weight.detach().clone()
    before = sum(dm.example_losses(USER_A))
    res = dm.train(USER_A, LoraTrainConfig(steps=20, learning_rate=1e-2))
    after = sum(dm.example_losses(USER_A))
    assert after < before - 0.5
    assert res.steps == 20 and len(res.losses) == 20 and res.trained_tokens > 0
    assert res.epsilon is None and res.seconds > 0
    assert torch.equal(tiny_base.model.get_input_embeddings().weight, embed_before)


def test_epochs_override_steps(tiny_base):
    dm = DeviceModel(tiny_base)
    res = dm.train(USER_A, LoraTrainConfig(steps=99, epochs=2, batch_size=4))
    assert res.steps == 3  # ceil(2 * 6 / 4)


def test_weights_are_validated_and_matter(tiny_base):
    dm = DeviceModel(tiny_base)
    with pytest.raises(ValueError):
        dm.train(USER_A, FAST, weights=[1.0])
    with pytest.raises(ValueError):
        dm.train(USER_A, FAST, weights=[-1.0] * len(USER_A))
    dm.train(USER_A, FAST)
    plain = adapter_tensors(dm)
    dm.train(USER_A, FAST, weights=[3.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    weighted = adapter_tensors(dm)
    assert not all(torch.equal(plain[k], weighted[k]) for k in plain)


def test_switching_users_never_leaks(tiny_base, tiny_cache, tmp_path):
    """Train A, save; train B; load A -> A's answers; clear -> the untouched base's answers."""
    tok = tiny_base.tokenizer
    reference = load_base_model("tiny-random", cache_dir=tiny_cache)  # never wrapped by peft
    base_logits = [_logits(reference.model, tok, p) for p in PROBES]
    dm = DeviceModel(tiny_base)
    base_answers = dm.generate(PROBES, max_new_tokens=6)

    dm.train(USER_A, LoraTrainConfig(steps=15, learning_rate=1e-2))
    dm.save_adapter(tmp_path / "A")  # rounds the live adapter to the stored fp16 precision
    answers_a, losses_a = dm.generate(PROBES, max_new_tokens=6), dm.example_losses(USER_A)
    # While A is active, anyone using the shared base model directly still sees the plain base.
    assert all(torch.equal(_logits(tiny_base.model, tok, p), b) for p, b in zip(PROBES, base_logits))

    dm.train(USER_B, LoraTrainConfig(steps=15, learning_rate=1e-2, seed=3))
    assert dm.example_losses(USER_A) != losses_a
    dm.save_adapter(tmp_path / "B")

    dm.load_adapter(tmp_path / "A")
    assert dm.generate(PROBES, max_new_tokens=6) == answers_a
    assert dm.example_losses(USER_A) == losses_a  # bitwise: the same tensors came back

    dm.clear_adapter()
    assert not dm.has_adapter
    assert dm.generate(PROBES, max_new_tokens=6) == base_answers
    with torch.no_grad():
        for p, b in zip(PROBES, base_logits):
            enc = tok([format_prompt(tok, p)], return_tensors="pt", add_special_tokens=False)
            with dm._adapter_ctx() as model:
                assert torch.equal(model(**enc).logits[0, -1], b)

    # A second device model on the same base keeps its own adapter.
    other = DeviceModel(tiny_base)
    other.load_adapter(tmp_path / "B")
    dm.load_adapter(tmp_path / "A")
    assert dm.generate(PROBES, max_new_tokens=6) == answers_a


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a renamed transformers API
def test_saved_adapter_is_plain_peft_and_small(tiny_base, tiny_cache, tmp_path):
    from peft import PeftModel

    dm = DeviceModel(tiny_base)
    dm.train(USER_A, FAST)
    dm.save_adapter(tmp_path / "ad")
    files = sorted(p.name for p in (tmp_path / "ad").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    assert cfg["r"] == 8 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}

    fresh = load_base_model("tiny-random", cache_dir=tiny_cache)
    plain = PeftModel.from_pretrained(fresh.model, str(tmp_path / "ad"))
    tok = tiny_base.tokenizer
    enc = tok([format_prompt(tok, PROBES[0])], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(), dm._adapter_ctx() as model:
        ours = model(**enc).logits
    with torch.no_grad():
        theirs = plain(**enc).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_save_is_atomic_and_replaces(tiny_base, tmp_path):
    dm = DeviceModel(tiny_base)
    with pytest.raises(RuntimeError):
        dm.save_adapter(tmp_path / "none")
    dm.train(USER_A, FAST)
    dm.save_adapter(tmp_path / "ad")
    dm.train(USER_B, FAST)
    dm.save_adapter(tmp_path / "ad")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["ad"]
    with pytest.raises(FileNotFoundError):
        dm.load_adapter(tmp_path / "missing")


def test_adapter_metadata_is_written_with_the_adapter(tiny_base, tmp_path):
    """Metadata lands in the same atomic rename as the weights: never an adapter without it."""
    dm = DeviceModel(tiny_base)
    dm.train(USER_A, FAST)
    dm.save_adapter(tmp_path / "ad", extra_files={"cdcda_train.json": json.dumps({"epsilon": 8.0})})
    assert json.loads((tmp_path / "ad" / "cdcda_train.json").read_text()) == {"epsilon": 8.0}
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ad"]  # no temporary folder left behind


def test_generate_stop_strings_and_order(tiny_base):
    dm = DeviceModel(tiny_base)
    prompts = ["a", "a much longer prompt than the first one", "mid length prompt"]
    full = dm.generate(prompts, max_new_tokens=8, batch_size=2)
    one_by_one = [dm.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert full == one_by_one
    stop = full[0][1:3] if len(full[0]) > 3 else "zzz"
    cut = dm.generate(prompts[:1], max_new_tokens=8, stop=[stop])[0]
    assert stop not in cut


def test_adapter_store_paths(tmp_path):
    store = AdapterStore(tmp_path)
    assert store.path("user_1", "LaMP_2") == tmp_path / "LaMP_2" / "user_1"
    evil = store.path("../../etc/passwd", "LaMP_2")
    assert evil.parent == tmp_path / "LaMP_2" and "/" not in evil.name  # one component only
    assert store.path("..", "t").parent == tmp_path / "t" and store.path("..", "t").name != ".."
    assert store.path("a/b", "t") != store.path("a_b", "t")
    assert not store.exists("user_1", "LaMP_2")


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_base_trains_and_answers(quantization, tiny_cache, tmp_path):
    import bitsandbytes as bnb

    base = load_base_model("tiny-random", quantization=quantization, cache_dir=tiny_cache)
    layer_type = bnb.nn.Linear8bitLt if quantization == "8bit" else bnb.nn.Linear4bit
    assert isinstance(base.model.model.layers[0].self_attn.q_proj, layer_type)
    dm = DeviceModel(base)
    before = sum(dm.example_losses(USER_A))
    dm.train(USER_A, LoraTrainConfig(steps=15, learning_rate=1e-2))
    assert sum(dm.example_losses(USER_A)) < before - 0.3
    answers = dm.generate(PROBES, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    dm.save_adapter(tmp_path / "q")
    dm.clear_adapter()
    dm.load_adapter(tmp_path / "q")
    assert dm.generate(PROBES, max_new_tokens=4) == answers


def test_4bit_gradients_survive_inference(tiny_cache):
    """bnb repacks 4-bit weights for AVX512-BF16 inference with a kernel that has no autograd;
    after a generate() call LoRA gradients must still flow through every base layer."""
    base = load_base_model("tiny-random", quantization="4bit", cache_dir=tiny_cache)
    dm = DeviceModel(base)
    dm.train(USER_A, LoraTrainConfig(steps=1))

    def grads():
        batch = collate(encode_pairs(base.tokenizer, USER_A, 256), [1.0] * 6, base.tokenizer.pad_token_id)
        with dm._adapter_ctx() as model:
            params = {k: p for k, p in dm._adapter_params(dm._name).items()}
            for p in params.values():
                p.requires_grad_(True)
                p.grad = None
            example_loss(model, batch).mean().backward()
            out = {k: p.grad.clone() for k, p in params.items()}
            for p in params.values():
                p.requires_grad_(False)
                p.grad = None
        return out

    before = grads()
    dm.generate(PROBES, max_new_tokens=3)
    after = grads()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)

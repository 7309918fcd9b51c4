"""Private LoRA adapters: formatting, training, save/load/switch isolation, quantized bases."""

from __future__ import annotations

import json

import pytest
import torch

from cdcda_fl.device.adapter_store import AdapterStore
from cdcda_fl.device.encoding import IGNORE, collate, encode_pairs, format_prompt
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.training import LoraTrainConfig, example_loss
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
            with dm.slots.layers() as model:
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
    with torch.no_grad(), dm.slots.layers() as model:
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
        with dm.slots.layers() as model:
            params = {k: p for k, p in dm.slots.params(dm.slots.name).items()}
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


# --------------------------------------------------------------------------- kept adapters, mixed batches
MIXED_PROMPTS = PROBES + [q for q, _ in USER_A[:3]] + [q for q, _ in USER_B[:2]]
STRONG = LoraTrainConfig(steps=15, learning_rate=1e-2)


@pytest.fixture(scope="module")
def two_kept(tiny_base):
    """A DeviceModel with adapters kept as "a" (USER_A) and "b" (USER_B), plus an active one."""
    dm = DeviceModel(tiny_base)
    dm.train(USER_B, LoraTrainConfig(steps=6, learning_rate=1e-2, seed=7))  # the active adapter
    active = dm.generate(PROBES, max_new_tokens=6)
    dm.train(USER_A, STRONG, keep_as="a")
    dm.train(USER_B, LoraTrainConfig(steps=15, learning_rate=1e-2, seed=3), keep_as="b")
    assert dm.has_adapter and dm.generate(PROBES, max_new_tokens=6) == active  # keep_as left it alone
    yield dm
    dm.release_all()
    dm.slots.drop_own()


def test_mixed_batch_answers_equal_per_adapter_answers(two_kept, tiny_base, tiny_cache, tmp_path):
    dm = two_kept
    n = len(MIXED_PROMPTS)
    per = {h: dm.generate(MIXED_PROMPTS, max_new_tokens=6, adapters=[h] * n) for h in ("a", "b")}
    per[None] = DeviceModel(tiny_base).generate(MIXED_PROMPTS, max_new_tokens=6)  # untouched plain base
    assert per["a"] != per["b"] and per["a"] != per[None]  # the adapters matter, so the test means something
    # The per-adapter path a user gets alone: saved, then loaded as the active adapter of a fresh model.
    dm.save_adapter(tmp_path / "a", adapter="a")
    alone = DeviceModel(tiny_base)
    alone.load_adapter(tmp_path / "a")
    assert alone.generate(MIXED_PROMPTS, max_new_tokens=6) == per["a"]
    alone.slots.drop_own()

    handles = ["a", None, "b", "a", "__base__", "b", "a"][:n]
    want = [per[None if h == "__base__" else h][i] for i, h in enumerate(handles)]
    for batch_size in (n, 3):  # one mixed batch; several, each sorted by length
        assert dm.generate(MIXED_PROMPTS, max_new_tokens=6, batch_size=batch_size, adapters=handles) == want
    # A base that never had an adapter (no PeftModel yet) answers base rows too.
    fresh = DeviceModel(load_base_model("tiny-random", cache_dir=tiny_cache))
    assert fresh.generate(PROBES, max_new_tokens=6, adapters=[None, "__base__"]) == per[None][:2]
    # Rows naming no adapter see the plain base even while this instance has an active adapter.
    assert dm.has_adapter
    assert dm.generate(MIXED_PROMPTS, max_new_tokens=6, adapters=[None] * n) == per[None]


def test_mixed_example_losses_equal_per_adapter_losses(two_kept):
    dm = two_kept
    pairs = USER_A + USER_B
    handles = ["a", "b", None] * (len(pairs) // 3) + ["a"] * (len(pairs) % 3)
    per = {h: dm.example_losses(pairs, adapters=[h] * len(pairs)) for h in ("a", "b", None)}
    assert per["a"] == pytest.approx(dm.example_losses(pairs, adapter="a"), abs=1e-6)
    mixed = dm.example_losses(pairs, batch_size=4, adapters=handles)
    assert mixed == pytest.approx([per[h][i] for i, h in enumerate(handles)], rel=1e-5, abs=1e-5)
    assert per["a"] != pytest.approx(per["b"], abs=1e-3)


def test_per_row_max_new_tokens_batch_by_budget(two_kept):
    dm = two_kept
    budgets = [2, 6, 2, 6, 4, 2, 6][: len(MIXED_PROMPTS)]
    got = dm.generate(MIXED_PROMPTS, max_new_tokens=budgets, adapters=["a"] * len(budgets))
    for b in set(budgets):
        rows = [i for i, x in enumerate(budgets) if x == b]
        alone = dm.generate([MIXED_PROMPTS[i] for i in rows], max_new_tokens=b, adapters=["a"] * len(rows))
        assert [got[i] for i in rows] == alone
    with pytest.raises(ValueError, match="max_new_tokens"):
        dm.generate(PROBES, max_new_tokens=[4])


def test_kept_adapters_keep_load_save_release(tiny_base, tmp_path):
    dm = DeviceModel(tiny_base)
    dm.train(USER_A, FAST)
    dm.save_adapter(tmp_path / "a")
    answers = dm.generate(PROBES, max_new_tokens=6)
    dm.keep("u1")
    assert not dm.has_adapter and dm.kept == ("u1",)
    assert dm.generate(PROBES, max_new_tokens=6, adapters=["u1", "u1"]) == answers
    dm.save_adapter(tmp_path / "again", adapter="u1")
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "a" / "adapter_model.safetensors"
    ).read_bytes()
    # load_adapter(keep_as=) fills a new slot, then overwrites a slot in place; the active one stays.
    dm.train(USER_B, FAST)
    active = adapter_tensors(dm)
    dm.load_adapter(tmp_path / "a", keep_as="u2")
    name = dm.slots.kept["u2"]
    dm.load_adapter(tmp_path / "a", keep_as="u2")
    assert dm.slots.kept["u2"] == name and dm.generate(PROBES, max_new_tokens=6, adapters=["u2", "u2"]) == answers
    assert all(torch.equal(active[k], v) for k, v in adapter_tensors(dm).items())
    with pytest.raises(KeyError, match="nope"):
        dm.generate(PROBES, adapters=["nope", None])
    with pytest.raises(ValueError):
        dm.generate(PROBES, adapters=["u1"])
    dm.release("u1")
    dm.release_all()
    assert dm.kept == () and name not in dm.slots.peft.peft_config
    dm.slots.drop_own()


# --------------------------------------------------------------------------- precision (device.dtype)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_bf16_and_fp32_bases_train_and_answer(dtype, tiny_cache):
    """bf16 = bf16 base weights (no autocast) with fp32 LoRA parameters, hence fp32 AdamW state."""
    from cdcda_fl.privacy.dp import DPConfig

    base = load_base_model("tiny-random", dtype=dtype, cache_dir=tiny_cache)
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert base.model.dtype == want and base.autocast_dtype is None
    assert {p.dtype for p in base.model.parameters()} == {want}
    dm = DeviceModel(base)
    before = sum(dm.example_losses(USER_A))
    res = dm.train(USER_A, LoraTrainConfig(steps=15, learning_rate=1e-2))
    assert sum(dm.example_losses(USER_A)) < before - 0.3
    assert res.losses[-1] < res.losses[0]
    dm.train(USER_B, FAST, keep_as="b")  # adapters added to an existing PeftModel are fp32 too
    for name in (dm.slots.name, dm.slots.kept["b"]):
        assert {p.dtype for p in dm.slots.params(name).values()} == {torch.float32}
    answers = dm.generate(PROBES, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert dm.generate(PROBES, max_new_tokens=4, adapters=[None, "b"])[1] == dm.generate(
        PROBES[1:], max_new_tokens=4, adapters=["b"])[0]
    dp = dm.train(USER_A, LoraTrainConfig(steps=2), dp=DPConfig(enabled=True, noise_multiplier=1.0))
    assert dp.epsilon is not None and dp.epsilon > 0
    assert not any(p.requires_grad for p in base.model.parameters())


def test_answering_leaves_every_tensor_frozen(tiny_base):
    """Only training marks LoRA tensors trainable; answering with any adapter leaves none so."""
    dm = DeviceModel(tiny_base)
    keeper = DeviceModel(tiny_base)  # another user's adapter on the same base survives both deletions
    keeper.train(USER_B, FAST)
    dm.train(USER_A, FAST, keep_as="k")
    dm.train(USER_B, FAST)
    dm.generate(PROBES, max_new_tokens=2)
    dm.generate(PROBES, max_new_tokens=2, adapters=["k", None])
    dm.example_losses(USER_A[:2], adapter="k")  # leaves "k" the adapter peft marks active
    assert not any(p.requires_grad for p in tiny_base.model.parameters())
    dm.release_all()  # deleting peft's active adapter makes peft activate another one trainable
    assert not any(p.requires_grad for p in tiny_base.model.parameters())
    dm.slots.drop_own()
    assert not any(p.requires_grad for p in tiny_base.model.parameters())
    keeper.slots.drop_own()


def test_cpu_training_uses_eager_attention_and_restores_sdpa(tiny_base):
    """training_attention: eager inside DeviceModel.train on CPU (the slow SDPA backward), SDPA after."""
    from cdcda_fl.device.training import training_attention

    model = tiny_base.model
    before = model.config._attn_implementation
    seen: list[str] = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda mod, args: seen.append(mod.config._attn_implementation))
    try:
        model.set_attn_implementation("sdpa")
        dm = DeviceModel(tiny_base)
        dm.train([("q", "a"), ("r", "b")], LoraTrainConfig(steps=2, batch_size=2))
        assert set(seen) == {"eager"} and model.config._attn_implementation == "sdpa"
        seen.clear()
        dm.generate(["q"], max_new_tokens=2)
        assert seen and set(seen) == {"sdpa"}  # answering keeps SDPA
        with pytest.raises(RuntimeError):  # restored even when training fails
            with training_attention(model, torch.device("cpu")):
                raise RuntimeError("boom")
        assert model.config._attn_implementation == "sdpa"
        with training_attention(model, torch.device("cuda")):  # other devices keep their kernel
            assert model.config._attn_implementation == "sdpa"
    finally:
        hook.remove()
        model.set_attn_implementation(before)


def test_lora_dropout_defaults_to_zero_everywhere():
    from cdcda_fl.core.config import DEFAULTS

    assert LoraTrainConfig().dropout == 0.0 and DEFAULTS["train.dropout"][0] == 0.0

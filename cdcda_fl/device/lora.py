"""Private per-user LoRA adapters on one shared base model.

One :class:`DeviceModel` wraps one loaded base and serves many users in turn (one Ray actor,
many Flower nodes): the only per-user state is a LoRA adapter, trained here, saved on the
device, and swapped in for that user's queries. Three rules keep users apart:

* training always starts from a *fresh* adapter (seeded init), never on top of the previous
  user's; the previous adapter is deleted from the model;
* outside a DeviceModel call the LoRA layers are disabled, so anyone else holding the same
  base model (e.g. the base zero-shot baseline) sees the plain base;
* ``clear_adapter`` zeroes the weights and disables the adapter: answers equal the base's.

The training loop is our own (AdamW, loss on output tokens only) because it must run under
Opacus DP-SGD, which HF's Trainer does not support.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cdcda_fl.atomic import atomic_dir
from cdcda_fl.device.models import LoadedModel

if TYPE_CHECKING:
    from cdcda_fl.privacy.dp import DPConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
IGNORE = -100
# Batches are sorted by length inside windows of this many batches: less padding, still shuffled.
_BUCKET_BATCHES = 8
BASE = "__base__"  # peft's row name for "no adapter" in a mixed-adapter batch
_EMBEDDING_NAMES = ("embed_tokens", "wte", "word_embeddings", "embed_in", "shared")


@dataclass
class LoraTrainConfig:
    """LoRA hyper-parameters and the training budget for one user's adapter.

    ``epochs``, when set, overrides ``steps`` (steps = ceil(epochs * n / batch_size)).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int | None = 24
    epochs: float | None = None
    learning_rate: float = 1e-3
    batch_size: int = 4
    max_length: int = 256
    seed: int = 0

    def total_steps(self, n_examples: int) -> int:
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_examples / self.batch_size))
        if self.steps is None:
            raise ValueError("LoraTrainConfig: set steps or epochs")
        return int(self.steps)


@dataclass
class TrainResult:
    """What one adapter training did; ε/δ are None without DP (ε = inf with σ = 0)."""

    steps: int
    trained_tokens: int
    seconds: float
    final_loss: float  # mean of the last min(4, steps) step losses
    losses: list[float] = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.trained_tokens / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- prompt formatting


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, user_text: str) -> str:
    """The text the model sees before answering: a chat user turn when the model has a template."""
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return user_text + "\n"


def _completion_text(tokenizer: Any, user_text: str, output: str, prompt: str) -> str:
    """What follows ``prompt`` in a finished exchange: the assistant turn incl. its end token.

    Ending the target with the turn/eos token teaches the adapter to stop, which is what makes
    short greedy answers come back short.
    """
    if _has_chat_template(tokenizer):
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}, {"role": "assistant", "content": output}],
            tokenize=False,
        )
        if full.startswith(prompt):
            return full[len(prompt) :].rstrip()
    return output + (tokenizer.eos_token or "")


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    # A chat template already writes the special tokens (bos etc.) into the text.
    return tokenizer(text, add_special_tokens=not _has_chat_template(tokenizer))["input_ids"]


def encode_pairs(
    tokenizer: Any, examples: Sequence[tuple[str, str]], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Tokenize (input, output) pairs into (prompt ids, completion ids), truncated to max_length.

    Over-long pairs lose the *start* of the prompt (the question sits at its end) and, only if
    needed, the end of the completion; at least half the budget stays for the completion.
    """
    out = []
    for user_text, output in examples:
        prompt = format_prompt(tokenizer, user_text)
        p = _encode_text(tokenizer, prompt)
        c = tokenizer(_completion_text(tokenizer, user_text, output, prompt), add_special_tokens=False)[
            "input_ids"
        ]
        if not c:
            raise ValueError(f"empty output for input {user_text[:60]!r}")
        if len(p) + len(c) > max_length:
            c = c[: max(max_length - len(p), max_length // 2)]
            p = p[len(p) - (max_length - len(c)) :]
        out.append((p, c))
    return out


def collate(
    encoded: Sequence[tuple[list[int], list[int]]], weights: Sequence[float], pad_id: int
) -> dict[str, torch.Tensor]:
    """Left-pad a batch; labels are the completion tokens only (-100 on prompt and padding).

    Left padding puts every completion at the end of its row, so the logits needed for the
    loss are just the last ``keep`` positions: the frozen lm_head (21 % of SmolLM2's FLOPs)
    runs on those only instead of on every prompt token.
    """
    length = max(len(p) + len(c) for p, c in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for i, (p, c) in enumerate(encoded):
        seq = p + c
        ids[i, length - len(seq) :] = torch.tensor(seq)
        labels[i, length - len(c) :] = torch.tensor(c)
        mask[i, length - len(seq) :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "weights": torch.tensor(list(weights), dtype=torch.float32),
    }


def example_loss(model: nn.Module, batch: dict[str, torch.Tensor], **forward: Any) -> torch.Tensor:
    """Per-example mean cross-entropy over output tokens, shape (batch,).

    ``forward`` goes to the model call (e.g. peft's ``adapter_names`` for a mixed batch).

    A mean per example (not per token over the batch) keeps every example's influence on the
    gradient separable, which per-sample clipping in DP-SGD relies on.
    """
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    # Left padding: completions end every row, so only the last `keep` logits are needed.
    has_label = (labels != IGNORE).any(0)
    keep = labels.shape[1] - int(has_label.float().argmax()) + 1 if bool(has_label.any()) else 1
    keep = min(keep, labels.shape[1])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    # Positions as an index tensor, not an int: HF then gathers a *contiguous* copy of the last
    # `keep` hidden states. A plain slice is a strided view, and matmul cannot fold a strided
    # 3-D input that needs grad into one GEMM: it broadcasts the (V, d) lm_head weight per row
    # and copies it (8 x 49152 x 576 values per step for SmolLM2, ~20 % of a bf16 step).
    kept = torch.arange(labels.shape[1] - keep, labels.shape[1], device=ids.device)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=kept, use_cache=False,
        **forward,
    ).logits
    # logits[:, j] predicts token (L - keep + j + 1); the last logit predicts nothing.
    target = labels[:, -keep + 1 :] if keep > 1 else labels[:, :0]
    logits = logits[:, :-1].float()
    tok_loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(target.shape)
    counts = (target != IGNORE).sum(-1).clamp(min=1)
    return tok_loss.sum(-1) / counts


def _normalized_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Scale weights to mean 1 so the learning rate means the same with or without them."""
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} examples")
    w = [float(x) for x in weights]
    if any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
        raise ValueError("weights must be finite, >= 0, and not all zero")
    mean = sum(w) / n
    return [x / mean for x in w]


def _bucketed_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless stream of index batches: shuffled each epoch, length-sorted inside windows."""
    n = len(lengths)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        window = batch_size * _BUCKET_BATCHES
        batches: list[list[int]] = []
        for s in range(0, n, window):
            chunk = sorted(perm[s : s + window], key=lambda i: lengths[i])
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[b]


class _PairDataset(torch.utils.data.Dataset):
    """Encoded pairs + weights, for Opacus's Poisson data loader."""

    def __init__(self, encoded: list[tuple[list[int], list[int]]], weights: list[float]):
        self.encoded, self.weights = encoded, weights

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[tuple[list[int], list[int]], float]:
        return self.encoded[i], self.weights[i]


def _target_names(target_modules: Any) -> list[str]:
    return [target_modules] if isinstance(target_modules, str) else list(target_modules)


def _check_no_embedding_targets(model: nn.Module, target_modules: Any) -> None:
    names = _target_names(target_modules)
    for n in names:
        if n in _EMBEDDING_NAMES:
            raise ValueError(
                f"LoRA on embeddings ({n!r}) cannot be trained with DP-SGD: Opacus has no correct "
                "per-sample gradient for it. Embeddings stay frozen under DP; remove it from "
                "target_modules."
            )
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and mod_name.split(".")[-1] in names:
            raise ValueError(f"LoRA target {mod_name} is an embedding; not allowed with DP-SGD")


# --------------------------------------------------------------------------- the device model


class DeviceModel:
    """A shared base model plus one active private LoRA adapter and any number of kept ones.

    Reuse one instance for many users: ``train`` / ``load_adapter`` replace the *active*
    adapter, ``clear_adapter`` returns to the plain base. Not thread-safe (one call at a time,
    as in a Ray actor).

    Kept adapters (mixed-adapter batches): a node that hosts several users answers all their
    queries, for every method, in large batches on one base, each row with its own adapter::

        dm.train(pairs_u1, cfg, keep_as="u1/local")          # or: train, save_adapter, keep(...)
        dm.load_adapter(path_u2, keep_as="u2/cdcda")          # in-place copy when the slot exists
        answers = dm.generate(prompts, max_new_tokens=[8, 8, 24],
                              adapters=["u1/local", None, "u2/cdcda"])   # None = plain base
        losses = dm.example_losses(pairs, adapters=["u1/local", "u2/cdcda"])
        dm.release("u1/local")   # or release_all() when the node is done

    Handles are the caller's strings; each names one resident adapter (r=8 q/k/v/o of
    SmolLM2-135M: 3.7 MB fp32). Keeping, loading or training under a handle never touches the
    active adapter, and rows that name None (or ``"__base__"``) see exactly the plain base.
    """

    def __init__(self, base: LoadedModel):
        self.base = base
        self._name: str | None = None  # this instance's adapter inside the PeftModel
        self._active = False
        self._prefix = f"u{uuid.uuid4().hex[:8]}"
        self._counter = 0
        # Adapters kept side by side for mixed-adapter batches: handle -> name inside the PeftModel.
        self._kept: dict[str, str] = {}

    # ------------------------------------------------------------------ adapter bookkeeping
    @property
    def _peft(self) -> Any:
        """The PeftModel wrapping the base, shared by every DeviceModel on that base."""
        return getattr(self.base, "_cdcda_peft", None)

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def has_adapter(self) -> bool:
        return self._active

    def _new_name(self) -> str:
        self._counter += 1
        return f"{self._prefix}_{self._counter}"

    def _add_adapter(self, lora_cfg: Any) -> str:
        """Create a fresh adapter, then delete this instance's previous one (never stack).

        LoRA parameters are always fp32, also on a bf16 or quantized base: they and their
        AdamW state are the only trained values, and bf16 updates of ~1e-4 relative size round
        away. peft casts the first adapter on its own but not ones added later, hence the cast.
        """
        from peft import get_peft_model

        name = self._new_name()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a renamed transformers API
            if self._peft is None:
                self.base._cdcda_peft = get_peft_model(  # type: ignore[attr-defined]
                    self.base.model, lora_cfg, adapter_name=name
                )
            else:
                self._peft.add_adapter(name, lora_cfg)
        self._peft.base_model.set_adapter(name)  # so deleting the old one warns about nothing
        for p in self._adapter_params(name).values():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        self._drop_own_adapter()
        self._name, self._active = name, False
        return name

    def _drop_own_adapter(self) -> None:
        if self._name is not None:
            self._delete(self._name)
        self._name, self._active = None, False

    def _delete(self, name: str) -> None:
        """Delete an adapter from the shared PeftModel.

        Which adapter peft then marks active is moot (every call here sets the layers up
        itself), but peft activates a remaining one *trainable* when the active one goes, so
        all remaining adapters are frozen again: outside ``train`` no tensor needs grad.
        """
        if self._peft is not None and name in self._peft.peft_config:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                self._peft.delete_adapter(name)
            remaining = list(self._peft.peft_config)
            if remaining:
                self._peft.base_model.set_adapter(remaining[0], inference_mode=True)

    @contextlib.contextmanager
    def _own_aside(self) -> Iterator[None]:
        """Build an adapter as this instance's own without disturbing the active one.

        ``train`` / ``load_adapter`` with ``keep_as`` run inside: they create a new own adapter
        and move it into the kept set; the previously active adapter is restored untouched, and
        a half-built one (an exception) is deleted.
        """
        saved = (self._name, self._active)
        self._name, self._active = None, False
        try:
            yield
        finally:
            if self._name is not None:
                self._drop_own_adapter()
            self._name, self._active = saved

    def _adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        """Adapter tensors keyed as in a saved PEFT file (adapter name removed)."""
        tag = f".{name}"
        return {
            k.replace(tag, ""): p for k, p in self._peft.named_parameters() if tag + "." in k or k.endswith(tag)
        }

    def _row_name(self, handle: str | None) -> str:
        """peft's name for a row's adapter: a kept handle's adapter, or "__base__"."""
        if handle is None or handle == BASE:
            return BASE
        try:
            return self._kept[handle]
        except KeyError:
            raise KeyError(f"no kept adapter {handle!r} (kept: {sorted(self._kept)})") from None

    @contextlib.contextmanager
    def _adapter_ctx(
        self, handle: str | None = None, *, mixed: bool = False, trainable: bool = False
    ) -> Iterator[nn.Module]:
        """Run with exactly one adapter on (this instance's, or the kept ``handle``) or none.

        ``mixed=True`` switches every LoRA layer on for a mixed-adapter batch, where each row
        names its adapter (``adapter_names``; "__base__" rows see the plain base). LoRA layers
        are always off again afterwards. Only ``trainable=True`` (training) lets peft mark the
        active adapter's tensors requires_grad; answering leaves every tensor frozen.
        """
        if self._peft is None:
            yield self.base.model
            return
        layers = self._peft.base_model
        if mixed:
            layers.enable_adapter_layers()
        elif handle is not None:
            layers.set_adapter(self._kept[handle], inference_mode=True)
            layers.enable_adapter_layers()
        elif self._active:
            layers.set_adapter(self._name, inference_mode=not trainable)
            layers.enable_adapter_layers()
        else:
            layers.disable_adapter_layers()
        try:
            yield self._peft
        finally:
            layers.disable_adapter_layers()

    def _route(self, names: Sequence[str]) -> dict[str, Any]:
        """Set the LoRA layers up for one batch of rows with peft adapter ``names``.

        One adapter (or only base rows) in the batch: plain single-adapter forward, no per-row
        indexing. Several: peft's mixed forward, returned as the ``adapter_names`` kwarg.
        """
        if self._peft is None:  # no adapter was ever built on this base: every row is a base row
            return {}
        layers = self._peft.base_model
        unique = set(names)
        if unique == {BASE}:
            layers.disable_adapter_layers()
            return {}
        layers.enable_adapter_layers()
        if len(unique) == 1:
            layers.set_adapter(names[0], inference_mode=True)
            return {}
        return {"adapter_names": list(names)}

    # ------------------------------------------------------------------ training
    def _lora_config(self, cfg: LoraTrainConfig) -> Any:
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(_target_names(cfg.target_modules)),
            bias="none",
        )

    def train(
        self,
        examples: Sequence[tuple[str, str]],
        cfg: LoraTrainConfig | None = None,
        dp: DPConfig | None = None,
        weights: Sequence[float] | None = None,
        *,
        progress: bool = False,
        keep_as: str | None = None,
    ) -> TrainResult:
        """Train a fresh adapter for one user on (input, output) pairs; it is left active.

        ``weights`` scale each example's loss (e.g. to balance real against synthetic pairs);
        they are normalised to mean 1. With ``dp`` enabled the run is DP-SGD (Opacus) and the
        result carries the accountant's ε at δ. With ``keep_as`` the trained adapter is kept
        under that handle (replacing an adapter kept there) for mixed-adapter batches instead
        of becoming the active one; the active adapter stays as it was.
        """
        if keep_as is not None:
            with self._own_aside():
                res = self.train(examples, cfg, dp, weights, progress=progress)
                self._keep_own(keep_as)
            return res
        cfg = cfg or LoraTrainConfig()
        if not examples:
            raise ValueError("no training examples")
        use_dp = dp is not None and dp.enabled
        if use_dp:
            dp.validate()
            _check_no_embedding_targets(self.base.model, cfg.target_modules)
        w = _normalized_weights(weights, len(examples))
        encoded = encode_pairs(self.tokenizer, examples, cfg.max_length)
        steps = cfg.total_steps(len(examples))
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(cfg.seed)
            self._add_adapter(self._lora_config(cfg))
            self._active = True
            with self._adapter_ctx(trainable=True) as model:
                params = [p for p in model.parameters() if p.requires_grad]
                opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
                model.train()
                try:
                    if use_dp:
                        res = self._train_dp(model, opt, encoded, w, cfg, dp, steps, progress)
                    else:
                        res = self._train_plain(model, opt, encoded, w, cfg, steps, progress)
                finally:
                    model.eval()
                    for p in params:
                        p.grad = None
                        p.requires_grad_(False)
        res.seconds = time.perf_counter() - t0
        return res

    # ------------------------------------------------------------------ kept adapters (mixed batches)
    def keep(self, handle: str) -> None:
        """Keep the active adapter under ``handle`` for mixed batches; afterwards none is active.

        For the train-then-save flow: ``train(...)``, ``save_adapter(path)``, ``keep(handle)``.
        An adapter already kept under ``handle`` is released first.
        """
        if not self._active:
            raise RuntimeError("no active adapter to keep (train or load one first)")
        self._keep_own(handle)

    def _keep_own(self, handle: str) -> None:
        """Move this instance's adapter into the kept set under ``handle`` (replacing an older one)."""
        if self._name is None:
            raise RuntimeError("no adapter to keep")
        self.release(handle)
        self._kept[handle] = self._name
        self._name, self._active = None, False

    @property
    def kept(self) -> tuple[str, ...]:
        """Handles of the adapters kept for mixed-adapter batches."""
        return tuple(self._kept)

    def release(self, handle: str) -> None:
        """Delete a kept adapter from the model (no-op if there is none under ``handle``)."""
        name = self._kept.pop(handle, None)
        if name is not None:
            self._delete(name)

    def release_all(self) -> None:
        for handle in list(self._kept):
            self.release(handle)

    def _cuda_devices(self) -> list[int]:
        return [self.base.device.index or 0] if self.base.device.type == "cuda" else []

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.base.device) for k, v in batch.items()}

    def _train_plain(self, model, opt, encoded, w, cfg, steps, progress) -> TrainResult:
        gen = torch.Generator().manual_seed(cfg.seed)
        lengths = [len(p) + len(c) for p, c in encoded]
        stream = _bucketed_batches(lengths, cfg.batch_size, gen)
        losses, tokens = [], 0
        for _ in _progress(range(steps), progress, "LoRA"):
            idx = next(stream)
            batch = self._to_device(collate([encoded[i] for i in idx], [w[i] for i in idx], self._pad_id))
            # Autocast per step, never around the loop: its cast cache would keep feeding the
            # forward pass bf16 copies of the LoRA weights from before the optimizer step.
            with self.base.compute_context():
                loss = (example_loss(model, batch) * batch["weights"]).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += int(batch["attention_mask"].sum())
        return _result(steps, tokens, losses)

    def _train_dp(self, model, opt, encoded, w, cfg, dp, steps, progress) -> TrainResult:
        from cdcda_fl.privacy.dp import make_private

        pad = self._pad_id
        loader = torch.utils.data.DataLoader(
            _PairDataset(encoded, w),
            batch_size=min(cfg.batch_size, len(encoded)),
            shuffle=True,
            collate_fn=lambda items: _collate_items(items, pad),
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        priv = make_private(model, opt, loader, dp, steps=steps, seed=cfg.seed)
        bar = _progress(range(steps), progress, "DP-LoRA")
        ticks = iter(bar)
        with warnings.catch_warnings():
            # The first LoRA layer's input needs no grad; Opacus' backward hook still fires: fine.
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            return self._dp_loop(model, priv, steps, bar, ticks)

    def _dp_loop(self, model, priv, steps, bar, ticks) -> TrainResult:
        from cdcda_fl.privacy.dp import mark_empty_batch

        losses, tokens, done = [], 0, 0
        try:
            while done < steps:
                for batch in priv.data_loader:
                    if done >= steps:
                        break
                    if _is_empty(batch):  # Poisson sampling drew nobody: noise-only step
                        mark_empty_batch(model.parameters())
                    else:
                        batch = self._to_device(batch)
                        loss = (example_loss(priv.module, batch) * batch["weights"]).mean()
                        loss.backward()
                        losses.append(float(loss.detach()))
                        tokens += int(batch["attention_mask"].sum())
                    priv.optimizer.step()
                    priv.optimizer.zero_grad(set_to_none=True)
                    done += 1
                    next(ticks, None)
            eps = priv.epsilon()
        finally:
            priv.close()
            if hasattr(bar, "close"):
                bar.close()
        res = _result(steps, tokens, losses or [float("nan")])
        res.epsilon, res.delta = eps, priv.delta
        return res

    @property
    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ save / load / clear
    def save_adapter(self, path: Path, *, dtype: torch.dtype | None = torch.float16,
                     extra_files: Mapping[str, str] | None = None, adapter: str | None = None) -> None:
        """Write the active adapter (or the kept ``adapter``) in PEFT format, atomically.

        ``extra_files`` (name -> text, e.g. the training metadata) are written into the same
        folder before it is renamed into place, so an adapter never exists without them.

        Stored in fp16 by default: r=8 on q/k/v/o of SmolLM2-135M is 0.92 M values, 1.8 MB
        instead of 3.7 MB in fp32. The live adapter is rounded to the same precision, so what
        answers now is exactly what a later ``load_adapter`` restores. ``dtype=None`` keeps fp32.
        """
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if adapter is not None:
            name = self._row_name(adapter)
        elif not self._active or self._name is None:
            raise RuntimeError("no active adapter to save (train or load one first)")
        else:
            name = self._name
        if dtype is not None:
            with torch.no_grad():
                for p in self._adapter_params(name).values():
                    p.copy_(p.to(dtype).to(p.dtype))
        # 0700: private, the user's adapter never leaves the device
        with atomic_dir(Path(path), mode=0o700) as tmp:
            config = self._peft.peft_config[name]
            config.base_model_name_or_path = self.base.model.name_or_path
            config.save_pretrained(str(tmp))
            state = get_peft_model_state_dict(self._peft, adapter_name=name)
            state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}
            save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text, encoding="utf-8")

    def load_adapter(self, path: Path, *, keep_as: str | None = None) -> None:
        """Activate a saved adapter; the base stays loaded, only adapter tensors change.

        Fast path: when the adapter has the same shape/config as the current one, its tensors
        are copied in place (milliseconds) after checking that the file covers every tensor.
        With ``keep_as`` the adapter is kept under that handle instead (in place into the
        adapter already kept there when the layout matches); the active adapter is untouched.
        """
        from peft import LoraConfig
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is not a saved adapter ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS})")
        config = LoraConfig.from_pretrained(str(path))
        weights = load_file(str(path / ADAPTER_WEIGHTS), device=str(self.base.device))
        if keep_as is not None:
            if keep_as in self._kept and self._copy_in(self._kept[keep_as], config, weights):
                return
            with self._own_aside():
                self._load_new(config, weights, path)
                self._keep_own(keep_as)
            return
        if self._name is not None and self._copy_in(self._name, config, weights):
            self._active = True
            return
        self._load_new(config, weights, path)

    def _copy_in(self, name: str, config: Any, weights: Mapping[str, torch.Tensor]) -> bool:
        """Copy saved tensors into the existing adapter ``name`` if layout and keys match."""
        if not _same_layout(self._peft.peft_config[name], config):
            return False
        params = self._adapter_params(name)
        if set(params) != set(weights):
            return False
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])  # casts fp16 files back to the live dtype
        return True

    def _load_new(self, config: Any, weights: Mapping[str, torch.Tensor], path: Path) -> None:
        """Build a fresh own adapter from a saved config and fill it; it becomes active."""
        config.inference_mode = True
        name = self._add_adapter(config)
        params = self._adapter_params(name)
        if set(params) != set(weights):
            self._drop_own_adapter()
            raise ValueError(f"adapter at {path} does not fit this base model ({self.base.name})")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])
                p.requires_grad_(False)
        self._active = True

    def clear_adapter(self) -> None:
        """Back to the plain base: zero this user's adapter weights and switch them off."""
        if self._name is not None:
            with torch.no_grad():
                for p in self._adapter_params(self._name).values():
                    p.zero_()
        self._active = False

    # ------------------------------------------------------------------ inference
    def _row_names(self, n: int, adapter: str | None, adapters: Sequence[str | None] | None) -> list[str] | None:
        """peft adapter name per row, or None for the single-adapter path (``adapter`` / active)."""
        if adapters is None:
            return None
        if adapter is not None:
            raise ValueError("pass either adapter= or adapters=, not both")
        if len(adapters) != n:
            raise ValueError(f"got {len(adapters)} adapters for {n} rows")
        return [self._row_name(a) for a in adapters]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int] = 32,
        batch_size: int = 8,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        *,
        adapters: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Answer user texts (formatted with :func:`format_prompt`); returns the new text only.

        Greedy when temperature == 0. Prompts are sorted by token length into batches (less
        padding) and answers returned in input order, cut at the first stop string and stripped.

        ``max_new_tokens`` may be one number per prompt (e.g. per task): rows are then batched
        only with rows of the same budget, so a short-answer task never waits for a long one.

        ``adapters`` gives each prompt its own adapter: a kept handle (``train`` /
        ``load_adapter`` with ``keep_as=``) or None / ``"__base__"`` for the plain base; the
        active adapter is then not used. Rows of different users and methods share one batch
        (peft's mixed-adapter forward, ``adapter_names``), which is how a node answers all its
        users at once. Greedy answers equal answering each adapter's prompts on their own.
        """
        tok = self.tokenizer
        texts = [format_prompt(tok, p) for p in prompts]
        rows = self._row_names(len(texts), None, adapters)
        budgets = [int(max_new_tokens)] * len(texts) if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
        if len(budgets) != len(texts):
            raise ValueError(f"got {len(budgets)} max_new_tokens for {len(texts)} prompts")
        special = not _has_chat_template(tok)
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=special)["input_ids"]] if texts else []
        answers: list[str] = [""] * len(texts)
        sampling = (
            {"do_sample": True, "temperature": temperature}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        # The last position as an index tensor, not generate's default int 1: HF then gathers a
        # contiguous (B, 1, d) copy for the lm_head. The int's strided slice of the prefill makes
        # matmul broadcast and copy the whole (V, d) lm_head weight once per row: +113 MB per row
        # of fp32 SmolLM2 at every generate call, most of a batched answer's peak RSS.
        last = torch.tensor([-1], device=self.base.device)
        with self._adapter_ctx(mixed=rows is not None) as model:
            model.eval()
            for idx in _length_batches(lengths, batch_size, budgets):
                enc = tok(
                    [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=special
                ).to(self.base.device)
                extra: dict[str, Any] = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
                extra["logits_to_keep"] = last
                if rows is not None:
                    extra.update(self._route([rows[i] for i in idx]))
                with warnings.catch_warnings(), self.base.compute_context():
                    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
                    out = model.generate(
                        **enc, max_new_tokens=budgets[idx[0]], pad_token_id=tok.pad_token_id, **sampling, **extra
                    )
                new = out[:, enc["input_ids"].shape[1] :]
                for i, row in zip(idx, tok.batch_decode(new, skip_special_tokens=True)):
                    answers[i] = _cut(row, stop).strip()
        return answers

    @torch.inference_mode()
    def example_losses(
        self,
        examples: Sequence[tuple[str, str]],
        batch_size: int = 8,
        *,
        adapter: str | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[float]:
        """Mean loss over each example's output tokens (lower = better fit), in input order.

        Used by the MIA audit and by the device's private checks of cloud data. ``adapter``
        names a kept adapter; default: this instance's active adapter (or the base).
        ``adapters`` gives each example its own kept adapter (None = plain base), as in
        :meth:`generate`; examples are length-sorted into mixed batches either way.
        """
        encoded = encode_pairs(self.tokenizer, examples, max_length=1 << 30)
        rows = self._row_names(len(encoded), adapter, adapters)
        losses: list[float] = [0.0] * len(encoded)
        lengths = [len(p) + len(c) for p, c in encoded]
        with self._adapter_ctx(adapter, mixed=rows is not None) as model:
            model.eval()
            for idx in _length_batches(lengths, batch_size):
                batch = self._to_device(collate([encoded[i] for i in idx], [1.0] * len(idx), self._pad_id))
                extra = self._route([rows[i] for i in idx]) if rows is not None else {}
                with self.base.compute_context():
                    for i, v in zip(idx, example_loss(model, batch, **extra).tolist()):
                        losses[i] = v
        return losses


def _length_batches(lengths: Sequence[int], batch_size: int, groups: Sequence[int] | None = None) -> list[list[int]]:
    """Index batches sorted by length (little padding), never mixing two ``groups`` values."""
    key = (lambda i: (groups[i], lengths[i])) if groups is not None else (lambda i: lengths[i])
    order = sorted(range(len(lengths)), key=key)
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (groups is None or groups[batches[-1][0]] == groups[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _collate_items(items: list[tuple[tuple[list[int], list[int]], float]], pad_id: int) -> dict | None:
    """Collate for the DP loader (Opacus's wrapper turns empty Poisson batches into 0-row tensors)."""
    if not items:
        return None
    return collate([e for e, _ in items], [w for _, w in items], pad_id)


def _is_empty(batch: Any) -> bool:
    """Opacus renders an empty Poisson batch as None, [], zero-row tensors or a 0-row dict."""
    if batch is None or isinstance(batch, (list, tuple)):
        return True
    return batch["input_ids"].shape[0] == 0


def _same_layout(a: Any, b: Any) -> bool:
    fields = ("r", "lora_alpha", "use_rslora", "use_dora", "bias", "rank_pattern", "alpha_pattern",
              "layers_to_transform", "modules_to_save", "fan_in_fan_out")
    if any(getattr(a, f, None) != getattr(b, f, None) for f in fields):
        return False
    return set(_target_names(a.target_modules)) == set(_target_names(b.target_modules))


def _cut(text: str, stop: Sequence[str]) -> str:
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text


def _result(steps: int, tokens: int, losses: list[float]) -> TrainResult:
    tail = losses[-min(4, len(losses)) :]
    return TrainResult(steps, tokens, 0.0, sum(tail) / len(tail), losses)


def _progress(it: range, enabled: bool, desc: str) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


# --------------------------------------------------------------------------- adapter storage


def _safe_component(value: str) -> str:
    """A path-safe folder name; a hash suffix keeps distinct ids distinct after sanitising."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", value).strip(".")[:80]
    if safe != value or not safe:
        safe = f"{safe or 'id'}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"
    return safe


class AdapterStore:
    """Adapters on the device's disk: ``root/<task>/<user_id>/`` (names sanitised for paths)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, user_id: str, task: str) -> Path:
        return self.root / _safe_component(str(task)) / _safe_component(str(user_id))

    def exists(self, user_id: str, task: str) -> bool:
        return (self.path(user_id, task) / ADAPTER_WEIGHTS).is_file()

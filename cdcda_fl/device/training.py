"""Training one user's LoRA adapter: the hyper-parameters, the loss, and two optimizer loops.

The loops are our own (AdamW, loss on output tokens only) because one of them must run under
Opacus DP-SGD, which HF's Trainer does not support; keeping the plain loop next to it keeps
the two identical except for what DP changes (Poisson batches, clipping, noise). Nothing here
knows which adapter is being trained: the caller hands in a model whose only trainable
tensors are that adapter's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cdcda_fl.core.config import check_lora_layers, csv_list, default_of
from cdcda_fl.device.adapters import _target_names
from cdcda_fl.device.encoding import (
    IGNORE,
    Encoded,
    _bucketed_batches,
    _collate_items,
    _PairDataset,
    collate,
    to_device,
)
from cdcda_fl.privacy.dp import DPConfig, make_private, mark_empty_batch
from cdcda_fl.core.run_config import run_config

if TYPE_CHECKING:
    from cdcda_fl.device.frozen_prefix import FrozenPrefix

_EMBEDDING_NAMES = ("embed_tokens", "wte", "word_embeddings", "embed_in", "shared")


@dataclass
class LoraTrainConfig:
    """LoRA hyper-parameters and the training budget for one user's adapter: the ``train.*``
    section of the run config, typed (defaults from :data:`cdcda_fl.core.config.DEFAULTS`).

    ``epochs``, when set, overrides ``steps`` (steps = ceil(epochs * n / batch_size)).
    """

    rank: int = int(default_of("train.rank"))
    alpha: int = int(default_of("train.alpha"))
    # No LoRA dropout by default (peft's default too): on CPU a fresh dropout mask per q/k/v/o
    # input is ~35 % of a training step (RNG, the mask multiply and its backward), measured in
    # benchmarks/train_speed.py; the adapters train for a few dozen steps, where it did not help.
    dropout: float = float(default_of("train.dropout"))
    target_modules: tuple[str, ...] = tuple(csv_list(default_of("train.target-modules")))
    # 0: LoRA in every decoder layer. N > 0: only in the top N, so the layers below are frozen and
    # their output for a training example is the same at every step: it is computed once per
    # example (frozen_prefix.py) and a step runs, and back-propagates through, the top N only.
    lora_layers: int = int(default_of("train.lora-layers"))
    steps: int | None = int(default_of("train.steps"))
    epochs: float | None = None
    learning_rate: float = float(default_of("train.lr"))
    batch_size: int = int(default_of("train.batch-size"))
    max_length: int = int(default_of("train.max-length"))
    seed: int = int(default_of("seed"))

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any], step_scale: float = 1.0) -> LoraTrainConfig:
        """The run's ``train.*`` keys (and ``seed``); ``step_scale`` stretches a step budget (not
        epochs), as personalize's equal-real-exposure does."""
        rc = run_config(cfg)
        epochs = rc.train.epochs
        return cls(
            rank=rc.train.rank, alpha=rc.train.alpha,
            dropout=rc.train.dropout,
            target_modules=tuple(csv_list(rc.train.target_modules)),
            lora_layers=check_lora_layers(cfg),
            steps=None if epochs > 0 else max(1, round(rc.train.steps * step_scale)),
            epochs=epochs if epochs > 0 else None,
            learning_rate=rc.train.lr, batch_size=rc.train.batch_size,
            max_length=rc.train.max_length, seed=rc.seed)

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


def lora_layer_indices(cfg: LoraTrainConfig, n_layers: int | None) -> list[int] | None:
    """The decoder layers that get LoRA: None for all, else the top ``cfg.lora_layers`` of ``n_layers``."""
    if cfg.lora_layers < 0:
        raise ValueError(f"train.lora-layers must be >= 0 (0 = every layer), got {cfg.lora_layers}")
    if cfg.lora_layers == 0 or n_layers is None or cfg.lora_layers >= n_layers:
        return None
    return list(range(n_layers - cfg.lora_layers, n_layers))


def lora_config(cfg: LoraTrainConfig, n_layers: int | None = None) -> Any:
    """peft's LoraConfig for a fresh trainable adapter (no bias: the base stays untouched).

    ``n_layers``: the base model's decoder layers, needed when ``cfg.lora_layers`` limits LoRA to
    the top ones (peft's ``layers_to_transform``)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(_target_names(cfg.target_modules)),
        layers_to_transform=lora_layer_indices(cfg, n_layers),
        bias="none",
    )


# --------------------------------------------------------------------------- loss and weights


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
    # A batch from the frozen prefix (frozen_prefix.py) enters the decoder's top layers as states.
    inputs = {"inputs_embeds": batch["inputs_embeds"]} if "inputs_embeds" in batch else {"input_ids": ids}
    logits = model(
        **inputs, attention_mask=mask, position_ids=position_ids, logits_to_keep=kept, use_cache=False, **forward,
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


def _check_no_embedding_targets(model: nn.Module, target_modules: Any) -> None:
    """Refuse LoRA on embeddings under DP before any adapter is built (Opacus cannot clip it)."""
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


# --------------------------------------------------------------------------- the loops
@contextmanager
def training_attention(hf_model: Any, device: torch.device) -> Iterator[None]:
    """On CPU, train with eager attention instead of SDPA, and restore SDPA afterwards.

    torch's CPU flash-attention *backward* is the slowest op of a bf16 LoRA step (about a
    quarter of it on an AMX Xeon, 3x its fp32 time), while eager attention's matmuls run on the
    bf16 GEMM units; in fp32 eager is faster too (benchmarks/train_speed.py). Answering and
    loss-only passes keep SDPA, whose forward is fast. CUDA keeps its implementation.
    """
    config = getattr(hf_model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if device.type != "cpu" or current != "sdpa" or not hasattr(hf_model, "set_attn_implementation"):
        yield
        return
    hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        hf_model.set_attn_implementation(current)




def fit(
    model: nn.Module,
    encoded: list[Encoded],
    weights: list[float],
    cfg: LoraTrainConfig,
    dp: DPConfig | None,
    steps: int,
    *,
    pad_id: int,
    device: torch.device,
    compute_context: Callable[[], AbstractContextManager[Any]],
    progress: bool = False,
    prefix: FrozenPrefix | None = None,
) -> TrainResult:
    """Train the tensors of ``model`` that require grad (one fresh adapter) for ``steps`` steps.

    Afterwards the model is in eval mode and those tensors are frozen with no grad, whatever
    happened: outside training no tensor of a shared base may need grad. ``seconds`` is left
    at 0 for the caller, who also times building the adapter. ``prefix``: see :func:`train_plain`
    (DP-SGD always runs the whole model: Opacus hooks the modules it clips).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    model.train()
    try:
        if dp is not None and dp.enabled:
            return train_dp(model, opt, encoded, weights, cfg, dp, steps, progress, pad_id=pad_id, device=device)
        return train_plain(
            model, opt, encoded, weights, cfg, steps, progress,
            pad_id=pad_id, device=device, compute_context=compute_context, prefix=prefix,
        )
    finally:
        model.eval()
        for p in params:
            p.grad = None
            p.requires_grad_(False)


def train_plain(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    encoded: list[Encoded],
    w: list[float],
    cfg: LoraTrainConfig,
    steps: int,
    progress: bool,
    *,
    pad_id: int,
    device: torch.device,
    compute_context: Callable[[], AbstractContextManager[Any]],
    prefix: FrozenPrefix | None = None,
) -> TrainResult:
    """AdamW on length-bucketed, seeded batches: the same data and seed give the same adapter.

    With ``prefix`` (LoRA in the top layers only, frozen_prefix.py) each example's state below
    them is computed once, when a batch first draws it (a short training on a large profile pays
    only for the examples it sees), and a step runs the top layers only: the same loss, less work."""
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(p) + len(c) for p, c in encoded]
    stream = _bucketed_batches(lengths, cfg.batch_size, gen)
    rows = [p + c for p, c in encoded]
    losses, tokens = [], 0
    for _ in _progress(range(steps), progress, "LoRA"):
        idx = next(stream)
        batch = to_device(collate([encoded[i] for i in idx], [w[i] for i in idx], pad_id), device)
        if prefix is not None:  # an example's frozen part is computed when it is first drawn, then cached
            states = prefix.states([rows[i] for i in idx], device, pad_id, compute_context)
            batch["inputs_embeds"] = prefix.batch_inputs(states, batch["input_ids"].shape[1])
        # Autocast per step, never around the loop: its cast cache would keep feeding the
        # forward pass bf16 copies of the LoRA weights from before the optimizer step.
        with compute_context(), (prefix.top_only() if prefix is not None else nullcontext()):
            loss = (example_loss(model, batch) * batch["weights"]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int(batch["attention_mask"].sum())
    return _result(steps, tokens, losses)


def train_dp(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    encoded: list[Encoded],
    w: list[float],
    cfg: LoraTrainConfig,
    dp: DPConfig,
    steps: int,
    progress: bool,
    *,
    pad_id: int,
    device: torch.device,
) -> TrainResult:
    """DP-SGD (Opacus): Poisson-sampled batches, per-example clipping, noise; ε at δ in the result."""
    loader = torch.utils.data.DataLoader(
        _PairDataset(encoded, w),
        batch_size=min(cfg.batch_size, len(encoded)),
        shuffle=True,
        collate_fn=lambda items: _collate_items(items, pad_id),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    priv = make_private(model, opt, loader, dp, steps=steps, seed=cfg.seed)
    bar = _progress(range(steps), progress, "DP-LoRA")
    ticks = iter(bar)
    with warnings.catch_warnings():
        # The first LoRA layer's input needs no grad; Opacus' backward hook still fires: fine.
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        return _dp_loop(model, priv, steps, bar, ticks, device, dp.max_physical_batch_size)


def _dp_loop(model: nn.Module, priv: Any, steps: int, bar: Any, ticks: Iterator[Any], device: torch.device,
             physical_batch: int) -> TrainResult:
    """Exactly ``steps`` optimizer steps over as many Poisson epochs as that takes.

    Each logical batch is fed in chunks of at most ``physical_batch`` rows (Opacus's
    ``wrap_data_loader``): the optimizer skips the step after every chunk but the last, so the
    clipped sum, the noise and the accountant see one step per logical batch, while memory holds
    one chunk's activations. Only real (not skipped) steps count towards ``steps``.
    """
    from opacus.utils.batch_memory_manager import wrap_data_loader

    chunks = wrap_data_loader(data_loader=priv.data_loader, max_batch_size=physical_batch, optimizer=priv.optimizer)
    losses, tokens, done = [], 0, 0
    try:
        while done < steps:
            for batch in chunks:
                if done >= steps:
                    break
                if _is_empty(batch):  # Poisson sampling drew nobody: noise-only step
                    mark_empty_batch(model.parameters())
                else:
                    batch = to_device(batch, device)
                    loss = (example_loss(priv.module, batch) * batch["weights"]).mean()
                    loss.backward()
                    losses.append(float(loss.detach()))
                    tokens += int(batch["attention_mask"].sum())
                priv.optimizer.step()
                priv.optimizer.zero_grad(set_to_none=True)
                if priv.optimizer._is_last_step_skipped:  # a chunk, not the end of the logical batch
                    continue
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


def _is_empty(batch: Any) -> bool:
    """Opacus renders an empty Poisson batch as None, [], zero-row tensors or a 0-row dict."""
    if batch is None or isinstance(batch, (list, tuple)):
        return True
    return batch["input_ids"].shape[0] == 0


def _result(steps: int, tokens: int, losses: list[float]) -> TrainResult:
    tail = losses[-min(4, len(losses)) :]
    return TrainResult(steps, tokens, 0.0, sum(tail) / len(tail), losses)


def _progress(it: range, enabled: bool, desc: str) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)

"""Private per-user LoRA adapters on one shared base model.

One :class:`DeviceModel` wraps one loaded base and serves many users in turn (one Ray actor,
many Flower nodes): the only per-user state is a LoRA adapter, trained here, saved on the
device, and swapped in for that user's queries. Three rules keep users apart:

* training always starts from a *fresh* adapter (seeded init), never on top of the previous
  user's; the previous adapter is deleted from the model;
* outside a DeviceModel call the LoRA layers are disabled, so anyone else holding the same
  base model (e.g. the base zero-shot baseline) sees the plain base;
* ``clear_adapter`` zeroes the weights and disables the adapter: answers equal the base's.

:class:`DeviceModel` is the public face and composes four modules with one job each:
:mod:`~cdcda_fl.device.encoding` (prompts, pair encoding, batches),
:mod:`~cdcda_fl.device.training` (the config, the loss, the plain and DP-SGD loops),
:mod:`~cdcda_fl.device.adapters` (adapter lifecycle in the shared PeftModel, save/load
files) and :mod:`~cdcda_fl.device.adapter_store` (where adapters live on disk). Import a name
from the module that defines it; the one re-export here is ``AdapterStore`` (below).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

# Re-exported for device/personalize.py and docs/device.md, which import it from here (issue 30).
from cdcda_fl.device.adapter_store import AdapterStore  # noqa: F401
from cdcda_fl.device.adapters import AdapterSlots, _same_layout, read_adapter, write_adapter
from cdcda_fl.device.encoding import (
    _cut,
    _has_chat_template,
    _length_batches,
    collate,
    encode_pairs,
    format_prompt,
    to_device,
)
from cdcda_fl.device import frozen_prefix  # the module: tests swap frozen_prefix.frozen_prefix_for
from cdcda_fl.device.models import LoadedModel, cached, get_base_model
from cdcda_fl.device.train_key import base_dtype
from cdcda_fl.device.training import (
    LoraTrainConfig,
    TrainResult,
    _check_no_embedding_targets,
    _normalized_weights,
    example_loss,
    fit,
    lora_config,
    training_attention,
)
from cdcda_fl.core.run_config import run_config

if TYPE_CHECKING:
    from cdcda_fl.privacy.dp import DPConfig


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
        #: this instance's adapters in the base's shared PeftModel (device/adapters.py): what
        #: tests and benchmarks inspect (``slots.peft``, ``slots.name``, ``slots.params(...)``,
        #: ``slots.layers()``), and the only per-instance state
        self.slots = AdapterSlots(base)

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def has_adapter(self) -> bool:
        return self.slots.active

    @property
    def n_layers(self) -> int | None:
        """The base model's decoder layers (for ``train.lora-layers``), None if its config does not say."""
        n = getattr(getattr(self.base.model, "config", None), "num_hidden_layers", None)
        return int(n) if isinstance(n, int) else None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _cuda_devices(self) -> list[int]:
        return [self.base.device.index or 0] if self.base.device.type == "cuda" else []

    # ------------------------------------------------------------------ training
    def train(
        self,
        examples: Sequence[tuple[str, str]],
        cfg: LoraTrainConfig | None = None,
        dp: DPConfig | None = None,
        weights: Sequence[float] | None = None,
        *,
        progress: bool = False,
        keep_as: str | None = None,
        continue_active: bool = False,
    ) -> TrainResult:
        """Train a fresh adapter for one user on (input, output) pairs; it is left active.

        ``continue_active=True`` trains the *active* adapter further instead of a fresh one
        (two-stage training: CDCDA+DP's DP-SGD stage starts where the noise-free stage on the
        cloud's public records ended); ``cfg`` must describe the same LoRA layout, and the
        optimizer state starts fresh.

        ``weights`` scale each example's loss (e.g. to balance real against synthetic pairs);
        they are normalised to mean 1. With ``dp`` enabled the run is DP-SGD (Opacus) and the
        result carries the accountant's ε at δ. With ``keep_as`` the trained adapter is kept
        under that handle (replacing an adapter kept there) for mixed-adapter batches instead
        of becoming the active one; the active adapter stays as it was.
        """
        if keep_as is not None:
            if continue_active:
                raise ValueError("continue_active and keep_as cannot be combined")
            with self.slots.own_aside():
                res = self.train(examples, cfg, dp, weights, progress=progress)
                self.slots.keep_own(keep_as)
            return res
        cfg = cfg or LoraTrainConfig()
        if not examples:
            raise ValueError("no training examples")
        if dp is not None and dp.enabled:
            dp.validate()
            _check_no_embedding_targets(self.base.model, cfg.target_modules)
        w = _normalized_weights(weights, len(examples))
        encoded = encode_pairs(self.tokenizer, examples, cfg.max_length)
        steps = cfg.total_steps(len(examples))
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(cfg.seed)
            if continue_active:
                self._check_continuable(cfg)
            else:
                self.slots.add(lora_config(cfg, self.n_layers))
            self.slots.active = True
            with self.slots.layers(trainable=True) as model, training_attention(self.base.model, self.base.device):
                prefix = None if dp is not None and dp.enabled else self._frozen_prefix(model, cfg)
                res = fit(
                    model, encoded, w, cfg, dp, steps, progress=progress,
                    pad_id=self.pad_id, device=self.base.device, compute_context=self.base.compute_context,
                    prefix=prefix,
                )
        res.seconds = time.perf_counter() - t0
        return res

    def _frozen_prefix(self, model: nn.Module, cfg: LoraTrainConfig) -> Any:
        """The frozen layers below a top-layers-only adapter (device/frozen_prefix.py), or None.

        Their states are cached per base model, so every adapter trained on it (local-only, the
        holdout check's two, CDCDA's) computes an example's frozen part once."""
        if self.base.prefix_cache is None:
            self.base.prefix_cache = frozen_prefix.PrefixCache()
        return frozen_prefix.frozen_prefix_for(model, cfg.lora_layers, self.base.prefix_cache)

    def _check_continuable(self, cfg: LoraTrainConfig) -> None:
        """The active adapter exists and has ``cfg``'s layout (else continuing would train another shape)."""
        slots = self.slots
        if not slots.active or slots.name is None:
            raise RuntimeError("continue_active: no active adapter to train further (train or load one first)")
        if not _same_layout(slots.peft.peft_config[slots.name], lora_config(cfg, self.n_layers)):
            raise ValueError("continue_active: the active adapter's LoRA layout differs from the training config's")

    # ------------------------------------------------------------------ kept adapters (mixed batches)
    def keep(self, handle: str) -> None:
        """Keep the active adapter under ``handle`` for mixed batches; afterwards none is active.

        For the train-then-save flow: ``train(...)``, ``save_adapter(path)``, ``keep(handle)``.
        An adapter already kept under ``handle`` is released first.
        """
        if not self.slots.active:
            raise RuntimeError("no active adapter to keep (train or load one first)")
        self.slots.keep_own(handle)

    @property
    def kept(self) -> tuple[str, ...]:
        """Handles of the adapters kept for mixed-adapter batches."""
        return tuple(self.slots.kept)

    def release(self, handle: str) -> None:
        """Delete a kept adapter from the model (no-op if there is none under ``handle``)."""
        self.slots.release(handle)

    def release_all(self) -> None:
        for handle in list(self.slots.kept):
            self.release(handle)

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
        slots = self.slots
        if adapter is not None:
            name = slots.row_name(adapter)
        elif not slots.active or slots.name is None:
            raise RuntimeError("no active adapter to save (train or load one first)")
        else:
            name = slots.name
        write_adapter(slots.peft, name, Path(path), base_name_or_path=self.base.model.name_or_path,
                      dtype=dtype, extra_files=extra_files)

    def load_adapter(self, path: Path, *, keep_as: str | None = None) -> None:
        """Activate a saved adapter; the base stays loaded, only adapter tensors change.

        Fast path: when the adapter has the same shape/config as the current one, its tensors
        are copied in place (milliseconds) after checking that the file covers every tensor.
        With ``keep_as`` the adapter is kept under that handle instead (in place into the
        adapter already kept there when the layout matches); the active adapter is untouched.
        """
        path = Path(path)
        config, weights = read_adapter(path, self.base.device)
        slots = self.slots
        if keep_as is not None:
            if keep_as in slots.kept and slots.copy_in(slots.kept[keep_as], config, weights):
                return
            with slots.own_aside():
                slots.load_new(config, weights, path)
                slots.keep_own(keep_as)
            return
        if slots.name is not None and slots.copy_in(slots.name, config, weights):
            slots.active = True
            return
        slots.load_new(config, weights, path)

    def adapter_arrays(self) -> dict[str, Any]:
        """The active adapter's tensors as fp32 numpy arrays, keyed as in a saved PEFT file.

        What a FedAvg round sends (device/federated.py): the keys and values a saved adapter
        holds, nothing of the base model."""
        if not self.slots.active or self.slots.name is None:
            raise RuntimeError("no active adapter (train or load one first)")
        return {k: p.detach().to("cpu", torch.float32).numpy().copy() for k, p in self.slots.params(self.slots.name).items()}

    def clear_adapter(self) -> None:
        """Back to the plain base: zero this user's adapter weights and switch them off."""
        if self.slots.name is not None:
            self.slots.zero(self.slots.name)
        self.slots.active = False

    # ------------------------------------------------------------------ inference
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
        rows = self.slots.row_names(len(texts), None, adapters)
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
        with self.slots.layers(mixed=rows is not None) as model:
            model.eval()
            for idx in _length_batches(lengths, batch_size, budgets):
                enc = tok(
                    [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=special
                ).to(self.base.device)
                extra: dict[str, Any] = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
                extra["logits_to_keep"] = last
                if rows is not None:
                    extra.update(self.slots.route([rows[i] for i in idx]))
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
        rows = self.slots.row_names(len(encoded), adapter, adapters)
        losses: list[float] = [0.0] * len(encoded)
        lengths = [len(p) + len(c) for p, c in encoded]
        with self.slots.layers(adapter, mixed=rows is not None) as model:
            model.eval()
            for idx in _length_batches(lengths, batch_size):
                batch = to_device(collate([encoded[i] for i in idx], [1.0] * len(idx), self.pad_id), self.base.device)
                extra = self.slots.route([rows[i] for i in idx]) if rows is not None else {}
                with self.base.compute_context():
                    for i, v in zip(idx, example_loss(model, batch, **extra).tolist()):
                        losses[i] = v
        return losses


def device_model_for(cfg: Mapping[str, Any]) -> DeviceModel:
    """One DeviceModel per worker process and base model: users swap adapters, never the base.

    Keyed by the base as the device loads it (``device.model``, ``device.quantization`` and the
    dtype :func:`~cdcda_fl.device.train_key.base_dtype` resolves, fp32 under DP when ``auto``)."""
    rc = run_config(cfg)
    dtype = base_dtype(cfg)
    model, quantization = rc.device.model, rc.device.quantization or None
    return cached(("device", model, quantization, dtype),
                  lambda: DeviceModel(get_base_model(model, quantization=quantization, dtype=dtype)))

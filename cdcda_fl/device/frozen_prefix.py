"""Train LoRA in the top layers only, and run the frozen layers below once per example.

With ``train.lora-layers = N`` the adapter lives in the top N decoder layers. Everything below
them is the frozen base model, so the hidden state a training example has when it enters layer
``L - N`` is the same at every optimizer step, for every adapter trained on the same base: the
local-only adapter, the holdout check's two adapters and CDCDA's all see the same real pairs.
:class:`FrozenPrefix` computes that state once per example (no autograd, cached by token ids)
and a training step then runs, and back-propagates through, the top N layers only. The loss is
the one a full forward pass gives (tests/test_frozen_prefix.py checks it to float tolerance);
what changes is the work: a step costs ``N / L`` of a full step, plus one frozen forward pass
per distinct example.

It needs a decoder whose layers run as a plain sequence on ``inputs_embeds`` (Llama, Mistral,
Qwen2 with one attention type for every layer); for any other model :func:`frozen_prefix_for`
returns None and training runs the full model, with LoRA still only in the top N layers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from cdcda_fl.device.encoding import collate

#: Decoders whose forward is embed -> layers in order -> norm, with nothing done to
#: ``inputs_embeds`` on the way in (checked against transformers 5.x).
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})

#: Cached hidden states kept per base model, in bytes (oldest dropped first). One example of
#: 256 tokens is 0.3 MB for SmolLM2 in bf16, so a user's 40 real + 16 synthetic records fit about
#: four times over; a node's earlier users are dropped as later ones come.
DEFAULT_CACHE_BYTES = 64 * 2**20


def _decoder(model: nn.Module) -> Any | None:
    """The decoder stack inside a (peft-wrapped) causal LM: the first module with a ``layers``
    ModuleList, an ``embed_tokens`` and a ``config``; None if there is none."""
    for module in model.modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList) and hasattr(module, "embed_tokens") \
                and hasattr(module, "config"):
            return module
    return None


def frozen_prefix_for(model: nn.Module, lora_layers: int, cache: PrefixCache | None = None) -> FrozenPrefix | None:
    """A :class:`FrozenPrefix` for ``model`` when ``lora_layers`` leaves frozen layers below and the
    decoder is one it can split; else None (train the plain way)."""
    if lora_layers <= 0:
        return None
    decoder = _decoder(model)
    if decoder is None:
        return None
    config = decoder.config
    n_layers = len(decoder.layers)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES or lora_layers >= n_layers:
        return None
    if len(set(getattr(config, "layer_types", None) or ["one"])) != 1:
        return None  # per-layer attention types are looked up by position in the loop
    return FrozenPrefix(decoder, n_layers - lora_layers, cache if cache is not None else PrefixCache())


class PrefixCache:
    """Hidden states at the split, keyed by (split, token ids); bounded by bytes, oldest out first."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, tuple[int, ...]]) -> torch.Tensor | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return hit

    def put(self, key: tuple[int, tuple[int, ...]], value: torch.Tensor) -> None:
        self.misses += 1
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _k, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


class FrozenPrefix:
    """The split of one decoder at layer ``split``: layers below it frozen and cached."""

    def __init__(self, decoder: Any, split: int, cache: PrefixCache) -> None:
        self.decoder = decoder
        self.split = split
        self.cache = cache

    @contextmanager
    def _layers(self, layers: Sequence[nn.Module]) -> Iterator[None]:
        """Run the decoder with ``layers`` in place of its own (restored afterwards, whatever happens)."""
        own = self.decoder.layers
        self.decoder.layers = nn.ModuleList(layers)
        try:
            yield
        finally:
            self.decoder.layers = own

    def top_only(self) -> AbstractContextManager[None]:
        """Inside: the decoder runs the layers from the split up (feed it ``inputs_embeds``)."""
        return self._layers(list(self.decoder.layers)[self.split :])

    def states(self, rows: Sequence[Sequence[int]], device: torch.device, pad_id: int,
               compute_context: Callable[[], AbstractContextManager[Any]], batch_size: int = 8) -> list[torch.Tensor]:
        """Each row's hidden state entering layer ``split`` (shape (len, hidden)), from the cache or
        computed in left-padded batches of similar length without autograd."""
        keys = [(self.split, tuple(int(t) for t in row)) for row in rows]
        out: list[torch.Tensor | None] = [self.cache.get(k) for k in keys]
        todo = sorted((i for i, o in enumerate(out) if o is None), key=lambda i: len(rows[i]))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for i, state in zip(chunk, self._compute([rows[i] for i in chunk], device, pad_id, compute_context)):
                self.cache.put(keys[i], state)
                out[i] = state
        return out  # type: ignore[return-value]

    def _compute(self, rows: Sequence[Sequence[int]], device: torch.device, pad_id: int,
                 compute_context: Callable[[], AbstractContextManager[Any]]) -> list[torch.Tensor]:
        # The training batches' own left padding (encoding.collate), so the states line up with them.
        batch = collate([(list(row), []) for row in rows], [1.0] * len(rows), pad_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        width = ids.shape[1]
        captured: list[torch.Tensor] = []
        bottom = list(self.decoder.layers)[: self.split]

        def grab(_module: nn.Module, _args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = bottom[-1].register_forward_hook(grab)
        try:
            with torch.no_grad(), compute_context(), self._layers(bottom):
                self.decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                             use_cache=False)
        finally:
            handle.remove()
        hidden = captured[-1]
        return [hidden[j, width - len(row) :].detach().clone() for j, row in enumerate(rows)]

    def batch_inputs(self, states: Sequence[torch.Tensor], width: int) -> torch.Tensor:
        """Left-pad the rows' states to ``width`` positions (zeros where the attention mask is 0)."""
        first = states[0]
        out = first.new_zeros((len(states), width, first.shape[-1]))
        for j, s in enumerate(states):
            out[j, width - s.shape[0] :] = s
        return out

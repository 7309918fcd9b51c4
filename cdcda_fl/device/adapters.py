"""One DeviceModel's LoRA adapters inside the PeftModel shared by everyone on the same base.

Many users take turns on one loaded base (one Ray actor, many Flower nodes), so several
:class:`~cdcda_fl.device.lora.DeviceModel` instances add, switch and delete adapters in one
peft ``PeftModel``. :class:`AdapterSlots` is the bookkeeping that keeps them apart: each
instance owns at most one adapter (the *active* one, or one in the making) plus any number
kept under caller handles for mixed-adapter batches, and it only ever touches adapters it
created. It also owns the rules that isolation relies on: the LoRA layers are off outside a
call, no tensor needs grad outside training, and a new adapter never stacks on an old one.

Adapter creation, switching, deletion and mixed batches go through peft's public API
(``get_peft_model`` / ``PeftModel.add_adapter`` with ``autocast_adapter_dtype``,
``set_adapter``, ``delete_adapter``, the tuner's ``enable_adapter_layers`` /
``disable_adapter_layers``, ``adapter_names=``; ``get_peft_model_state_dict`` to save). Two
pieces stay hand-written, each for a measured reason given in its docstring:
:func:`adapter_params` (the tensor lookup behind every adapter switch) and the in-place copy
of saved tensors (:meth:`AdapterSlots.copy_in`).
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdcda_fl.core.atomic import atomic_dir
from cdcda_fl.device.adapter_store import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from cdcda_fl.device.models import LoadedModel

BASE = "__base__"  # peft's row name for "no adapter" in a mixed-adapter batch


def _target_names(target_modules: Any) -> list[str]:
    return [target_modules] if isinstance(target_modules, str) else list(target_modules)


def _same_layout(a: Any, b: Any) -> bool:
    """Two LoRA configs whose adapters have the same tensors (so one's file fits the other)."""
    fields = ("r", "lora_alpha", "use_rslora", "use_dora", "bias", "rank_pattern", "alpha_pattern",
              "layers_to_transform", "modules_to_save", "fan_in_fan_out")
    if any(getattr(a, f, None) != getattr(b, f, None) for f in fields):
        return False
    return set(_target_names(a.target_modules)) == set(_target_names(b.target_modules))


def adapter_params(peft: Any, name: str) -> dict[str, nn.Parameter]:
    """Adapter tensors (the live Parameters) keyed as in a saved PEFT file (adapter name removed).

    Kept hand-written rather than ``get_peft_model_state_dict(peft, state_dict=dict(
    peft.named_parameters()), adapter_name=name, save_embedding_layers=False)``, which returns
    the very same Parameter objects under the very same keys: this lookup runs on every adapter
    switch (``load_adapter``'s in-place path), and peft's filter took 37 ms per call against
    7 ms here (median of 30 on SmolLM2-135M, 240 LoRA tensors, 2 busy cores). The fp16
    rounding in :func:`write_adapter` and ``clear_adapter``'s zeroing use it too, so one
    definition decides which tensors an adapter has.
    """
    tag = f".{name}"
    return {k.replace(tag, ""): p for k, p in peft.named_parameters() if tag + "." in k or k.endswith(tag)}


def read_adapter(path: Path, device: torch.device) -> tuple[Any, dict[str, torch.Tensor]]:
    """A saved adapter's LoraConfig and tensors (on ``device``), or FileNotFoundError if it is none."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not a saved adapter ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS})")
    return LoraConfig.from_pretrained(str(path)), load_file(str(path / ADAPTER_WEIGHTS), device=str(device))


def write_adapter(
    peft: Any,
    name: str,
    path: Path,
    *,
    base_name_or_path: str,
    dtype: torch.dtype | None,
    extra_files: Mapping[str, str] | None,
) -> None:
    """Write adapter ``name`` in PEFT format (config + safetensors) into ``path``, atomically.

    The live adapter is first rounded to ``dtype``, so what answers now is exactly what a later
    load restores. Not ``PeftModel.save_pretrained``: it writes an adapter not named "default"
    into ``path/<name>/``, stores the live dtype, and cannot add ``extra_files`` to the folder
    before it appears; the pieces it uses (the config's ``save_pretrained`` and
    ``get_peft_model_state_dict``) are used here directly.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if dtype is not None:
        with torch.no_grad():
            for p in adapter_params(peft, name).values():
                p.copy_(p.to(dtype).to(p.dtype))
    # 0700: private, the user's adapter never leaves the device
    with atomic_dir(Path(path), mode=0o700) as tmp:
        config = peft.peft_config[name]
        config.base_model_name_or_path = base_name_or_path
        config.save_pretrained(str(tmp))
        state = get_peft_model_state_dict(peft, adapter_name=name)
        state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text, encoding="utf-8")


class AdapterSlots:
    """This instance's adapters in the shared PeftModel: one own adapter and the kept ones.

    ``name`` is the own adapter's peft name (None: none built), ``active`` whether it answers
    (False after ``clear_adapter`` or while a fresh one is being built), ``kept`` maps caller
    handles to peft names. Peft names carry a random per-instance prefix, so two instances on
    one base never collide.
    """

    def __init__(self, base: LoadedModel):
        self.base = base
        self.name: str | None = None  # this instance's adapter inside the PeftModel
        self.active = False
        self._prefix = f"u{uuid.uuid4().hex[:8]}"
        self._counter = 0
        # Adapters kept side by side for mixed-adapter batches: handle -> name inside the PeftModel.
        self.kept: dict[str, str] = {}

    @property
    def peft(self) -> Any:
        """The PeftModel wrapping the base, shared by every DeviceModel on it (None before the first)."""
        return self.base.peft

    def params(self, name: str) -> dict[str, nn.Parameter]:
        return adapter_params(self.peft, name)

    # ------------------------------------------------------------------ lifecycle
    def _new_name(self) -> str:
        self._counter += 1
        return f"{self._prefix}_{self._counter}"

    def add(self, lora_cfg: Any) -> str:
        """Create a fresh own adapter, then delete the previous own one (never stack).

        LoRA parameters are always fp32, also on a bf16 or quantized base: they and their
        AdamW state are the only trained values, and bf16 updates of ~1e-4 relative size round
        away. peft's ``autocast_adapter_dtype=True`` casts them, for the first adapter
        (``get_peft_model``) and for ones added later (``add_adapter``) alike.
        """
        from peft import get_peft_model

        name = self._new_name()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a renamed transformers API
            if self.peft is None:
                self.base.peft = get_peft_model(
                    self.base.model, lora_cfg, adapter_name=name, autocast_adapter_dtype=True
                )
            else:
                self.peft.add_adapter(name, lora_cfg, autocast_adapter_dtype=True)
        self.peft.set_adapter(name)  # so deleting the old one warns about nothing
        self.drop_own()
        self.name, self.active = name, False
        return name

    def drop_own(self) -> None:
        """Delete this instance's own adapter (kept ones stay)."""
        if self.name is not None:
            self.delete(self.name)
        self.name, self.active = None, False

    def delete(self, name: str) -> None:
        """Delete an adapter from the shared PeftModel.

        Which adapter peft then marks active is moot (every call here sets the layers up
        itself), but peft activates a remaining one *trainable* when the active one goes, so
        all remaining adapters are frozen again: outside ``train`` no tensor needs grad.
        """
        peft = self.peft
        if peft is not None and name in peft.peft_config:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                peft.delete_adapter(name)
            remaining = list(peft.peft_config)
            if remaining:
                peft.set_adapter(remaining[0], inference_mode=True)

    @contextlib.contextmanager
    def own_aside(self) -> Iterator[None]:
        """Build an adapter as this instance's own without disturbing the active one.

        ``train`` / ``load_adapter`` with ``keep_as`` run inside: they create a new own adapter
        and move it into the kept set; the previously active adapter is restored untouched, and
        a half-built one (an exception) is deleted.
        """
        saved = (self.name, self.active)
        self.name, self.active = None, False
        try:
            yield
        finally:
            if self.name is not None:
                self.drop_own()
            self.name, self.active = saved

    # ------------------------------------------------------------------ kept adapters
    def keep_own(self, handle: str) -> None:
        """Move this instance's adapter into the kept set under ``handle`` (replacing an older one)."""
        if self.name is None:
            raise RuntimeError("no adapter to keep")
        self.release(handle)
        self.kept[handle] = self.name
        self.name, self.active = None, False

    def release(self, handle: str) -> None:
        """Delete a kept adapter from the model (no-op if there is none under ``handle``)."""
        name = self.kept.pop(handle, None)
        if name is not None:
            self.delete(name)

    def row_name(self, handle: str | None) -> str:
        """peft's name for a row's adapter: a kept handle's adapter, or "__base__"."""
        if handle is None or handle == BASE:
            return BASE
        try:
            return self.kept[handle]
        except KeyError:
            raise KeyError(f"no kept adapter {handle!r} (kept: {sorted(self.kept)})") from None

    def row_names(self, n: int, adapter: str | None, adapters: Sequence[str | None] | None) -> list[str] | None:
        """peft adapter name per row, or None for the single-adapter path (``adapter`` / active)."""
        if adapters is None:
            return None
        if adapter is not None:
            raise ValueError("pass either adapter= or adapters=, not both")
        if len(adapters) != n:
            raise ValueError(f"got {len(adapters)} adapters for {n} rows")
        return [self.row_name(a) for a in adapters]

    # ------------------------------------------------------------------ which adapter answers
    @contextlib.contextmanager
    def layers(self, handle: str | None = None, *, mixed: bool = False, trainable: bool = False) -> Iterator[nn.Module]:
        """Run with exactly one adapter on (this instance's, or the kept ``handle``) or none.

        ``mixed=True`` switches every LoRA layer on for a mixed-adapter batch, where each row
        names its adapter (``adapter_names``; "__base__" rows see the plain base). LoRA layers
        are always off again afterwards. Only ``trainable=True`` (training) lets peft mark the
        active adapter's tensors requires_grad; answering leaves every tensor frozen.

        On/off uses the tuner's ``enable_adapter_layers`` / ``disable_adapter_layers``, not
        ``PeftModel.disable_adapter()``: that context manager assumes the layers are on by
        default and turns them back on when it exits, and here they must stay off between calls.
        """
        peft = self.peft
        if peft is None or not peft.peft_config:
            # None built yet, or every one deleted: PeftModel's forward would look up its deleted
            # active adapter (KeyError), while the base with adapter-less LoRA layers is the base.
            yield self.base.model
            return
        tuner = peft.base_model
        if mixed:
            tuner.enable_adapter_layers()
        elif handle is not None:
            peft.set_adapter(self.kept[handle], inference_mode=True)
            tuner.enable_adapter_layers()
        elif self.active:
            peft.set_adapter(self.name, inference_mode=not trainable)
            tuner.enable_adapter_layers()
        else:
            tuner.disable_adapter_layers()
        try:
            yield peft
        finally:
            tuner.disable_adapter_layers()

    def route(self, names: Sequence[str]) -> dict[str, Any]:
        """Set the LoRA layers up for one batch of rows with peft adapter ``names``.

        One adapter (or only base rows) in the batch: plain single-adapter forward, no per-row
        indexing. Several: peft's mixed forward, returned as the ``adapter_names`` kwarg.
        """
        peft = self.peft
        if peft is None:  # no adapter was ever built on this base: every row is a base row
            return {}
        tuner = peft.base_model
        unique = set(names)
        if unique == {BASE}:
            tuner.disable_adapter_layers()
            return {}
        tuner.enable_adapter_layers()
        if len(unique) == 1:
            peft.set_adapter(names[0], inference_mode=True)
            return {}
        return {"adapter_names": list(names)}

    # ------------------------------------------------------------------ tensors in and out
    def copy_in(self, name: str, config: Any, weights: Mapping[str, torch.Tensor]) -> bool:
        """Copy saved tensors into the existing adapter ``name`` if layout and keys match.

        The adapter-switch fast path (~5 ms for SmolLM2-135M in benchmarks/bench_device.py).
        Kept hand-written rather than ``set_peft_model_state_dict``: that gives bitwise the same
        tensors but runs ``state_dict()`` and ``load_state_dict`` over the whole base model on
        every call, 63 ms against 7 ms here (median of 30, SmolLM2-135M, 2 busy cores).
        """
        if not _same_layout(self.peft.peft_config[name], config):
            return False
        params = self.params(name)
        if set(params) != set(weights):
            return False
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])  # casts fp16 files back to the live dtype
        return True

    def load_new(self, config: Any, weights: Mapping[str, torch.Tensor], path: Path) -> None:
        """Build a fresh own adapter from a saved config and fill it; it becomes active.

        Not ``PeftModel.load_adapter``: there is no PeftModel before the first adapter on a
        base, the file is already read (for the in-place path), and filling goes through the
        same exact-keys check and copy as :meth:`copy_in`.
        """
        config.inference_mode = True
        name = self.add(config)
        params = self.params(name)
        if set(params) != set(weights):
            self.drop_own()
            raise ValueError(f"adapter at {path} does not fit this base model ({self.base.name})")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])
                p.requires_grad_(False)
        self.active = True

    def zero(self, name: str) -> None:
        """Zero an adapter's tensors (``clear_adapter``: nothing of the user's adapter remains)."""
        with torch.no_grad():
            for p in self.params(name).values():
                p.zero_()

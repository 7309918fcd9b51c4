"""The run config as one typed object: ``run_config(cfg).train.steps`` instead of ``cfg["train.steps"]``.

Flower hands every app a flat mapping of scalars (``[tool.flwr.app.config]``, a message's
config), and `cdcda run` resolves the same flat keys (core/config.py). :class:`RunConfig` is the
typed face of that mapping: one attribute per key, grouped in the sections of the key table
(``train``, ``dp``, ``cloud``, ...), each typed like its default. The key table
(core/config_keys.py) stays the one place of defaults and help; this module names and types the
keys, and a test checks that the two list the same keys with the same types.

Why a *view* over the mapping rather than a dataclass copy of it: a device reads a
:class:`~cdcda_fl.core.config.ReceivedConfig`, which carries only its message kind's keys and
raises on any other (a silent default on a device is a wrong result nobody sees). A view keeps
that rule: a section is built on first use, and a key the message did not carry still raises
when it is read, not when the object is made. On the server, :meth:`RunConfig.checked` reads
every key once, so a bad value is one clear error before anything starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from cdcda_fl.core.config import coerce_value, config_get, csv_list, methods_of
from cdcda_fl.core.config_keys import DEFAULTS, Scalar

T = TypeVar("T", str, int, float, bool)


class Key(Generic[T]):
    """One run-config key as a typed attribute; its dotted name is the section's prefix + the
    attribute name with ``_`` written as ``-`` (``train.batch_size`` -> ``"train.batch-size"``)."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self.key = ""

    def __set_name__(self, owner: type[_Section], attr: str) -> None:
        self.key = owner.PREFIX + attr.replace("_", "-")

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Key[T]: ...

    @overload
    def __get__(self, obj: _Section, objtype: type | None = None) -> T: ...

    def __get__(self, obj: _Section | None, objtype: type | None = None) -> T | Key[T]:
        if obj is None:
            return self
        # a raw Flower mapping may hold "12" for an int key: the attribute is always the declared type
        return coerce_value(self.key, config_get(obj.flat, self.key))  # type: ignore[return-value]


class _Section:
    """Keys under one prefix of the flat config, read on use (see the module docstring)."""

    PREFIX = ""

    def __init__(self, flat: Mapping[str, Any]) -> None:
        self.flat = flat

    @classmethod
    def declared(cls) -> dict[str, Key[Any]]:
        """Attribute name -> :class:`Key` of this section (not the nested sections)."""
        return {name: value for klass in reversed(cls.__mro__) for name, value in vars(klass).items()
                if isinstance(value, Key)}

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.declared())
        return f"{type(self).__name__}({shown})"


class DataKeys(_Section):
    PREFIX = "data."
    strict = Key(bool)


class PersonaKeys(_Section):
    PREFIX = "personas."
    queries = Key(int)
    multitask = Key(bool)


class DeviceKeys(_Section):
    PREFIX = "device."
    model = Key(str)
    quantization = Key(str)
    dtype = Key(str)
    runtime = Key(str)
    storage_dir = Key(str)


class TrainKeys(_Section):
    PREFIX = "train."
    steps = Key(int)
    epochs = Key(float)
    lr = Key(float)
    batch_size = Key(int)
    rank = Key(int)
    alpha = Key(int)
    dropout = Key(float)
    max_length = Key(int)
    target_modules = Key(str)
    lora_layers = Key(int)
    synthetic_weight = Key(float)
    equal_real_exposure = Key(bool)
    synthetic_record_cap = Key(float)
    synthetic_schedule = Key(str)
    synthetic_select = Key(str)
    synthetic_select_keep = Key(float)
    synthetic_gate = Key(str)
    synthetic_gate_folds = Key(int)
    synthetic_gate_criterion = Key(str)
    synthetic_gate_fraction = Key(float)
    synthetic_gate_margin = Key(float)
    synthetic_gate_min_real = Key(int)
    synthetic_gate_min_held_out = Key(int)
    synthetic_gate_budget = Key(str)
    retrain = Key(bool)
    adapter_scope = Key(str)
    task_mix_alpha = Key(float)


class DPKeys(_Section):
    PREFIX = "dp."
    enabled = Key(bool)
    epsilon = Key(float)
    noise_multiplier = Key(float)
    max_grad_norm = Key(float)
    delta = Key(float)
    accountant = Key(str)
    auto = Key(bool)
    candidates = Key(int)
    fallback = Key(bool)
    fallback_margin = Key(float)
    public_warmstart = Key(bool)
    selection = Key(str)
    public_steps = Key(int)
    public_lr = Key(float)
    validation_fraction = Key(float)


class RagKeys(_Section):
    PREFIX = "rag."
    k = Key(int)
    cloud_k = Key(int)


class EvalKeys(_Section):
    PREFIX = "eval."
    batch_size = Key(int)
    max_queries = Key(int)
    report = Key(str)


class MiaKeys(_Section):
    PREFIX = "mia."
    enabled = Key(bool)


class FedAvgKeys(_Section):
    PREFIX = "fedavg."
    rounds = Key(int)
    local_steps = Key(int)
    fraction = Key(float)
    min_nodes = Key(int)
    timeout = Key(float)


class ConsentKeys(_Section):
    PREFIX = "consent."
    share_fraction = Key(float)
    fields = Key(str)
    deny_terms = Key(str)
    deny_labels = Key(str)
    record_ids = Key(str)
    redact_terms = Key(str)
    scrub = Key(bool)
    overrides = Key(str)


class CloudKeys(_Section):
    PREFIX = "cloud."
    backend = Key(str)
    model = Key(str)
    base_url = Key(str)
    api_key_env = Key(str)
    allow_insecure_http = Key(bool)
    batch_size = Key(int)
    timeout = Key(float)
    max_retries = Key(int)
    concurrency = Key(int)
    prompt_style = Key(str)
    device = Key(str)
    embed_filter = Key(bool)
    embed_min_sim = Key(float)
    embed_max_sim = Key(float)
    cache_dir = Key(str)

    @property
    def kind(self) -> str:
        """``backend`` as the registries spell it (``" Oracle "`` -> ``"oracle"``)."""
        return self.backend.strip().lower()


class SyntheticKeys(_Section):
    PREFIX = "synthetic."
    per_user = Key(int)
    max_rounds = Key(int)
    temperature = Key(float)
    max_new_tokens = Key(int)
    few_shot = Key(int)
    max_prompts_per_round = Key(int)
    near_dup = Key(float)
    label_quota = Key(bool)
    person_context = Key(int)


class SimKeys(_Section):
    PREFIX = "sim."
    num_supernodes = Key(int)
    users_per_node = Key(int)
    client_cpus = Key(float)
    client_gpus = Key(float)
    ray_address = Key(str)
    cpus = Key(int)
    max_in_flight = Key(int)


class DebugKeys(_Section):
    PREFIX = "debug."
    crash_users = Key(str)


S = TypeVar("S", bound=_Section)


class Section(Generic[S]):
    """A section of :class:`RunConfig` as a typed attribute, built on first use and kept."""

    def __init__(self, kind: type[S]) -> None:
        self.kind = kind
        self.name = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.name = attr

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Section[S]: ...

    @overload
    def __get__(self, obj: RunConfig, objtype: type | None = None) -> S: ...

    def __get__(self, obj: RunConfig | None, objtype: type | None = None) -> S | Section[S]:
        if obj is None:
            return self
        part = obj.__dict__.get(self.name)
        if part is None:
            part = obj.__dict__[self.name] = self.kind(obj.flat)
        return part


class RunConfig(_Section, Mapping[str, Scalar]):
    """Every run-config key, typed: top-level keys as attributes, the rest in sections.

    It is also the flat mapping it wraps (``rc["train.steps"]``, ``dict(rc)``), so code that
    passes a config on to Flower, a message or a digest keeps working with either.
    """

    tasks = Key(str)
    users = Key(int)
    split = Key(str)
    data_dir = Key(str)
    out_dir = Key(str)
    seed = Key(int)
    methods = Key(str)
    rounds = Key(int)
    fraction = Key(float)
    timeout = Key(float)
    chunk_users = Key(int)
    min_nodes = Key(int)
    node_wait = Key(float)

    # ------------------------------------------------------------------ sections (built on first use)
    data = Section(DataKeys)
    personas = Section(PersonaKeys)
    device = Section(DeviceKeys)
    train = Section(TrainKeys)
    dp = Section(DPKeys)
    rag = Section(RagKeys)
    eval = Section(EvalKeys)
    mia = Section(MiaKeys)
    fedavg = Section(FedAvgKeys)
    consent = Section(ConsentKeys)
    cloud = Section(CloudKeys)
    synthetic = Section(SyntheticKeys)
    sim = Section(SimKeys)
    debug = Section(DebugKeys)

    # ------------------------------------------------------------------ derived values
    @property
    def method_list(self) -> list[str]:
        """``methods`` as a checked list (unknown names are a ConfigError)."""
        return methods_of(self.flat)

    @property
    def task_names(self) -> list[str]:
        """``tasks`` as written, split on commas (data/lamp.parse_task_list checks them)."""
        return csv_list(self.tasks)

    def checked(self) -> RunConfig:
        """Read every key once (a bad or missing value raises here, before anything starts)."""
        for name in self.declared():
            getattr(self, name)
        for section in SECTIONS:
            part = getattr(self, section)
            for name in part.declared():
                getattr(part, name)
        return self

    # ------------------------------------------------------------------ the flat mapping
    def __getitem__(self, key: str) -> Scalar:
        return self.flat[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat)

    def __len__(self) -> int:
        return len(self.flat)

    def __repr__(self) -> str:
        return f"RunConfig({dict(self.flat)!r})"


def run_config(cfg: Mapping[str, Any]) -> RunConfig:
    """``cfg`` as a :class:`RunConfig` (itself when it already is one; no copy either way, so a
    server-side normalisation written into the mapping is what every later read sees)."""
    return cfg if isinstance(cfg, RunConfig) else RunConfig(cfg)


# attribute of RunConfig -> its section class (the tests check them against the key table)
SECTIONS: dict[str, type[_Section]] = {name: value.kind for name, value in vars(RunConfig).items()
                                       if isinstance(value, Section)}


def every_key() -> dict[str, type]:
    """Dotted key -> declared type, over the whole :class:`RunConfig` (checked against DEFAULTS by the tests)."""
    out: dict[str, type] = {k.key: k.kind for k in RunConfig.declared().values()}
    for klass in SECTIONS.values():
        out.update({k.key: k.kind for k in klass.declared().values()})
    return out


__all__ = ["DEFAULTS", "SECTIONS", "Key", "RunConfig", "Section", "run_config", "every_key"]

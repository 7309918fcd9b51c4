"""Run configuration: one flat key space shared by `flwr run`, `cdcda run` and the Flower apps.

Flower's run config is a flat mapping of scalars (``[tool.flwr.app.config]``), so every setting of
cdcda-fl is a flat dotted key with a scalar value. ``cdcda run CONFIG.toml --set k=v`` reads the
same keys from a TOML file (a ``[config]`` table or top-level keys) and applies overrides. Unknown
keys are an error that lists the known ones: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The method list lives in one table (method_table.py); config checks `methods` against it and
# re-exports its lists, so results and sweeps keep importing them from here.
from cdcda_fl.method_table import CLOUD_DATA_METHODS, FEDERATED_METHODS, METHODS

Scalar = str | int | float | bool

# key -> (default, help). The order is the order of `cdcda run --help-config`.
DEFAULTS: dict[str, tuple[Scalar, str]] = {
    # ------------------------------------------------------------------ what to run
    "tasks": ("LaMP_2,LaMP_5", "comma-separated LaMP tasks (LaMP_1,LaMP_2,LaMP_3,LaMP_4,LaMP_5,LaMP_7)"),
    "users": (2, "max users per task (the users with most history are kept, as OPPU does)"),
    "split": ("dev", "which split's questions are each user's held-out evaluation"),
    "data-dir": ("", "LaMP data directory (LaMP_k/ folders); empty = seeded personas written into the run dir"),
    "data.strict": (False, "refuse the run if any record is invalid (default: skip those users, report them)"),
    "out-dir": ("runs/default", "run directory: results, predictions, audit log; rerun resumes here"),
    "seed": (0, "seed for personas, consent sampling, training and generation"),
    "methods": ("base,rag,local,cdcda,cloud", f"subset of {','.join(METHODS)}"),
    "personas.queries": (8, "held-out queries per synthetic user"),
    # ------------------------------------------------------------------ device model and training
    "device.model": ("smollm2-135m", "on-device model: preset (smollm2-135m, gemma3-270m, tiny-random), HF id or path"),
    "device.quantization": ("", "'' (full precision), '8bit' or '4bit' (bitsandbytes)"),
    "device.dtype": ("auto", "base weights: auto (bf16 where measured faster: CUDA, and SmolLM2 on CPUs with "
                             "native bf16), bf16 (LoRA parameters and optimizer state stay fp32) or fp32"),
    "device.runtime": ("torch", "answering runtime: 'torch' (transformers + PEFT) or 'llamacpp' (bundled GGUF base "
                                "+ the adapter exported to GGUF; needs the edge extra, see docs/edge.md)"),
    "device.storage-dir": ("", "simulated devices' own disk (private adapters); '' = OUT/devices. Adapters are "
                               "keyed by config and data, so runs sharing it reuse identical adapters"),
    "train.steps": (24, "optimizer steps per adapter (used when train.epochs is 0)"),
    "train.epochs": (0.0, "epochs per adapter instead of steps (0 = use train.steps)"),
    "train.lr": (1e-3, "learning rate (AdamW)"),
    "train.batch-size": (4, "training batch size"),
    "train.rank": (8, "LoRA rank"),
    "train.alpha": (16, "LoRA alpha"),
    "train.dropout": (0.0, "LoRA dropout (0 = none: on CPU a dropout mask costs ~35 % of a training step)"),
    "train.max-length": (256, "max tokens per training example"),
    "train.target-modules": ("q_proj,k_proj,v_proj,o_proj", "comma-separated modules that get LoRA"),
    "train.lora-layers": (0, "LoRA only in the top N decoder layers (0 = every layer); the frozen layers below "
                            "run once per training example instead of once per step (docs/device.md)"),
    "train.synthetic-weight": (1.0, "mixing ratio: total loss weight of synthetic data relative to real data, "
                                    "kept per label for labelled tasks (see device/methods/mixture.py)"),
    "train.equal-real-exposure": (True, "scale CDCDA's step budget by (real + synthetic weight) / real weight, so "
                                        "real records get as many updates as in local training"),
    "train.synthetic-record-cap": (1.0, "no synthetic record weighs more than this many real records "
                                        "(0 = no cap; see device/synthetic_gate.py)"),
    "train.synthetic-schedule": ("mix", "how CDCDA trains on real + synthetic: mix = one weighted training on both; "
                                        "synthetic-first = the cloud's records, then local-only's training on the "
                                        "real ones (device/schedule.py)"),
    "train.synthetic-select": ("all", "which of the cloud's records the device trains on: all, or style = the "
                                      "train.synthetic-select-keep share the user's adapter finds most likely "
                                      "relative to the base model (device/select.py)"),
    "train.synthetic-select-keep": (0.5, "share of the cloud's records train.synthetic-select = style keeps"),
    "train.synthetic-gate": ("crossfit", "does the device use the cloud's records? crossfit = only if they lower "
                                         "the loss on the user's real items, each held out once over "
                                         "train.synthetic-gate-folds folds (any profile size; CDCDA answers with "
                                         "the base model where personalization scores below it); holdout = a "
                                         "held-out third (needs train.synthetic-gate-min-held-out items); none = always"),
    "train.synthetic-gate-folds": (2, "crossfit check: folds over the user's real items (at most one per item)"),
    "train.synthetic-gate-criterion": ("loss+metric", "holdout check: loss+metric = lower held-out loss AND a task "
                                                      "metric no worse on the held-out items; loss+better-metric "
                                                      "= AND a strictly better metric; loss = loss only"),
    "train.synthetic-gate-fraction": (0.34, "share of the user's real items the holdout check holds out"),
    "train.synthetic-gate-margin": (0.0, "nats per output token synthetic data must gain on held-out items"),
    "train.synthetic-gate-min-real": (0, "users with fewer real items use the cloud's records unchecked (0: nobody)"),
    "train.synthetic-gate-min-held-out": (3, "held-out items a decision to use the cloud's records needs; smaller "
                                              "profiles (under this + 2 items) fall back to local-only"),
    "train.synthetic-gate-budget": ("epochs", "holdout check's training budget: epochs = its adapters see each "
                                              "training item as often as the final ones (steps scaled by the "
                                              "share of items they train on); steps = the final adapters' steps"),
    "train.retrain": (False, "retrain adapters even if a finished one is stored"),
    "dp.enabled": (False, "DP-SGD (Opacus) on the LoRA parameters"),
    "dp.epsilon": (0.0, "target epsilon (0 = use dp.noise-multiplier)"),
    "dp.noise-multiplier": (1.0, "noise multiplier when dp.epsilon is 0"),
    "dp.max-grad-norm": (1.0, "per-sample clipping norm"),
    "dp.delta": (0.0, "delta (0 = 1/n^1.1 for n training examples)"),
    "dp.accountant": ("rdp", "Opacus accountant: rdp or prv"),
    "dp.auto": (True, "with dp.enabled: train the few-record DP plans (rank 1-4 LoRA on v/q+v, full batch, few "
                      "steps; see docs/dp.md) instead of train.* and dp.max-grad-norm, which suit non-private training"),
    "dp.candidates": (1, "DP adapters trained per user and method (dp.auto plans, 1-3); one noise multiplier makes "
                         "their composition meet dp.epsilon, and the best on validation is kept"),
    "dp.fallback": (True, "answer with the base model when no DP adapter beats it on the privacy-free validation "
                          "(the synthetic records: they derive from consented records only)"),
    "dp.fallback-margin": (0.01, "relative validation-loss margin a DP adapter must beat the base by to be kept"),
    "dp.public-warmstart": (True, "CDCDA+DP: train the adapter first WITHOUT noise on the cloud's records (public "
                                  "here: written from consented records only), then DP-SGD on the real records; the "
                                  "noise-free adapter alone is a candidate too (docs/dp.md)"),
    "dp.selection": ("private", "CDCDA+DP's choice between its adapter and the base: synthetic = lowest loss on "
                                  "held-out cloud records (DP-SGD candidates, warm-started); private = train on the "
                                  "cloud's records only and spend all of dp.epsilon on one exponential-mechanism "
                                  "choice scored on the user's non-shared records (needs dp.epsilon > 0; docs/dp.md)"),
    "dp.public-steps": (16, "CDCDA+DP warm start: noise-free steps on the cloud's records"),
    "dp.public-lr": (3e-3, "CDCDA+DP warm start: learning rate of the noise-free steps"),
    "dp.validation-fraction": (0.25, "CDCDA+DP: fraction of the synthetic records held out of training to validate "
                                     "on (local+DP validates on all of them; it never trains on them)"),
    "rag.k": (2, "profile items retrieved (BM25) into the prompt for the rag method"),
    "rag.cloud-k": (8, "profile items (BM25 order) in the cloud upper bound's prompt: it may see the whole profile"),
    "eval.batch-size": (16, "generation batch size on the device (rows of all methods and hosted users "
                                "share batches)"),
    "eval.max-queries": (0, "answer at most this many queries per user (0 = all)"),
    "eval.report": ("auto", "what a device's result reply may carry: predictions | metrics | none | auto "
                            "(= predictions in simulation, metrics on real devices); a device's consent file can only lower it"),
    "mia.enabled": (False, "membership-inference AUC (loss threshold) on each trained adapter"),
    # ------------------------------------------------------------------ federated baselines (issue 31)
    "fedavg.rounds": (3, "FedAvg rounds of the global LoRA adapter (methods fedavg, fedavg+local, cdcda+fedavg); "
                         "the adapter has local LoRA's rank, targets and base"),
    "fedavg.local-steps": (8, "optimizer steps a node trains the global adapter per round on its users' real records"),
    "fedavg.fraction": (1.0, "fraction of a task's nodes sampled per round (Flower FedAvg fraction_train)"),
    "fedavg.min-nodes": (1, "nodes a round needs at least (FedAvg min_train_nodes / min_available_nodes): a round "
                            "waits for this many, then completes with whoever replies"),
    "fedavg.timeout": (600.0, "seconds a FedAvg round waits for replies; a node that has not replied by then is "
                              "left out of that round's average (0 = Flower's default, 3600)"),
    # ------------------------------------------------------------------ consent (device side)
    "consent.share-fraction": (0.5, "fraction of profile records a user shares with the cloud (0..1)"),
    "consent.fields": ("", "comma-separated fields that may be shared (empty = all fields of the task)"),
    "consent.deny-terms": ("", "comma-separated terms: a record containing any is never shared"),
    "consent.deny-labels": ("", "comma-separated labels/tags never shared"),
    "consent.record-ids": ("", "comma-separated record ids to share explicitly (the owners' ids: a simulation "
                               "writes them into its devices' file; never sent to a device)"),
    "consent.redact-terms": ("", "comma-separated terms scrubbed to [REDACTED] (the record is still shared)"),
    "consent.scrub": (True, "PII scrubbing of shared text (e-mails, phones, URLs, handles, long numbers)"),
    "consent.overrides": ("", "per-user consent overrides file (JSON/TOML: user id -> keys)"),
    # ------------------------------------------------------------------ cloud
    "cloud.backend": ("hf", "hf (in-process transformers) or openai (OpenAI-compatible HTTP endpoint); "
                      "simulation only: oracle (further real items of the user: the ceiling, not private) or "
                      "noise (other users' items, random labels: the floor)"),
    "cloud.model": ("gemma3-270m", "cloud model: preset, HF id or path (hf); model name (openai)"),
    "cloud.base-url": ("", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
    "cloud.api-key-env": ("", "environment variable holding the API key (never logged)"),
    "cloud.allow-insecure-http": (False, "allow plain http:// to a non-loopback cloud.base-url (records and key unencrypted)"),
    "cloud.batch-size": (8, "prompts per generation batch in the cloud"),
    "cloud.timeout": (120.0, "HTTP timeout per request in seconds"),
    "cloud.max-retries": (4, "retries on 429/5xx/connection errors"),
    "cloud.concurrency": (4, "parallel HTTP requests"),
    "cloud.prompt-style": ("auto", "auto, continuation (base models) or chat"),
    "cloud.device": ("", "device of the in-process cloud model ('' = cuda if available, else cpu)"),
    "cloud.embed-filter": (False, "filter synthetic records by MiniLM similarity to the user's records"),
    "cloud.embed-min-sim": (0.2, "embed filter: drop records less similar than this to the user's records"),
    "cloud.embed-max-sim": (0.95, "embed filter: drop records more similar than this (near copies)"),
    "synthetic.per-user": (16, "synthetic records the cloud writes per user"),
    "synthetic.max-rounds": (3, "generation rounds per user to reach synthetic.per-user"),
    "synthetic.temperature": (0.8, "sampling temperature in the cloud"),
    "synthetic.max-new-tokens": (64, "new tokens per cloud generation"),
    "synthetic.few-shot": (4, "shared records shown per prompt"),
    "synthetic.max-prompts-per-round": (32, "prompts per user per generation round at most"),
    "synthetic.near-dup": (0.7, "token-set Jaccard above which a record is a near duplicate"),
    "synthetic.label-quota": (True, "spread target labels over the user's own label distribution"),
    # ------------------------------------------------------------------ orchestration
    "rounds": (1, "rounds; each round personalizes a fraction of the users not yet finished"),
    "fraction": (1.0, "fraction of unfinished users selected per round"),
    "timeout": (0.0, "seconds to wait for replies per phase (0 = no limit)"),
    "chunk-users": (1024, "users augmented and personalized per batch of messages (bounds server memory)"),
    "min-nodes": (1, "wait for at least this many nodes before starting"),
    "node-wait": (120.0, "seconds to wait for nodes to connect"),
    "sim.num-supernodes": (0, "simulated devices (0 = users / sim.users-per-node)"),
    "sim.users-per-node": (1, "users one simulated device node serves (>1 batches users per Flower message)"),
    "sim.client-cpus": (1.0, "CPUs per simulated device (Ray actor); actors = floor(cpus / this)"),
    "sim.client-gpus": (0.0, "GPUs per simulated device"),
    "sim.ray-address": ("", "existing Ray cluster to join (e.g. 127.0.0.1:6379); empty = start a local one"),
    "sim.cpus": (0, "CPUs Ray may use on a local start (0 = all)"),
    "debug.crash-users": ("", "fault drill: the device ClientApp raises for these user ids (tests failure handling)"),
}


class ConfigError(ValueError):
    """A bad configuration key or value; the message says which and what is allowed."""


# Keys that may differ between a stored run's config and a fresh one without changing its results:
# paths (data-dir is compared resolved), waits and retries, orchestration (sim.*) -- not what is
# trained, written or measured. Used to reuse a finished sweep point and to refuse resuming a run
# dir that holds another configuration's results.
VOLATILE_KEYS = ("out-dir", "data-dir", "timeout", "node-wait", "min-nodes", "device.storage-dir", "cloud.timeout",
                 "cloud.max-retries", "fedavg.timeout", "chunk-users")
VOLATILE_PREFIXES = ("sim.", "debug.")


def _comparable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in VOLATILE_KEYS and not k.startswith(VOLATILE_PREFIXES)}
    if cfg.get("data-dir"):
        out["data-dir"] = str(Path(str(cfg["data-dir"])).expanduser().resolve())
    return out


def config_mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Keys whose value differs between a stored run's config and the one asked for now (both must hold the key)."""
    a, b = _comparable(stored), _comparable(wanted)
    return sorted(k for k in set(a) | set(b) if k in a and k in b and a[k] != b[k])


def defaults() -> dict[str, Scalar]:
    return {k: v for k, (v, _) in DEFAULTS.items()}


def default_of(key: str) -> Scalar:
    """The one default of ``key``: typed sections (LoraTrainConfig, DPConfig, AugmentConfig) take
    their field defaults from here, so no default is written twice."""
    return DEFAULTS[key][0]


def config_get(cfg: Mapping[str, Any], key: str) -> Scalar:
    """``cfg[key]``, else the one default in :data:`DEFAULTS` (never a second literal elsewhere).

    A device's :class:`ReceivedConfig` has no fall-back: a key its message kind does not carry
    is an error there, not a silent default.
    """
    if isinstance(cfg, ReceivedConfig):
        return cfg[key]
    return cfg[key] if key in cfg else DEFAULTS[key][0]


# ------------------------------------------------------------------ what each message carries
# A device is sent only the keys it reads for its part (docs/design.md, "Messages"): the cloud's
# endpoint, the name of its key variable, generation, orchestration and simulation settings stay
# on the server. An entry ending in "." names every key of that section.
_LOCATE_USERS = ("tasks", "users", "split", "data-dir", "data.strict", "out-dir", "seed", "personas.",
                 "debug.crash-users")
MESSAGE_KEYS: dict[str, tuple[str, ...]] = {
    "share": (*_LOCATE_USERS, "consent."),
    # one FedAvg round on the device: its users' real records train the global adapter
    "fedavg": (*_LOCATE_USERS, "device.", "train.", "fedavg.local-steps"),
    "personalize": (*_LOCATE_USERS, "methods", "device.", "train.", "dp.", "rag.", "eval.", "mia.",
                    # the cloud upper bound answers on the device with the in-process (hf) cloud model
                    "cloud.backend", "cloud.model", "cloud.device", "cloud.prompt-style", "cloud.batch-size"),
}
# Never sent although a listed section holds it: a path on the server's disk the device must not
# open, and the owners' own record ids (a simulation writes them into its devices' policy file; a
# server never learns them: shared records leave under opaque ids).
_NEVER_SENT = frozenset({"consent.overrides", "consent.record-ids"})


def message_keys(kind: str) -> list[str]:
    """The run-config keys a ``kind`` message (share | fedavg | personalize) carries, in DEFAULTS order."""
    if kind not in MESSAGE_KEYS:
        raise ConfigError(f"unknown message kind {kind!r}; choose from {', '.join(MESSAGE_KEYS)}")
    wanted = MESSAGE_KEYS[kind]
    return [key for key in DEFAULTS if key not in _NEVER_SENT
            and any(key == w or (w.endswith(".") and key.startswith(w)) for w in wanted)]


def message_config(kind: str, cfg: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """What of ``cfg`` the server puts into a ``kind`` message (the rest never leaves it)."""
    return {key: cfg[key] for key in message_keys(kind) if key in cfg}


class ReceivedConfig(dict):
    """The run config a device received with one message kind.

    Reading a key that kind does not carry raises instead of answering with a default: a device
    silently using a default where the run set something else would be a wrong result that no
    test sees. Add the key to :data:`MESSAGE_KEYS` if the device really needs it. ``get`` and
    ``in`` raise the same way (``key in cfg`` answering False is the same silent default), and
    ``items()`` raises too: a section is read with :func:`config_section`, which knows whether
    the kind carries it (``consent.*`` read off a personalize message was an empty section).
    """

    def __init__(self, kind: str, values: Mapping[str, Scalar]) -> None:
        super().__init__(values)
        self.kind = kind

    def _refuse(self, key: Any) -> ConfigError:
        return ConfigError(f"config key {key!r} is not sent to devices with {self.kind!r} messages "
                           "(cdcda_fl.config.MESSAGE_KEYS)")

    def __missing__(self, key: str) -> Scalar:
        raise self._refuse(key)

    def __contains__(self, key: object) -> bool:
        if not dict.__contains__(self, key):
            raise self._refuse(key)
        return True

    def get(self, key: str, default: Any = None) -> Any:  # noqa: ARG002 - a default is what this refuses
        return self[key]

    def items(self) -> Any:
        raise ConfigError(f"a {self.kind!r} message's config is read by key or by section "
                          "(cdcda_fl.config.config_section), not by items()")

    def section(self, prefix: str) -> dict[str, Scalar]:
        """Every key under ``prefix`` (e.g. ``"consent."``); the kind must carry that section."""
        if prefix not in MESSAGE_KEYS[self.kind]:
            raise ConfigError(f"config section {prefix!r} is not sent to devices with {self.kind!r} messages "
                              "(cdcda_fl.config.MESSAGE_KEYS)")
        return {k: v for k, v in dict.items(self) if k.startswith(prefix)}

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (Ray) must not go through items()
        return (ReceivedConfig, (self.kind, dict(self)))


def config_section(cfg: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The keys of ``cfg`` under ``prefix``; on a device, only a section its message carries."""
    if isinstance(cfg, ReceivedConfig):
        return cfg.section(prefix)
    return {k: v for k, v in cfg.items() if k.startswith(prefix)}


def received_config(kind: str, shipped: Mapping[str, Any]) -> ReceivedConfig:
    """A device's view of a message's config: the kind's keys (checked, defaults filled), nothing else.

    Keys outside the kind are dropped, so a newer or chattier server cannot make a device read more.
    """
    keys = message_keys(kind)
    values = {key: default_of(key) for key in keys}
    for key, value in shipped.items():
        check_key(key)
        if key in values:
            values[key] = _coerce(key, value)
    return ReceivedConfig(kind, values)


TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", ""})


def parse_bool(value: Any, error: type[Exception] = ConfigError, what: str = "") -> bool:
    """A flag from TOML, ``--set`` or a raw dict: ``"false"`` must not be truthy; anything
    that is not clearly true or false is an ``error`` naming ``what``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
    raise error(f"{what + ': ' if what else ''}expected true/false, got {value!r}")


def parse_scalar(text: str, like: Scalar | None = None) -> Scalar:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True; typed like the default where one is known."""
    low = text.strip().lower()
    if isinstance(like, bool) or (like is None and low in {"true", "false"}):
        return parse_bool(text)
    if isinstance(like, int) and not isinstance(like, bool):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}") from None
    if like is None:
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
    return text


def _coerce(key: str, value: Any) -> Scalar:
    default = DEFAULTS[key][0]
    if isinstance(value, str) and not isinstance(default, str):
        try:
            return parse_scalar(value, default)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, str) and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, (int, float))):
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")
    return value


def check_key(key: str) -> None:
    if key not in DEFAULTS:
        close = difflib.get_close_matches(key, DEFAULTS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}; `cdcda run --help-config` lists them all")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def resolve(overrides: Mapping[str, Any] | None = None) -> dict[str, Scalar]:
    """Defaults updated with ``overrides`` (checked keys, coerced values)."""
    cfg = defaults()
    for key, value in (overrides or {}).items():
        check_key(key)
        cfg[key] = _coerce(key, value)
    return cfg


def read_toml(path: Path | str, error: type[Exception] = ConfigError, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is ``error`` naming the file (and the TOML position)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path | str | None = None, sets: list[str] | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Scalar]:
    """Read a TOML run config (``[config]`` table, nested tables flattened), then ``--set k=v`` pairs."""
    overrides: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path)
        table = data.get("config", data)
        if "tool" in data:  # a pyproject.toml: take the Flower app's run config
            table = data["tool"].get("flwr", {}).get("app", {}).get("config", {})
        try:
            overrides.update(_flatten(table))
            for key in overrides:
                check_key(key)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    overrides.update(extra or {})
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        check_key(key)
        overrides[key] = parse_scalar(value, DEFAULTS[key][0])
    return resolve(overrides)


def add_config_arguments(parser: Any, *, config_help: str = "TOML run config (flat keys, or a [config] table)",
                         config_default: Path | None = None,
                         out_help: str = "run directory (default: out-dir of the config)",
                         set_help: str = "override a run config key (repeatable)") -> None:
    """The arguments every config-driven command shares (``run``, ``sweep``, ``audit canaries``):
    CONFIG, ``--data-dir``, ``--out``, ``--set``; read back with :func:`load_config` and
    :func:`path_overrides`."""
    parser.add_argument("config", nargs="?", type=Path, default=config_default, help=config_help)
    parser.add_argument("--data-dir", type=Path, help="LaMP data directory (LaMP_k/ folders); default: seeded personas")
    parser.add_argument("--out", type=Path, help=out_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def path_overrides(args: Any) -> dict[str, str]:
    """``--data-dir`` / ``--out`` of a CLI command as config overrides (run, demo, sweep, audit)."""
    extra = {}
    if getattr(args, "data_dir", None) is not None:
        extra["data-dir"] = str(args.data_dir)
    if getattr(args, "out", None) is not None:
        extra["out-dir"] = str(args.out)
    return extra


def csv_list(value: Scalar) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


DP_SELECTIONS = ("synthetic", "private")  # dp.selection (device/dp_select.py, docs/dp.md)


def check_lora_layers(cfg: Mapping[str, Scalar]) -> int:
    """``train.lora-layers``, checked: 0 (every layer) or the number of top layers that get LoRA."""
    value = int(config_get(cfg, "train.lora-layers"))
    if value < 0:
        raise ConfigError(f"train.lora-layers must be >= 0 (0 = every layer, N = the top N), got {value}")
    return value


def check_dp_selection(cfg: Mapping[str, Scalar]) -> str:
    """``dp.selection``, or a ConfigError naming the choices (checked before a run starts)."""
    value = str(config_get(cfg, "dp.selection"))
    if value not in DP_SELECTIONS:
        raise ConfigError(f"dp.selection: unknown {value!r}; choose from {', '.join(DP_SELECTIONS)}")
    return value


def federated_methods(cfg: Mapping[str, Scalar]) -> list[str]:
    """The run's methods that need the FedAvg global adapter (empty: no federated phase)."""
    return [m for m in methods_of(cfg) if m in FEDERATED_METHODS]


def uses_cloud_data(cfg: Mapping[str, Scalar]) -> bool:
    """Does a method of the run train on the cloud's synthetic records (so users must share)?"""
    return any(m in CLOUD_DATA_METHODS for m in methods_of(cfg))


def methods_of(cfg: Mapping[str, Scalar]) -> list[str]:
    methods = csv_list(cfg["methods"])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    return methods

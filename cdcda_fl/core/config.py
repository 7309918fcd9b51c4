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
from cdcda_fl.core.config_keys import DEFAULTS, Scalar  # the table of every key: its one default and help
from cdcda_fl.core.method_table import CLOUD_DATA_METHODS, FEDERATED_METHODS, METHODS


class ConfigError(ValueError):
    """A bad configuration key or value; the message says which and what is allowed."""


# Keys that may differ between a stored run's config and a fresh one without changing its results:
# paths (data-dir is compared resolved), waits and retries, orchestration (sim.*) -- not what is
# trained, written or measured. Used to reuse a finished sweep point and to refuse resuming a run
# dir that holds another configuration's results.
VOLATILE_KEYS = ("out-dir", "data-dir", "timeout", "node-wait", "min-nodes", "device.storage-dir", "cloud.timeout",
                 "cloud.cache-dir",
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
    cfg = flat_of(cfg)
    if isinstance(cfg, ReceivedConfig):
        return cfg[key]
    return cfg[key] if key in cfg else DEFAULTS[key][0]


def flat_of(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The flat mapping under a typed :class:`~cdcda_fl.core.run_config.RunConfig` (``cfg`` itself
    otherwise), so the helpers here tell a device's ReceivedConfig apart however it is wrapped.
    Duck-typed on ``flat`` because run_config imports this module, not the other way round."""
    inner = getattr(cfg, "flat", None)
    return inner if isinstance(inner, Mapping) else cfg


# ------------------------------------------------------------------ what each message carries
# A device is sent only the keys it reads for its part (docs/design.md, "Messages"): the cloud's
# endpoint, the name of its key variable, generation, orchestration and simulation settings stay
# on the server. An entry ending in "." names every key of that section.
_LOCATE_USERS = ("tasks", "users", "split", "data-dir", "data.strict", "out-dir", "seed", "personas.",
                 "debug.crash-users",
                 "train.adapter-scope")  # under scope user, a simulated node holds whole people
MESSAGE_KEYS: dict[str, tuple[str, ...]] = {
    "share": (*_LOCATE_USERS, "consent."),
    # one FedAvg round on the device: its users' real records train the global adapter
    # (consent.*: the server's ceiling on what a device shares, which `federated = "shared"` trains on)
    "fedavg": (*_LOCATE_USERS, "consent.", "device.", "train.", "fedavg.local-steps"),
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
                           "(cdcda_fl.core.config.MESSAGE_KEYS)")

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
                          "(cdcda_fl.core.config.config_section), not by items()")

    def section(self, prefix: str) -> dict[str, Scalar]:
        """Every key under ``prefix`` (e.g. ``"consent."``); the kind must carry that section."""
        if prefix not in MESSAGE_KEYS[self.kind]:
            raise ConfigError(f"config section {prefix!r} is not sent to devices with {self.kind!r} messages "
                              "(cdcda_fl.core.config.MESSAGE_KEYS)")
        return {k: v for k, v in dict.items(self) if k.startswith(prefix)}

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (Ray) must not go through items()
        return (ReceivedConfig, (self.kind, dict(self)))


def carries(cfg: Mapping[str, Any], key: str) -> bool:
    """Does this config hold ``key``: a plain run config, or a message kind that sends it.

    For code that serves several message kinds and needs a key only some of them carry (asking
    a :class:`ReceivedConfig` with ``in`` raises, on purpose)."""
    cfg = flat_of(cfg)
    if isinstance(cfg, ReceivedConfig):
        return dict.__contains__(cfg, key)
    return key in cfg


def config_section(cfg: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The keys of ``cfg`` under ``prefix``; on a device, only a section its message carries."""
    cfg = flat_of(cfg)
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
            values[key] = coerce_value(key, value)
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


def coerce_value(key: str, value: Any) -> Scalar:
    """``value`` as the type of ``key``'s default ("12" -> 12 for an int key); a value that is not
    one is a ConfigError naming the key."""
    default = DEFAULTS[key][0]
    if isinstance(value, str) and not isinstance(default, str):
        try:
            return parse_scalar(value, default)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if isinstance(default, bool) and not isinstance(value, bool):
        return parse_bool(value, what=key)  # 0 / 1 too; anything else names the key
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
        cfg[key] = coerce_value(key, value)
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


ADAPTER_SCOPES = ("task", "user")


def adapter_scope(cfg: Mapping[str, Scalar]) -> str:
    """``train.adapter-scope``: one adapter per (user, task), or one per person over their tasks."""
    scope = str(cfg["train.adapter-scope"]).strip().lower()
    if scope not in ADAPTER_SCOPES:
        raise ConfigError(f"train.adapter-scope must be one of {', '.join(ADAPTER_SCOPES)}, got {cfg['train.adapter-scope']!r}")
    return scope


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

"""Run configuration: keys, coercion, TOML + --set, and the Flower app config agreeing with it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cdcda_fl.core.config import DEFAULTS, ConfigError, load_config, methods_of, resolve

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[config]\ntasks = "LaMP_3"\nusers = 3\n[config.train]\nsteps = 5\n')
    cfg = load_config(path, ["train.lr=0.01", "dp.enabled=true", "consent.share-fraction=1"])
    assert cfg["tasks"] == "LaMP_3" and cfg["users"] == 3 and cfg["train.steps"] == 5
    assert cfg["train.lr"] == 0.01 and cfg["dp.enabled"] is True and cfg["consent.share-fraction"] == 1.0
    assert cfg["seed"] == DEFAULTS["seed"][0]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.step=3"], "unknown config key 'train.step' .*did you mean train.steps"),
        (["users=many"], "expected an integer"),
        (["dp.enabled=maybe"], "expected true/false"),
        (["novalue"], "expects key=value"),
    ],
)
def test_bad_config_is_a_clear_error(sets, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("tasks = [")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('colour = "red"\n')
    with pytest.raises(ConfigError, match="unknown.toml: unknown config key 'colour'"):
        load_config(unknown)


def test_methods_checked() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        methods_of(resolve({"methods": "base,magic"}))


def test_flower_app_config_uses_known_keys_and_types() -> None:
    """`flwr run` reads [tool.flwr.app.config]: every key must be one cdcda-fl knows."""
    app_cfg = load_config(ROOT / "pyproject.toml")
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    def flatten(table: dict, prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for k, v in table.items():
            keys |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return keys

    # every key is declared (so `flwr run --run-config` can set it) ...
    assert flatten(raw) == set(DEFAULTS)
    # ... with the library's defaults, except where the Flower app deliberately differs
    differs = {k for k in DEFAULTS if app_cfg[k] != DEFAULTS[k][0]}
    assert differs == {"out-dir"}


@pytest.mark.parametrize("name", ["demo.toml", "tiny.toml"])
def test_shipped_configs_load(name: str) -> None:
    load_config(ROOT / "experiments" / "configs" / name)


def test_one_bool_parser_for_every_flag() -> None:
    from cdcda_fl.core.config import ConfigError, parse_bool

    for yes in (True, 1, "true", " YES ", "on", "1"):
        assert parse_bool(yes) is True
    for no in (False, 0, "false", "Off", "no", "0", ""):
        assert parse_bool(no) is False
    for bad in ("maybe", 2, None, "tru"):
        with pytest.raises(ConfigError, match="expected true/false"):
            parse_bool(bad, what="x")


def test_typed_sections_take_their_defaults_from_the_one_table():
    """LoraTrainConfig, DPConfig, AugmentConfig and GateConfig built from the defaults equal their
    own field defaults: no section carries a second copy of a default."""
    from cdcda_fl.cloud.augment import AugmentConfig
    from cdcda_fl.device.synthetic_gate import GateConfig
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.privacy.dp import DPConfig

    cfg = load_config()
    assert LoraTrainConfig.from_run_config(cfg) == LoraTrainConfig()
    assert AugmentConfig.from_config(cfg) == AugmentConfig()
    assert GateConfig.from_config(cfg) == GateConfig()
    dp = DPConfig.from_run_config({**cfg, "dp.epsilon": 8.0})
    assert (dp.max_grad_norm, dp.accountant) == (DPConfig().max_grad_norm, DPConfig().accountant)
    changed = LoraTrainConfig.from_run_config({**cfg, "train.steps": 10, "train.epochs": 0.0}, step_scale=1.5)
    assert changed.steps == 15 and changed.epochs is None

"""The typed run config (core/run_config.py): one attribute per key of the key table, typed like
its default, read through the same rules as the flat mapping (a device's ReceivedConfig still
refuses a key its message did not carry), and the only way the library reads a setting."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from cdcda_fl.core.config import ConfigError, received_config, resolve
from cdcda_fl.core.config_keys import DEFAULTS
from cdcda_fl.core.run_config import RunConfig, every_key, run_config

ROOT = Path(__file__).resolve().parent.parent


def test_every_key_of_the_table_is_one_attribute_typed_like_its_default() -> None:
    declared = every_key()
    assert set(declared) == set(DEFAULTS), (set(declared) ^ set(DEFAULTS))
    wrong = {key: (kind.__name__, type(DEFAULTS[key][0]).__name__) for key, kind in declared.items()
             if kind is not type(DEFAULTS[key][0])}
    assert wrong == {}


def test_attributes_read_the_mapping_and_its_defaults_and_coerce_raw_values() -> None:
    rc = run_config({"train.steps": "12", "dp.enabled": 1, "seed": 3.0, "tasks": ["LaMP_2", "LaMP_5"]})
    assert rc.train.steps == 12 and isinstance(rc.train.steps, int)
    assert rc.dp.enabled is True
    assert rc.seed == 3 and isinstance(rc.seed, int)
    assert rc.tasks == "LaMP_2,LaMP_5" and rc.task_names == ["LaMP_2", "LaMP_5"]
    assert rc.train.lr == DEFAULTS["train.lr"][0]  # absent: the table's one default
    assert rc.cloud.kind == str(DEFAULTS["cloud.backend"][0])


def test_a_bad_value_is_a_config_error_naming_the_key_when_checked() -> None:
    rc = run_config({"train.steps": "many"})
    with pytest.raises(ConfigError, match="train.steps"):
        rc.checked()
    with pytest.raises(ConfigError, match="dp.enabled"):
        run_config({"dp.enabled": "perhaps"}).dp.enabled
    assert run_config(resolve()).checked().train.steps == DEFAULTS["train.steps"][0]


def test_a_view_sees_what_the_server_writes_into_its_mapping() -> None:
    """prepare_run_dir makes paths absolute in the mapping; a view made earlier must read the new value."""
    flat = dict(resolve())
    rc = run_config(flat)
    flat["out-dir"] = "/abs/run"
    assert rc.out_dir == "/abs/run"
    assert run_config(rc) is rc  # wrapping twice is the same object


def test_on_a_device_an_uncarried_key_still_raises_and_carried_ones_are_typed() -> None:
    received = received_config("personalize", {**resolve(), "train.steps": 5})
    rc = run_config(received)
    assert rc.train.steps == 5
    with pytest.raises(ConfigError, match="cloud.base-url"):
        rc.cloud.base_url  # the cloud's endpoint never reaches a device
    with pytest.raises(ConfigError, match="consent"):
        run_config(received_config("personalize", resolve())).consent.share_fraction
    share = run_config(received_config("share", resolve()))
    assert share.consent.share_fraction == DEFAULTS["consent.share-fraction"][0]
    with pytest.raises(ConfigError, match="train.steps"):
        share.train.steps


def test_it_is_the_flat_mapping_too_and_survives_pickling() -> None:
    flat = resolve({"train.steps": 7})
    rc = RunConfig(flat)
    assert dict(rc) == flat and rc["train.steps"] == 7 and len(rc) == len(flat)
    again = pickle.loads(pickle.dumps(rc))  # Ray ships configs to actors
    assert again.train.steps == 7 and dict(again) == flat


def _flat_reads(text: str) -> list[str]:
    keys = "|".join(re.escape(k) for k in sorted(DEFAULTS, key=len, reverse=True))
    pattern = re.compile(r"""\b(?:[\w.]+\.)?(?:cfg|config)\s*(?:\[|\.get\()\s*["'](?:""" + keys + r""")["']""")
    found = []
    for i, line in enumerate(text.splitlines(), 1):
        for m in pattern.finditer(line):
            after = line[m.end():]
            if re.match(r"""\s*\]\s*=[^=]""", after):  # a write: the server normalises its mapping
                continue
            if "carries(" in line:  # "was this key set at all", not a read of its value
                continue
            found.append(f"{i}: {line.strip()}")
    return found


def test_the_library_reads_settings_through_the_typed_config_only() -> None:
    """Issue 30: every run-config value a device or server uses is read from the typed config
    (``run_config(cfg).train.steps``), not as ``cfg["train.steps"]``; core/ is where the flat
    mapping is parsed and checked."""
    found = []
    for folder in ("cdcda_fl", "clients", "strategies", "deploy"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.parent.name == "core" and path.parent.parent.name == "cdcda_fl":
                continue
            found += [f"{path.relative_to(ROOT)}:{hit}" for hit in _flat_reads(path.read_text(encoding="utf-8"))]
    assert not found, "flat run-config reads (use run_config(cfg).section.key):\n" + "\n".join(found)


def test_the_flat_read_finder_finds_reads_and_skips_writes() -> None:
    assert _flat_reads('x = int(cfg["train.steps"])') and _flat_reads("y = self.cfg.get('seed')")
    assert _flat_reads('z = spec.config["out-dir"]')
    assert not _flat_reads('cfg["out-dir"] = str(out)')
    assert not _flat_reads('n = node_config["data-dir"]')  # Flower's node config, not the run config
    assert not _flat_reads('r = result["users"]')

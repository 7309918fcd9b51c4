"""The method table (cdcda_fl/core/method_table.py) is the one list of methods: the config accepts
exactly its names, each builds the device class it names, and its traits drive the orchestrator."""

from __future__ import annotations

import pytest

from cdcda_fl.core.config import ConfigError, federated_methods, load_config, methods_of, uses_cloud_data
from cdcda_fl.device.methods.method import Method, Refused
from cdcda_fl.device.methods.private import Private
from cdcda_fl.device.methods.registry import build_methods, method_class
from cdcda_fl.core.method_table import CLOUD_DATA_METHODS, FEDERATED_METHODS, METHOD_TABLE, METHODS


def _cfg(methods, **over):
    return load_config(None, [f"methods={','.join(methods)}", *(f"{k}={v}" for k, v in over.items())])


def test_the_config_accepts_exactly_the_tables_methods_and_each_has_its_class():
    assert len(set(METHODS)) == len(METHODS)
    assert methods_of(_cfg(METHODS)) == list(METHODS)
    for entry in METHOD_TABLE:
        cls = method_class(entry.name)
        assert issubclass(cls, Method) and cls.name == entry.name
    with pytest.raises(ConfigError, match="unknown"):
        methods_of(_cfg(["base", "not-a-method"]))


def test_built_methods_follow_the_run_order_and_read_their_settings():
    built = build_methods(_cfg(["rag", "base", "cloud"], **{"rag.k": 3, "rag.cloud-k": 5}))
    assert [m.name for m in built] == ["rag", "base", "cloud"]
    assert built[0].k == 3 and built[2].k == 5


def test_the_traits_come_from_the_table():
    assert federated_methods(_cfg(METHODS)) == list(FEDERATED_METHODS) == ["fedavg", "fedavg+local", "cdcda+fedavg"]
    assert CLOUD_DATA_METHODS == ("cdcda", "cdcda+fedavg")
    for name in METHODS:
        assert uses_cloud_data(_cfg([name])) == (name in CLOUD_DATA_METHODS)


def test_under_dp_the_trained_methods_run_in_their_private_form():
    """DP is a wrapper the registry composes, not a branch inside local or cdcda; cdcda+fedavg has
    no DP form and refuses, user by user."""
    built = {m.name: m for m in build_methods(_cfg(METHODS, **{"dp.enabled": True, "dp.epsilon": 8.0}))}
    assert list(built) == list(METHODS)
    assert isinstance(built["local"], Private) and isinstance(built["cdcda"], Private)
    assert built["cdcda"].target_epsilon == 8.0
    assert isinstance(built["cdcda+fedavg"], Refused)
    with pytest.raises(ValueError, match="not defined under dp.enabled"):
        built["cdcda+fedavg"].run(None)  # type: ignore[arg-type]
    plain = {m.name: type(m) for m in build_methods(_cfg(METHODS))}
    assert all(t is method_class(n) for n, t in plain.items())
    for name in ("base", "rag", "cloud", "fedavg", "fedavg+local"):
        assert type(built[name]) is plain[name]

"""The device's methods, built from the one method table (``cdcda_fl/core/method_table.py``).

Each class is imported only when a run names its method (the table holds ``module:Class``), so
the config layer can list and check methods without importing device code, and a device never
imports a method it does not run.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from cdcda_fl.core.config import methods_of
from cdcda_fl.device.methods.method import Method
from cdcda_fl.core.method_table import method_entry
from cdcda_fl.core.run_config import run_config


def method_class(name: str) -> type[Method]:
    """The class the table names for method ``name``."""
    module, _, attr = method_entry(name).implementation.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name == name):
        raise TypeError(f"method_table: {name!r} names {cls!r}, not a Method called {name!r}")
    return cls


def build_method(name: str, cfg: Mapping[str, Any]) -> Method:
    """Method ``name`` with its settings read from ``cfg``; its private form under ``dp.enabled``."""
    cls = method_class(name)
    return cls.private(cfg) if run_config(cfg).dp.enabled else cls.from_config(cfg)


def build_methods(cfg: Mapping[str, Any]) -> list[Method]:
    """The run's methods (``methods``, checked against the table), in the run's order."""
    return [build_method(name, cfg) for name in methods_of(cfg)]

"""Which models a real device loads when a server message names one (``device.model``,
``cloud.model`` for the cloud upper bound): the bundled presets, and what its owner listed.

Why: a model name can be a path, and loading a path touches the device's disk. A server that
could name any path learned from the error it got back whether that path existed and what it
was (an existing folder failed with one error, a missing path or a file with another: issue 29,
item 7). So a name that is neither a preset nor on the owner's list is refused *before* anything
looks at the filesystem, with the same code whether or not such a path exists.

The owner's list: node config ``allowed-models`` (comma-separated) and/or ``models.txt`` in the
device's home (one name or path per line, ``#`` comments). Names are compared as strings after
``~`` expansion and path normalisation (no symlink resolution: that would touch the disk).
Simulated devices (no ``data-dir``) load what the run names: the researcher is both sides.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import carries, csv_list, methods_of
from cdcda_fl.device.models import PRESETS
from cdcda_fl.core.run_config import run_config

NODE_CONFIG_KEY = "allowed-models"
ALLOW_FILE = "models.txt"


class ModelNotAllowed(ValueError):
    """The server named a model this device's owner did not allow; the reply carries only the code."""

    error_code = "model_not_allowed"


def _norm(name: str) -> str:
    name = str(name).strip()
    return os.path.normpath(os.path.expanduser(name)) if name else name


def _file_entries(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def allowed_models(node_config: Mapping[str, Any], home: Path) -> frozenset[str]:
    """Every model this device may load: presets + node config ``allowed-models`` + ``<home>/models.txt``."""
    listed = csv_list(str(node_config.get(NODE_CONFIG_KEY, ""))) + _file_entries(home / ALLOW_FILE)
    return frozenset(PRESETS) | frozenset(_norm(n) for n in listed)


def requested_models(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(config key, model)`` for every model a message makes the device load.

    A FedAvg round's message carries no ``methods`` (it trains the device model only); reading it
    there failed every round on real devices (found with the lab, issue 31)."""
    rc = run_config(cfg)
    wanted = [("device.model", rc.device.model)]
    if carries(cfg, "methods") and "cloud" in methods_of(cfg) and rc.cloud.kind == "hf":
        wanted.append(("cloud.model", rc.cloud.model))
    return wanted


def check_models(requested: Iterable[tuple[str, str]], allowed: frozenset[str]) -> None:
    """Raise :class:`ModelNotAllowed` (naming the key, for the device's own log) for the first model
    outside ``allowed``."""
    for key, name in requested:
        if name not in allowed and _norm(name) not in allowed:
            raise ModelNotAllowed(f"{key}={name!r} is neither a bundled preset nor in the owner's "
                                  f"'{NODE_CONFIG_KEY}' (node config) or {ALLOW_FILE}")


def enforce_owner_models(node_config: Mapping[str, Any], cfg: Mapping[str, Any], home: Path) -> None:
    """On a real device, refuse a personalize message whose models the owner did not allow."""
    check_models(requested_models(cfg), allowed_models(node_config, home))

"""Translating cdcda-fl configs into what the Flower 1.42 CLIs read.

- ``--node-config`` / ``--run-config`` / ``--federation-config`` text (``key=value``, TOML values);
- ``$FLWR_HOME/config.toml`` with the SuperLink connections (1.42 keeps them there, not in
  pyproject.toml; template: deploy/flwr-config.toml);
- the run-config overrides that reproduce a ``cdcda run`` config, refusing keys Flower cannot set.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import DEFAULTS, _flatten

from .common import ROOT, LabError


def toml_value(value: Any) -> str:
    """A scalar as TOML (strings as literal strings where possible: Windows paths need no escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "'" not in text and "\n" not in text:
        return f"'{text}'"
    if '"' in text:
        raise ValueError(f"cannot pass a value with both ' and \" through Flower's key=value parser: {text!r}")
    return json.dumps(text)


def node_config_arg(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` text: space-separated ``key=value`` pairs, values in TOML syntax."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())


def write_flwr_config(flwr_home: Path, connections: Mapping[str, Mapping[str, Any]],
                      default: str | None = None) -> Path:
    """``$FLWR_HOME/config.toml`` with the given SuperLink connections (replaces the file; tomli-w)."""
    import tomli_w

    flwr_home.mkdir(parents=True, exist_ok=True)
    superlink: dict[str, Any] = {"default": default or next(iter(connections))}
    superlink.update({name: dict(conn) for name, conn in connections.items()})
    path = flwr_home / "config.toml"
    path.write_text("# Written by deploy/lab.py (see deploy/flwr-config.toml)\n" + tomli_w.dumps({"superlink": superlink}),
                    encoding="utf-8")
    return path


def app_run_config_keys(app_dir: Path = ROOT) -> dict[str, Any]:
    """The flat run-config keys (and defaults) the Flower app declares in pyproject.toml."""
    data = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    return _flatten(data["tool"]["flwr"]["app"].get("config", {}))


def flwr_run_config(cfg: Mapping[str, Any], app_dir: Path = ROOT) -> dict[str, Any]:
    """The ``--run-config`` overrides that make the app's run config equal to ``cfg``.

    Flower only accepts keys declared in ``[tool.flwr.app.config]``; a key missing there whose
    value differs from cdcda-fl's default cannot be passed, and silently dropping it would run a
    different experiment, so that is an error.
    """
    declared = app_run_config_keys(app_dir)
    lost = {k: v for k, v in cfg.items() if k not in declared and v != DEFAULTS[k][0]}
    if lost:
        raise LabError(f"run-config keys {sorted(lost)} are not declared in [tool.flwr.app.config] of "
                       f"{app_dir / 'pyproject.toml'}; `flwr run` cannot set them (add them there)")
    return {k: cfg[k] for k in declared if k in cfg}


def write_run_config(path: Path, overrides: Mapping[str, Any]) -> Path:
    """A TOML file for ``flwr run --run-config FILE.toml`` (quoted dotted keys stay flat)."""
    lines = [f"{json.dumps(k)} = {json.dumps(v) if isinstance(v, str) else toml_value(v)}"
             for k, v in overrides.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

"""The two lab recipes, each the `flwr run` counterpart of ``cdcda run`` for one config.

- :func:`local_simulation`: `flwr run APP local-simulation` on a SuperLink started with
  ``--simulation --disable-runtime-dependency-installation`` (the `:local:` SuperLink the CLI
  starts by itself would install the app's dependencies from PyPI);
- :func:`deployment`: the same apps on a SuperLink and N SuperNodes (one per device), with TLS
  and SuperNode authentication unless turned off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.data.run_data import data_dir_of, hosted_count, list_users, user_refs
from cdcda_fl.server.runs import prepare_run_dir

from .common import DEFAULT_WORK, ROOT, LabError
from .flwr_config import flwr_run_config
from .pki import generate_supernode_keys, generate_tls
from .session import Lab, run_succeeded
from .supervisor import tail
from cdcda_fl.core.run_config import run_config


def prepare_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Absolute out-dir (the ServerApp runs from an installed FAB folder) and personas written once."""
    return dict(prepare_run_dir(dict(cfg)))


def read_results(cfg: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The run's results.json, only if the run completed (a stale or partial report must not pass)."""
    path = Path(run_config(cfg).out_dir) / "results.json"
    if not run_succeeded(row) or not path.exists():
        log = Path(row["log"])
        reason = server_error(log)
        if reason:  # the ServerApp said why: that first, the traceback stays in the log
            raise LabError(f"the server stopped the run: {reason}\n(ServerApp log: {log})")
        raise LabError(f"the run did not complete ({row.get('status')}); no {path}:\n{tail(log)}")
    return json.loads(path.read_text(encoding="utf-8"))


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Refused|Interrupted)): (.+)$")


def server_error(log: Path) -> str | None:
    """The last exception the ServerApp logged (``UsersRefused: every user was refused ...``), if any."""
    found = None
    for line in tail(log, 400).splitlines():
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            found = f"{match.group(1)}: {match.group(2)}"
    return found


def local_simulation(cfg: Mapping[str, Any], *, work: Path | str = DEFAULT_WORK, app_dir: Path = ROOT,
                     timeout: float = 1800.0) -> dict[str, Any]:
    """`flwr run APP local-simulation` on a local simulation SuperLink; the same run as ``cdcda run`` for ``cfg``."""
    cfg = prepare_cfg(cfg)
    rc = run_config(cfg)
    results_path = Path(rc.out_dir) / "results.json"
    if results_path.exists():
        results_path.unlink()  # a stale report must not pass for this run's
    nodes = rc.sim.num_supernodes or hosted_count(cfg, user_refs(cfg))
    cfg["min-nodes"] = nodes  # the ServerApp waits for this many nodes (sim.num-supernodes is not a run-config key)
    federation = {"num-supernodes": nodes, "client-resources-num-cpus": max(1, round(rc.sim.client_cpus))}
    if rc.sim.client_gpus:
        federation["client-resources-num-gpus"] = rc.sim.client_gpus
    if rc.sim.cpus > 0:
        federation["init-args-num-cpus"] = rc.sim.cpus
    overrides = flwr_run_config(cfg, app_dir)
    with Lab(Path(work)) as lab:
        lab.start_superlink(simulation=True)
        row = lab.run(app_dir, overrides, federation, timeout=timeout)
        return read_results(cfg, row)


def deployment(cfg: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]], *, work: Path | str = DEFAULT_WORK,
               tls: bool = True, auth: bool = True, app_dir: Path = ROOT, timeout: float = 1800.0,
               lab: Lab | None = None) -> dict[str, Any]:
    """SuperLink + one SuperNode per entry of ``nodes`` (each a node config), then `flwr run`."""
    cfg = prepare_cfg(cfg)
    results_path = Path(run_config(cfg).out_dir) / "results.json"
    if results_path.exists():
        results_path.unlink()
    cfg["min-nodes"] = len(nodes)
    overrides = flwr_run_config(cfg, app_dir)
    own = lab is None
    lab = lab or Lab(Path(work))
    try:
        files = generate_tls(lab.work / "certs") if tls else None
        lab.start_superlink(tls=files, auth=auth)
        for i, node_config in enumerate(nodes):
            keys = None
            if auth:
                keys = generate_supernode_keys(lab.work / "keys", f"node{i}")
                lab.register(keys)
            lab.start_supernode(f"node{i}", node_config, keys)
        row = lab.run(app_dir, overrides, timeout=timeout)
        return read_results(cfg, row)
    finally:
        if own:
            lab.close()


def device_nodes(cfg: Mapping[str, Any], data_dir: Path | None = None) -> list[dict[str, Any]]:
    """One device per user id of the run: its own ``data-dir``, ``user-id`` and ``storage-dir``.

    A real device has only its own user's files; here all devices read one shared ``data-dir``
    (the run's personas by default) and ``user-id`` selects the device's user in every task.
    """
    cfg = dict(cfg)
    rc = run_config(cfg)
    if data_dir is not None:
        cfg["data-dir"] = str(Path(data_dir).resolve())
    data = str(data_dir_of(cfg))
    ids = sorted({u.user_id for u in list_users(cfg)})
    out = Path(rc.out_dir)
    return [{"data-dir": data, "user-id": uid, "storage-dir": str(out / "devices" / f"node{i}")}
            for i, uid in enumerate(ids)]

"""`cdcda run`: the same ServerApp and ClientApp, run by Flower's simulation engine in-process.

`flwr run . local-simulation` runs the very same apps through the Flower CLI; this entry point
exists so that a config file plus ``--set`` overrides is one command, and so that the number of
simulated devices follows the number of users by default.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from cdcda_fl.config import Scalar
from cdcda_fl.progress import log
from cdcda_fl.runs import list_users, prepare_run_dir


def backend_config(cfg: dict[str, Scalar]) -> dict[str, Any]:
    """Flower's Ray backend settings from the run config (client resources, cluster address)."""
    init_args: dict[str, Any] = {"log_to_driver": True}
    if cfg["sim.ray-address"]:
        init_args["address"] = str(cfg["sim.ray-address"])
    else:
        init_args["_node_ip_address"] = "127.0.0.1"
        if int(cfg["sim.cpus"]) > 0:
            init_args["num_cpus"] = int(cfg["sim.cpus"])
    return {
        "client_resources": {"num_cpus": float(cfg["sim.client-cpus"]), "num_gpus": float(cfg["sim.client-gpus"])},
        "init_args": init_args,
    }


def run_simulation(cfg: dict[str, Scalar]) -> dict[str, Any]:
    """Run CDCDA on Flower's Ray simulation engine; return ``results.json``'s content."""
    from cdcda_fl.quiet import private_network_defaults

    private_network_defaults(join_cluster=bool(cfg["sim.ray-address"]))
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.device import app as client_app
    from strategies.cloud_augment import make_server_app

    from cdcda_fl.quiet import quiet_libraries

    quiet_libraries()
    cfg = prepare_run_dir(cfg)
    n_users = len(list_users(cfg))
    per_node = max(1, int(cfg["sim.users-per-node"]))
    num_nodes = int(cfg["sim.num-supernodes"]) or -(-n_users // per_node)
    cfg["sim.num-supernodes"] = num_nodes
    log(f"simulating {num_nodes} device(s) for {n_users} user(s); run dir {cfg['out-dir']}")
    # The actors must find this checkout's packages (clients/, strategies/) when run from elsewhere.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    results_path = Path(str(cfg["out-dir"])) / "results.json"
    if results_path.exists():
        results_path.unlink()  # a stale report must not pass for this run's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("flwr").setLevel(logging.ERROR)  # its run_simulation deprecation notice is noise here
        flwr_run_simulation(server_app=make_server_app(cfg, expected_nodes=num_nodes), client_app=client_app,
                            num_supernodes=num_nodes, backend_config=backend_config(cfg))
    if not results_path.exists():
        raise RuntimeError(f"the run did not finish: no {results_path} (see the log above)")
    return json.loads(results_path.read_text(encoding="utf-8"))

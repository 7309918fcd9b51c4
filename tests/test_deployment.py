"""Real-device path on one machine: a TLS SuperLink with SuperNode authentication and two SuperNodes
(one user id each, their own data-dir/storage-dir) complete a tiny run; an unregistered SuperNode is refused."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from cdcda_fl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"


def test_tls_auth_deployment_and_unregistered_node_refused(tmp_path) -> None:
    from deploy.lab import (Lab, prepare_cfg, read_results, device_nodes, flwr_run_config, generate_supernode_keys,
                            generate_tls)

    cfg = prepare_cfg(load_config(CONFIG, [f"out-dir={tmp_path / 'out'}", "users=2"]))
    nodes = device_nodes(cfg)
    assert [n["user-id"] for n in nodes] == ["dev-u0000", "dev-u0001"]
    cfg["min-nodes"] = len(nodes)

    with Lab(tmp_path / "lab") as lab:
        link = lab.start_superlink(tls=generate_tls(lab.work / "certs"), auth=True)
        assert link.address.startswith("127.0.0.1:")
        registered = set()
        for i, node_config in enumerate(nodes):
            keys = generate_supernode_keys(lab.work / "keys", f"node{i}")
            registered.add(str(lab.register(keys)["node-id"]))
            lab.start_supernode(f"node{i}", node_config, keys)
        rogue = lab.start_supernode("rogue", {"user-id": "dev-u0000"},
                                    generate_supernode_keys(lab.work / "keys", "rogue"), max_wait=15)

        row = lab.run(ROOT, flwr_run_config(cfg), timeout=420)
        results = read_results(cfg, row)

        deadline = time.monotonic() + 60
        while rogue.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        listed = {str(n["node-id"]) for n in lab.list_supernodes()}
        superlink_log = link.proc.log_text()

    assert results["users"] == {"LaMP_2": 2, "LaMP_5": 2} and not results["failures"]
    # Each device kept its adapters on its own storage-dir.
    for node in nodes:
        assert list(Path(node["storage-dir"]).rglob("adapter_model.safetensors")), node
    # TLS was on; both registered nodes did the work; the unregistered one never joined.
    assert "running on https://127.0.0.1" in superlink_log
    assert superlink_log.count("[Fleet.ActivateNode] Activated") == len(nodes)
    assert listed == registered
    assert rogue.popen.returncode not in (None, 0)
    assert "Failed to activate SuperNode" in rogue.log_text()

"""A FedAvg update is computed only from what the device's owner lets it see (``federated`` in the
owner's consent file): every record, the records the policy shares (as shared), or none. Silent
owners: ``shared`` on a real device, ``all`` in simulation (issue 31, privacy)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cdcda_fl.device.node_fedavg as node_fedavg
from cdcda_fl.core.config import message_config, received_config, resolve
from cdcda_fl.data.personas import write_personas
from cdcda_fl.device.node import SIMULATED, hosted_users
from cdcda_fl.device.node_fedavg import FederatedNotConsented, fedavg_round, federated_training_users
from cdcda_fl.privacy.consent import ConsentError
from cdcda_fl.privacy.report import generic_error


@pytest.fixture()
def cfg(tmp_path: Path) -> dict:
    """What a device receives with a FedAvg message (a ReceivedConfig: unsent keys raise, as on a node)."""
    data = tmp_path / "data"
    write_personas(data, users=1, tasks=["LaMP_5"], seed=3, splits=("dev",), queries_per_user=1)
    run = resolve({"tasks": "LaMP_5", "users": 1, "data-dir": str(data), "out-dir": str(tmp_path / "run"),
                   "device.model": "tiny-random", "methods": "fedavg", "consent.share-fraction": 1.0})
    return received_config("fedavg", message_config("fedavg", run))


@pytest.fixture()
def trained(monkeypatch) -> list:
    """What local_round was given (the real trainer is tested in test_fedavg.py)."""
    seen: list = []

    def fake_round(users, cfg, arrays, server_round, storage_dir):
        seen.extend(users)
        return {}, sum(len(u.profile) for u in users), 0.0

    monkeypatch.setattr(node_fedavg, "local_round", fake_round)  # the name node_fedavg calls
    return seen


def _device(cfg: dict, tmp_path: Path, consent: str | None) -> dict:
    node = {"data-dir": cfg["data-dir"], "storage-dir": str(tmp_path / "device")}
    if consent is not None:
        (Path(cfg["data-dir"]) / "consent.toml").write_text(consent)
    return node


def test_a_silent_owner_on_a_real_device_contributes_only_what_the_policy_shares(cfg, tmp_path, trained) -> None:
    node = _device(cfg, tmp_path, '[default]\nshare-fraction = 0.5\nfields = "abstract,title"\n')
    (full,) = hosted_users(node, cfg)
    _, counts, users = fedavg_round(node, cfg, "LaMP_5", 1, {})
    (seen,) = trained
    assert 0 < len(seen.profile) < len(full.profile) and counts["num-examples"] == len(seen.profile)
    assert all(r["id"].startswith("r-") for r in seen.profile)  # as shared: opaque ids, allowed fields
    assert all(set(r) <= {"id", "abstract", "title"} for r in seen.profile)
    assert users == [full.user_id]


def test_all_trains_on_every_record_and_none_takes_no_part(cfg, tmp_path, trained) -> None:
    node = _device(cfg, tmp_path, '[default]\nshare-fraction = 0.5\nfederated = "all"\n')
    (full,) = hosted_users(node, cfg)
    fedavg_round(node, cfg, "LaMP_5", 1, {})
    assert trained[0].profile == full.profile
    trained.clear()
    node = _device(cfg, tmp_path, '[default]\nshare-fraction = 1.0\nfederated = "none"\n')
    with pytest.raises(FederatedNotConsented) as err:
        fedavg_round(node, cfg, "LaMP_5", 1, {})
    assert not trained and generic_error(err.value) == "federated_not_consented"


def test_share_nothing_means_no_update_under_the_default(cfg, tmp_path, trained) -> None:
    node = _device(cfg, tmp_path, None)  # no consent file on the device: it shares nothing
    with pytest.raises(FederatedNotConsented):
        fedavg_round(node, cfg, "LaMP_5", 1, {})
    assert not trained


def test_simulated_devices_default_to_every_record_and_a_bad_value_names_the_file(cfg, tmp_path) -> None:
    node = _device(cfg, tmp_path, '[default]\nshare-fraction = 0.5\n')
    users = hosted_users(node, cfg)
    kept, modes = federated_training_users(users, None, {SIMULATED: True}, cfg, tmp_path / "home")
    assert kept == users and set(modes.values()) == {"all"}
    from cdcda_fl.privacy.policy_file import load_device_policy

    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nfederated = "sometimes"\n')
    with pytest.raises(ConsentError, match=r"bad.toml.*federated must be one of none, shared, all"):
        federated_training_users(users, load_device_policy(bad), node, cfg, tmp_path / "home")

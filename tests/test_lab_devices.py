"""The lab's devices and paths, without starting Flower (fast): each device holds only its own
user's data and its owner's consent file, and keys/devices are never written inside the checkout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.lab import LabError, build_devices, main, parse_consent, prepare_cfg  # noqa: E402

CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"


def _cfg(tmp_path: Path, users: int = 2) -> dict:
    return prepare_cfg(load_config(CONFIG, [f"out-dir={tmp_path / 'out'}", f"users={users}"]))


def test_each_device_holds_only_its_users_data_and_a_consent_file_that_shares(tmp_path: Path) -> None:
    from cdcda_fl.privacy.policy_file import load_device_policy

    devices = build_devices(_cfg(tmp_path), tmp_path / "devices")
    assert [(d.name, d.users) for d in devices] == [("node0", ("dev-u0000",)), ("node1", ("dev-u0001",))]
    for d in devices:
        for task in ("LaMP_2", "LaMP_5"):
            questions = json.loads((d.data_dir / task / "dev_questions.json").read_text())
            golds = json.loads((d.data_dir / task / "dev_outputs.json").read_text())["golds"]
            assert {q["user_id"] for q in questions} == set(d.users)
            assert {g["id"] for g in golds} == {q["id"] for q in questions} and golds
        assert load_device_policy(d.consent_file).policy_for(d.users[0]).share_fraction == 0.5
        assert d.node_config() == {"data-dir": str(d.data_dir), "storage-dir": str(d.storage_dir)}


def test_consent_for_every_device_or_one_device(tmp_path: Path) -> None:
    nothing = tmp_path / "nothing.toml"
    nothing.write_text('[default]\nshare-fraction = 0.0\n')
    everything = tmp_path / "all.toml"
    everything.write_text('[default]\nshare-fraction = 1.0\n')
    consent = parse_consent([str(everything), f"node1={nothing}"])
    devices = build_devices(_cfg(tmp_path), tmp_path / "devices", consent)
    assert devices[0].consent_file.read_text() == everything.read_text()
    assert devices[1].consent_file.read_text() == nothing.read_text()
    with pytest.raises(LabError, match="node7"):
        build_devices(_cfg(tmp_path), tmp_path / "devices", parse_consent([f"node7={nothing}"]))
    with pytest.raises(LabError, match="no file"):
        parse_consent([str(tmp_path / "missing.toml")])
    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nshare-fraction = 3\n')
    with pytest.raises(LabError, match="share-fraction"):
        parse_consent([str(bad)])


@pytest.mark.parametrize("argv", [["keys", str(ROOT / "keys"), "phone1"], ["certs", str(ROOT / "certs")],
                                  ["deploy", str(CONFIG), "--work", str(ROOT / ".flwr")]])
def test_keys_certs_and_lab_folders_inside_the_checkout_are_refused(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    assert "is inside the checkout" in capsys.readouterr().err
    assert not (ROOT / "keys").exists() and not (ROOT / "certs").exists()


def test_keys_go_where_the_caller_is_with_absolute_paths_printed(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "keys", "phone1"]) == 0
    out = capsys.readouterr().out
    assert f"private {tmp_path / 'keys' / 'phone1'}" in out and (tmp_path / "keys" / "phone1.pub").is_file()

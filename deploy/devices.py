"""The lab's devices, each a folder laid out like a real device's disk.

``lab.sh deploy`` builds one device per user of the run: ``DEVICES/nodeI/data`` holds only that
user's LaMP files and the owner's ``consent.toml``; ``DEVICES/nodeI/storage`` is the device's own
disk (adapters, index, ``audit.jsonl``). Its SuperNode gets
``--node-config "data-dir=... storage-dir=..."`` and nothing else, exactly as a real device
started by hand (docs/flower.md), so the lab never runs a node that reads the server's files.

Consent: a device without ``consent.toml`` shares nothing, so the lab always writes one. The
default is the run config's ``consent.*`` keys (``consent.share-fraction = 0.5`` unless set), the
policy ``cdcda run`` gives its simulated users; ``--consent FILE`` gives every device FILE,
``--consent nodeI=FILE`` one device (e.g. a share-nothing owner next to a sharing one).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.data.lamp import record_user_id
from cdcda_fl.data.tasks import parse_task_list
from cdcda_fl.privacy.consent import ConsentError
from cdcda_fl.privacy.policy_file import device_policy_values, load_device_policy, write_device_policy
from cdcda_fl.data.run_data import data_dir_of, list_users
from cdcda_fl.core.run_config import run_config

from .common import LabError

EVERY_DEVICE = "*"


@dataclass(frozen=True)
class Device:
    """One lab device: its name (``nodeI``), folder and the user ids its data holds."""

    name: str
    root: Path
    users: tuple[str, ...]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def consent_file(self) -> Path:
        return self.data_dir / "consent.toml"

    def node_config(self) -> dict[str, str]:
        """What its SuperNode is started with: its own data and storage, no server path."""
        return {"data-dir": str(self.data_dir), "storage-dir": str(self.storage_dir)}


def parse_consent(values: Sequence[str]) -> dict[str, Path]:
    """``--consent`` values: ``FILE`` (every device) or ``nodeI=FILE``; each file must exist and parse."""
    out: dict[str, Path] = {}
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else (EVERY_DEVICE, "", value)
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise LabError(f"--consent {value}: no file {p}")
        try:
            policy = load_device_policy(p)
            for user in ("", *policy.users):  # "" = the [default] table alone
                policy.policy_for(user)
        except (ConsentError, ValueError) as exc:
            raise LabError(f"--consent {value}: {exc}") from None
        out[name or EVERY_DEVICE] = p
    return out


def build_devices(cfg: Mapping[str, Any], root: Path, consent: Mapping[str, Path] | None = None) -> list[Device]:
    """One device per user id of the run (data split from the run's data set), each with its consent file."""
    rc = run_config(cfg)
    consent = dict(consent or {})
    ids = sorted({u.user_id for u in list_users(dict(cfg))})
    if not ids:
        raise LabError("the run's data holds no user: nothing to deploy")
    devices = [Device(f"node{i}", root / f"node{i}", (uid,)) for i, uid in enumerate(ids)]
    unknown = sorted(set(consent) - {d.name for d in devices} - {EVERY_DEVICE})
    if unknown:
        raise LabError(f"--consent names {unknown}, but the devices are node0..node{len(devices) - 1}")
    source = data_dir_of(cfg)
    tasks = [t.name for t in parse_task_list(rc.tasks)]
    for device in devices:
        write_user_files(source, device.data_dir, tasks, rc.split, set(device.users))
        write_consent(device, cfg, consent.get(device.name) or consent.get(EVERY_DEVICE))
        device.storage_dir.mkdir(parents=True, exist_ok=True)
    return devices


def write_user_files(source: Path, target: Path, tasks: Sequence[str], split: str, users: set[str]) -> None:
    """Copy only ``users``' questions and golds of each task (a device holds its own user's data only)."""
    if target.exists():
        shutil.rmtree(target)  # last run's data and consent must not linger
    for task in tasks:
        questions = json.loads((source / task / f"{split}_questions.json").read_text(encoding="utf-8"))
        kept = [q for q in questions if record_user_id(q) in users]
        ids = {str(q["id"]) for q in kept}
        outputs_path = source / task / f"{split}_outputs.json"
        write_json_atomic(target / task / f"{split}_questions.json", kept)
        if outputs_path.exists():
            outputs = json.loads(outputs_path.read_text(encoding="utf-8"))
            outputs["golds"] = [g for g in outputs.get("golds", []) if str(g.get("id")) in ids]
            write_json_atomic(target / task / f"{split}_outputs.json", outputs)


def write_consent(device: Device, cfg: Mapping[str, Any], given: Path | None) -> Path:
    """The owner's policy: a copy of ``given``, else the run's ``consent.*`` keys (see module docstring)."""
    device.consent_file.parent.mkdir(parents=True, exist_ok=True)
    if given is not None:
        shutil.copyfile(given, device.consent_file)
        return device.consent_file
    return write_device_policy(device.consent_file, device_policy_values(dict(cfg)))

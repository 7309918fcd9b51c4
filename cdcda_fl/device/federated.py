"""The device's part of the federated baselines (issue 31): FedAvg rounds and the global adapter.

A federated run trains ONE LoRA adapter per task (same rank, targets and base as local LoRA)
with Flower's FedAvg over the device nodes; the Flower side is ``strategies/fedavg.py``. Here,
without Flower:

- :func:`local_round`: one node's part of a round: the global adapter (or, in round 1, the
  seeded fresh init every node builds identically, so the server never needs the model) trained
  ``fedavg.local-steps`` steps on the real records of the node's users of that task. Only the
  adapter's arrays and the number of records leave (``device.node_fedavg.fedavg_round``).
- :func:`store_global`: the final global adapter a personalize message carried, kept on the
  device for the three methods answered per user at personalize time (``fedavg``,
  ``fedavg+local``, ``cdcda+fedavg``: device/methods/fedavg.py).

Why the global adapter is not trained in the device's personalize step: FedAvg needs every
node's update each round, so the rounds run first (the server's federated phase) and the
personalize step then answers every method for every user in the same table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdcda_fl.core.config import Scalar
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.adapter_store import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from cdcda_fl.core.run_config import run_config

if TYPE_CHECKING:
    from cdcda_fl.device.lora import DeviceModel

GLOBAL_DIR = "federated"  # under the device's storage dir: the global adapters it received


def adapter_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of an adapter's arrays (names, shapes, fp32 little-endian values, in name order).

    The server and the devices compute it the same way, so a device can check the global adapter
    it received is the one the server checkpointed, and reports can name it.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype="<f4")
        h.update(name.encode())
        h.update(json.dumps(list(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class GlobalAdapter:
    """The final global adapter of one task as a device holds it: its folder and how it was trained."""

    path: Path
    sha256: str
    rounds: int
    local_steps: int

    @property
    def federated_steps(self) -> int:
        """Optimizer steps each participating node spent on it (rounds × local steps)."""
        return self.rounds * self.local_steps


def _model(cfg: Mapping[str, Scalar]) -> DeviceModel:
    """The node's cached DeviceModel (FedAvg rounds never run DP-SGD: the dp keys are not sent)."""
    rc = run_config(cfg)
    from cdcda_fl.device.lora import device_model_for  # lazy: torch; the server imports this module

    return device_model_for({"device.model": rc.device.model, "device.quantization": rc.device.quantization,
                             "device.dtype": rc.device.dtype, "dp.enabled": False})


def write_global(model: DeviceModel, cfg: Mapping[str, Scalar], arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """The arrays as a PEFT adapter folder (the run's LoRA layout + fp32 safetensors), published once.

    Folders are named by the arrays' SHA-256, so their content never changes: the folder is built
    beside ``path`` and renamed into place; if another worker (simulated nodes share a disk) got
    there first, its identical copy stays and this one is dropped. A reader never sees half a folder.
    """
    import torch
    from safetensors.torch import save_file

    from cdcda_fl.device.training import LoraTrainConfig, lora_config  # lazy: torch; the server imports this module

    config = lora_config(LoraTrainConfig.from_run_config(cfg), model.n_layers)
    config.base_model_name_or_path = model.base.model.name_or_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        config.save_pretrained(str(tmp))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        try:
            tmp.rename(path)
        except OSError:
            if not (path / ADAPTER_WEIGHTS).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_round(users: Sequence[User], cfg: Mapping[str, Scalar], arrays: Mapping[str, np.ndarray],
                server_round: int, storage_dir: Path) -> tuple[dict[str, np.ndarray], int, float]:
    """Train the global adapter on these users' real records; (updated arrays, records, final loss).

    ``arrays`` empty = round 1: a fresh adapter seeded by the run seed (identical on every node).
    The batch order is seeded by the round, so a resumed round trains exactly as the lost one did.
    """
    rc = run_config(cfg)
    from cdcda_fl.device.training import LoraTrainConfig  # lazy: torch; the server imports this module

    pairs = [p for u in users for p in get_task(u.task).profile_to_pairs(u.profile)]
    if not pairs:
        raise ValueError("no real records to train the global adapter on")
    model = _model(cfg)
    init = replace(LoraTrainConfig.from_run_config(cfg), steps=rc.fedavg.local_steps, epochs=None)
    step_cfg = replace(init, seed=rc.seed * 1000 + int(server_round))
    try:
        if arrays:
            # A folder of this call's own: simulated nodes share one storage dir and run rounds at
            # the same time, so a shared folder per digest raced (one node pruned what another was
            # loading: FileNotFoundError under `flwr run .`). It is removed once loaded.
            tmp = (Path(storage_dir) / GLOBAL_DIR / "incoming"
                   / f"{adapter_digest(arrays)[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                write_global(model, cfg, arrays, tmp)
                model.load_adapter(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            res = model.train(pairs, step_cfg, continue_active=True)
        else:
            res = model.train(pairs, init)
        return model.adapter_arrays(), len(pairs), float(res.final_loss)
    finally:
        model.clear_adapter()


def store_global(model: DeviceModel | None, cfg: Mapping[str, Scalar], storage_dir: Path, task: str,
                 meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None) -> GlobalAdapter:
    """Keep the global adapter a personalize message carried (checked against its SHA-256) on the device."""
    sha = str(meta["sha256"])
    path = Path(storage_dir) / GLOBAL_DIR / str(task) / sha[:16]
    if not (path / ADAPTER_CONFIG).is_file():
        if not arrays:
            raise ValueError(f"no global adapter arrays for {task}")
        if adapter_digest(arrays) != sha:
            raise ValueError(f"the global adapter for {task} does not match its SHA-256")
        write_global(model or _model(cfg), cfg, arrays, path)
    return GlobalAdapter(path, sha, int(meta.get("rounds", 0)), int(meta.get("local_steps", 0)))

"""The device's part of the federated baselines (issue 31): FedAvg rounds and three methods.

A federated run trains ONE LoRA adapter per task (same rank, targets and base as local LoRA)
with Flower's FedAvg over the device nodes; the Flower side is ``strategies/fedavg.py``. Here,
without Flower:

- :func:`local_round`: one node's part of a round: the global adapter (or, in round 1, the
  seeded fresh init every node builds identically, so the server never needs the model) trained
  ``fedavg.local-steps`` steps on the real records of the node's users of that task. Only the
  adapter's arrays and the number of records leave (``device_node.fedavg_round``).
- the methods answered per user at personalize time, from the final global adapter the
  personalize message carried (:func:`store_global`):
  ``fedavg`` (the global adapter as is), ``fedavg+local`` (it, fine-tuned on the user's real
  records with local LoRA's budget: the usual "FedAvg, then personalize") and ``cdcda+fedavg``
  (CDCDA's training starting from it instead of from a fresh adapter; it follows CDCDA's own
  decision about the cloud's records, made as for ``cdcda``: cloud records → real + synthetic
  from the global adapter, local-only → ``fedavg+local``, base → ``fedavg``).

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
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdcda_fl.config import Scalar
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.adapter_store import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAIN_META
from cdcda_fl.device.schedule import train_cdcda
from cdcda_fl.device.train_key import adapter_key, fingerprint

if TYPE_CHECKING:
    from cdcda_fl.device.lora import DeviceModel
    # the one import back into personalize (a cycle, issue 30): the methods here take its _UserRun
    from cdcda_fl.device.personalize import _UserRun

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
    from cdcda_fl.device.lora import device_model_for  # lazy: torch; the server imports this module

    return device_model_for({"device.model": cfg["device.model"], "device.quantization": cfg["device.quantization"],
                             "device.dtype": cfg["device.dtype"], "dp.enabled": False})


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
    from cdcda_fl.device.training import LoraTrainConfig  # lazy: torch; the server imports this module

    pairs = [p for u in users for p in get_task(u.task).profile_to_pairs(u.profile)]
    if not pairs:
        raise ValueError("no real records to train the global adapter on")
    model = _model(cfg)
    init = replace(LoraTrainConfig.from_run_config(cfg), steps=int(cfg["fedavg.local-steps"]), epochs=None)
    step_cfg = replace(init, seed=int(cfg["seed"]) * 1000 + int(server_round))
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


# ---------------------------------------------------------------------- the methods
def _global(run: _UserRun) -> GlobalAdapter:
    adapter = run.global_adapter
    if adapter is None:
        raise RuntimeError(f"no global adapter for {run.spec.name}: the federated phase did not finish for this task")
    return adapter


def _global_info(adapter: GlobalAdapter, **extra: Any) -> dict[str, Any]:
    return {"federated_steps": adapter.federated_steps, "rounds": adapter.rounds, "local_steps": adapter.local_steps,
            "global_sha256": adapter.sha256, **extra}


def train_from_global(run: _UserRun, method: str, real_w: list[float], synth: list[tuple[str, str]],
                      synth_w: list[float]) -> dict[str, Any]:
    """Fine-tune the global adapter on the user's real (+ synthetic) pairs, or reload it from the store.

    The same budget and schedule as the method that starts from a fresh adapter (local LoRA's
    steps; CDCDA's ``train.synthetic-schedule`` and real-exposure stretch), keyed by the global
    adapter's SHA-256, so a rerun with the same global adapter and data reuses it.
    """
    adapter = _global(run)
    cfg, real = run.cfg, list(run.real_pairs)
    # the typed key of the same training from a fresh adapter (device/train_key.py), plus where it starts
    trained = adapter_key(cfg, [*real, *synth], [*real_w, *synth_w], len(real))
    key = f"{run.spec.name}-{method}-{fingerprint(trained, 'from-global', adapter.sha256)}"
    path = run.store.path(run.user.user_id, key)
    stored = run.load_stored(key)
    if stored is not None:
        return stored
    run.model.load_adapter(adapter.path)
    res = train_cdcda(run.model, cfg, real, real_w, synth, synth_w, from_active=True)
    info = _global_info(adapter, steps=res.steps, tokens=res.trained_tokens, seconds=round(res.seconds, 3),
                        final_loss=res.final_loss, n_real=len(real), n_synthetic=len(synth))
    run.model.save_adapter(path, extra_files={TRAIN_META: json.dumps(info)})
    run.adapter_dir = path
    return info


def _fedavg(run: _UserRun) -> None:
    """The global adapter as it is: what FedAvg alone gives this user."""
    started = time.perf_counter()
    adapter = _global(run)
    run.model.load_adapter(adapter.path)
    run.adapter_dir = adapter.path
    run.defer("fedavg", run.inputs, started, train=_global_info(adapter, steps=0, seconds=0.0))


def _fedavg_local(run: _UserRun) -> None:
    """The global adapter fine-tuned on the user's real records with local LoRA's budget."""
    started = time.perf_counter()
    info = train_from_global(run, "fedavg+local", [1.0] * len(run.real_pairs), [], [])
    run.defer("fedavg+local", run.inputs, started, train=info)


def _cdcda_fedavg(run: _UserRun) -> None:
    """CDCDA from the global adapter: CDCDA's decision, real + synthetic training started from it."""
    if run.cfg["dp.enabled"]:
        raise ValueError("cdcda+fedavg is not defined under dp.enabled (its DP accounting would need the "
                         "global adapter's, which FedAvg here does not provide)")
    started = time.perf_counter()
    run.prepare_synthetic()
    decision = run.synthetic_decision()
    answer_with = decision.answers_with
    extra = {"decision": {"rule": decision.rule, "used_synthetic": decision.used_synthetic,
                          "answer_with": answer_with}}
    if answer_with == "cdcda":
        info = train_from_global(run, "cdcda+fedavg", list(run.real_weights), list(run.synth_pairs),
                                 list(run.synth_weights))
        run.defer("cdcda+fedavg", run.inputs, started, train=info, **extra)
        return
    same = "fedavg+local" if answer_with == "local" else "fedavg"
    if run.answers_queued(same):
        run.same_answers("cdcda+fedavg", same, started, train={"steps": 0, "same_as": same}, **extra)
        return
    if same == "fedavg+local":
        info = train_from_global(run, "fedavg+local", [1.0] * len(run.real_pairs), [], [])
    else:
        adapter = _global(run)
        run.model.load_adapter(adapter.path)
        run.adapter_dir = adapter.path
        info = _global_info(adapter, steps=0)
    run.defer("cdcda+fedavg", run.inputs, started, train=info, **extra)


#: registered into device/personalize.py's METHODS
FEDERATED = {"fedavg": _fedavg, "fedavg+local": _fedavg_local, "cdcda+fedavg": _cdcda_fedavg}

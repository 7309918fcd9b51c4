"""The one DeviceModel a worker process holds per base model.

Users, their methods and the FedAvg rounds all swap adapters on it, never the base: a Ray actor
serving many simulated nodes loads each base model once (``device/models.py: cached``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdcda_fl.config import Scalar
from cdcda_fl.device.train_key import base_dtype


def device_model_for(cfg: Mapping[str, Scalar]) -> Any:
    """The cached DeviceModel on ``device.model`` as the run loads it (quantization, dtype: fp32 under DP)."""
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import cached, get_base_model

    dtype = base_dtype(cfg)
    model, quantization = str(cfg["device.model"]), str(cfg["device.quantization"]) or None
    return cached(("device", model, quantization, dtype),
                  lambda: DeviceModel(get_base_model(model, quantization=quantization, dtype=dtype)))

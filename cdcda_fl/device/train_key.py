"""What a stored adapter (or a stored decision) is keyed by: its data and its *resolved* settings.

A device reuses an adapter from its store when the key matches, so a key that misses a setting
reuses a stale adapter (a hand-written key list missed ``train.equal-real-exposure``, issue 29.14).
The keys here are built from what training actually receives: the base model as loaded, the
schedule's resolved stages (:func:`~cdcda_fl.device.schedule.plan_cdcda`: LoRA settings with their
step budgets, so every key that changes a budget is in), the DP candidates (LoRA + DPConfig +
plan), the gate's and the selector's typed configs, and the DP decision rule. A new setting that
reaches training through one of these is in the key without anyone listing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cdcda_fl.core.config import check_dp_selection
from cdcda_fl.device.schedule import plan_cdcda
from cdcda_fl.device.select import SelectConfig
from cdcda_fl.device.synthetic_gate import GateConfig
from cdcda_fl.core.run_config import run_config

Pairs = Sequence[tuple[str, str]]


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def base_dtype(cfg: Mapping[str, Any]) -> str:
    """The dtype the device loads its base model in (``device.dtype``, fp32 under DP when ``auto``)."""
    rc = run_config(cfg)
    dtype = rc.device.dtype
    if rc.dp.enabled and dtype in ("", "auto"):
        dtype = "fp32"  # Opacus's per-sample gradients are checked in fp32 only (tests/test_dp.py)
    return dtype


def base_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The base model as the device loads it (device_model_for)."""
    rc = run_config(cfg)
    return {"model": rc.device.model, "quantization": rc.device.quantization or None,
            "dtype": base_dtype(cfg)}


def adapter_key(cfg: Mapping[str, Any], pairs: Pairs, weights: Sequence[float], n_real: int,
                step_scale: float = 1.0) -> str:
    """A non-DP adapter trained by ``train_cdcda`` on ``pairs`` (the first ``n_real`` real)."""
    stages = plan_cdcda(cfg, pairs[:n_real], weights[:n_real], pairs[n_real:], weights[n_real:],
                        step_scale=step_scale)
    return stages_key(base_identity(cfg), stages, pairs, weights)


def stages_key(base: Mapping[str, Any], stages: Sequence[Any], pairs: Pairs, weights: Sequence[float]) -> str:
    """The key of an adapter trained in ``stages`` (schedule.Stage: every field, the LoRA config's
    included) from ``base`` on ``pairs`` with ``weights``."""
    return fingerprint({"base": dict(base), "stages": [s.to_dict() for s in stages]}, list(pairs), list(weights))


def gate_key(cfg: Mapping[str, Any], gate: GateConfig, select: SelectConfig, real: Pairs, real_w: Sequence[float],
             synth: Pairs, synth_w: Sequence[float]) -> str:
    """The synthetic-data check's decision: its rule (every field of the typed gate and selector
    configs, and the crossfit rule's version), and how CDCDA would train."""
    from cdcda_fl.device.crossfit import RULE_VERSION as CROSSFIT_VERSION
    from cdcda_fl.device.schedule import plan_cdcda

    stages = plan_cdcda(cfg, real, real_w, synth, synth_w)
    settings = {"base": base_identity(cfg), "stages": [s.to_dict() for s in stages],
                "gate": asdict(gate), "select": asdict(select), "seed": run_config(cfg).seed}
    key = fingerprint(settings, list(real), list(synth), list(synth_w))
    # a changed crossfit rule never reuses the old rule's decisions (a suffix, so that the stored
    # decisions of the other rules keep their keys)
    return f"{key}-x{CROSSFIT_VERSION}" if gate.rule == "crossfit" else key


@dataclass(frozen=True)
class DPRule:
    """How a DP method decides between its candidates and the base (the ``dp.*`` keys that are not
    a candidate's training): typed, so the adapter key holds each of them."""

    selection: str
    fallback: bool
    fallback_margin: float
    public_warmstart: bool
    validation_fraction: float

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> DPRule:
        rc = run_config(cfg)
        return cls(selection=check_dp_selection(cfg),
                   fallback=rc.dp.fallback,
                   fallback_margin=rc.dp.fallback_margin,
                   public_warmstart=rc.dp.public_warmstart,
                   validation_fraction=rc.dp.validation_fraction)


def dp_key(cfg: Mapping[str, Any], rule: DPRule, method: str, candidates: Sequence[Any], public_lora: Any | None,
           data: Sequence[Any], shared_ids: Collection[str] | None = None) -> str:
    """A DP method's stored adapter or fall-back: its candidates (each one's LoRA, DPConfig and
    plan), the public stage, the rule, and (private selection) which records count as private,
    i.e. the device's shared set."""
    from cdcda_fl.core.method_table import method_entry

    settings = asdict(rule)
    if not method_entry(method).uses_cloud_data:  # local-only never trains on the cloud's records: these do not apply
        settings.pop("selection"), settings.pop("public_warmstart")
    key = {"base": base_identity(cfg), "method": method, "rule": settings,
           "candidates": [asdict(c) for c in candidates],
           "public": asdict(public_lora) if public_lora is not None else None,
           "shared": sorted(shared_ids) if shared_ids is not None else None}
    return fingerprint(key, *data)

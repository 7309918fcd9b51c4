"""How CDCDA's adapter trains on real + synthetic pairs (``train.synthetic-schedule``).

- ``mix`` (default): one training on the weighted union (methods/mixture.mixture_weights and the
  per-record cap decide the weights). The cloud's records and the user's own share every batch.
- ``synthetic-first``: two stages on one adapter. It first trains on the cloud's records alone
  (their capped weights, local-only's step budget scaled by their mass per real record, at most
  1: methods/mixture.mixture_weights gives them ``alpha`` per real record whose label they cover),
  then continues on the user's real records alone with exactly local-only's step budget. Why: the last thing the adapter sees is the user's own
  writing, with as many updates as local-only gives it; the synthetic stage only moves where
  that training starts (a prior in the user's style). In ``mix`` the cloud's records take a
  share of every update, and with ``train.equal-real-exposure = false`` the real records get
  fewer updates than in local-only. The price: the synthetic stage's steps come on top of
  local-only's, so this schedule always has equal *real* exposure, whatever
  ``train.equal-real-exposure`` says (results report each method's steps).

Both the final CDCDA adapter and the holdout check's real + synthetic adapter train through
:func:`train_cdcda`, so the check tests the schedule that will be used. Under DP the key does not
apply: CDCDA+DP always runs its own two stages (``dp.public-warmstart``, docs/dp.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cdcda_fl.core.config import ConfigError
from cdcda_fl.core.run_config import run_config

Pairs = Sequence[tuple[str, str]]


class ScheduleError(ConfigError):
    """A bad ``train.synthetic-schedule`` setting."""


def exposure_scale(cfg: Mapping[str, Any], weights: Sequence[float], real_pairs: Sequence[Any]) -> float:
    """Equal real-data exposure: with synthetic data adding mass alpha per unit of real data, a fixed
    step budget would give the real records 1/(1+alpha) of the updates they get in local training,
    and CDCDA would lose the user's exact patterns; so CDCDA's budget is stretched by the mass."""
    return sum(weights) / len(real_pairs) if run_config(cfg).train.equal_real_exposure and real_pairs else 1.0


@dataclass(frozen=True)
class Stage:
    """One training of a schedule: on which pairs (``all``, ``synthetic``, ``real``), with which
    resolved LoRA settings, and whether it continues the adapter of the stage before."""

    data: str
    lora: Any  # LoraTrainConfig (imported lazily: torch)
    continues: bool = False

    def to_dict(self) -> dict[str, Any]:
        """What the stage's weights depend on besides its data (every field, the LoRA config's too):
        the adapter store's fingerprint uses it."""
        return asdict(self)


def _mix(cfg: Mapping[str, Any], real: Pairs, real_w: Sequence[float], synth: Pairs,
         synth_w: Sequence[float], step_scale: float) -> list[Stage]:
    from cdcda_fl.device.training import LoraTrainConfig  # lazy: torch; the server plans without it

    weights = [*real_w, *synth_w]
    return [Stage("all", LoraTrainConfig.from_run_config(cfg, step_scale * exposure_scale(cfg, weights, real)))]


def _synthetic_first(cfg: Mapping[str, Any], real: Pairs, real_w: Sequence[float], synth: Pairs,
                     synth_w: Sequence[float], step_scale: float) -> list[Stage]:
    from cdcda_fl.device.training import LoraTrainConfig  # lazy: torch; the server plans without it

    if not synth:
        return _mix(cfg, real, real_w, synth, synth_w, step_scale)
    share = min(1.0, sum(synth_w) / max(len(real), 1))  # synthetic mass per real record, at most 1
    return [Stage("synthetic", LoraTrainConfig.from_run_config(cfg, step_scale * share)),
            Stage("real", LoraTrainConfig.from_run_config(cfg, step_scale), continues=True)]


#: name -> the stages CDCDA trains one adapter in, from (real, real weights, synthetic, synthetic weights).
SCHEDULES: dict[str, Callable[..., list[Stage]]] = {"mix": _mix, "synthetic-first": _synthetic_first}


def schedule_name(cfg: Mapping[str, Any]) -> str:
    """The configured schedule, checked (a clear error names the key and the choices)."""
    name = run_config(cfg).train.synthetic_schedule.strip().lower()
    if name not in SCHEDULES:
        raise ScheduleError(f"train.synthetic-schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
    return name


def plan_cdcda(cfg: Mapping[str, Any], real: Pairs, real_w: Sequence[float], synth: Pairs,
               synth_w: Sequence[float], *, step_scale: float = 1.0) -> list[Stage]:
    """The stages :func:`train_cdcda` runs, resolved (step budgets included): what a stored
    adapter is keyed by, so a setting that changes training can never reuse a stale one."""
    return SCHEDULES[schedule_name(cfg)](cfg, real, real_w, synth, synth_w, step_scale)


def train_cdcda(model: Any, cfg: Mapping[str, Any], real: Pairs, real_w: Sequence[float], synth: Pairs,
                synth_w: Sequence[float], *, step_scale: float = 1.0, from_active: bool = False) -> Any:
    """Train a fresh CDCDA adapter (left active on ``model``) under ``train.synthetic-schedule``.

    ``from_active``: train the adapter the model holds further instead of a fresh one (the
    federated methods start from the FedAvg global adapter, device/federated.py).

    ``step_scale`` scales local-only's step budget (the holdout check trains on part of the
    profile: synthetic_gate.check_step_scale). Returns the TrainResult (steps summed over stages).
    """
    from cdcda_fl.device.training import TrainResult  # lazy: torch; the server plans without it

    data = {"all": ([*real, *synth], [*real_w, *synth_w]), "synthetic": (list(synth), list(synth_w)),
            "real": (list(real), [1.0] * len(real))}  # the real stage trains as local-only does
    results = []
    for i, stage in enumerate(plan_cdcda(cfg, real, real_w, synth, synth_w, step_scale=step_scale)):
        pairs, weights = data[stage.data]
        extra = {"continue_active": True} if stage.continues or (from_active and i == 0) else {}
        results.append(model.train(pairs, stage.lora, None, weights=weights, **extra))
    if len(results) == 1:
        return results[0]
    return TrainResult(steps=sum(r.steps for r in results), trained_tokens=sum(r.trained_tokens for r in results),
                       seconds=sum(r.seconds for r in results), final_loss=results[-1].final_loss,
                       losses=[x for r in results for x in r.losses])

"""The federated baselines at personalize time, from the final FedAvg global adapter (issue 31).

``fedavg`` answers with the global adapter as is, ``fedavg+local`` fine-tunes it on the user's
real records with local LoRA's budget (the usual "FedAvg, then personalize"), and ``cdcda+fedavg``
starts CDCDA's training from it instead of from a fresh adapter; it follows CDCDA's own decision
about the cloud's records (cloud records → real + synthetic from the global adapter, local-only →
``fedavg+local``, base → ``fedavg``). The rounds themselves run before, in the server's federated
phase (device/federated.py): FedAvg needs every node's update each round.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from cdcda_fl.device.federated import GlobalAdapter
from cdcda_fl.device.methods.method import Method, Refused
from cdcda_fl.device.methods.stored import load_stored, save_adapter
from cdcda_fl.device.methods.user_run import UserRun
from cdcda_fl.device.schedule import train_cdcda
from cdcda_fl.device.train_key import adapter_key, fingerprint


def global_adapter(run: UserRun) -> GlobalAdapter:
    """The task's global adapter the personalize message carried (an error if the federated phase failed)."""
    adapter = run.global_adapter
    if adapter is None:
        raise RuntimeError(f"no global adapter for {run.spec.name}: the federated phase did not finish for this task")
    return adapter


def global_info(adapter: GlobalAdapter, **extra: Any) -> dict[str, Any]:
    """A federated method's ``train`` report: how the global adapter was trained, and its SHA-256."""
    return {"federated_steps": adapter.federated_steps, "rounds": adapter.rounds, "local_steps": adapter.local_steps,
            "global_sha256": adapter.sha256, **extra}


def hold_global(run: UserRun) -> GlobalAdapter:
    """Load the global adapter as it is into the model."""
    adapter = global_adapter(run)
    run.hold(adapter.path)
    return adapter


def train_from_global(run: UserRun, method: str, real_w: Sequence[float], synth: Sequence[tuple[str, str]],
                      synth_w: Sequence[float]) -> dict[str, Any]:
    """Fine-tune the global adapter on the user's real (+ synthetic) pairs, or reload it from the store.

    The same budget and schedule as the method that starts from a fresh adapter (local LoRA's
    steps; CDCDA's ``train.synthetic-schedule`` and real-exposure stretch), keyed by the global
    adapter's SHA-256, so a rerun with the same global adapter and data reuses it.
    """
    adapter = global_adapter(run)
    cfg, real = run.cfg, list(run.real_pairs)
    real_w, synth, synth_w = list(real_w), list(synth), list(synth_w)
    # the typed key of the same training from a fresh adapter (device/train_key.py), plus where it starts
    trained = adapter_key(cfg, [*real, *synth], [*real_w, *synth_w], len(real))
    key = f"{run.spec.name}-{method}-{fingerprint(trained, 'from-global', adapter.sha256)}"
    stored = load_stored(run, key)
    if stored is not None:
        return stored
    run.model.load_adapter(adapter.path)
    res = train_cdcda(run.model, cfg, real, real_w, synth, synth_w, from_active=True)
    info = global_info(adapter, steps=res.steps, tokens=res.trained_tokens, seconds=round(res.seconds, 3),
                       final_loss=res.final_loss, n_real=len(real), n_synthetic=len(synth))
    save_adapter(run, key, info)
    return info


class FedAvg(Method):
    """The global adapter as it is: what FedAvg alone gives this user."""

    name: ClassVar[str] = "fedavg"

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        adapter = hold_global(run)
        run.defer(self.name, run.inputs, started, train=global_info(adapter, steps=0, seconds=0.0))


class FedAvgLocal(Method):
    """The global adapter fine-tuned on the user's real records with local LoRA's budget."""

    name: ClassVar[str] = "fedavg+local"

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        info = train_from_global(run, self.name, [1.0] * len(run.real_pairs), [], [])
        run.defer(self.name, run.inputs, started, train=info)


class CdcdaFedAvg(Method):
    """CDCDA from the global adapter: CDCDA's decision, real + synthetic training started from it."""

    name: ClassVar[str] = "cdcda+fedavg"

    @classmethod
    def private(cls, cfg: Mapping[str, Any]) -> Method:
        return Refused(cls.name, "is not defined under dp.enabled (its DP accounting would need the "
                                 "global adapter's, which FedAvg here does not provide)")

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        cloud = run.cloud
        cloud.prepare()
        decision = cloud.decision()
        answer_with = decision.answers_with
        extra = {"decision": {"rule": decision.rule, "used_synthetic": decision.used_synthetic,
                              "answer_with": answer_with}}
        if answer_with == "cdcda":
            info = train_from_global(run, self.name, cloud.real_weights, cloud.synth_pairs, cloud.synth_weights)
            run.defer(self.name, run.inputs, started, train=info, **extra)
            return
        same = FedAvgLocal.name if answer_with == "local" else FedAvg.name
        if run.answers.queued(same):
            # the budget of the adapter it answers with (its steps and FedAvg's), not 0 (issue 31's budget column)
            run.same_answers(self.name, same, started, train={**(run.answers.train_of(same) or {"steps": 0}),
                                                                 "same_as": same}, **extra)
            return
        if same == FedAvgLocal.name:
            info = train_from_global(run, same, [1.0] * len(run.real_pairs), [], [])
        else:
            info = global_info(hold_global(run), steps=0)
        run.defer(self.name, run.inputs, started, train=info, **extra)

"""The DP form of a method that trains on the user's records (``local``, ``cdcda`` under ``dp.enabled``).

It replaces the method's non-private training as a whole rather than branching inside it: DP-SGD
candidates (:func:`~cdcda_fl.device.dp_select.train_private`) or, for a method that trains on the
cloud's records with ``dp.selection = private``, a cloud-trained adapter and one ε-DP choice
(:func:`~cdcda_fl.device.dp_select.select_public_privately`); a privacy-free choice on the cloud's
records; and a fall-back to the base model when no candidate beats it (docs/dp.md). What differs
between the wrapped methods is one trait of the method table: whether the method trains on the
cloud's records (then its DP data holds some of them out for validation and may warm-start on
them); local-only validates on all of them and trains on none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import Scalar
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import TaskSpec, get_task
from cdcda_fl.device.methods.method import Method
from cdcda_fl.device.methods.person import is_person_scope
from cdcda_fl.device.methods.stored import TRAIN_META, stored_meta, write_meta_only
from cdcda_fl.device.methods.user_run import UserRun
from cdcda_fl.device.schedule import exposure_scale
from cdcda_fl.device.train_key import DPRule, dp_key
from cdcda_fl.core.method_table import method_entry
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric, score
from cdcda_fl.core.run_config import run_config

Pairs = list[tuple[str, str]]


def dp_training_data(spec: TaskSpec, user: User, synthetic: Sequence[Mapping[str, Any]], method: str,
                     cfg: Mapping[str, Scalar]) -> tuple[Pairs, Pairs, list[float], Pairs]:
    """(real pairs, synthetic training pairs, their weights, validation pairs) for a DP method.

    ``synthetic`` are the cloud's records that passed the task's validation: written from the
    records the user consented to share, so everything derived from them alone is free of the
    DP budget. Only the real pairs are private. Hence, unlike ``mixture.mixture_weights`` (which
    uses the private label counts), under DP:

    - validation pairs are cloud-written records only: all of them for ``local`` (it never
      trains on them), a seeded ``dp.validation-fraction`` held out of training for ``cdcda``;
    - CDCDA's synthetic training pairs all get the same weight ``alpha * n_real / n_synthetic``
      (the mixing ratio; n is public in this accounting, as for δ and the plan), and none is
      dropped by the user's private label set: a weight or a record chosen from non-shared
      records would change with one of them, which the DP-SGD sensitivity bound does not allow.
    """
    from cdcda_fl.device.dp_select import holdout_split

    rc = run_config(cfg)
    real_pairs = spec.profile_to_pairs(user.profile)
    records = [dict(r) for r in synthetic]
    trains_on_cloud = method_entry(method).uses_cloud_data
    if trains_on_cloud and records:
        fraction = rc.dp.validation_fraction
        train_recs, _, val_recs = holdout_split(records, None, fraction, seed=f"{rc.seed}:{user.user_id}")
    elif trains_on_cloud:
        train_recs, val_recs = [], []
    else:
        train_recs, val_recs = [], records
    alpha = rc.train.synthetic_weight
    synth_pairs = spec.profile_to_pairs(train_recs) if alpha > 0 else []
    synth_weights = [alpha * len(real_pairs) / len(synth_pairs)] * len(synth_pairs) if synth_pairs else []
    return real_pairs, synth_pairs, synth_weights, spec.profile_to_pairs(val_recs)


#: Range of the error metrics that metric_utilities turns into [0, 1] utilities (LaMP-3 scores are 1-5).
_ERROR_SCALE = {"mae": 4.0, "rmse": 4.0}


def metric_utilities(model: Any, spec: TaskSpec, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Each record's task metric for the model's greedy answer, in [0, 1] (1 = right; errors scaled down).

    The utility of :func:`cdcda_fl.device.dp_select.select_public_privately`: what the user would
    see, per record, so one record moves a sum by at most 1.
    """
    metric = primary_metric(spec)
    answers = model.generate([p for p, _ in pairs], max_new_tokens=spec.max_new_tokens)
    out = []
    for (_, gold), text in zip(pairs, answers):
        value = float(score(spec, {"r": gold}, {"r": spec.parse_answer(text)})[metric])
        if metric in LOWER_IS_BETTER:
            value = 1.0 - value / _ERROR_SCALE.get(metric, 1.0)
        out.append(min(1.0, max(0.0, value)))
    return out


@dataclass(frozen=True)
class Private(Method):
    """``method`` trained under DP; its report entry carries ``train``, the composed ``epsilon``
    (over every candidate trained, fall-back included: the decision to fall back is computed
    from the candidates) and ``dp`` (the decision, the base's and each candidate's validation
    loss, σ, ε, δ)."""

    method: str
    trains_on_cloud_records: bool  # the method table's trait: cdcda, not local
    rule: DPRule
    target_epsilon: float  # 0: dp.noise-multiplier is set instead, so there is no ε to spend on a private choice

    @classmethod
    def around(cls, method: str, cfg: Mapping[str, Any]) -> Private:
        """The DP form of ``method`` (a trained method's :meth:`Method.private`), its ``dp.*`` rule read once."""
        rc = run_config(cfg)
        return cls(method, method_entry(method).uses_cloud_data, DPRule.from_run_config(cfg),
                   rc.dp.epsilon)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.method

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        extra = self._train_or_reuse(run)
        if self.trains_on_cloud_records:  # under DP: every valid cloud record but the validation split
            run.result["n_synthetic_used"] = int(extra["train"]["n_synthetic"])
        extra.update(run.mia())
        if extra["dp"]["fell_back"] and run.answers.queued("base"):
            run.same_answers(self.method, "base", started, **extra)  # the base model's own answers
        else:
            run.defer(self.method, run.inputs, started, **extra)

    def _train_or_reuse(self, run: UserRun) -> dict[str, Any]:
        """Train (or reuse) the adapter; on return the model holds the chosen one (``run.adapter_dir``),
        or none when the decision fell back to the base. Returns the method's report entry."""
        from cdcda_fl.device.dp_select import candidates_for, public_lora, select_public_privately, train_private

        cfg, model = run.cfg, run.model
        data = person_dp_data(run, self.method) if is_person_scope(run) else task_dp_data(run, self.method)
        real_pairs, synth_pairs, synth_weights, validation = data.real, data.synth, data.synth_weights, data.validation
        weights = [1.0] * len(real_pairs) + synth_weights
        trains_on_cloud = self.trains_on_cloud_records
        # Private selection needs cloud records to train on and a target ε to spend (with only
        # dp.noise-multiplier set there is no ε to give the exponential mechanism): else DP-SGD candidates.
        private_select = (trains_on_cloud and self.rule.selection == "private" and bool(synth_pairs or validation)
                          and self.target_epsilon > 0)
        public: Pairs = []
        private_pairs: Pairs = []
        shared_ids: set[str] | None = None  # DP-SGD covers every real record, shared or not
        if private_select:
            # Every cloud record trains the public adapter (no synthetic hold-out is needed: the choice is
            # made on the non-shared real records, with the exponential mechanism).
            shared, private_pairs = data.private_records()
            shared_ids = set(shared)
            public = [*synth_pairs, *validation]
            candidates = candidates_for(cfg, len(real_pairs))[:1]
        else:
            if trains_on_cloud and synth_pairs and self.rule.public_warmstart:
                # The cloud's records are public here: a noise-free first stage, then DP-SGD on the real pairs only.
                public, synth_pairs, synth_weights, weights = synth_pairs, [], [], [1.0] * len(real_pairs)
            scale = exposure_scale(cfg, weights, real_pairs)
            candidates = candidates_for(cfg, len(real_pairs) + len(synth_pairs), step_scale=scale)
        stage = public_lora(candidates[0].lora, cfg, len(public)) if public else None
        key = f"{data.prefix}-{self.method}-dp-" + dp_key(cfg, self.rule, self.method, candidates, stage,
                                                          (real_pairs, synth_pairs, synth_weights, validation, public),
                                                          shared_ids)
        path = run.store.path(run.user.user_id, key)
        reused = self._reuse(run, key, path)
        if reused is not None:
            return reused
        started = time.perf_counter()
        if private_select:
            decision, res = select_public_privately(
                model, public, private_pairs, cfg, candidates[0].lora,
                seed=f"{run_config(cfg).seed}:{run.user.user_id}", utilities=data.utilities,
                utility_name=data.utility_name)
            return _store_entry(run, path, decision, res, started, real_pairs, public)
        decision, res = train_private(model, real_pairs, synth_pairs, validation, cfg,
                                      synth_weights=synth_weights if synth_pairs else None, candidates=candidates,
                                      public_pairs=public)
        return _store_entry(run, path, decision, res, started, real_pairs, [*synth_pairs, *public],
                            n_public=len(public))

    @staticmethod
    def _reuse(run: UserRun, key: str, path: Path) -> dict[str, Any] | None:
        """The stored decision (and adapter, unless it fell back) under ``key``, loaded; None to train."""
        info = stored_meta(run, key)
        if info is None:
            return None
        decision = info.get("dp") or {}
        train = {**{k: v for k, v in info.items() if k != "dp"}, "reused": True}
        if decision.get("fell_back"):
            run.clear()
            return {"train": train, "epsilon": info.get("epsilon"), "dp": decision}
        if decision and run.store.exists(run.user.user_id, key):
            run.hold(path)
            return {"train": train, "epsilon": info.get("epsilon"), "dp": decision}
        return None


@dataclass(frozen=True)
class DPData:
    """What a DP method trains, validates and chooses on, and the stored adapter's folder prefix."""

    prefix: str  # "<task>" (one adapter per task) or "person" (train.adapter-scope = user)
    real: Pairs
    synth: Pairs
    synth_weights: list[float]
    validation: Pairs
    #: (ids of the records the device shared, real pairs of the others): private selection spends ε
    #: on the others only. Called only then: a device's ledger, or in library use cfg's consent keys.
    private_records: Callable[[], tuple[frozenset[str], Pairs]]
    utilities: Callable[[Any, Sequence[tuple[str, str]]], list[float]]
    utility_name: str


def task_dp_data(run: UserRun, method: str) -> DPData:
    """One task's data: the user's real pairs, the cloud's valid records of this task."""
    spec, user, cfg = run.spec, run.user, run.cfg
    real, synth, weights, validation = dp_training_data(spec, user, run.cloud.valid, method, cfg)

    def private_records() -> tuple[frozenset[str], Pairs]:
        shared = _shared_of(run)
        return shared, _unshared_pairs(spec, user, shared)

    return DPData(spec.name, real, synth, weights, validation, private_records,
                  lambda m, pairs: metric_utilities(m, spec, pairs), f"the greedy answer's {primary_metric(spec)} in [0, 1]")


def person_dp_data(run: UserRun, method: str) -> DPData:
    """``train.adapter-scope = user`` under DP: the union of the person's tasks (methods/person.py).

    Every task's data is built as in task scope and concatenated in the device's order of the
    person's tasks, so any task of theirs computes the same adapter key (the first trains, the
    others reload). Real pairs keep weight 1 -- a per-task weight above 1 would scale a record's
    clipped gradient past the DP-SGD bound -- so the mixing rule under DP is "every real record
    once" (``train.task-mix-alpha`` does not apply). One ε covers all of the person's records,
    where task scope spends one ε per task. A task's cloud records count when that task's run is
    in the same personalize call (the orchestrator keeps a person's tasks together)."""
    siblings = {s.user.task: s for s in run.siblings}
    real: Pairs = []
    synth: Pairs = []
    weights: list[float] = []
    validation: Pairs = []
    spec_of: dict[str, TaskSpec] = {}
    for user in run.person:
        spec = get_task(user.task)
        sibling = siblings.get(user.task)
        records = sibling.cloud.valid if sibling is not None else []
        r, s, w, v = dp_training_data(spec, user, records, method, run.cfg)
        real += r
        synth += s
        weights += w
        validation += v
        spec_of.update({prompt: spec for prompt, _ in r})

    def private_records() -> tuple[frozenset[str], Pairs]:
        shared: set[str] = set()
        private: Pairs = []
        for user in run.person:
            sibling = siblings.get(user.task)
            own = _shared_of(sibling) if sibling is not None else _library_shared_ids(user, run.cfg)
            shared |= {f"{user.task}:{i}" for i in own}  # record ids are per task
            private += _unshared_pairs(get_task(user.task), user, own)
        return frozenset(shared), private

    def utilities(model: Any, pairs: Sequence[tuple[str, str]]) -> list[float]:
        out: dict[int, float] = {}
        for spec in {id(x): x for x in spec_of.values()}.values():
            idx = [i for i, (prompt, _) in enumerate(pairs) if spec_of.get(prompt) is spec]
            if idx:
                out.update(zip(idx, metric_utilities(model, spec, [pairs[i] for i in idx])))
        return [out[i] for i in range(len(pairs))]

    return DPData("person", real, synth, weights, validation, private_records, utilities,
                  "the greedy answer's task metric in [0, 1] (each record its own task's)")


def _unshared_pairs(spec: TaskSpec, user: User, shared: Collection[str]) -> Pairs:
    """The pairs of the user's records the device did not share (what private selection spends ε on)."""
    return spec.profile_to_pairs([r for r in user.profile if str(r["id"]) not in shared])


def _shared_of(run: UserRun) -> frozenset[str]:
    """The ids of the records this user's device shared (its ledger; library use: cfg's consent)."""
    return frozenset(run.shared_ids) if run.shared_ids is not None else _library_shared_ids(run.user, run.cfg)


def _library_shared_ids(user: User, cfg: Mapping[str, Scalar]) -> frozenset[str]:
    """Library use (no device ledger): the records ``cfg``'s own consent policy shares."""
    from cdcda_fl.privacy.consent import share_records

    return share_records(user, cfg).local_ids


def _store_entry(run: UserRun, path: Path, decision: Any, res: Any, started: float, real_pairs: Sequence[Any],
                 synth_pairs: Sequence[Any], *, n_public: int | None = None) -> dict[str, Any]:
    """Store a DP method's adapter (or, after a fall-back, only its metadata) and build its report entry."""
    d = decision.to_dict()
    info: dict[str, Any] = {
        "steps": sum(int(c.get("steps") or c.get("public_steps") or 0) for c in d["candidates"]),
        "seconds": round(time.perf_counter() - started, 3),
        "final_loss": None if res is None else res.final_loss, "tokens": None if res is None else res.trained_tokens,
        "epsilon": decision.epsilon, "delta": decision.delta, "n_real": len(real_pairs),
        "n_synthetic": len(synth_pairs), "n_public_warmstart": len(synth_pairs) if n_public is None else n_public,
        "n_validation": decision.n_validation, "dp": d}
    text = json.dumps(info)
    if decision.fell_back:
        write_meta_only(path, text)
        run.adapter_dir = None
    else:
        run.model.save_adapter(path, extra_files={TRAIN_META: text})
        run.adapter_dir = path
    return {"train": {k: v for k, v in info.items() if k != "dp"}, "epsilon": decision.epsilon, "dp": d}

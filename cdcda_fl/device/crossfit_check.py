"""The crossfit rule on a device: train the fold adapters, score them, decide (cdcda_fl/device/crossfit.py).

Kept apart from the methods so the rule's training loop reads on its own. ``run`` is the
device's per-user state (``device/methods/user_run.py: UserRun``): its model, task, real items,
and (``run.cloud``) the cloud's records and the mixture rule the final CDCDA adapter uses.

Reuse: a real-only fold adapter depends on the user's items, the fold and the training settings,
never on the cloud's records, so its scores are stored (metadata only, on the device) under a key
of exactly those and reused by every share fraction and writer of a sweep, and by a rerun.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from cdcda_fl.core.atomic import write_text_atomic
from cdcda_fl.device.crossfit import NO_FITTING_RECORD, CrossfitScores, FoldScores, folds, judge, run_folds
from cdcda_fl.device.schedule import train_cdcda
from cdcda_fl.device.synthetic_gate import GateConfig, GateDecision, check_step_scale
from cdcda_fl.device.train_key import adapter_key, base_identity, fingerprint
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, per_example, primary_metric
from cdcda_fl.core.run_config import run_config

META = "crossfit.json"


class CrossfitCheck:
    """One user's cross-fitted check; :meth:`decide` returns the device's decision."""

    def __init__(self, run: Any, gate: GateConfig) -> None:
        self.run, self.gate = run, gate
        self.items: list[Mapping[str, Any]] = list(run.user.profile)
        self.spec = run.spec

    # ------------------------------------------------------------------ scoring one model on items
    def _score(self, held: Sequence[Mapping[str, Any]], steps: int = 0) -> FoldScores:
        pairs = self.spec.profile_to_pairs(list(held))
        losses = self.run.model.example_losses(pairs, batch_size=self.run.batch)
        answers = self.run.answer_in_training_runtime([inp for inp, _ in pairs])
        return FoldScores(tuple(float(x) for x in losses), tuple(answers), steps)

    def _train(self, train_items: Sequence[Mapping[str, Any]], synth: Sequence[tuple[str, str]],
               real_w: Sequence[float], syn_w: Sequence[float]) -> int:
        run = self.run
        run.clear()
        real = self.spec.profile_to_pairs(list(train_items))
        scale = check_step_scale(self.gate, len(train_items), len(self.items))
        res = train_cdcda(run.model, run.cfg, real, list(real_w), list(synth), list(syn_w), step_scale=scale)
        return int(res.steps)

    def base(self, held: list[Mapping[str, Any]]) -> FoldScores:
        self.run.clear()
        return self._reused("base", [], held, lambda: self._score(held))

    def real(self, train: list[Mapping[str, Any]], held: list[Mapping[str, Any]]) -> FoldScores:
        def fresh() -> FoldScores:
            steps = self._train(train, [], [1.0] * len(train), [])
            try:
                return self._score(held, steps)
            finally:
                self.run.clear()
        return self._reused("real", train, held, fresh)

    def mix(self, train: list[Mapping[str, Any]], held: list[Mapping[str, Any]]) -> FoldScores | None:
        # the records the final CDCDA adapter would train on, weighed against this fold's items
        kept, real_w, syn_w = (self.run.cloud.weighted(train, self.run.cloud.kept) if train
                               else self._synthetic_only())
        if not kept:
            return None
        steps = self._train(train, self.spec.profile_to_pairs(kept), real_w, syn_w)
        try:
            return self._score(held, steps)
        finally:
            self.run.clear()

    def _synthetic_only(self) -> tuple[list[dict[str, Any]], list[float], list[float]]:
        """A fold with no real item left: the cloud's records alone (generation tasks; a label task
        has no real label to keep records by, so nothing is kept)."""
        if self.spec.labels:
            return [], [], []
        kept = list(self.run.cloud.kept)
        return kept, [], [1.0] * len(kept)

    def _reused(self, kind: str, train: Sequence[Mapping[str, Any]], held: Sequence[Mapping[str, Any]],
                fresh: Any) -> FoldScores:
        """Scores of a model that does not depend on the cloud's records, stored on the device."""
        run = self.run
        train_pairs = self.spec.profile_to_pairs(list(train))
        model = (adapter_key(run.cfg, train_pairs, [1.0] * len(train_pairs), len(train_pairs)) if train_pairs
                 else base_identity(run.cfg))
        key = f"{self.spec.name}-xfit-{kind}-" + fingerprint(
            model, kind, check_step_scale(self.gate, len(train), len(self.items)),
            self.spec.profile_to_pairs(list(held)), str(run_config(run.cfg).eval.batch_size))
        path = run.store.path(run.user.user_id, key)
        if (path / META).is_file() and not run_config(run.cfg).train.retrain:
            d = json.loads((path / META).read_text())
            return FoldScores(tuple(d["losses"]), tuple(d["answers"]), int(d["steps"]))
        scores = fresh()
        path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / META, json.dumps({"losses": scores.losses, "answers": scores.answers,
                                                   "steps": scores.steps}))
        return scores

    # ------------------------------------------------------------------ the decision
    def scores(self) -> CrossfitScores:
        fold_ids = folds(len(self.items), self.gate.folds, f"{run_config(self.run.cfg).seed}:{self.run.user.user_id}")
        return run_folds(self.items, fold_ids, base=self.base, real=self.real, mix=self.mix)

    def decide(self) -> GateDecision:
        gate, spec = self.gate, self.spec
        if not self.items:
            return GateDecision(gate.rule, False, "no real items to check with", answer_with="local")
        s = self.scores()
        golds = [out for _inp, out in spec.profile_to_pairs(self.items)]
        metric = primary_metric(spec)
        scored: dict[tuple[str, ...], list[float]] = {}  # each model's answers are scored once

        def per_item(answers: Sequence[str]) -> list[float]:
            key = tuple(answers)
            if key not in scored:
                scored[key] = per_example(spec, golds, key)
            return scored[key]

        def metric_of(answers: Sequence[str]) -> float | None:
            values = per_item(answers)
            return sum(values) / len(values)

        untested = NO_FITTING_RECORD if self.run.cloud.kept else "the cloud sent no usable record"
        v = judge(s, margin=gate.margin, criterion=gate.criterion, metric_of=metric_of,
                  higher_is_better=metric not in LOWER_IS_BETTER, per_item=per_item, untested=untested)
        r4 = (lambda x: None if x is None else round(float(x), 4))
        return GateDecision(gate.rule, v.used_synthetic, v.reason, len(self.items), r4(v.loss_real), r4(v.loss_mix),
                            gate.margin, r4(v.metric_real), r4(v.metric_mix), list(s.steps) or None,
                            answer_with=v.answer_with, metric_base=r4(v.metric_base))

"""What one user's device received from the cloud, and what it decided to train on (never sent).

The cloud's records pass four steps on the device before CDCDA trains on any (docs/augmentation.md):
the task's validation (a partial record, one with fields the user did not share, is completed:
device/complete.py), the selection of ``train.synthetic-select`` (device/select.py), the mixture
weights (:mod:`.mixture`, capped per record), and the check of ``train.synthetic-gate`` (the
crossfit rule: device/crossfit_check.py; the holdout rule: :mod:`.holdout_check`), decided once
per user and stored on the device. ``cdcda`` and ``cdcda+fedavg`` share all of it.

The gate's and the selector's typed settings are resolved once per user, on first use: a run
without a non-private CDCDA method never reads (or rejects) them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from cdcda_fl.device.complete import complete_records, is_partial
from cdcda_fl.device.crossfit_check import CrossfitCheck
from cdcda_fl.device.methods.holdout_check import HoldoutCheck
from cdcda_fl.device.methods.mixture import mixture_weights
from cdcda_fl.device.methods.run_view import DeviceRun
from cdcda_fl.device.methods.stored import stored_meta, train_local, write_meta_only
from cdcda_fl.device.select import SelectConfig, Selection, select_records
from cdcda_fl.device.synthetic_gate import GateConfig, GateDecision, cap_record_weights, decide
from cdcda_fl.device.train_key import gate_key
from cdcda_fl.core.run_config import run_config

Record = dict[str, Any]


class CloudRecords:
    """One user's synthetic records through validation, completion, selection, weights and the check."""

    def __init__(self, run: DeviceRun, received: Sequence[Mapping[str, Any]]) -> None:
        self.run = run
        self.received: list[Record] = [dict(r) for r in received]
        self.valid: list[Record] = []  # passed the task's validation as received
        self.incomplete: list[Record] = []  # fields the user did not share: completed by prepare()
        self.dropped: list[tuple[Record, str]] = []
        for rec in self.received:
            problem = run.spec.validate_item(rec)
            if problem is None:
                self.valid.append(rec)
            elif is_partial(run.spec, rec):
                self.incomplete.append(rec)
            else:
                self.dropped.append((rec, f"invalid: {problem}"))
        self.usable: list[Record] = list(self.valid)  # valid + completed
        self.kept: list[Record] = []  # what the final CDCDA adapter trains on
        self.real_weights: list[float] = [1.0] * len(run.real_pairs)
        self.synth_weights: list[float] = []
        self.synth_pairs: list[tuple[str, str]] = []
        self._prepared = False
        self._base_losses: dict[tuple[str, str], float] = {}  # the plain base model's, per synthetic pair
        self._decision: GateDecision | None = None

    @cached_property
    def gate(self) -> GateConfig:
        return GateConfig.from_config(self.run.cfg)

    @cached_property
    def selector(self) -> SelectConfig:
        return SelectConfig.from_config(self.run.cfg)

    # ------------------------------------------------------------------ weights and selection
    def weighted(self, real_items: Sequence[Mapping[str, Any]], synthetic: Sequence[Mapping[str, Any]] | None = None
                 ) -> tuple[list[Record], list[float], list[float]]:
        """(kept synthetic records, real weights, capped synthetic weights) against ``real_items``:
        the mixture the final CDCDA adapter and the checks' adapters train on.
        ``synthetic``: the records to weigh (default: every usable one)."""
        cfg = self.run.cfg
        pool = self.usable if synthetic is None else synthetic
        kept, real_w, syn_w = mixture_weights(self.run.spec, real_items, pool, run_config(cfg).train.synthetic_weight)
        return kept, real_w, cap_record_weights(syn_w, run_config(cfg).train.synthetic_record_cap)

    def select(self) -> Selection:
        """``train.synthetic-select`` on every usable record, scored with the adapter the model
        holds now against the plain base model. Leaves the model on the base."""
        run = self.run
        pairs = [run.spec.profile_to_pairs([r])[0] for r in self.usable]

        def scorer(batch: Sequence[tuple[str, str]]) -> tuple[list[float], list[float]]:
            with_adapter = run.model.example_losses(list(batch), batch_size=run.batch)
            run.clear()
            missing = [p for p in batch if p not in self._base_losses]
            if missing:
                self._base_losses.update(zip(missing, run.model.example_losses(missing, batch_size=run.batch)))
            return with_adapter, [self._base_losses[p] for p in batch]

        try:
            return select_records(self.selector, self.usable, pairs, scorer)
        finally:
            run.clear()

    # ------------------------------------------------------------------ before CDCDA trains
    def prepare(self) -> None:
        """Complete partial records, select, then weigh real and synthetic data (once per user).

        Completing a missing output uses the local-only adapter (trained here if need be), so this
        runs when CDCDA does, after local-only; under DP it never runs (the completion would be
        computed from private data the DP accounting does not cover).
        """
        if self._prepared:
            return
        self._prepared = True
        run = self.run
        if self.incomplete:
            run.step("complete")
            done, dropped = complete_records(run.spec, self.incomplete, answer_with_local=self._answer_with_local,
                                             write_with_base=self._write_with_base)
            self.usable += done
            self.dropped += dropped
            run.result["n_synthetic_completed"] = len(done)
        selected = self.usable
        untested = self.gate.falls_back_untested(len(run.user.profile))
        if self.usable and self.selector.scores and not untested:
            run.step("select")
            train_local(run)  # the user's whole history scores the cloud's records (device/select.py)
            selection = self.select()
            selected = selection.kept
            self.dropped += selection.dropped
            run.result["n_synthetic_selected"] = len(selected)
        kept, self.real_weights, self.synth_weights = self.weighted(run.user.profile, selected)
        kept_ids = {id(r) for r in kept}
        self.dropped += [(r, "label not in the user's profile") for r in selected if id(r) not in kept_ids]
        self.kept = kept
        self.synth_pairs = run.spec.profile_to_pairs(kept)
        run.result["n_synthetic_used"] = len(self.synth_pairs)

    def _answer_with_local(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        train_local(self.run)
        try:
            return self.run.model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=self.run.batch)
        finally:
            self.run.clear()

    def _write_with_base(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.run.clear()
        return self.run.model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=self.run.batch)

    # ------------------------------------------------------------------ the device's trust in them
    def decision(self) -> GateDecision:
        """The ``train.synthetic-gate`` rule for this user (decided once, stored on the device)."""
        if self._decision is not None:
            return self._decision
        run, gate = self.run, self.gate
        key = f"{run.spec.name}-gate-" + gate_key(run.cfg, gate, self.selector, run.real_pairs, self.real_weights,
                                                   self.synth_pairs, self.synth_weights)
        stored = stored_meta(run, key)
        if stored is not None:
            self._decision = GateDecision(**stored)
            return self._decision
        run.step("check")
        if gate.rule == "crossfit":  # every user, sparse ones included (device/crossfit.py)
            self._decision = CrossfitCheck(run, gate).decide()
        else:
            self._decision = decide(gate, run.user.profile, len(self.synth_pairs),
                                    seed=f"{run_config(run.cfg).seed}:{run.user.user_id}",
                                    held_out=HoldoutCheck(run, gate, self).scores)
        if self._decision.n_validation:  # only a decision that trained something is worth storing
            write_meta_only(run.store.path(run.user.user_id, key), json.dumps(self._decision.to_dict()))
        return self._decision

    # ------------------------------------------------------------------ on the device's disk only
    def save_log(self) -> None:
        """What this device received from the cloud, kept and dropped, and why."""
        if not self.received:
            return
        from cdcda_fl.device.synthetic_store import save_synthetic_log

        if not self._prepared:
            self.dropped += [(r, "incomplete: not completed (CDCDA did not run, or ran under DP)")
                             for r in self.incomplete]
        decision = self._decision.to_dict() if self._decision else {
            "rule": "not run", "used_synthetic": None, "reason": "CDCDA was not among the methods"}
        save_synthetic_log(self.run.storage_dir, self.run.user.user_id, self.run.spec.name, received=self.received,
                           kept=[dict(r) for r in self.kept], dropped=self.dropped, decision=decision)

"""The holdout rule's experiment on a device: two throw-away adapters scored on held-out real items.

``synthetic_gate.decide`` picks the split and judges the scores; this trains and scores, on the
user's own model, exactly what the final CDCDA adapter would train: the same schedule
(device/schedule.py), mixture weights and selection, with the step budget of
``synthetic_gate.check_step_scale``. The crossfit rule's counterpart is device/crossfit_check.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdcda_fl.device.methods.run_view import DeviceRun, RecordPool
from cdcda_fl.device.schedule import train_cdcda
from cdcda_fl.device.synthetic_gate import GateConfig, HeldOutScores, check_step_scale, mean_loss
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric, score


class HoldoutCheck:
    """One user's holdout experiment; :meth:`scores` is ``decide``'s ``held_out`` callback."""

    def __init__(self, run: DeviceRun, gate: GateConfig, cloud: RecordPool) -> None:
        self.run, self.gate, self.cloud = run, gate, cloud

    def scores(self, train_items: list[Mapping[str, Any]], held: list[Mapping[str, Any]]) -> HeldOutScores:
        """A real-only and a real + synthetic adapter trained on ``train_items``, scored on ``held``:
        mean loss of the held-out outputs and the task metric of greedy answers to their inputs."""
        run = self.run
        spec, cfg, model = run.spec, run.cfg, run.model
        real = spec.profile_to_pairs(train_items)
        held_pairs = spec.profile_to_pairs(held)
        golds = {str(i): out for i, (_inp, out) in enumerate(held_pairs)}
        metric = primary_metric(spec)
        budget = check_step_scale(self.gate, len(train_items), len(run.user.profile))
        cloud = self.cloud

        def train_and_score(real_w: list[float], synth: list[tuple[str, str]], syn_w: list[float]
                            ) -> tuple[int, float, float | None]:
            run.clear()
            res = train_cdcda(model, cfg, real, real_w, synth, syn_w, step_scale=budget)
            loss = mean_loss(model.example_losses(held_pairs))
            answers = run.answer_in_training_runtime([inp for inp, _out in held_pairs])
            return res.steps, loss, score(spec, golds, {str(i): a for i, a in enumerate(answers)}).get(metric)

        steps_real, loss_real, metric_real = train_and_score([1.0] * len(real), [], [])
        # The check's records are picked by ITS real-only adapter (trained without the held-out
        # items), so the held-out items never influence which records are tested.
        pool = cloud.select().kept if cloud.selector.scores and cloud.usable else None
        run.clear()  # the check's real-only adapter is done with (select clears too, when it runs)
        kept, real_w, syn_w = cloud.weighted(train_items, pool)
        if not kept:
            return HeldOutScores(loss_real, loss_real, metric_real, metric_real,
                                 higher_is_better=metric not in LOWER_IS_BETTER, same_data=True, steps=(steps_real,))
        steps_mix, loss_mix, metric_mix = train_and_score(real_w, spec.profile_to_pairs(kept), syn_w)
        run.clear()
        return HeldOutScores(loss_real, loss_mix, metric_real, metric_mix,
                             higher_is_better=metric not in LOWER_IS_BETTER, same_data=False,
                             steps=(steps_real, steps_mix))

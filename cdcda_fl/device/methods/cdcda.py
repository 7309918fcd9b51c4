"""``cdcda``: a private LoRA adapter trained on the user's real records + the cloud's synthetic ones.

Only if the device's own check says the cloud's records help this user (methods/cloud_records.py);
else it answers as local-only, or (crossfit rule) as the base model when personalization itself
scored below it on the user's items.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from cdcda_fl.device.methods.method import Method
from cdcda_fl.device.methods.private import Private
from cdcda_fl.device.methods.person import is_person_scope
from cdcda_fl.device.methods.stored import train_local, train_or_reuse, train_person
from cdcda_fl.device.methods.user_run import UserRun


class Cdcda(Method):
    """Real + synthetic under the device's decision; its report carries the decision and the check's time."""

    name: ClassVar[str] = "cdcda"

    @classmethod
    def private(cls, cfg: Mapping[str, Any]) -> Method:
        return Private.around(cls.name, cfg)

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()  # CDCDA's cost includes completing records and the check
        cloud = run.cloud
        cloud.prepare()
        decision = cloud.decision()
        check_seconds = round(time.perf_counter() - started, 3)  # completion + the check's trainings
        run.result["synthetic_decision"] = decision.to_dict()
        answer_with = decision.answers_with
        if is_person_scope(run) and answer_with != "base":
            # one adapter per person: every task's real items + the records of the tasks whose
            # check passed (methods/person.py); this task's own decision still sets its count
            if answer_with != "cdcda":
                run.result["n_synthetic_used"] = 0
            info = train_person(run, self.name, with_records=True)
            answer_with = "cdcda" if info.get("n_synthetic") else "local"
        elif answer_with == "cdcda":
            info = train_or_reuse(run, self.name, [*run.real_pairs, *cloud.synth_pairs],
                                  [*cloud.real_weights, *cloud.synth_weights])
        else:
            run.result["n_synthetic_used"] = 0
            info = train_local(run) if answer_with == "local" else {"steps": 0, "base_model": True}
            if answer_with == "base":
                run.clear()
        extra = {"train": info, "epsilon": info.get("epsilon"),
                 "decision": {"rule": decision.rule, "used_synthetic": decision.used_synthetic,
                              "answer_with": answer_with},
                 "check_seconds": check_seconds, **run.mia()}
        if answer_with != "cdcda" and run.answers.queued(answer_with):
            run.same_answers(self.name, answer_with, started, **extra)  # same model, greedy: the same answers
        else:
            run.defer(self.name, run.inputs, started, **extra)

"""``train.adapter-scope = user``: one private adapter per person over every task the device holds (issue 32).

Under the default scope (``task``) a person active in LaMP-2, LaMP-5 and LaMP-7 gets three
adapters, three trainings, and no task learns from the others. Under ``user`` the device trains
one adapter on the union of the person's tasks; every pair already carries its task's LaMP
instruction, so one adapter can answer each task in its own format.

The mixing rule (:func:`task_masses`): task ``t`` with ``n_t`` real items gets the share
``n_t^α / Σ_s n_s^α`` of the total loss weight (``train.task-mix-alpha``, default 0.5,
temperature sampling): a 4-item task beside a 40-item one gets 24 % (α = 1: 9 %, α = 0: 50 %).
The weights average 1 and the step budget is ``train.steps × tasks``, so a task's items get
``tasks × share`` times their task-scope updates: exactly as many only at α = 0. Measured on 24
multi-task personas (docs/multitask.md): at α = 0.5 sparse tasks lost quality, rich tasks gained.

CDCDA: each task's own check (crossfit or holdout, task-scope fold adapters, the task's metric)
decides about that task's cloud records; the person's CDCDA adapter trains on the real items of
every task plus the records of the tasks whose check said "use them", each task's block keeping
its own real/synthetic weights (methods/mixture.py) scaled to the task's share. A task whose
check chose the base model answers with the base model; every other task answers with the
person's CDCDA adapter (the local one when no task used records). Records of the tasks the
device received in the same personalize message count; the orchestrator keeps a person's tasks
in one message (server/unit_order.py: chunked).

The adapter (trained by methods/stored.py: train_person) is stored once per person (``person-<method>-<key>`` under the user id; the key
covers every pair and weight), so the first task trains it and the others reload it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdcda_fl.core.config import adapter_scope, default_of
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.methods.run_view import DeviceRun
from cdcda_fl.core.run_config import run_config

#: the default exponent of the per-task weight ``n_t^α`` (``train.task-mix-alpha``)
MIX_ALPHA = float(default_of("train.task-mix-alpha"))

Pairs = list[tuple[str, str]]


def is_person_scope(run: DeviceRun) -> bool:
    return adapter_scope(run.cfg) == "user"


def task_masses(sizes: Sequence[int], alpha: float = MIX_ALPHA) -> list[float]:
    """Each task's share of the person's total loss weight: ``n_t^α / Σ n^α`` (0 for an empty task)."""
    powered = [float(n) ** alpha if n > 0 else 0.0 for n in sizes]
    total = sum(powered)
    return [p / total for p in powered] if total else [0.0 for _ in sizes]


def _scaled(weights: Sequence[float], factor: float) -> list[float]:
    return [w * factor for w in weights]


def person_mixture(run: DeviceRun, with_records: bool
                   ) -> tuple[Pairs, list[float], Pairs, list[float], int]:
    """(real pairs, their weights, synthetic pairs, their weights, tasks) of the person's adapter.

    Tasks in the order the device holds them (``run.person``); ``with_records``: add the cloud
    records of every task in this message whose check chose to use them (CDCDA)."""
    people = list(run.person)
    siblings = {s.user.task: s for s in run.siblings} if with_records else {}
    masses = task_masses([len(u.profile) for u in people], run_config(run.cfg).train.task_mix_alpha)
    n_total = sum(len(u.profile) for u in people)
    real: Pairs = []
    real_w: list[float] = []
    synth: Pairs = []
    synth_w: list[float] = []
    for user, mass in zip(people, masses):
        spec = get_task(user.task)
        pairs = spec.profile_to_pairs(user.profile)
        block_real_w = [1.0] * len(pairs)
        block_synth: Pairs = []
        block_synth_w: list[float] = []
        sibling = siblings.get(spec.name)
        if with_records and sibling is not None and sibling_uses_records(sibling):
            cloud = sibling.cloud
            block_real_w, block_synth, block_synth_w = list(cloud.real_weights), list(cloud.synth_pairs), list(cloud.synth_weights)
        # the task's real pairs weigh ``mass`` of the person's real total, and its cloud records keep
        # their ratio to them (so train.equal-real-exposure stretches the budget as in task scope)
        factor = mass * n_total / len(pairs) if pairs else 0.0
        real += pairs
        real_w += _scaled(block_real_w, factor)
        synth += block_synth
        synth_w += _scaled(block_synth_w, factor)
    return real, real_w, synth, synth_w, len(people)


def sibling_uses_records(run: Any) -> bool:
    """This task's check (run now if need be; memoized) said: train on the cloud's records."""
    cloud = run.cloud
    cloud.prepare()
    return bool(cloud.synth_pairs) and cloud.decision().answers_with == "cdcda"

"""What one device does for its user, without any Flower: share, then personalize and answer.

``share_records`` (device/share.py) applies the user's consent policy (with PII scrubbing) and is
the ONLY function whose output is meant to leave the device besides the result of
``personalize_user``, which holds predictions, metrics, ε and counts — never adapter weights or
profile records.

``personalize_user`` runs the methods a report compares, on the device. Each is a small class in
``device/methods/`` named by the one method table (``cdcda_fl/core/method_table.py``):

- ``base``, ``rag``: the on-device model zero-shot, and with the top-k BM25 profile items (prompted.py);
- ``local``: a private LoRA adapter trained on the user's real records only (OPPU-style, local.py);
- ``cdcda``: a private LoRA adapter trained on real + cloud-written synthetic records, if the
  device's own check says they help this user (cdcda.py, cloud_records.py);
- with ``dp.enabled``, ``local`` and ``cdcda`` run in their DP form (private.py): DP candidates,
  a privacy-free choice on the cloud's synthetic records, and a fall-back to the base model when
  no candidate beats it (docs/dp.md);
- ``fedavg``, ``fedavg+local``, ``cdcda+fedavg``: the FedAvg global adapter as is, fine-tuned
  locally, or as CDCDA's starting point (fedavg.py);
- ``cloud``: the cloud model answering with the user's whole profile retrieved into the prompt,
  the non-private upper bound, computed on the device with the cloud model in-process (cloud.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import Scalar, adapter_scope
from cdcda_fl.data.lamp import User
from cdcda_fl.device.lora import device_model_for
from cdcda_fl.device.methods.answers import answer_together
from cdcda_fl.device.methods.method import Method
from cdcda_fl.device.methods.registry import build_methods
from cdcda_fl.device.methods.user_run import UserRun
from cdcda_fl.privacy.consent import share_records
from cdcda_fl.edge.runtime import make_answerer
from cdcda_fl.core.run_config import run_config

# share_records and device_model_for are the device's entry points beside personalize_user(s)
# (experiments, audits and tests import them from here); they live in modules of their own so
# that the methods below this one can use them without importing it.
__all__ = ["device_model_for", "personalize_user", "personalize_users", "share_records"]


def personalize_user(user: User, synthetic: Sequence[Mapping[str, Any]], cfg: Mapping[str, Scalar], *,
                     storage_dir: Path, device_model: Any | None = None,
                     on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train this user's private adapters, answer their held-out queries with every method, score.

    ``storage_dir`` is the device's own disk: adapters are saved there (atomically) and reused on
    a rerun with the same configuration and data, and so is what the device received from the
    cloud and decided about it (``synthetic/``, never sent). The returned dict is what may leave
    the device, as far as the report level allows (privacy/report.py).
    """
    (outcome,) = personalize_users([(user, synthetic)], cfg, storage_dir=storage_dir, device_model=device_model,
                                   on_step=on_step)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def personalize_users(jobs: Sequence[tuple[User, Sequence[Mapping[str, Any]]]], cfg: Mapping[str, Scalar], *,
                      storage_dir: Path, device_model: Any | None = None,
                      on_step: Callable[[str], None] | None = None,
                      shared: Mapping[tuple[str, str], frozenset[str]] | None = None,
                      global_adapters: Mapping[str, Any] | None = None,
                      people: Mapping[str, Sequence[User]] | None = None) -> list[dict[str, Any] | Exception]:
    """:func:`personalize_user` for every (user, synthetic records) a node hosts, answering them together.

    Each user's methods train (or reuse) their adapters in turn; the answers of every method of
    every user are then generated in one pass (device/methods/answers.py): with PyTorch,
    mixed-adapter batches over one base model, rows sorted by length and batched per answer
    budget. Greedy answers equal answering user by user (tests/test_personalize_batch.py). A
    method's ``seconds`` is its own time plus its rows' share of the batched answering.

    One user's failure is that user's outcome (the exception), never the others'; a method that
    cannot be built from ``cfg`` is every user's.
    ``shared``: (task, user id) -> the owner's ids of the records the device shared (its ledger,
    ``privacy/shared_ledger.py``); DP's private selection spends ε on the others only. Without
    it, the records ``cfg``'s own consent keys select (library use; a device's personalize
    message carries no consent keys, and reading them there is an error).
    ``global_adapters``: task -> the FedAvg global adapter (device/federated.py) for the federated methods.
    ``people``: user id -> every task-user of that person the device holds, for
    ``train.adapter-scope = user`` (one adapter per person, methods/person.py); the runs of one
    person's tasks in this call are built first and see each other (``UserRun.siblings``).
    """
    try:
        methods = build_methods(cfg)  # once per call: each reads its settings from cfg once
    except Exception as exc:
        return [exc for _ in jobs]
    model = device_model or device_model_for(cfg)
    answerer = make_answerer(cfg, device_model=model, storage_dir=Path(storage_dir),
                             n_threads=_threads() if run_config(cfg).device.runtime != "torch" else None)
    outcomes: list[dict[str, Any] | Exception | None] = [None] * len(jobs)
    runs: list[tuple[int, UserRun]] = []
    built: list[tuple[int, UserRun]] = []
    try:
        for i, (user, synthetic) in enumerate(jobs):
            try:
                built.append((i, UserRun(user, synthetic, cfg, storage_dir=storage_dir, model=model,
                                         answerer=answerer, on_step=on_step,
                                         shared_ids=None if shared is None else shared[(user.task, user.user_id)],
                                         global_adapter=(global_adapters or {}).get(user.task),
                                         person=(people or {}).get(user.user_id, ()))))
            except Exception as exc:  # this user only
                outcomes[i] = exc
        if adapter_scope(cfg) == "user":  # under scope task each run trains its own adapter
            _link_siblings([run for _i, run in built])
        for i, run in built:
            try:
                _run_methods(run, methods)
                runs.append((i, run))
            except Exception as exc:  # this user only; its kept adapters go
                outcomes[i] = exc
                run.answers.release()
                model.clear_adapter()
        for _i, run in runs:
            run.step("answer")
        failed = answer_together([run for _i, run in runs])
        for i, run in runs:
            if id(run) in failed:
                outcomes[i] = failed[id(run)]
                continue
            try:
                run.cloud.save_log()
                outcomes[i] = run.result
            except Exception as exc:
                outcomes[i] = exc
    finally:
        for _i, run in built:
            run.answers.release()
    return outcomes  # type: ignore[return-value]


def _link_siblings(runs: Sequence[UserRun]) -> None:
    """Runs of one person (same user id, several tasks) see each other: one adapter per person
    trains on the records every task of theirs received in this call (methods/person.py)."""
    by_person: dict[str, list[UserRun]] = {}
    for run in runs:
        by_person.setdefault(run.user.user_id, []).append(run)
    for group in by_person.values():
        for run in group:
            run.siblings = tuple(group)


def _run_methods(run: UserRun, methods: Sequence[Method]) -> None:
    """Every method's part for one user, from the plain base model, in the run's order."""
    run.clear()
    for method in methods:
        run.step(method.name)
        method.run(run)


def _threads() -> int:
    """The CPU threads this worker's PyTorch uses (Ray sets them per actor); llama.cpp gets the same."""
    import torch

    return torch.get_num_threads()

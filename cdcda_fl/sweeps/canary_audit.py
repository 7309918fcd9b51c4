"""The canary exposure audit (`cdcda audit canaries`, a sweep's ``[sweep] canaries``).

Every user of a run config gets canaries (privacy/canary.py) planted in their private, non-shared
profile; their adapter is trained the way the device trains it, once per DP setting, and each
canary's exposure is measured next to the adapter's MIA AUC and ε (``canaries.json``).

Why this sits above the device layer and not in privacy/: the audit trains adapters with the
device's own code (the base it would load, DP-SGD's candidates), so it needs the device layer;
privacy/ holds what the device itself uses (consent, DP accounting, the MIA metric, canaries).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import get_task, parse_task_list
from cdcda_fl.device.dp_select import candidates_for
from cdcda_fl.device.lora import device_model_for
from cdcda_fl.device.training import LoraTrainConfig
from cdcda_fl.privacy.audit import membership_auc
from cdcda_fl.privacy.canary import (
    canary_consent,
    check_not_shared,
    make_canaries,
    measure_exposure,
    plant,
    summarize,
)
from cdcda_fl.privacy.consent import share_records
from cdcda_fl.core.progress import Progress
from cdcda_fl.evaluation.stats import mean_ci
from cdcda_fl.core.run_config import run_config


def audit_user_canaries(model, user, cfg, settings, *, n_canaries: int = 2, n_controls: int = 2,
                        n_candidates: int = 128, repeats: int = 1) -> dict:
    """Plant canaries in one user's non-shared profile, train per DP setting, measure exposure and MIA.

    For each setting the adapter is trained the way the device trains it: without DP from the
    run's ``train.*`` keys; with DP from :func:`cdcda_fl.device.dp_select.candidates_for` (the
    first candidate: the audit has no cloud data to select with, and measures the adapter DP-SGD
    releases). ``model=None`` takes the base the device would use for that setting
    (:func:`~cdcda_fl.device.lora.device_model_for`: under DP ``device.dtype=auto`` means
    fp32, without DP bf16 where the CPU has it), so the audit measures the adapter a device
    releases. ``n_controls`` canaries of the same format are never planted: their exposure is
    the "nothing leaked" reference (≈ log2 e, not 0, for a rank estimate).
    """
    rc = run_config(cfg)
    spec = get_task(user.task)
    seed = f"{rc.seed}:{user.user_id}"
    canaries = make_canaries(spec.name, n_canaries, seed)
    controls = make_canaries(spec.name, n_controls, seed, prefix="control-")
    planted = plant(user, canaries, repeats)
    consent_cfg = canary_consent(cfg, user, canaries)
    shared = share_records(planted, consent_cfg)
    check_not_shared(shared, canaries)  # raises if any canary would reach the cloud
    train_pairs = spec.profile_to_pairs(planted.profile)
    real_pairs = spec.profile_to_pairs(user.profile)
    held_out = [(q.input, q.gold) for q in user.queries if q.gold is not None]
    out = {"user_id": user.user_id, "task": spec.name, "n_profile": len(user.profile),
           "n_canaries": n_canaries, "repeats": repeats, "n_controls": n_controls, "candidates": n_candidates,
           "records_shared": shared.n_shared, "canaries_shared": 0, "settings": []}
    for eps in settings:
        if eps is None:
            lora, dp, plan = LoraTrainConfig.from_run_config(cfg), None, {"name": "config"}
        else:
            dcfg = {**cfg, "dp.enabled": True, "dp.epsilon": eps}
            cand = candidates_for(dcfg, len(train_pairs))[0]
            lora, dp, plan = cand.lora, cand.dp, cand.plan
        dm = model if model is not None else device_model_for({**cfg, "dp.enabled": eps is not None})
        res = dm.train(train_pairs, lora, dp)
        exps = (measure_exposure(dm, canaries, n_candidates, planted=True, seed=seed)
                + measure_exposure(dm, controls, n_candidates, planted=False, seed=seed))
        mia = membership_auc(dm.example_losses(real_pairs), dm.example_losses(held_out)) if held_out else None
        out["settings"].append({"dp_epsilon": "off" if eps is None else eps, "epsilon": res.epsilon,
                                "delta": res.delta, "plan": plan, "train_loss": res.final_loss,
                                "exposure": summarize(exps), "canaries": [e.to_dict() for e in exps],
                                "mia_auc": mia, "seconds": round(res.seconds, 2),
                                "dtype": str(getattr(dm.base.model, "dtype", ""))})
        dm.clear_adapter()
    return out


def summarize_canary_audit(users: list[dict]) -> list[dict]:
    """Per (task, DP setting): mean exposure of planted and control canaries, MIA AUC and ε over users."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for u in users:
        for s in u["settings"]:
            groups.setdefault((u["task"], str(s["dp_epsilon"])), []).append(s)
    rows = []
    for (task, eps), items in groups.items():
        def ci(key: str, sub: str | None = None, items=items) -> dict:
            vals = [(x[key][sub]["mean"] if sub else x[key]) for x in items]
            vals = [v for v in vals if v is not None]
            m = mean_ci(vals) if vals else (None, None, None)
            return {"mean": m[0], "lo": m[1], "hi": m[2]}

        epsilons = [x["epsilon"] for x in items if x["epsilon"] is not None]
        rows.append({"task": task, "dp_epsilon": eps, "n_users": len(items),
                     "exposure_planted": ci("exposure", "planted"), "exposure_control": ci("exposure", "control"),
                     "max_exposure": items[0]["exposure"]["max_exposure"], "mia_auc": ci("mia_auc"),
                     "epsilon": max(epsilons) if epsilons else None})
    return rows


def run_canary_audit(cfg: dict, settings, *, n_canaries: int = 2, n_controls: int = 2, n_candidates: int = 128,
                     repeats: int = 1, model: Any = None,
                     log: Callable[[str], None] = print) -> dict:
    """The `cdcda audit canaries` work: every user of the run config, every DP setting; writes canaries.json."""
    rc = run_config(cfg)
    out = Path(rc.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t.name for t in parse_task_list(rc.tasks)]
    data = Path(rc.data_dir).expanduser() if rc.data_dir else out / "data"
    if not rc.data_dir:
        missing = [t for t in tasks if not (data / t / f"{rc.split}_questions.json").exists()]
        if missing:
            write_personas(data, users=rc.users, tasks=missing, seed=rc.seed,
                           splits=(rc.split,), queries_per_user=rc.personas.queries)
    users_out = []
    todo = [(task, user) for task in tasks
            for user in load_task_users(data, task, rc.split, max_users=rc.users or None)]
    with Progress("canary audit", total=len(todo), unit="users") as bar:  # rate and ETA: a user trains per setting
        for task, user in todo:
            log(f"canary audit: {task} user {user.user_id} ({len(user.profile)} records)")
            users_out.append(audit_user_canaries(model, user, cfg, settings, n_canaries=n_canaries,
                                                 n_controls=n_controls, n_candidates=n_candidates, repeats=repeats))
            bar.advance()
    report = {"config": {k: v for k, v in cfg.items()}, "settings": ["off" if e is None else e for e in settings],
              "canaries_per_user": n_canaries, "controls_per_user": n_controls, "candidates": n_candidates,
              "repeats": repeats, "summary": summarize_canary_audit(users_out), "users": users_out}
    write_json_atomic(out / "canaries.json", json.loads(json.dumps(report, default=str)))
    return report

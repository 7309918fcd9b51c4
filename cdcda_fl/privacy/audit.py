"""Empirical privacy: a loss-threshold membership-inference attack on a user's adapter, and the
canary exposure audit (`cdcda audit canaries`, built on :mod:`cdcda_fl.privacy.canary`).

The attacker sees the adapter's loss on candidate records and guesses "member" when the loss is
low (Yeom et al., 2018). The AUC over all thresholds is reported: 0.5 means the adapter does not
reveal which records it was trained on; 1.0 means it reveals them perfectly. Members are the
user's training records, non-members held-out records of the same user, so the attack measures
memorisation of specific records rather than of the user's general style.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cdcda_fl.config import add_config_arguments


def membership_auc(member_losses: Sequence[float], nonmember_losses: Sequence[float]) -> float | None:
    """AUC of the attack "lower loss = member"; None when either side is empty."""
    from sklearn.metrics import roc_auc_score

    if not member_losses or not nonmember_losses:
        return None
    labels = [1] * len(member_losses) + [0] * len(nonmember_losses)
    scores = [-float(x) for x in member_losses] + [-float(x) for x in nonmember_losses]
    return float(roc_auc_score(labels, scores))


# ---------------------------------------------------------------------- canary exposure audit
def canary_settings(values: str) -> list[float | None]:
    """'off,8,1' -> [None, 8.0, 1.0] (None = no DP); a clear error for anything else."""
    out: list[float | None] = []
    for part in (p.strip() for p in str(values).split(",")):
        if not part:
            continue
        if part.lower() in {"off", "none"}:
            eps = None
        else:
            try:
                eps = float(part)
            except ValueError:
                raise ValueError(f"--dp-epsilon: {part!r} is neither 'off' nor a number") from None
            if not 0 < eps < float("inf"):
                raise ValueError(f"--dp-epsilon: {part!r} must be a positive finite number (or 'off')")
        if eps not in out:
            out.append(eps)
    if not out:
        raise ValueError("--dp-epsilon: give at least one setting, e.g. off,8")
    return out


def audit_user_canaries(model, user, cfg, settings, *, n_canaries: int = 2, n_controls: int = 2,
                        n_candidates: int = 128, repeats: int = 1) -> dict:
    """Plant canaries in one user's non-shared profile, train per DP setting, measure exposure and MIA.

    For each setting the adapter is trained the way the device trains it: without DP from the
    run's ``train.*`` keys; with DP from :func:`cdcda_fl.device.dp_select.candidates_for` (the
    first candidate: the audit has no cloud data to select with, and measures the adapter DP-SGD
    releases). ``model=None`` takes the base the device would use for that setting
    (:func:`~cdcda_fl.device.device_model.device_model_for`: under DP ``device.dtype=auto`` means
    fp32, without DP bf16 where the CPU has it), so the audit measures the adapter a device
    releases. ``n_controls`` canaries of the same format are never planted: their exposure is
    the "nothing leaked" reference (≈ log2 e, not 0, for a rank estimate).
    """
    from cdcda_fl.data.tasks import get_task
    from cdcda_fl.device.device_model import device_model_for
    from cdcda_fl.device.dp_select import candidates_for
    from cdcda_fl.device.share import share_records
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.privacy.canary import (
        canary_consent,
        check_not_shared,
        make_canaries,
        measure_exposure,
        plant,
        summarize,
    )

    spec = get_task(user.task)
    seed = f"{cfg.get('seed', 0)}:{user.user_id}"
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
    from cdcda_fl.stats import mean_ci

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
                     repeats: int = 1, model=None, log=print) -> dict:
    """The `cdcda audit canaries` work: every user of the run config, every DP setting; writes canaries.json."""
    import json

    from cdcda_fl.data.lamp import load_task_users, write_json_atomic
    from cdcda_fl.data.personas import write_personas
    from cdcda_fl.data.tasks import parse_task_list

    out = Path(str(cfg["out-dir"])).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t.name for t in parse_task_list(str(cfg["tasks"]))]
    data = Path(str(cfg["data-dir"])).expanduser() if cfg.get("data-dir") else out / "data"
    if not cfg.get("data-dir"):
        missing = [t for t in tasks if not (data / t / f"{cfg['split']}_questions.json").exists()]
        if missing:
            write_personas(data, users=int(cfg["users"]), tasks=missing, seed=int(cfg["seed"]),
                           splits=(str(cfg["split"]),), queries_per_user=int(cfg.get("personas.queries", 8)))
    from cdcda_fl.progress import Progress

    users_out = []
    todo = [(task, user) for task in tasks
            for user in load_task_users(data, task, str(cfg["split"]), max_users=int(cfg["users"]) or None)]
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


def print_canary_summary(report: dict) -> None:
    print(f"{'task':<8} {'DP ε':>6} {'users':>5} {'exposure planted':>22} {'control':>8} {'max':>5} "
          f"{'MIA AUC':>8} {'ε spent':>8}")
    for r in report["summary"]:
        def f(x):
            return "–" if x is None else f"{x:.2f}"
        p = r["exposure_planted"]
        band = f" [{f(p['lo'])}, {f(p['hi'])}]" if p["lo"] is not None else ""
        print(f"{r['task']:<8} {r['dp_epsilon']:>6} {r['n_users']:>5} {f(p['mean']) + band:>22} "
              f"{f(r['exposure_control']['mean']):>8} {f(r['max_exposure']):>5} {f(r['mia_auc']['mean']):>8} "
              f"{f(r['epsilon']):>8}")


def _cmd_canaries(args) -> int:
    import sys

    from cdcda_fl.config import ConfigError, load_config, path_overrides
    from cdcda_fl.privacy.canary import CanaryError

    extra = path_overrides(args)
    try:
        cfg = load_config(args.config, args.set, extra=extra)
        settings = canary_settings(args.dp_epsilon)
        for name in ("canaries", "controls", "repeats"):
            if getattr(args, name) < (0 if name == "controls" else 1):
                raise ValueError(f"--{name} must be >= {0 if name == 'controls' else 1}")
        if args.candidates < 2:
            raise ValueError("--candidates must be >= 2")
    except (ConfigError, ValueError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_canary_audit(cfg, settings, n_canaries=args.canaries, n_controls=args.controls,
                                  n_candidates=args.candidates, repeats=args.repeats,
                                  log=lambda m: print(m, file=sys.stderr))
    except CanaryError as exc:
        print(f"canary audit error: {exc}", file=sys.stderr)
        return 2
    print_canary_summary(report)
    print(f"report: {Path(str(cfg['out-dir'])) / 'canaries.json'}")
    return 0


def _cmd_sent(args) -> int:
    from cdcda_fl.privacy.sent import cmd_sent

    return cmd_sent(args.paths, args.json)


def register(sub) -> None:
    """`cdcda audit canaries`: the Secret Sharer exposure audit, with and without DP; `cdcda audit sent`."""
    audit = sub.add_parser("audit", help="empirical privacy audits of the private adapters")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT")
    can = audit_sub.add_parser(
        "canaries", help="plant random canary records in non-shared profiles, train, measure exposure",
        description="Secret Sharer audit: plant canaries (task-format records with random secrets) in each user's "
                    "private, non-shared profile; check they never reach the cloud; train the adapter without and "
                    "with DP; report exposure = log2(R) - log2(rank) next to MIA AUC and ε (canaries.json).")
    add_config_arguments(can, config_help="TOML run config (tasks, users, device.model, train.*)",
                         out_help="output directory (default: out-dir of the config)")
    can.add_argument("--dp-epsilon", default="off,8", help="comma-separated settings, 'off' = no DP (default off,8)")
    can.add_argument("--canaries", type=int, default=2, help="canaries planted per user (default 2)")
    can.add_argument("--controls", type=int, default=2, help="never-planted control canaries per user (default 2)")
    can.add_argument("--candidates", type=int, default=128, help="R: candidates per canary incl. itself (default 128)")
    can.add_argument("--repeats", type=int, default=1, help="copies of each canary in the profile (default 1)")
    can.set_defaults(func=_cmd_canaries)
    sent = audit_sub.add_parser("sent", help="what a device sent, from its own audit log (records, bytes, results)")
    sent.add_argument("paths", nargs="+", metavar="PATH", help="a device's storage dir or its audit.jsonl")
    sent.add_argument("--json", action="store_true", help="one JSON list instead of text")
    sent.set_defaults(func=_cmd_sent)

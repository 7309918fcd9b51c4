"""Measure DP-SGD candidates for few-record users (the numbers behind privacy/dp.py's plan).

For seeded persona users of LaMP-2 and LaMP-3 and the SmolLM2 preset: the base model, the
run config's default LoRA under DP (r=8 on q/k/v/o, batch 4, 24 steps: what the README's sweep
used), and every candidate of :func:`cdcda_fl.privacy.dp.few_record_plans` at the same ε (and the default without DP, as the
ceiling). Each is
scored on the user's held-out queries (mean gold-answer loss and the task metric). One JSON line
per (user, candidate) on stdout and in ``--out``.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python experiments/dp_candidates.py --users 2 --epsilon 8 \
        --out runs/dp_candidates.jsonl

This is a measurement, not a test: it takes minutes per user on 2 CPU cores.

``--mode personalize`` measures what the device does end to end (docs/dp.md): for LaMP-2 persona
users of a run config (default experiments/configs/dp_quick.toml), the cloud writes synthetic
records from each user's consented records once (cached in ``--synthetic``, so every setting sees
the same records), then :func:`cdcda_fl.device.personalize.personalize_user` runs base, local and
cdcda with DP off and with DP on (``train_private``: candidates, privacy-free selection,
fall-back), and a summary table (accuracy, ε, fall-backs) is printed:

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python experiments/dp_candidates.py --mode personalize \
        --users 4 --epsilon 8 --settings nodp,dp1 --out runs/dp_quick.jsonl --synthetic runs/dp_quick_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.training import LoraTrainConfig
from cdcda_fl.device.models import get_base_model
from cdcda_fl.evaluation.metrics import score
from cdcda_fl.privacy.dp import DPConfig, DPTrainPlan, few_record_plans

README_DEFAULT = DPTrainPlan(rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                             learning_rate=1e-3, batch_size=4, steps=24, max_grad_norm=1.0, dropout=0.05,
                             name="default-r8-qkvo")

NO_DP = DPTrainPlan(**{**README_DEFAULT.to_dict(), "target_modules": README_DEFAULT.target_modules,
                       "name": "nodp-default-r8-qkvo"})


def evaluate(dm: DeviceModel, task: str, user) -> dict:
    spec = get_task(task)
    held = [(q.input, q.gold) for q in user.queries]
    losses = dm.example_losses(held)
    preds = [spec.parse_answer(t) for t in dm.generate([q.input for q in user.queries],
                                                         max_new_tokens=spec.max_new_tokens)]
    metrics = score(spec, {q.id: q.gold for q in user.queries}, {q.id: p for q, p in zip(user.queries, preds)})
    return {"heldout_loss": sum(losses) / len(losses), "metrics": metrics}


DP_QUICK = Path(__file__).resolve().parent / "configs" / "dp_quick.toml"


def _synthetic_for(cfg: dict, users: list, cache: Path | None) -> dict[str, list[dict]]:
    """The cloud's records for each user, written from the user's consented records only (cached)."""
    from cdcda_fl.cloud.augment import AugmentConfig, CloudAugmenter
    from cdcda_fl.cloud.backends import make_backend
    from cdcda_fl.privacy.consent import share_records

    stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    key = json.dumps({k: cfg[k] for k in sorted(cfg) if k.startswith(("synthetic.", "cloud.", "consent."))}
                     | {"seed": cfg["seed"], "tasks": cfg["tasks"]}, sort_keys=True)
    have = stored.get(key, {})
    missing = [u for u in users if u.user_id not in have]
    if missing:
        t0 = time.perf_counter()
        augmenter = CloudAugmenter(make_backend(cfg), AugmentConfig.from_config(cfg))
        results = augmenter.augment([share_records(u, cfg) for u in missing])
        for uid, res in results.items():
            have[uid] = list(res.records)
        print(f"# cloud wrote {sum(len(r.records) for r in results.values())} records for {len(missing)} user(s) "
              f"in {time.perf_counter() - t0:.0f}s", flush=True)
        if cache is not None:
            stored[key] = have
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(stored))
    return have


SETTINGS = {  # name -> run-config overrides
    "nodp": {"dp.enabled": False},
    "dp1": {"dp.enabled": True, "dp.candidates": 1},
    "dp2": {"dp.enabled": True, "dp.candidates": 2},
    "dp1-nofallback": {"dp.enabled": True, "dp.candidates": 1, "dp.fallback": False},
}


def personalize_mode(args: argparse.Namespace) -> None:
    """base vs local vs cdcda, DP off and on, through the device's own personalize_user."""
    from cdcda_fl.core.config import load_config
    from cdcda_fl.device.personalize import personalize_user

    sets = [f"dp.epsilon={args.epsilon}", f"seed={args.seed}", f"device.model={args.model}"]
    if args.users:
        sets.append(f"users={args.users}")
    cfg = load_config(args.config, sets + list(args.set))
    data = Path(tempfile.mkdtemp(prefix="dp-personalize-"))
    tasks = [t for t in str(cfg["tasks"]).split(",") if t]
    write_personas(data, users=int(cfg["users"]), tasks=tasks, seed=int(cfg["seed"]), splits=(str(cfg["split"]),),
                   queries_per_user=int(cfg["personas.queries"]))
    dm = DeviceModel(get_base_model(str(cfg["device.model"])))
    out = args.out.open("a") if args.out else None
    table: dict[tuple[str, str], list[dict]] = {}
    storage_root = args.storage or Path(tempfile.mkdtemp(prefix="dp-devices-"))
    for task in tasks:
        users = load_task_users(data, task, str(cfg["split"]), max_users=int(cfg["users"]))
        synthetic = _synthetic_for(cfg, users, args.synthetic)  # the cloud writes for every user
        if args.user_ids:
            wanted = args.user_ids.split(",")
            users = sorted((u for u in users if u.user_id in wanted), key=lambda u: wanted.index(u.user_id))
        for user in users:  # one user at a time through every setting: a cut-short run has whole users
            for name in args.settings.split(","):
                run_cfg = {**cfg, **SETTINGS[name]}
                storage = storage_root / name  # a device's disk: reruns reuse its stored adapters
                t0 = time.perf_counter()
                res = personalize_user(user, synthetic.get(user.user_id, []), run_cfg, storage_dir=storage,
                                       device_model=dm)
                for method, entry in res["methods"].items():
                    dp = entry.get("dp") or {}
                    row = {"setting": name, "task": task, "user": user.user_id, "method": method,
                           "n_profile": res["n_profile"], "n_synthetic": res["n_synthetic_received"],
                           "n_queries": res["n_queries"], "metrics": entry.get("metrics"),
                           "epsilon": entry.get("epsilon"), "fell_back": dp.get("fell_back"),
                           "chosen": dp.get("chosen"), "base_val_loss": dp.get("base_loss"),
                           "val_losses": {c["name"]: c["validation_loss"] for c in dp.get("candidates", [])},
                           "n_validation": dp.get("n_validation"), "sigma": dp.get("noise_multiplier"),
                           "train_seconds": (entry.get("train") or {}).get("seconds"),
                           "user_seconds": round(time.perf_counter() - t0, 1)}
                    table.setdefault((name, method), []).append(row)
                    line = json.dumps(row)
                    print(line, flush=True)
                    if out:
                        out.write(line + "\n")
                        out.flush()
    print(f"\n{'setting':<16} {'method':<7} {'users':>5} {'accuracy':>9} {'ε max':>7} {'fell back':>9}")
    for (name, method), rows in table.items():
        accs = [r["metrics"]["accuracy"] for r in rows if r["metrics"] and "accuracy" in r["metrics"]]
        n_q = [r["n_queries"] for r in rows if r["metrics"] and "accuracy" in r["metrics"]]
        acc = sum(a * n for a, n in zip(accs, n_q)) / sum(n_q) if n_q else float("nan")
        eps = [r["epsilon"] for r in rows if r["epsilon"] is not None]
        fb = [r["fell_back"] for r in rows if r["fell_back"] is not None]
        print(f"{name:<16} {method:<7} {len(rows):>5} {acc:>9.3f} {max(eps) if eps else float('nan'):>7.2f} "
              f"{(f'{sum(fb)}/{len(fb)}' if fb else '-'):>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("candidates", "personalize"), default="candidates")
    ap.add_argument("--tasks", default="LaMP_2,LaMP_3")
    ap.add_argument("--users", type=int, default=None, help="default: 2 (candidates) or the config's (personalize)")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default="", help="comma-separated candidate names to run (default all)")
    ap.add_argument("--config", type=Path, default=DP_QUICK, help="personalize: run config (default dp_quick.toml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="personalize: config override")
    ap.add_argument("--settings", default="nodp,dp1", help=f"personalize: comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--synthetic", type=Path, default=None, help="personalize: JSON cache of the cloud's records")
    ap.add_argument("--storage", type=Path, default=None,
                    help="personalize: the devices' disk (one folder per setting; reruns reuse stored adapters)")
    ap.add_argument("--user-ids", default="", help="personalize: only these users, in this order (default all)")
    args = ap.parse_args()
    if args.mode == "personalize":
        unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
        if unknown:
            ap.error(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}")
        personalize_mode(args)
        return
    args.users = args.users or 2
    dm = DeviceModel(get_base_model(args.model))
    data = Path(tempfile.mkdtemp(prefix="dp-candidates-"))
    tasks = args.tasks.split(",")
    write_personas(data, users=args.users, tasks=tasks, seed=args.seed, splits=("dev",))
    out = args.out.open("a") if args.out else None
    for task in tasks:
        for user in load_task_users(data, task, "dev", max_users=args.users):
            pairs = get_task(task).profile_to_pairs(user.profile)
            rows = []
            dm.clear_adapter()
            t0 = time.perf_counter()
            rows.append({"candidate": "base", **evaluate(dm, task, user), "seconds": time.perf_counter() - t0})
            plans = [NO_DP, README_DEFAULT, *few_record_plans(len(pairs), args.epsilon)]
            only = set(filter(None, args.only.split(",")))
            for plan in plans:
                if only and plan.name not in only:
                    continue
                lora = plan.lora_config(LoraTrainConfig(seed=args.seed))
                dp = plan.dp_config(DPConfig(enabled=True, target_epsilon=args.epsilon))
                t0 = time.perf_counter()
                res = dm.train(pairs, lora, None if plan.name == NO_DP.name else dp)
                train_s = time.perf_counter() - t0
                rows.append({"candidate": plan.name, "plan": plan.to_dict(), **evaluate(dm, task, user),
                             "epsilon": res.epsilon, "train_seconds": train_s, "train_loss_first": res.losses[0],
                             "train_loss_last": res.final_loss})
                dm.clear_adapter()
            for row in rows:
                line = json.dumps({"task": task, "user": user.user_id, "n_train": len(pairs),
                                   "n_queries": len(user.queries), "target_epsilon": args.epsilon, **row})
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()


if __name__ == "__main__":
    main()

"""Does the cloud's synthetic data help the device? Cloud writers and device rules, side by side.

For seeded persona users (or real LaMP files with ``--data-dir``), every cloud writer named in
``--clouds`` writes synthetic records from each user's *consented* records once (cached per writer
in ``--cache``, so every device setting sees the same records). Then the device's own
:func:`cdcda_fl.device.personalize.personalize_user` runs base, local-only and CDCDA under each
device setting of ``--settings`` (run-config overrides; local adapters are reused across
settings through the device's adapter store). One JSON line per (task, cloud, setting, user) goes
to ``--out``, and a summary prints per task and setting: each method's primary metric with its
95 % interval over users, CDCDA's paired gain over local-only with its interval, win/tie/loss,
and the cloud writer's records per minute and filter counts.

    HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python experiments/augment_compare.py --tasks LaMP_2 \
        --users 12 --clouds smollm2-135m,qwen2.5-coder-0.5b --out runs/compare/rows.jsonl

This is a measurement, not a test: minutes per user on 2 CPU cores. ``--summary-only`` prints the
summary of an existing ``--out`` file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import load_config
from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.personas import write_personas
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric
from cdcda_fl.evaluation.stats import format_interval, mean_ci, paired_diff_ci, win_tie_loss

SETTINGS_HELP = "name:key=value;key=value,... (e.g. 'plain:,cap:train.synthetic-max-share=0.5')"


def parse_settings(text: str) -> dict[str, dict[str, str]]:
    """'a:k=v;k2=v2,b:' -> {'a': {'k': 'v', 'k2': 'v2'}, 'b': {}}."""
    out: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, body = part.partition(":")
        out[name] = dict(kv.split("=", 1) for kv in filter(None, body.split(";")))
    return out


def cache_key(cfg: dict, cloud: str) -> str:
    """What decides a writer's records: its settings, the seed and the task.

    The task is part of it because persona user ids repeat across tasks (``dev-u0000`` exists in
    every task): before 2026-12-04 a multi-task ``--tasks`` gave LaMP-2 and LaMP-5 users the LaMP-3
    records cached under their ids, the device dropped them all as invalid, and the comparison
    silently became local-only for those tasks.
    """
    writer = {k: cfg[k] for k in sorted(cfg) if k.startswith(("synthetic.", "cloud.", "consent.", "personas."))}
    return json.dumps(writer | {"seed": cfg["seed"], "cloud.model": cloud, "task": cfg["tasks"]}, sort_keys=True)


def synthetic_for(cfg: dict, cloud: str, users: list, cache: Path) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The cloud writer's records per user (written once, cached), and its cost and filter counts."""
    from cdcda_fl.cloud.augment import AugmentConfig, CloudAugmenter
    from cdcda_fl.cloud.backends import make_backend
    from cdcda_fl.privacy.consent import share_records

    path = cache / f"{cloud}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    key = cache_key(cfg, cloud)
    entry = stored.get(key, {"records": {}, "counts": {}, "seconds": 0.0})
    missing = [u for u in users if u.user_id not in entry["records"]]
    if missing:
        t0 = time.perf_counter()
        run_cfg = {**cfg, "cloud.model": cloud}
        augmenter = CloudAugmenter(make_backend(run_cfg), AugmentConfig.from_config(run_cfg))
        results = augmenter.augment([share_records(u, run_cfg) for u in missing])
        for uid, res in results.items():
            entry["records"][uid] = list(res.records)
            entry["counts"][uid] = {**res.counts, **({"error": res.error} if res.error else {})}
        entry["seconds"] += time.perf_counter() - t0
        print(f"# {cloud}: {sum(len(r.records) for r in results.values())} records for {len(missing)} user(s) "
              f"in {time.perf_counter() - t0:.0f}s", flush=True)
        stored[key] = entry
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(path)
    totals: dict[str, int] = defaultdict(int)
    for uid in (u.user_id for u in users):
        for k, v in entry["counts"].get(uid, {}).items():
            if isinstance(v, int):
                totals[k] += v
    accepted = sum(len(entry["records"].get(u.user_id, [])) for u in users)
    info = {"seconds": round(entry["seconds"], 1), "accepted": accepted,
            "per_minute": round(60 * accepted / entry["seconds"], 2) if entry["seconds"] else None,
            "counts": dict(totals)}
    return entry["records"], info


def summarize(rows: list[dict], markdown: bool = False) -> str:
    """Per (task, cloud, setting): methods with intervals and CDCDA's paired gain over local-only."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["cloud"], r["setting"])].append(r)
    lines = [f"{'task':<7} {'cloud':<19} {'setting':<14} {'n':>3} {'base':>20} {'local':>20} {'cdcda':>20} "
             f"{'gain cdcda-local':>24} {'W/T/L':>8} {'fallback':>8}"]
    md = ["| Task | Cloud writer | Device rule | Users | Base | Local LoRA | CDCDA | CDCDA − local (paired, 95 % CI) "
          "| W/T/L | Fell back |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (task, cloud, setting), rs in sorted(groups.items()):
        metric = primary_metric(task)
        lower = metric in LOWER_IS_BETTER
        ok = [r for r in rs if all(r["scores"].get(m) is not None for m in ("local", "cdcda"))]
        cells = []
        for m in ("base", "local", "cdcda"):
            vals = [r["scores"][m] for r in ok if r["scores"].get(m) is not None]
            w = [r["n_queries"] for r in ok if r["scores"].get(m) is not None]
            cells.append(format_interval(mean_ci(vals, weights=w) if vals else None, ci_digits=2))
        a = [r["scores"]["cdcda"] for r in ok]
        b = [r["scores"]["local"] for r in ok]
        w = [r["n_queries"] for r in ok]
        diff = paired_diff_ci(a, b, weights=w) if ok else None
        if diff is not None and lower:
            diff = type(diff)(-diff.mean, None if diff.hi is None else -diff.hi, None if diff.lo is None else -diff.lo)
        wtl = win_tie_loss(a, b, lower_is_better=lower) if ok else None
        fb = sum(1 for r in ok if r.get("fell_back"))
        gain = format_interval(diff, ci_digits=3, signed=True)
        wtl_s = f"{wtl.wins}/{wtl.ties}/{wtl.losses}" if wtl else "-"
        lines.append(f"{task:<7} {cloud:<19} {setting:<14} {len(ok):>3} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20} "
                     f"{gain:>24} {wtl_s:>8} {fb:>8}")
        md.append(f"| {task.replace('_', '-')} ({metric}{' ↓' if lower else ''}) | {cloud} | {setting} | {len(ok)} | "
                  f"{' | '.join(cells)} | {gain} | {wtl_s} | {fb} |")
    return "\n".join(md if markdown else lines)


def write_summary(rows: list[dict], out: Path) -> Path:
    """``summary.md`` beside the rows file: the markdown table (experiments/update_readme.py --realtext)."""
    from cdcda_fl.core.atomic import write_text_atomic

    return write_text_atomic(out.parent / "summary.md", summarize(rows, markdown=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=None, help="run config to start from (default: the defaults)")
    ap.add_argument("--tasks", default="LaMP_2")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=None, help="real LaMP files instead of personas")
    ap.add_argument("--clouds", default="smollm2-135m", help="comma-separated cloud writer models")
    ap.add_argument("--settings", default="plain:", help=SETTINGS_HELP)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, appended; reruns skip rows already there")
    ap.add_argument("--cache", type=Path, default=None, help="cloud records cache folder (default: beside --out)")
    ap.add_argument("--storage", type=Path, default=None, help="the devices' disk (default: beside --out)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    from cdcda_fl.core.quiet import quiet_libraries

    quiet_libraries()  # the same known-noise filters as `cdcda run` (bitsandbytes' kernels notice, ...)

    done = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()] if args.out.is_file() else []
    if args.summary_only:
        print(summarize(done))
        write_summary(done, args.out)
        return
    from cdcda_fl.device.lora import device_model_for
    from cdcda_fl.device.personalize import personalize_user

    sets = [f"seed={args.seed}", f"users={args.users}", f"tasks={args.tasks}", "methods=base,local,cdcda"] + args.set
    cfg = load_config(args.config, sets)
    settings = parse_settings(args.settings)
    cache = args.cache or args.out.parent / "cloud-cache"
    storage = args.storage or args.out.parent / "devices"
    data = args.data_dir
    if data is None:
        data = Path(tempfile.mkdtemp(prefix="compare-"))
        write_personas(data, users=int(cfg["users"]), tasks=args.tasks.split(","), seed=int(cfg["seed"]),
                       splits=(str(cfg["split"]),), queries_per_user=int(cfg["personas.queries"]))
    have = {(r["task"], r["cloud"], r["setting"], r["user"]) for r in done}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = device_model_for(cfg)
    with args.out.open("a") as out:
        for task in args.tasks.split(","):
            users = load_task_users(data, task, str(cfg["split"]), max_users=int(cfg["users"]))
            for cloud in args.clouds.split(","):
                synthetic, info = synthetic_for({**cfg, "tasks": task}, cloud, users, cache)
                print(f"# {task} {cloud}: {json.dumps(info)}", flush=True)
                for user in users:
                    for name, over in settings.items():
                        if (task, cloud, name, user.user_id) in have:
                            continue
                        run_cfg = load_config(args.config, sets + [f"{k}={v}" for k, v in over.items()])
                        run_cfg = {**run_cfg, "cloud.model": cloud}
                        t0 = time.perf_counter()
                        res = personalize_user(user, synthetic.get(user.user_id, []), run_cfg,
                                               storage_dir=storage / cloud, device_model=model)
                        metric = primary_metric(task)
                        scores = {m: (e.get("metrics") or {}).get(metric) for m, e in res["methods"].items()}
                        decision = res.get("synthetic_decision") or {}
                        row = {"task": task, "cloud": cloud, "setting": name, "user": user.user_id,
                               "n_profile": res["n_profile"], "n_queries": res["n_queries"],
                               "n_synthetic_received": res["n_synthetic_received"],
                               "n_synthetic_used": res["n_synthetic_used"], "scores": scores,
                               "fell_back": decision.get("used_synthetic") is False, "decision": decision,
                               "seconds": round(time.perf_counter() - t0, 1)}
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                        done.append(row)
                        print(json.dumps({k: row[k] for k in ("task", "cloud", "setting", "user", "n_profile",
                                                              "n_synthetic_used", "scores", "fell_back", "seconds")}),
                              flush=True)
    print(summarize(done))
    write_summary(done, args.out)


if __name__ == "__main__":
    main()

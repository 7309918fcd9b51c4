"""Would a fall-back rule on the user's *shared* real records have chosen better? (docs/dp.md)

After a DP run (``cdcda run experiments/configs/dp_quality.toml``) every kept DP adapter is on the
device's disk. This script re-scores each user's local+DP and CDCDA+DP adapters and the base on
the records that user consented to share (real records, the consented side of the DP argument,
so a decision computed from them spends none of the non-shared records' budget), applies the rule

    keep the adapter iff on the shared records its mean loss is lower than the base's AND its task
    metric is no worse (else answer with the base model),

and reports, per method, the held-out query metric of what the device released (DP-selected on the
cloud's records, as run) next to what this rule would have released, with paired 95 % intervals
over users against the base. Held-out queries are used only to *score* the two rules, never to
decide.

    HF_HUB_OFFLINE=1 python experiments/dp_shared_check.py runs/dp-quality
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.tasks import get_task
from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.models import get_base_model
from cdcda_fl.privacy.consent import share_records
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric, score
from cdcda_fl.evaluation.stats import paired_diff_ci, win_tie_loss


def _scores(dm: DeviceModel, spec, pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """(mean loss, primary metric) of the active adapter (or base) on (input, gold) pairs."""
    losses = dm.example_losses(pairs)
    preds = [spec.parse_answer(t) for t in dm.generate([p for p, _ in pairs], max_new_tokens=spec.max_new_tokens)]
    ids = [str(i) for i in range(len(pairs))]
    metrics = score(spec, dict(zip(ids, (g for _, g in pairs))), dict(zip(ids, preds)))
    return sum(losses) / len(losses), float(metrics[primary_metric(spec)])


def _adapter_dir(run: Path, task: str, method: str, user: str) -> Path | None:
    hits = sorted((run / "devices" / "adapters").glob(f"{task}-{method}-dp-*/{user}/adapter_model.safetensors"))
    return hits[-1].parent if hits else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished DP run directory")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default RUN/dp_shared_check.json)")
    args = ap.parse_args()
    run = args.run
    cfg = json.loads((run / "config.json").read_text())
    cfg = cfg.get("config", cfg)
    dm = DeviceModel(get_base_model(str(cfg["device.model"])))
    rows = []
    for task in str(cfg["tasks"]).split(","):
        spec = get_task(task)
        metric = primary_metric(spec)
        lower = metric in LOWER_IS_BETTER
        for user in load_task_users(run / "data", task, str(cfg.get("split", "dev"))):
            done = run / "users" / task / f"{user.user_id}.json"
            if not done.is_file():
                continue
            result = json.loads(done.read_text())
            shared_ids = set(share_records(user, cfg).local_ids)
            shared = spec.profile_to_pairs([r for r in user.profile if str(r["id"]) in shared_ids])
            base_q = float(result["methods"]["base"]["metrics"][metric])
            row = {"task": task, "user": user.user_id, "n_profile": len(user.profile), "n_shared": len(shared),
                   "base": base_q}
            if shared:
                dm.clear_adapter()
                base_loss, base_m = _scores(dm, spec, shared)
            for method in ("local", "cdcda"):
                entry = result["methods"].get(method)
                if entry is None:
                    continue
                q = float(entry["metrics"][metric])
                path = _adapter_dir(run, task, method, user.user_id)
                keep = False
                if shared and path is not None and not (entry.get("dp") or {}).get("fell_back"):
                    dm.load_adapter(path)
                    loss, m = _scores(dm, spec, shared)
                    keep = loss < base_loss and (m <= base_m if lower else m >= base_m)
                    row[f"{method}_shared"] = {"loss": loss, "metric": m, "base_loss": base_loss, "base_metric": base_m}
                row[method] = q
                row[f"{method}_rule"] = q if keep else base_q
                row[f"{method}_kept"] = keep
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for task in sorted({r["task"] for r in rows}):
        t_rows = [r for r in rows if r["task"] == task]
        lower = primary_metric(task) in LOWER_IS_BETTER
        sign = -1.0 if lower else 1.0
        block = {"n_users": len(t_rows), "metric": primary_metric(task)}
        for col in ("base", "local", "local_rule", "cdcda", "cdcda_rule"):
            block[col] = sum(r[col] for r in t_rows) / len(t_rows)
        for a, b in (("local", "base"), ("local_rule", "base"), ("cdcda", "base"), ("cdcda_rule", "base"),
                     ("cdcda", "local"), ("cdcda_rule", "local_rule")):
            xa = [sign * r[a] for r in t_rows]
            xb = [sign * r[b] for r in t_rows]
            iv = paired_diff_ci(xa, xb)
            w, t, lo = win_tie_loss(xa, xb)
            block[f"{a}-{b}"] = {"gain": [iv.mean, iv.lo, iv.hi], "w/t/l": [w, t, lo]}
        summary[task] = block
    out = args.out or run / "dp_shared_check.json"
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    for task, block in summary.items():
        print(f"\n{task} ({block['n_users']} users, {block['metric']}; gains signed so + = better)")
        for k, v in block.items():
            if isinstance(v, dict):
                g = v["gain"]
                print(f"  {k:<22} {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}]  W/T/L {'/'.join(map(str, v['w/t/l']))}")
            elif isinstance(v, float):
                print(f"  {k:<22} {v:.3f}")


if __name__ == "__main__":
    main()

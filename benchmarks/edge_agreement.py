"""Does ``device.runtime=llamacpp`` answer like PyTorch? Agreement over a finished run's users.

Re-runs the device step of every user of a finished run (default ``runs/demo``) with
``device.runtime=llamacpp``: the run's stored adapters and holdout decisions are reused (same
config and data, so the same keys in the device store), the synthetic records are the ones the
device logged, and only the answering engine changes. Compares each method's llama.cpp answers
with the run's PyTorch answers (exact match after the task's answer parsing) and each task's
metric under both engines.

    python benchmarks/edge_agreement.py [--run runs/demo] [--methods base,rag,local,cdcda]

Needs the edge extra (llama-cpp-python). Writes benchmarks/results/edge_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="finished run directory")
    ap.add_argument("--methods", default="base,rag,local,cdcda", help="device methods to compare")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp (and torch) threads")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "edge_agreement.json")
    args = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("needs llama-cpp-python: pip install '.[edge]' (docs/edge.md)", file=sys.stderr)
        return 2
    import torch

    from cdcda_fl.core.atomic import write_json_atomic
    from cdcda_fl.core.config import resolve
    from cdcda_fl.data.tasks import get_task
    from cdcda_fl.device.personalize import personalize_users
    from cdcda_fl.device.synthetic_store import load_synthetic_log
    from cdcda_fl.device.node import SIMULATED, hosted_users, storage_dir
    from cdcda_fl.evaluation.metrics import primary_metric, score

    results = json.loads((args.run / "config.json").read_text())
    cfg = resolve({k: v for k, v in (results.get("config") or results).items() if k != "versions"})
    methods = [m for m in args.methods.split(",") if m]
    cfg = {**cfg, "device.runtime": "llamacpp", "methods": ",".join(methods)}
    torch.set_num_threads(args.threads)
    node = {"partition-id": 0, "num-partitions": 1, SIMULATED: True}  # the simulated run's node 0
    storage = storage_dir(node, cfg)
    users = hosted_users(node, cfg)
    jobs = []
    for user in users:
        log = load_synthetic_log(storage, user.user_id, user.task) or {}
        jobs.append((user, log.get("received", [])))
    started = time.perf_counter()
    outcomes = personalize_users(jobs, cfg, storage_dir=storage)
    seconds = time.perf_counter() - started

    per_method: dict[str, dict[str, int]] = {}
    per_task: dict[str, dict[str, dict[str, list[float]]]] = {}
    for (user, _syn), outcome in zip(jobs, outcomes):
        torch_path = args.run / "users" / user.task / f"{user.user_id}.json"
        if isinstance(outcome, Exception) or not torch_path.is_file():
            print(f"skipped {user.task}/{user.user_id}: {outcome if isinstance(outcome, Exception) else 'no result'}")
            continue
        ref = json.loads(torch_path.read_text())
        retrained = [m for m, e in outcome["methods"].items() if "train" in e and not e["train"].get("reused")]
        if retrained:
            print(f"note: {user.task}/{user.user_id}: {', '.join(retrained)} retrained (the stored adapter's key "
                  "did not match), so this compares two trainings, not only two engines")
        spec = get_task(user.task)
        metric = primary_metric(spec)
        for m in methods:
            t = ref["methods"].get(m, {}).get("predictions")
            c = outcome["methods"].get(m, {}).get("predictions")
            if not t or not c:
                continue
            slot = per_method.setdefault(m, {"equal": 0, "total": 0})
            slot["equal"] += sum(t[q] == c.get(q) for q in t)
            slot["total"] += len(t)
            golds = ref.get("golds") or outcome.get("golds")
            if golds:
                cell = per_task.setdefault(user.task, {}).setdefault(m, {"torch": [], "llamacpp": []})
                cell["torch"].append(score(spec, golds, t)[metric])
                cell["llamacpp"].append(score(spec, golds, c)[metric])
    report = {
        "run": str(args.run), "users": len(jobs), "methods": methods, "threads": args.threads,
        "seconds": round(seconds, 1),
        "agreement": {m: {**d, "rate": round(d["equal"] / d["total"], 3)} for m, d in per_method.items()},
        "metric_means": {t: {m: {k: round(statistics.mean(v), 3) for k, v in d.items()} for m, d in tm.items()}
                         for t, tm in per_task.items()},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{'method':<8} {'equal answers':>14} {'rate':>6}")
    for m, d in report["agreement"].items():
        print(f"{m:<8} {d['equal']:>7}/{d['total']:<6} {d['rate']:>6.3f}")
    for t, tm in report["metric_means"].items():
        print(t + ": " + ", ".join(f"{m} torch {d['torch']:.3f} / llama.cpp {d['llamacpp']:.3f}"
                                   for m, d in tm.items()))
    print(f"{len(jobs)} users answered through llama.cpp in {seconds:.0f} s")
    write_json_atomic(args.out, report, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

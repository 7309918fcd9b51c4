"""Per-user cost of a run: seconds by phase and method, users per hour, peak memory.

Reads a finished run directory (default: the demo's ``runs/demo``) or runs a config first, and
breaks each user's device time into its parts from the per-user results the devices reported
(``methods.<m>.seconds`` = that method's training + answering; ``train.seconds`` = its LoRA
training; CDCDA's ``check_seconds`` = completing partial records and its holdout check's two
trainings), plus the server's phases (cloud augmentation per user, share, personalize wall time)
from ``results.json``'s ``timing``. Medians over users; ``actor-seconds per user`` is the sum of
a user's method seconds, i.e. what one device (Ray actor) spends on that user.

    python benchmarks/per_user.py                      # analyse runs/demo (run ./run demo first)
    python benchmarks/per_user.py --run runs/quality   # any run directory
    python benchmarks/per_user.py --config experiments/configs/demo.toml --out-dir runs/bench-per-user
    python benchmarks/per_user.py --config experiments/configs/demo.toml --set train.lora-layers=20 --out F.json
Writes benchmarks/results/per_user.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from cdcda_fl.core.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def analyse(run: Path) -> dict:
    """Per-user seconds by method (total, training, answering) and per-phase server time."""
    results = json.loads((run / "results.json").read_text())
    per_method: dict[str, dict[str, list[float]]] = {}
    actor_seconds: list[float] = []
    for path in sorted((run / "users").rglob("*.json")):
        user = json.loads(path.read_text())
        total = 0.0
        for method, entry in (user.get("methods") or {}).items():
            if "seconds" not in entry:
                continue
            secs = float(entry["seconds"])
            train = float((entry.get("train") or {}).get("seconds") or 0.0) if not (entry.get("train") or {}).get(
                "reused") else 0.0
            check = float(entry.get("check_seconds") or 0.0)  # CDCDA: completion + holdout check
            slot = per_method.setdefault(method, {"total": [], "train": [], "check": [], "answer": []})
            slot["total"].append(secs)
            slot["train"].append(train)
            slot["check"].append(check)
            slot["answer"].append(max(0.0, secs - train - check))
            total += secs
        actor_seconds.append(total)
    n_users = len(actor_seconds)
    timing = results.get("timing", {})
    wall = sum(timing.values())
    cfg = results["config"]
    cpus = int(cfg.get("sim.cpus") or 0) or os.cpu_count() or 1
    actors = max(1, min(n_users or 1, int(cpus // float(cfg.get("sim.client-cpus") or 1.0))))
    # What the devices really spent: the personalize phase's wall time on every actor. The method
    # seconds above miss what no method owns (loading models in a fresh actor, Flower messaging).
    occupied = round(timing.get("personalize", 0.0) * actors / n_users, 1) if n_users else None
    return {
        "run": str(run), "users": n_users, "config": {k: results["config"].get(k) for k in
                                                      ("tasks", "users", "methods", "device.model", "cloud.model",
                                                       "train.steps", "train.lora-layers", "personas.queries",
                                                       "sim.client-cpus")},
        "methods": {m: {k: _median(v) for k, v in d.items()} for m, d in per_method.items()},
        "actor_seconds_per_user": _median(actor_seconds),
        "actors": actors, "personalize_actor_seconds_per_user": occupied,
        "augment_seconds_per_user": round(timing.get("augment", 0.0) / n_users, 2) if n_users else None,
        "timing": timing, "wall_seconds": round(wall, 1),
        "users_per_hour": round(3600 * n_users / wall, 1) if wall else None,
    }


def run_config(config: Path, out_dir: Path, sets: list[str] | None = None) -> float:
    """Run ``cdcda run CONFIG [--set k=v ...]`` into ``out_dir``; returns the peak RSS (MiB) of all its processes."""
    cmd = [sys.executable, "-m", "cdcda_fl.cli", "run", str(config), "--out", str(out_dir)]
    cmd += [arg for kv in sets or [] for arg in ("--set", kv)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.wait()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"the run failed (exit {proc.returncode})")
    return round(peak[0] / 2**20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="finished run directory to analyse")
    parser.add_argument("--config", type=Path, help="run this config first (into --out-dir), then analyse it")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench-per-user")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "per_user.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of --config (repeatable), e.g. train.lora-layers=20")
    args = parser.parse_args(argv)
    peak = None
    run = args.run
    if args.config:
        peak = run_config(args.config, args.out_dir, args.set)
        run = args.out_dir
    if not (run / "results.json").is_file():
        print(f"no {run / 'results.json'}: run `./run demo` first, or pass --config", file=sys.stderr)
        return 2
    report = {**analyse(run), "peak_rss_mib_all_processes": peak,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"{'method':<8} {'median s/user':>14} {'training':>9} {'check':>7} {'answering':>10}")
    for m, d in report["methods"].items():
        print(f"{m:<8} {d['total']:>14} {d['train']:>9} {d.get('check', 0.0):>7} {d['answer']:>10}")
    print(f"\nactor-seconds per user (median of the methods' sums): {report['actor_seconds_per_user']}")
    print(f"personalize phase x {report['actors']} actors / users: {report['personalize_actor_seconds_per_user']} s")
    print(f"cloud augmentation per user: {report['augment_seconds_per_user']} s")
    print("phases: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["timing"].items()))
    print(f"users per hour (whole run): {report['users_per_hour']}")
    if peak:
        print(f"peak RSS, all processes: {peak} MiB")
    write_json_atomic(args.out, report, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

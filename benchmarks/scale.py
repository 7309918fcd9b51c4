"""Scale: a full CDCDA run (share → augment → personalize → answer) at growing numbers of users.

Each size runs the real apps through Flower's Ray simulation engine on the untrained
``tiny-random`` model with a couple of training steps per user, in a fresh subprocess (so peak
memory and Ray start-up are measured per size, not inherited). Per size it reports wall time,
users per minute, the peak of the summed memory of all processes of the run (driver, Raylet,
GCS, Ray workers: PSS, so shared pages are not counted twice), and the split of wall time
between work (cloud augmentation + device compute, the latter divided by the number of
parallel Ray actors) and orchestration (everything else: Flower/Ray messaging, serialisation,
start-up, waiting).

    python benchmarks/scale.py                              # sizes 100,300 (CI-sized default)
    python benchmarks/scale.py --sizes 100,300,1000,3000    # docs/performance.md's figures
    python benchmarks/scale.py --sizes 1000 --users-per-node 1,10,50   # the message-batching lever
Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _tree_pss(root: psutil.Process) -> int:
    total = 0
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.Error:
        pass
    for proc in procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            continue
    return total


def run_size(users: int, users_per_node: int, out_root: Path, steps: int) -> dict:
    """One size in a subprocess; returns its measurements."""
    run_dir = out_root / f"users{users}-upn{users_per_node}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [
        f"out-dir={run_dir}", f"users={users}", "tasks=LaMP_2", "methods=cdcda", f"train.steps={steps}",
        "personas.queries=2", "synthetic.per-user=2", "synthetic.max-rounds=1", "synthetic.max-new-tokens=8",
        f"sim.users-per-node={users_per_node}", "cloud.batch-size=32", "eval.batch-size=8",
    ]
    cmd = [sys.executable, "-m", "cdcda_fl.cli", "run", str(ROOT / "experiments" / "configs" / "tiny.toml")]
    for s in sets:
        cmd += ["--set", s]
    started = time.perf_counter()
    log_path = out_root / f"users{users}-upn{users_per_node}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "1"})
        root = psutil.Process(proc.pid)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_pss(root))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"run with {users} users failed (exit {code}); see {log_path}")
    results = json.loads((run_dir / "results.json").read_text())
    device_s = 0.0
    for path in (run_dir / "users").rglob("*.json"):
        r = json.loads(path.read_text())
        device_s += sum(float(m.get("seconds", 0.0)) for m in r["methods"].values())
    actors = max(1, int(psutil.cpu_count() or 1))  # sim.client-cpus = 1: one actor per CPU
    timing = results.get("timing", {})
    work = float(timing.get("augment", 0.0)) + device_s / actors
    finished = sum(results["users"].values())
    return {
        "users": users, "users_per_node": users_per_node, "nodes": results.get("nodes"), "finished": finished,
        "wall_s": round(wall, 2), "users_per_min": round(60 * finished / wall, 1),
        "peak_mem_mib": round(peak / 2**20, 1), "work_s": round(work, 2),
        "orchestration_s": round(wall - work, 2), "orchestration_pct": round(100 * (wall - work) / wall, 1),
        "device_compute_s": round(device_s, 2), "phases_s": timing, "failures": len(results.get("failures", [])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,300", help="comma-separated user counts (default 100,300)")
    parser.add_argument("--users-per-node", default="1", help="comma-separated users per Flower node (default 1)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per user (default 2)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-scale")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for upn in [int(x) for x in args.users_per_node.split(",")]:
        for size in [int(x) for x in args.sizes.split(",")]:
            print(f"scale: {size} users, {upn} user(s) per node …", flush=True)
            rows.append(run_size(size, upn, args.runs_dir, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    table = Table(title="CDCDA scale on tiny-random through Flower's Ray simulation (one run per row)")
    for col in ("users", "users/node", "nodes", "wall s", "users/min", "peak MiB (PSS, all procs)",
                "work s", "orchestration s", "orch. %"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["users"]), str(r["users_per_node"]), str(r["nodes"]), f"{r['wall_s']:.1f}",
                      f"{r['users_per_min']:.0f}", f"{r['peak_mem_mib']:.0f}", f"{r['work_s']:.1f}",
                      f"{r['orchestration_s']:.1f}", f"{r['orchestration_pct']:.0f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpus": psutil.cpu_count(),
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data at real LaMP size: peak memory of the driver and of each Ray worker as the data set grows.

Real LaMP question files are hundreds of MB of JSON per task. A node must read only its own
users (the per-task on-disk index, ``cdcda_fl/data/index.py``), so a worker's peak memory must
not grow with the file. This benchmark writes a LaMP-2-format split of a given size (streamed to
disk: the generator never holds it), runs a real ``cdcda run`` on it in a subprocess (Flower's
Ray simulation, tiny-random model, a fixed small number of users selected from the file), and
samples every process of the run (driver, Raylet, GCS, Ray workers) for its peak RSS.

    python benchmarks/data_scale.py                         # 2 MB and 220 MB, 2500 users in the large one
    python benchmarks/data_scale.py --sizes-mb 2,220,600 --users 3000
    python benchmarks/data_scale.py --quick                 # 1 MB and 8 MB (smoke test)
Writes benchmarks/results/data_scale.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("a crew wakes on a ship bound for mars while a robot hides the truth about the mission and "
         "two strangers fall in love in paris during a heist gone wrong the detective follows a clue "
         "through the rain a haunted house swallows its guests and a family reunion turns into chaos").split()


def write_lamp2_split(folder: Path, size_mb: float, n_users: int, seed: int = 0) -> dict:
    """LaMP_2/dev_questions.json (+ outputs) of about ``size_mb`` MB with ``n_users`` users.

    One question per user (LaMP's user-based split holds one per user too); profile items sized so
    that the file reaches the target size. Written record by record.
    """
    from cdcda_fl.data.tasks import get_task

    labels = list(get_task("LaMP_2").labels)
    rng = random.Random(seed)
    task_dir = folder / "LaMP_2"
    task_dir.mkdir(parents=True, exist_ok=True)
    target = int(size_mb * 1e6)
    item_bytes = 190  # about one profile item in JSON
    items_per_user = max(3, target // max(1, n_users) // item_bytes)
    questions = task_dir / "dev_questions.json"
    golds = []
    with questions.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for u in range(n_users):
            n_items = max(3, int(items_per_user * rng.uniform(0.5, 1.5)))
            profile = [{"id": f"{u}-{i}", "description": " ".join(rng.choices(WORDS, k=24)),
                        "tag": rng.choice(labels)} for i in range(n_items)]
            qid = f"q{u}"
            record = {"id": qid, "input": "Which tag does this movie relate to among the following tags? "
                      + " ".join(rng.choices(WORDS, k=20)), "profile": profile, "user_id": f"u{u:05d}"}
            handle.write(("," if u else "") + json.dumps(record))
            golds.append({"id": qid, "output": rng.choice(labels)})
        handle.write("]")
    (task_dir / "dev_outputs.json").write_text(json.dumps({"task": "LaMP_2", "golds": golds}))
    return {"questions_mb": round(questions.stat().st_size / 1e6, 1), "users": n_users}


def _sample(root: psutil.Process, peaks: dict[int, dict], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                entry = peaks.setdefault(proc.pid, {"name": _role(proc), "peak": 0})
                if entry["name"] == "python":  # a Ray worker before it has set its title
                    entry["name"] = _role(proc)
                entry["peak"] = max(entry["peak"], rss)
            except psutil.Error:
                continue
        stop.wait(0.2)


def _role(proc: psutil.Process) -> str:
    try:
        argv = proc.cmdline()
        title = proc.name()
    except psutil.Error:
        return "?"
    cmd = " ".join(argv[:3])  # program and script, not their flags (a worker's flags name the raylet)
    if "cdcda_fl.cli" in cmd:
        return "driver"
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py"):
        if key in cmd:
            return key.replace(".py", "")
    if "default_worker" in cmd or cmd.startswith("ray::"):
        return "ray worker"
    if "agent" in cmd:
        return "ray agent"
    return title


def run_one(data: Path, out: Path, run_users: int) -> dict:
    """A real `cdcda run` on ``data`` (``run_users`` users, base method); peak RSS per process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cdcda_fl.cli", "run", str(ROOT / "experiments" / "configs" / "tiny.toml"), "--data-dir", str(data), "--out", str(out),
           "--set", "tasks=LaMP_2", "--set", f"users={run_users}", "--set", "methods=base",
           "--set", "device.model=tiny-random", "--set", "eval.max-queries=1", "--set", "sim.users-per-node=1"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, dict] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(psutil.Process(proc.pid), peaks, stop), daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"cdcda run failed ({proc.returncode}):\n{output[-3000:]}")
    workers = sorted((p["peak"] for p in peaks.values() if p["name"] == "ray worker"), reverse=True)
    driver = max((p["peak"] for p in peaks.values() if p["name"] == "driver"), default=0)
    index_dir = out / "index"
    return {"wall_s": round(wall, 1), "driver_peak_mb": round(driver / 2**20),
            "worker_peaks_mb": [round(w / 2**20) for w in workers],
            "max_worker_peak_mb": round(workers[0] / 2**20) if workers else None,
            "index_mb": round(sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file()) / 1e6, 2),
            "users_run": json.loads((out / "results.json").read_text())["users"].get("LaMP_2", 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="2,220", help="question-file sizes in MB (comma-separated)")
    parser.add_argument("--users", type=int, default=2500, help="users in the largest file (smaller files: 100)")
    parser.add_argument("--run-users", type=int, default=4, help="users actually run (the ones with most history)")
    parser.add_argument("--quick", action="store_true", help="1 MB and 8 MB, 200 users (smoke test)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-data-scale")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_scale.json")
    args = parser.parse_args(argv)
    sizes = [1.0, 8.0] if args.quick else [float(s) for s in args.sizes_mb.split(",") if s.strip()]
    users_big = 200 if args.quick else args.users
    rows = []
    for i, size in enumerate(sizes):
        n_users = users_big if i == len(sizes) - 1 else min(users_big, 100)
        data = args.work / f"data-{size:g}mb"
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        made = write_lamp2_split(data, size, n_users)
        gen_s = time.perf_counter() - t0
        print(f"wrote {made['questions_mb']} MB, {n_users} users in {gen_s:.0f}s; running ...", file=sys.stderr)
        row = {**made, **run_one(data, args.work / f"run-{size:g}mb", args.run_users)}
        rows.append(row)
        shutil.rmtree(data, ignore_errors=True)  # hundreds of MB: do not leave them behind
    print(f"\n{'questions':>10} {'users':>6} {'run':>4} {'index':>8} {'driver peak':>12} {'max worker peak':>16} "
          f"{'workers':>8} {'wall':>7}")
    for r in rows:
        print(f"{r['questions_mb']:>8.1f}MB {r['users']:>6} {r['users_run']:>4} {r['index_mb']:>6.2f}MB "
              f"{r['driver_peak_mb']:>10}MB {r['max_worker_peak_mb']:>14}MB {len(r['worker_peaks_mb']):>8} "
              f"{r['wall_s']:>6.1f}s")
    if len(rows) >= 2 and rows[0]["max_worker_peak_mb"]:
        ratio = rows[-1]["max_worker_peak_mb"] / rows[0]["max_worker_peak_mb"]
        print(f"\nlargest/smallest file: {rows[-1]['questions_mb'] / rows[0]['questions_mb']:.0f}x the data, "
              f"max worker peak {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"rows": rows, "run_users": args.run_users,
                               "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where does cloud augmentation pay? CDCDA − local-only against the share fraction, per writer.

    .venv/bin/python experiments/share_curve.py experiments/configs/share_curve.toml [--out DIR]
        [--set key=value ...] [--writers oracle,noise] [--shares 0.5,1] [--analyze-only]

The file is a run config (``[config]``, as for ``cdcda run``) plus a ``[curve]`` table:

    [curve]
    writers = ["noise", "smollm2-135m", "oracle"]   # oracle / noise = cloud.backend; else an hf cloud.model
    share-fraction = [0, 0.25, 0.5, 0.75, 1.0]

Every (writer, share) point is one ``cdcda run`` (Flower simulation) into ``OUT/points/<writer>_s<share>``
on the SAME users (``OUT/data``, written once, or the config's ``data-dir``) and the SAME device storage (``OUT/devices``). The
device's adapter store is content-addressed, so what does not depend on the cloud's records is
computed once for the whole curve: the base model's answers are cheap, but local-only adapters and
the crossfit check's real-only fold scores are stored and reused by every later point (see
``tests/test_share_curve.py``: a point run after others gives the same predictions as a point run
alone). A finished point (its results.json) is not run again, so an interrupted curve resumes.

The analysis (``OUT/share_curve.json``, ``share_curve.md``, ``share_curve.png``): per task and
point, CDCDA − local-only paired over users with a 95 % bootstrap interval and W/T/L, the share of
users whose device used the cloud's records, what CDCDA answered with (cdcda / local / base), and
the same by profile size (≤ 5, 6–15, > 15 items), with CDCDA − base per bucket (do no harm).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic, write_text_atomic
from cdcda_fl.core.config import ConfigError, load_config, read_toml
from cdcda_fl.core.run_config import run_config
from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import parse_task_list
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric
from cdcda_fl.evaluation.stats import format_interval, mean_ci, paired_diff_ci, win_tie_loss

REFERENCE = {"oracle", "noise"}
BUCKETS = (("≤5", 0, 5), ("6–15", 6, 15), (">15", 16, 10**9))
DEFAULT_WRITERS = ("noise", "smollm2-135m", "oracle")
DEFAULT_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def writer_sets(writer: str) -> list[str]:
    """The run-config overrides that select ``writer``."""
    if writer in REFERENCE:
        return [f"cloud.backend={writer}"]
    return ["cloud.backend=hf", f"cloud.model={writer}"]


def point_name(writer: str, share: float) -> str:
    return f"{writer}_s{share:g}"


def bucket_of(n: int) -> str:
    return next(name for name, lo, hi in BUCKETS if lo <= n <= hi)


# ---------------------------------------------------------------------- running
def run_point(config: Path, out: Path, data: Path, writer: str, share: float, sets: list[str]) -> Path:
    """One ``cdcda run`` of the curve (skipped when its results.json exists)."""
    point = out / "points" / point_name(writer, share)
    if (point / "results.json").is_file():
        return point
    cmd = [sys.executable, "-m", "cdcda_fl.cli", "run", str(config), "--out", str(point), "--data-dir",
           str(data), "--set", f"device.storage-dir={out / 'devices'}",
           "--set", f"consent.share-fraction={share}", *[a for s in sets for a in ("--set", s)],
           *[a for s in writer_sets(writer) for a in ("--set", s)]]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    point.mkdir(parents=True, exist_ok=True)
    write_text_atomic(point / "run.log", proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise RuntimeError(f"point {point.name} failed (rc {proc.returncode}); see {point / 'run.log'}")
    write_json_atomic(point / "wall.json", {"seconds": round(time.perf_counter() - started, 1)})
    return point


# ---------------------------------------------------------------------- analysis
def _paired(a: list[float], b: list[float], sign: float) -> dict[str, Any]:
    if not a:
        return {"n": 0}
    x, y = [sign * v for v in a], [sign * v for v in b]
    wtl = win_tie_loss(x, y)
    return {"n": len(a), "diff": paired_diff_ci(x, y)._asdict(), "wtl": list(wtl)}


def analyze_point(point: Path, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per task: CDCDA − local (and − base) overall and per profile-size bucket, usage of the records."""
    results = json.loads((point / "results.json").read_text())
    out: dict[str, Any] = {}
    for task, users in (results.get("per_user") or {}).items():
        metric = primary_metric(task)
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        rows = []
        for uid, entry in sorted(users.items()):
            m = entry.get("metrics") or {}
            if not all(k in m and metric in m[k] for k in ("local", "cdcda", "base")):
                continue
            d = entry.get("synthetic_decision") or {}
            rows.append({"user": uid, "n": sizes.get(task, {}).get(uid, -1), "local": m["local"][metric],
                         "cdcda": m["cdcda"][metric], "base": m["base"][metric],
                         "used": bool(d.get("used_synthetic")),
                         "answer_with": d.get("answer_with") or ("cdcda" if d.get("used_synthetic") else "local"),
                         "received": int(entry.get("n_synthetic_received", 0))})
        writers = {str((e.get("cloud") or {}).get("writer", "")) for e in users.values()} - {""}

        def block(sel: list[dict[str, Any]]) -> dict[str, Any]:
            return {"users": len(sel),
                    "cdcda": mean_ci([r["cdcda"] for r in sel])._asdict() if sel else None,
                    "local": mean_ci([r["local"] for r in sel])._asdict() if sel else None,
                    "base": mean_ci([r["base"] for r in sel])._asdict() if sel else None,
                    "cdcda_minus_local": _paired([r["cdcda"] for r in sel], [r["local"] for r in sel], sign),
                    "cdcda_minus_base": _paired([r["cdcda"] for r in sel], [r["base"] for r in sel], sign),
                    "used_synthetic": sum(r["used"] for r in sel),
                    "received_any": sum(r["received"] > 0 for r in sel),
                    "answer_with": dict(Counter(r["answer_with"] for r in sel))}

        out[task] = {"metric": metric, "writer": sorted(writers), **block(rows),
                     "by_size": {name: block([r for r in rows if lo <= r["n"] <= hi]) for name, lo, hi in BUCKETS}}
    return out


def device_check(point: Path) -> str:
    """The device check a point ran with (``crossfit, loss+better-metric``): points of one curve
    run at different times may differ in it, and the table must say so."""
    cfg = run_config(json.loads((point / "config.json").read_text()).get("config", {}))
    return f"{cfg.train.synthetic_gate}, {cfg.train.synthetic_gate_criterion}"


def profile_sizes(data: Path, tasks: list[str], split: str) -> dict[str, dict[str, int]]:
    return {t: {u.user_id: len(u.profile) for u in load_task_users(data, t, split)} for t in tasks}


def _sig(d: dict[str, Any]) -> str:
    lo, hi = d["diff"]["lo"], d["diff"]["hi"]
    if lo is None:
        return ""
    return " *" if lo > 0 else " ↓" if hi < 0 else ""


def markdown(curve: dict[str, Any]) -> str:
    """One table per task: rows = points, CDCDA − local with interval and W/T/L, usage, by size."""
    lines = ["<!-- generated by experiments/share_curve.py; * = interval above 0, ↓ = below 0 -->"]
    checks = any(p.get("check") for p in curve["points"].values())  # curves written before the column: without it
    tasks = sorted({t for p in curve["points"].values() for t in p["tasks"]})
    for task in tasks:
        lines += ["", f"**{task}** ({curve['points'][next(iter(curve['points']))]['tasks'].get(task, {}).get('metric', '')}; "
                      "CDCDA − local-only, positive = CDCDA better)", "",
                  "| writer | share | " + ("device check | " if checks else "") + "users | CDCDA − local [95 % CI] | W/T/L | used records | answered with base | "
                  + " | ".join(f"Δ {name} items (n)" for name, _, _ in BUCKETS) + " |",
                  "|---|---:|" + ("---|" if checks else "") + "---:|---|---|---:|---:|" + "---|" * len(BUCKETS)]
        for name, p in curve["points"].items():
            t = p["tasks"].get(task)
            if not t or not t["cdcda_minus_local"].get("n"):
                continue
            d = t["cdcda_minus_local"]
            cells = []
            for b, _, _ in BUCKETS:
                bd = t["by_size"][b]["cdcda_minus_local"]
                cells.append(f"{bd['diff']['mean']:+.3f} ({bd['n']})" if bd.get("n") else "–")
            iv = (d["diff"]["mean"], d["diff"]["lo"], d["diff"]["hi"])
            check = f"{p.get('check') or '?'} | " if checks else ""
            lines.append(f"| {p['writer']} | {p['share']:g} | {check}{t['users']} | {format_interval(iv, signed=True)}"
                         f"{_sig(d)} | {'/'.join(map(str, d['wtl']))} | {t['used_synthetic']}/{t['users']} | "
                         f"{t['answer_with'].get('base', 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for p in curve["points"].values() for t in p["tasks"]})
    writers = sorted({p["writer"] for p in curve["points"].values()})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for w in writers:
            pts = sorted((p["share"], p["tasks"][task]["cdcda_minus_local"]) for p in curve["points"].values()
                         if p["writer"] == w and task in p["tasks"] and p["tasks"][task]["cdcda_minus_local"].get("n"))
            if not pts:
                continue
            xs = [s for s, _ in pts]
            ys = [d["diff"]["mean"] for _, d in pts]
            lo = [d["diff"]["mean"] - (d["diff"]["lo"] if d["diff"]["lo"] is not None else d["diff"]["mean"]) for _, d in pts]
            hi = [(d["diff"]["hi"] if d["diff"]["hi"] is not None else d["diff"]["mean"]) - d["diff"]["mean"] for _, d in pts]
            # one colour per writer across every task's panel (matplotlib's cycle would restart per panel)
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=w, color=f"C{writers.index(w)}")
        ax.axhline(0, color="grey", lw=0.8)
        metric = next(p["tasks"][task]["metric"] for p in curve["points"].values() if task in p["tasks"])
        ax.set_title(f"{task} ({metric}{', sign flipped' if metric in LOWER_IS_BETTER else ''})")
        ax.set_xlabel("share fraction")
        ax.set_ylabel("CDCDA − local-only [95 % CI]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("config", type=Path, help="curve TOML: [config] run keys + [curve] writers/share-fraction")
    ap.add_argument("--out", type=Path, help="curve directory (default: the config's out-dir)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run key")
    ap.add_argument("--writers", help="comma-separated writers (overrides [curve] writers)")
    ap.add_argument("--shares", help="comma-separated share fractions (overrides [curve] share-fraction)")
    ap.add_argument("--analyze-only", action="store_true", help="only (re)write the analysis of finished points")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        table = read_toml(args.config).get("curve", {})
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    writers = args.writers.split(",") if args.writers else list(table.get("writers", DEFAULT_WRITERS))
    shares = [float(s) for s in (args.shares.split(",") if args.shares else table.get("share-fraction", DEFAULT_SHARES))]
    out = (args.out or Path(str(cfg["out-dir"]))).resolve()
    tasks = [t.name for t in parse_task_list(str(cfg["tasks"]))]
    split = str(cfg["split"])
    data = Path(str(cfg["data-dir"])).resolve() if cfg["data-dir"] else out / "data"
    if not cfg["data-dir"] and not (data / tasks[0] / f"{split}_questions.json").is_file():
        write_personas(data, users=int(cfg["users"]), tasks=tasks, seed=int(cfg["seed"]), splits=(split,),
                       queries_per_user=int(cfg["personas.queries"]))
    grid = [(w, s) for w in writers for s in sorted(shares) if not (s == 0 and w != writers[0])]
    started = time.perf_counter()
    for i, (w, s) in enumerate(grid, 1):
        if args.analyze_only:
            break
        t0 = time.perf_counter()
        try:
            run_point(args.config, out, data, w, s, list(args.set))
        except RuntimeError as exc:
            print(f"share_curve: {exc}", file=sys.stderr)
            continue
        done = time.perf_counter() - started
        print(f"[{i}/{len(grid)}] {point_name(w, s)} in {time.perf_counter() - t0:.0f}s; "
              f"elapsed {done / 60:.1f} min, ETA {done / i * (len(grid) - i) / 60:.1f} min", flush=True)
    sizes = profile_sizes(data, tasks, split)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--analyze-only"]
    curve: dict[str, Any] = {"config": str(args.config), "command": " ".join(["experiments/share_curve.py", *shown]),
                             "points": {}}
    for w, s in grid:
        point = out / "points" / point_name(w, s)
        if (point / "results.json").is_file():
            wall = json.loads((point / "wall.json").read_text())["seconds"] if (point / "wall.json").is_file() else None
            curve["points"][point.name] = {"writer": w if s > 0 else "none (share 0)", "share": s,
                                           "check": device_check(point), "seconds": wall,
                                           "tasks": analyze_point(point, sizes)}
    write_json_atomic(out / "share_curve.json", curve)
    write_text_atomic(out / "share_curve.md", markdown(curve))
    if curve["points"]:
        plot(curve, out / "share_curve.png")
    print(markdown(curve))
    print(f"share_curve: {out / 'share_curve.json'}, share_curve.md, share_curve.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Regenerate the README's results section from run directories (no numbers typed by hand).

    python experiments/update_readme.py --demo runs/demo [--quality runs/quality] [--sweep runs/privacy]
    python experiments/update_readme.py --canaries runs/canary-lamp3    # the canary audit's table and plot
    python experiments/update_readme.py --benchmarks benchmarks/results # the Performance tables

Writes each run's paper-layout table (rebuilt from its ``results.json`` by
:func:`cdcda_fl.results.paper_table`, so every value carries its 95 % interval over users and
CDCDA's paired gain over local-only with win/tie/loss) and the sweep's privacy-utility plots into
the README between the ``<!-- results:begin -->`` / ``<!-- results:end -->`` markers, with the
configuration and timing the runs recorded. ``--benchmarks`` rewrites the ``<!-- perf:NAME:begin -->``
sections of the README and docs/device.md from the benchmark JSON files (``experiments/perf_tables.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DP_BEGIN, DP_END = "<!-- dp:begin -->", "<!-- dp:end -->"
CANARY_BEGIN, CANARY_END = "<!-- canaries:begin -->", "<!-- canaries:end -->"
CANARY_PLOT = "canary_exposure_vs_epsilon.png"
CURVE_BEGIN, CURVE_END = "<!-- share-curve:begin -->", "<!-- share-curve:end -->"
#: The perf_tables tables each file holds, in the order they appear there.
PERF_SECTIONS: dict[str, tuple[str, ...]] = {
    "README.md": ("scale", "communication", "device", "train-speed", "per-user", "augment"),
    "docs/device.md": ("device", "train-speed", "lora-layers", "per-user"),
}


def perf_markers(name: str) -> tuple[str, str]:
    return f"<!-- perf:{name}:begin -->", f"<!-- perf:{name}:end -->"


def update_perf_sections(results: Path, files: dict[Path, tuple[str, ...]] | None = None) -> bool:
    """Rewrite every perf section from the JSON in ``results`` (False if a file lacks a marker)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf_tables sits next to this script
    try:
        from perf_tables import render
    finally:
        sys.path.pop(0)
    files = files if files is not None else {ROOT / f: names for f, names in PERF_SECTIONS.items()}
    for path, names in files.items():
        for name in names:
            if not _replace_between(path, *perf_markers(name), [*render(name, results), ""]):
                return False
    return True


def run_table(run: Path) -> str:
    """The run's paper table, rebuilt from results.json (intervals included); table.md for old runs."""
    from cdcda_fl.results import paper_table

    results = json.loads((run / "results.json").read_text())
    if "intervals" not in results and (run / "table.md").exists():
        return (run / "table.md").read_text().strip()
    return paper_table(results).strip()


def _budget(cfg: dict) -> str:
    """The training budget in words: the DP plans ignore train.steps (docs/dp.md)."""
    if cfg.get("dp.enabled") and cfg.get("dp.auto", True):
        return "DP-SGD with the few-record plans (docs/dp.md)"
    return f"{cfg['train.steps']} LoRA steps per adapter"


def demo_section(demo: Path, name: str = "Demo", command: str = "./run demo") -> list[str]:
    results = json.loads((demo / "results.json").read_text())
    cfg = results["config"]
    timing = results.get("timing", {})
    total = sum(timing.values())
    lines = [
        f"{name} (`{command}`, {sum(results['users'].values())} users on {cfg['tasks']}, device model "
        f"`{cfg['device.model']}`, cloud model `{cfg['cloud.model']}`, {_budget(cfg)}, "
        f"{cfg['synthetic.per-user']} synthetic records asked per user, share fraction {cfg['consent.share-fraction']}, "
        f"seed {cfg['seed']}; phases took {total:.0f} s on this 2-core machine"
        + (f"; **partial: {results['partial']}**" if results.get("partial") else "") + "):",
        "",
        run_table(demo),
        "",
    ]
    shared = results.get("shared", {})
    if shared:
        parts = [f"{task}: {v.get('records', 0)} of {v.get('records_total', 0)} records, {v.get('bytes', 0):,} bytes"
                 for task, v in shared.items()]
        lines += ["What left the devices: " + "; ".join(parts) + ".", ""]
    return lines


def realtext_section(folder: Path) -> list[str]:
    """The real-writing check (docs/augmentation.md): augment_compare's summary.md as written."""
    summary = folder / "summary.md"
    if not summary.is_file():
        raise SystemExit(f"{summary} not found: run experiments/augment_compare.py --summary-only --out {folder}/rows.jsonl")
    return ["Real writing (`experiments/realtext_git.py`: git.git commit bodies → subject lines of 12 real authors in "
            "LaMP-4 format, 6 profile items and 6 time-later queries each; `experiments/augment_compare.py`; "
            "rule `holdout` is the product default, `none` always uses the cloud's records):", "",
            summary.read_text().strip(), ""]


def sweep_section(sweep: Path) -> list[str]:
    data = json.loads((sweep / "sweep.json").read_text())
    plots = [Path(p) for p in data.get("plots", [])]
    if not plots:
        return []
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = [f"Privacy versus utility (`cdcda sweep`, {len(data.get('points', []))} grid points):", ""]
    grid = data.get("grid", {})
    single = {"utility_vs_share.png": len(grid.get("share-fraction", [0, 1])) < 2,
              "utility_vs_epsilon.png": len(grid.get("dp-epsilon", [0, 1])) < 2}
    for plot in plots:
        if single.get(plot.name):  # a one-value axis draws no curve: keep the README's older plot
            continue
        src = plot if plot.is_absolute() else sweep / plot
        dst = images / f"sweep_{src.name}"
        shutil.copyfile(src, dst)
        lines += [f"![{src.stem}](docs/images/{dst.name})", ""]
    return lines


def canary_section(run: Path, images: Path | None = None) -> list[str]:
    """The canary audit's table (exposure, controls, MIA AUC, ε per task and DP setting) and its plot.

    ``run`` holds a ``canaries.json`` from ``cdcda audit canaries`` or a sweep's ``canaries/``
    folder; the plot is the sweep's exposure plot, drawn from the same summary.
    """
    from cdcda_fl.sweep_plots import _pyplot, plot_exposure_vs_epsilon

    report = json.loads((run / "canaries.json").read_text())
    cfg = report.get("config", {})
    images = images or ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    fig = plot_exposure_vs_epsilon({"canary_audit": report})
    fig.savefig(images / CANARY_PLOT, dpi=110)
    _pyplot().close(fig)

    def cell(stat: dict) -> str:
        if stat.get("mean") is None:
            return "–"
        band = f" [{stat['lo']:.2f}, {stat['hi']:.2f}]" if stat.get("lo") is not None else ""
        return f"{stat['mean']:.2f}{band}"

    n_users = max((r["n_users"] for r in report["summary"]), default=0)
    lines = [f"Canary audit (`cdcda audit canaries`, {n_users} users per task on {cfg.get('tasks', '?')}, "
             f"{report['canaries_per_user']} canaries and {report['controls_per_user']} never-planted controls per "
             f"user in non-shared records, R = {report['candidates']} candidates, device model "
             f"`{cfg.get('device.model', '?')}`; local adapter; exposure in bits, max log2 R = "
             f"{math.log2(report['candidates']):.0f}):", "",
             "| Task | DP | Exposure, planted (95 % CI) | Exposure, controls | MIA AUC | ε spent | Users |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["summary"]:
        eps = "off" if r["dp_epsilon"] == "off" else f"ε = {float(r['dp_epsilon']):g}"
        spent = "–" if r.get("epsilon") is None else f"{r['epsilon']:.2f}"
        lines.append(f"| {r['task']} | {eps} | {cell(r['exposure_planted'])} | {cell(r['exposure_control'])} | "
                     f"{cell(r['mia_auc'])} | {spent} | {r['n_users']} |")
    return [*lines, "", f"![canary exposure vs epsilon](docs/images/{CANARY_PLOT})", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=None, help="a finished ./run demo directory (e.g. runs/demo)")
    parser.add_argument("--quality", type=Path, default=None,
                        help="a finished run of experiments/configs/quality.toml (optional)")
    parser.add_argument("--sweep", type=Path, default=None, help="a finished sweep directory (optional)")
    parser.add_argument("--realtext", type=Path, default=None,
                        help="an experiments/augment_compare.py output folder on real writing (its summary.md)")
    parser.add_argument("--dp", type=Path, action="append", default=[],
                        help="a finished run of experiments/configs/dp_quality.toml (repeatable: e.g. one per "
                             "dp.selection); fills the README's DP section only")
    parser.add_argument("--canaries", type=Path, default=None,
                        help="a folder with canaries.json (cdcda audit canaries --out DIR); fills the README's "
                             "canary section and draws docs/images/" + CANARY_PLOT)
    parser.add_argument("--share-curve", type=Path, action="append", default=[],
                        help="a finished experiments/share_curve.py directory (repeatable: personas, real "
                             "writing); fills the README's share-curve section and copies its plot to docs/images/")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="regenerate the Performance tables of README.md and docs/device.md from a benchmark "
                             "results directory, e.g. benchmarks/results")
    args = parser.parse_args(argv)
    if args.benchmarks is not None and not args.benchmarks.is_dir():
        print(f"{args.benchmarks} is not a directory: run a benchmark first", file=sys.stderr)
        return 1
    if args.canaries is not None and not (args.canaries / "canaries.json").is_file():
        print(f"{args.canaries}/canaries.json not found: run `cdcda audit canaries` first", file=sys.stderr)
        return 1
    for run in (args.demo, args.quality, *args.dp):
        if run is not None and not (run / "results.json").is_file():
            print(f"{run}/results.json not found: run it first", file=sys.stderr)
            return 1
    if (args.demo is None and args.quality is None and args.realtext is None and not args.dp and args.sweep is None
            and args.canaries is None and args.benchmarks is None and not args.share_curve):
        parser.error("name at least one of --demo, --quality, --realtext, --dp, --sweep, --canaries, --benchmarks, "
                     "--share-curve")
    for curve in args.share_curve:
        if not (curve / "share_curve.md").is_file():
            print(f"{curve}/share_curve.md not found: run experiments/share_curve.py first", file=sys.stderr)
            return 1
    if args.sweep is not None and args.demo is None and args.quality is None and args.realtext is None:
        # Only the plots: copy them over docs/images/sweep_*.png (the README links those files) and
        # leave the results section as it is.
        sweep_section(args.sweep)
        print(f"plots of {args.sweep} copied to docs/images/sweep_*.png")
    readme = ROOT / "README.md"
    if args.dp:
        lines = []
        for run in args.dp:
            cfg = json.loads((run / "results.json").read_text())["config"]
            selection = cfg.get("dp.selection") or "synthetic"  # runs from before the key: the default
            command = f"cdcda run experiments/configs/dp_quality.toml --set dp.selection={selection}"
            lines += demo_section(run, f"DP at ε = {cfg['dp.epsilon']:g}, CDCDA+DP selection `{selection}`", command)
        if not _replace_between(readme, DP_BEGIN, DP_END, lines):
            return 1
        print("README.md DP section updated")
    if args.canaries is not None:
        if not _replace_between(readme, CANARY_BEGIN, CANARY_END, canary_section(args.canaries)):
            return 1
        print("README.md canary section updated")
    if args.share_curve:
        if not _replace_between(ROOT / "README.md", CURVE_BEGIN, CURVE_END, share_curve_section(args.share_curve)):
            return 1
        print("README.md share-curve section updated")
    if args.benchmarks is not None:
        if not update_perf_sections(args.benchmarks):
            return 1
        print(f"Performance tables of README.md and docs/device.md updated from {args.benchmarks}")
    if args.demo is None and args.quality is None and args.realtext is None:
        return 0
    lines = demo_section(args.demo) if args.demo is not None else []
    if args.quality is not None:
        lines += demo_section(args.quality, "Quality run", "cdcda run experiments/configs/quality.toml")
    if args.realtext is not None:
        lines += realtext_section(args.realtext)
    if args.sweep is not None:
        lines += sweep_section(args.sweep)
    if not _replace_between(readme, BEGIN, END, lines):
        return 1
    print("README.md results section updated")
    return 0


def share_curve_section(curves: list[Path]) -> list[str]:
    """Each curve's tables (share_curve.md, generated with its intervals) and plot, with its command."""
    lines: list[str] = []
    for curve in curves:
        data = json.loads((curve / "share_curve.json").read_text())
        image = ROOT / "docs" / "images" / f"share_curve_{curve.name}.png"
        if (curve / "share_curve.png").is_file():
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(curve / "share_curve.png", image)
        command = data.get("command") or f"experiments/share_curve.py {data['config']}"
        lines += [f"From `python {command}` ({curve.name}):", "",
                  *(curve / "share_curve.md").read_text().splitlines(), ""]
        if image.is_file():
            lines += [f"![CDCDA − local-only against the share fraction]({image.relative_to(ROOT)})", ""]
    return lines


def _replace_between(readme: Path, begin: str, end: str, lines: list[str]) -> bool:
    """Rewrite a markdown file (the README, docs/device.md) between two markers.

    False, with a message, if they are missing; the file is left untouched when nothing changed.
    """
    text = readme.read_text()
    if begin not in text or end not in text:
        print(f"{readme.name} has no {begin} … {end} section", file=sys.stderr)
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = head + begin + "\n" + "\n".join(lines) + end + tail
    if new != text:
        readme.write_text(new)
    return True


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the generated sections of README.md and docs/ from runs and benchmarks (no numbers typed by hand).

    python experiments/update_readme.py --demo runs/demo [--quality runs/quality] [--sweep runs/privacy]
    python experiments/update_readme.py --dp RUN [--dp RUN]            # docs/results.md, DP section
    python experiments/update_readme.py --canaries runs/canary-lamp3    # docs/results.md, canary table and plot
    python experiments/update_readme.py --share-curve DIR               # docs/results.md, share-curve section
    python experiments/update_readme.py --benchmarks benchmarks/results # docs/performance.md, docs/device.md

Each section lives between ``<!-- NAME:begin -->`` / ``<!-- NAME:end -->`` markers in the file
``SECTION_FILES`` (run results) or ``PERF_SECTIONS`` (benchmark tables) names. A run's table is
rebuilt from its ``results.json`` by :func:`cdcda_fl.reporting.paper_table.paper_table`, so every value carries
its 95 % interval over users and CDCDA's paired gain over local-only with win/tie/loss.

Run directories are not committed, so for every run-result section this script also writes
``docs/results/<section>.json``: a snapshot of exactly what it rendered from. The section is a
pure function of that snapshot (:func:`render_section`), which lets
``tests/test_generated_sections.py`` re-render every section and catch a hand edit or a stale table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = Path(__file__).resolve().parent
CANARY_PLOT = "canary_exposure_vs_epsilon.png"

#: The file (relative to the repository) that holds each run-result section.
SECTION_FILES: dict[str, str] = {
    "results": "README.md",
    "share-curve": "docs/results.md",
    "dp": "docs/results.md",
    "canaries": "docs/results.md",
    "realtext-run": "docs/results.md",
    "multitask": "docs/multitask.md",
    "multitask-brief": "README.md",
}
#: The command that writes each section and its snapshot (named when a snapshot is missing).
SECTION_COMMANDS: dict[str, str] = {
    "results": "python experiments/update_readme.py --quality runs/quality --realtext DIR (DIR: an "
               "experiments/augment_compare.py output folder)",
    "share-curve": "python experiments/update_readme.py --share-curve runs/share_curve_personas12",
    "dp": "python experiments/update_readme.py --dp RUN_PRIVATE --dp RUN_SYNTHETIC (runs of "
          "experiments/configs/dp_quality.toml with dp.selection=private and =synthetic)",
    "canaries": "python experiments/update_readme.py --canaries runs/canary-lamp3",
    "realtext-run": "python experiments/update_readme.py --realtext-run RUN (a `cdcda run` of "
                    "experiments/configs/realtext.toml on the 16-author set, federated methods included)",
    "multitask": "python experiments/update_readme.py --multitask COMPARE.json (written by "
                 "experiments/multitask_compare.py --json)",
    "multitask-brief": "python experiments/update_readme.py --multitask COMPARE.json (written by "
                       "experiments/multitask_compare.py --json)",
}
#: The perf_tables tables each file holds, in the order they appear there.
PERF_SECTIONS: dict[str, tuple[str, ...]] = {
    "README.md": ("scale",),
    "docs/performance.md": ("scale", "communication", "device", "train-speed", "per-user", "augment"),
    "docs/device.md": ("device", "train-speed", "lora-layers", "per-user"),
}
#: The keys of results.json that paper_table and the section's header read (per_user is large and unused).
RUN_KEYS = ("config", "models", "users", "timing", "partial", "shared", "table", "intervals", "cloud")

Part = dict[str, Any]


# --- markers and files --------------------------------------------------------------------------

def markers(name: str) -> tuple[str, str]:
    """The begin/end comments around a generated section."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def perf_markers(name: str) -> tuple[str, str]:
    """A benchmark table's markers: ``perf:`` keeps them apart from the run-result sections."""
    return markers(f"perf:{name}")


def snapshot_path(section: str) -> Path:
    """Where a run-result section's snapshot is committed (under ROOT, read at call time for the tests)."""
    return ROOT / "docs" / "results" / f"{section}.json"


def image_link(target: str, image: str) -> str:
    """The link to docs/images/<image> as written in ``target`` (a path relative to the repository)."""
    folder = os.path.dirname(target) or "."
    return Path(os.path.relpath(Path("docs") / "images" / image, folder)).as_posix()


def inside_text(lines: list[str]) -> str:
    """What _replace_between puts between the markers for ``lines`` (the test compares against this)."""
    return "\n" + "\n".join(lines)


def section_in(path: Path, begin: str, end: str) -> str | None:
    """The text between two markers of a file, or None when either is missing."""
    text = path.read_text()
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0]


# --- snapshot parts: read from a run, rendered without it ----------------------------------------

def _budget(cfg: dict) -> str:
    """The training budget in words: the DP plans ignore train.steps (docs/dp.md)."""
    if cfg.get("dp.enabled") and cfg.get("dp.auto", True):
        return "DP-SGD with the few-record plans (docs/dp.md)"
    return f"{cfg['train.steps']} LoRA steps per adapter"


def run_part(run: Path, title: str, command: str) -> Part:
    """The subset of a run's results.json its section shows (RUN_KEYS), with table.md for old runs."""
    results = json.loads((run / "results.json").read_text())
    part: Part = {"kind": "run", "title": title, "command": command,
                  "results": {k: results[k] for k in RUN_KEYS if k in results}}
    if "intervals" not in results and (run / "table.md").exists():
        part["table_md"] = (run / "table.md").read_text()
    return part


def render_run(part: Part, target: str) -> list[str]:
    """A run's header (config and timing), its paper table with intervals, and what left the devices."""
    from cdcda_fl.reporting.paper_table import paper_table

    results, title, command = part["results"], part["title"], part["command"]
    cfg = results["config"]
    total = sum(results.get("timing", {}).values())
    table = part["table_md"] if "table_md" in part else paper_table(results)
    lines = [
        f"{title} (`{command}`, {sum(results['users'].values())} users on {cfg['tasks']}, device model "
        f"`{cfg['device.model']}`, cloud model `{cfg['cloud.model']}`, {_budget(cfg)}, "
        f"{cfg['synthetic.per-user']} synthetic records asked per user, share fraction {cfg['consent.share-fraction']}, "
        f"seed {cfg['seed']}; phases took {total:.0f} s on this 2-core machine"
        + (f"; **partial: {results['partial']}**" if results.get("partial") else "") + "):",
        "",
        table.strip(),
        "",
    ]
    if part.get("profile_sizes"):
        lines += size_table(results, part["profile_sizes"])
    shared = results.get("shared", {})
    if shared:
        parts = [f"{task}: {v.get('records', 0)} of {v.get('records_total', 0)} records, {v.get('bytes', 0):,} bytes"
                 for task, v in shared.items()]
        lines += ["What left the devices: " + "; ".join(parts) + ".", ""]
    return lines


def profile_sizes_of(run: Path) -> dict[str, dict[str, int]]:
    """task -> user -> profile size, read from the run's data dir (kept in the snapshot: data are not committed)."""
    results = json.loads((run / "results.json").read_text())
    data = Path(str(results["config"].get("data-dir") or run / "data"))
    split = str(results["config"].get("split", "dev"))
    sizes: dict[str, dict[str, int]] = {}
    for task in results.get("users", {}):
        questions = json.loads((data / task / f"{split}_questions.json").read_text())
        for q in questions:
            uid = str(q.get("user_id") or q["id"])
            sizes.setdefault(task, {})[uid] = len(q.get("profile") or [])
    return sizes


SIZE_METHODS = ("base", "local", "fedavg+local", "cdcda")


def _size_groups(sizes: dict[str, int]) -> list[tuple[str, list[str]]]:
    """Users grouped by exact profile size when there are few sizes (real writing: 4/8/16/32), else by bucket."""
    distinct = sorted(set(sizes.values()))
    if len(distinct) <= 6:
        return [(str(n), [u for u, m in sizes.items() if m == n]) for n in distinct]
    buckets = _share_curve_module().BUCKETS  # one definition of the profile-size buckets (the share curve's)
    return [(label, [u for u, m in sizes.items() if lo <= m <= hi]) for label, lo, hi in buckets]


def size_table(results: dict, sizes: dict[str, dict[str, int]]) -> list[str]:
    """Per task and profile size: each method's mean and CDCDA − base / CDCDA − local, paired, with intervals.

    The do-no-harm check of issue 28 on real writing: no size bucket of the product default may be
    below the base model by more than noise.
    """
    from cdcda_fl.evaluation.stats import format_interval, mean_ci, paired_diff_ci

    lines = ["", "| Task | Profile items | Users | " + " | ".join(SIZE_METHODS) + " | CDCDA − base | CDCDA − local |",
             "|---|---:|---:|" + "---:|" * (len(SIZE_METHODS) + 2)]
    for task, block in sorted((results.get("intervals") or {}).items()):
        per_user = block.get("per_user") or {}
        sign = 1.0 if block.get("higher_is_better", True) else -1.0
        groups = _size_groups(sizes.get(task, {}))
        for size, members in groups:
            users = sorted(u for u in members if u in per_user.get("cdcda", {}))
            if not users:
                continue
            means = [format_interval(mean_ci([per_user[m][u] for u in users])) if all(u in per_user.get(m, {})
                     for u in users) else "–" for m in SIZE_METHODS]
            diffs = []
            for other in ("base", "local"):
                if all(u in per_user.get(other, {}) for u in users):
                    d = paired_diff_ci([sign * per_user["cdcda"][u] for u in users],
                                       [sign * per_user[other][u] for u in users])
                    diffs.append(format_interval(d, signed=True))
                else:
                    diffs.append("–")
            lines.append(f"| {task.replace('_', '-')} | {size} | {len(users)} | " + " | ".join(means + diffs) + " |")
    lines += ["", "By profile size: mean per method [95 % interval over users] and CDCDA's paired difference "
              "(positive = CDCDA better).", ""]
    return lines


def demo_section(demo: Path, name: str = "Demo", command: str = "./run demo") -> list[str]:
    """One run's lines, straight from its directory."""
    return render_run(run_part(demo, name, command), SECTION_FILES["results"])


def realtext_part(folder: Path) -> Part:
    """augment_compare's summary.md on real writing (docs/augmentation.md), as written."""
    summary = folder / "summary.md"
    if not summary.is_file():
        raise SystemExit(f"{summary} not found: run experiments/augment_compare.py --summary-only --out {folder}/rows.jsonl")
    return {"kind": "realtext", "summary": summary.read_text()}


def render_realtext(part: Part, target: str) -> list[str]:
    """The real-writing table as augment_compare wrote it, under a line that says where it comes from."""
    return ["Real writing (`experiments/realtext_git.py`: git.git commit bodies → subject lines of 12 real authors in "
            "LaMP-4 format, 6 profile items and 6 time-later queries each; `experiments/augment_compare.py`; "
            "rule `holdout` was the product default until 2026-12-07 (now `crossfit`), `none` always uses the "
            "cloud's records):", "", part["summary"].strip(), ""]


def realtext_section(folder: Path) -> list[str]:
    """The real-writing lines, straight from an augment_compare folder."""
    return render_realtext(realtext_part(folder), SECTION_FILES["results"])


def sweep_part(sweep: Path) -> Part | None:
    """Copy a sweep's plots to docs/images/sweep_*.png; None when it drew none."""
    data = json.loads((sweep / "sweep.json").read_text())
    plots = [Path(p) for p in data.get("plots", [])]
    if not plots:
        return None
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    grid = data.get("grid", {})
    single = {"utility_vs_share.png": len(grid.get("share-fraction", [0, 1])) < 2,
              "utility_vs_epsilon.png": len(grid.get("dp-epsilon", [0, 1])) < 2}
    names = []
    for plot in plots:
        if single.get(plot.name):  # a one-value axis draws no curve: keep the older plot
            continue
        src = plot if plot.is_absolute() else sweep / plot
        shutil.copyfile(src, images / f"sweep_{src.name}")
        names.append(f"sweep_{src.name}")
    return {"kind": "sweep", "points": len(data.get("points", [])), "images": names}


def render_sweep(part: Part, target: str) -> list[str]:
    """The sweep's plots, linked relative to the page that shows them."""
    lines = [f"Privacy versus utility (`cdcda sweep`, {part['points']} grid points):", ""]
    for name in part["images"]:
        lines += [f"![{Path(name).stem.removeprefix('sweep_')}]({image_link(target, name)})", ""]
    return lines


def canary_part(run: Path) -> Part:
    """What the canary table reads of ``cdcda audit canaries``' canaries.json."""
    report = json.loads((run / "canaries.json").read_text())
    cfg = report.get("config", {})
    keep = {k: cfg[k] for k in ("tasks", "device.model") if k in cfg}
    return {"kind": "canaries", "report": {"config": keep, **{k: report[k] for k in
            ("canaries_per_user", "controls_per_user", "candidates", "summary")}}}


def draw_canary_plot(report: dict, images: Path) -> None:
    """The sweep's exposure-vs-ε plot, drawn from the same summary as the table."""
    from cdcda_fl.reporting.sweep_plots import _pyplot, plot_exposure_vs_epsilon

    images.mkdir(parents=True, exist_ok=True)
    fig = plot_exposure_vs_epsilon({"canary_audit": report})
    fig.savefig(images / CANARY_PLOT, dpi=110)
    _pyplot().close(fig)


def _stat_cell(stat: dict) -> str:
    """A mean with its interval when the audit had enough users for one; – when not measured."""
    if stat.get("mean") is None:
        return "–"
    band = f" [{stat['lo']:.2f}, {stat['hi']:.2f}]" if stat.get("lo") is not None else ""
    return f"{stat['mean']:.2f}{band}"


def render_canaries(part: Part, target: str) -> list[str]:
    """Exposure, controls, MIA AUC and ε per task and DP setting, then the plot."""
    report = part["report"]
    cfg = report.get("config", {})
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
        lines.append(f"| {r['task']} | {eps} | {_stat_cell(r['exposure_planted'])} | "
                     f"{_stat_cell(r['exposure_control'])} | {_stat_cell(r['mia_auc'])} | {spent} | {r['n_users']} |")
    return [*lines, "", f"![canary exposure vs epsilon]({image_link(target, CANARY_PLOT)})", ""]


def canary_section(run: Path, images: Path | None = None, target: str = SECTION_FILES["canaries"]) -> list[str]:
    """The canary audit's table and plot from a folder with canaries.json (an audit's or a sweep's canaries/)."""
    part = canary_part(run)
    draw_canary_plot(part["report"], images or ROOT / "docs" / "images")
    return render_canaries(part, target)


def _share_curve_module() -> Any:
    """experiments/share_curve.py: its markdown() renders the tables."""
    return _script("share_curve")


def share_curve_part(curve: Path) -> Part:
    """A curve's share_curve.json (whole: the tables and the plot are drawn from it); its plot copied."""
    image = f"share_curve_{curve.name}.png"
    if (curve / "share_curve.png").is_file():
        (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(curve / "share_curve.png", ROOT / "docs" / "images" / image)
    has_image = (ROOT / "docs" / "images" / image).is_file()
    return {"kind": "share-curve", "name": curve.name, "image": image if has_image else None,
            "curve": json.loads((curve / "share_curve.json").read_text())}


def render_share_curve(part: Part, target: str) -> list[str]:
    """The curve's command, its tables (share_curve.markdown, with intervals) and its plot."""
    data = part["curve"]
    command = data.get("command") or f"experiments/share_curve.py {data['config']}"
    lines = [f"From `python {command}` ({part['name']}):", "",
             *_share_curve_module().markdown(data).splitlines(), ""]
    if part.get("image"):
        lines += [f"![CDCDA − local-only against the share fraction]({image_link(target, part['image'])})", ""]
    return lines


def _script(name: str) -> Any:
    """A script of experiments/ (not a package), imported by name."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def multitask_part(compare: Path) -> Part:
    """experiments/multitask_compare.py's JSON: both scopes' quality rows and costs per person."""
    return {"kind": "multitask", "compare": json.loads(compare.read_text())}


def render_multitask(part: Part, target: str) -> list[str]:
    """The scope comparison's tables (every profile-size row, or only "all" when ``brief``)."""
    data = part["compare"]
    rows = [r for r in data["quality"] if not part.get("brief") or r["profile"] == "all"]
    command = (f"python experiments/multitask_compare.py {data['task_run']} {data['user_run']} "
               "(experiments/configs/multitask.toml run with each scope)")
    return [f"From `{command}`; positive = one adapter per person is better:", "",
            *_script("multitask_compare").render(rows, data["cost"], brief=bool(part.get("brief"))).splitlines(), ""]


RENDERERS: dict[str, Callable[[Part, str], list[str]]] = {
    "run": render_run, "realtext": render_realtext, "sweep": render_sweep,
    "canaries": render_canaries, "share-curve": render_share_curve, "multitask": render_multitask,
}


def render_section(snapshot: dict, target: str) -> list[str]:
    """A section's lines from its snapshot alone: the concatenation of its parts' renderings."""
    return [line for part in snapshot["parts"] for line in RENDERERS[part["kind"]](part, target)]


def load_snapshot(section: str) -> dict | None:
    """A section's committed snapshot, or None when it was never written (its run predates snapshots)."""
    path = snapshot_path(section)
    return json.loads(path.read_text()) if path.is_file() else None


def write_section(section: str, parts: list[Part]) -> bool:
    """Render ``parts`` into the section's file and commit them as its snapshot (False: no markers)."""
    target = SECTION_FILES[section]
    snapshot = {"section": section, "file": target, "written_by": "experiments/update_readme.py", "parts": parts}
    if not _replace_between(ROOT / target, *markers(section), render_section(snapshot, target)):
        return False
    path = snapshot_path(section)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snapshot, indent=1, ensure_ascii=False) + "\n")
    print(f"{target} {section} section updated (snapshot {path.relative_to(ROOT)})")
    return True


# --- benchmark tables ---------------------------------------------------------------------------

def update_perf_sections(results: Path, files: dict[Path, tuple[str, ...]] | None = None) -> bool:
    """Rewrite every perf section from the JSON in ``results`` (False if a file lacks a marker)."""
    sys.path.insert(0, str(EXPERIMENTS))  # perf_tables sits next to this script
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


# --- command line -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    """One option per kind of input; each fills the sections that input feeds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=None, help="a finished ./run demo directory (e.g. runs/demo)")
    parser.add_argument("--quality", type=Path, default=None,
                        help="a finished run of experiments/configs/quality.toml (optional)")
    parser.add_argument("--realtext-run", type=Path, default=None,
                        help="a finished `cdcda run` on real writing (experiments/configs/realtext.toml, e.g. with "
                             "the federated methods): its table, the family comparison and a profile-size breakdown")
    parser.add_argument("--sweep", type=Path, default=None, help="a finished sweep directory (optional)")
    parser.add_argument("--realtext", type=Path, default=None,
                        help="an experiments/augment_compare.py output folder on real writing (its summary.md)")
    parser.add_argument("--dp", type=Path, action="append", default=[],
                        help="a finished run of experiments/configs/dp_quality.toml (repeatable: e.g. one per "
                             "dp.selection); fills the DP section of docs/results.md only")
    parser.add_argument("--canaries", type=Path, default=None,
                        help="a folder with canaries.json (cdcda audit canaries --out DIR); fills the canary "
                             "section of docs/results.md and draws docs/images/" + CANARY_PLOT)
    parser.add_argument("--share-curve", type=Path, action="append", default=[],
                        help="a finished experiments/share_curve.py directory (repeatable: personas, real "
                             "writing); fills the share-curve section of docs/results.md and copies its plot")
    parser.add_argument("--multitask", type=Path, default=None,
                        help="experiments/multitask_compare.py's --json output: fills the scope comparison in "
                             "docs/multitask.md (every profile size) and the README (all users)")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="regenerate the tables of docs/performance.md and docs/device.md from a benchmark "
                             "results directory, e.g. benchmarks/results")
    return parser


def _missing_input(args: argparse.Namespace) -> str | None:
    """The first named input that does not exist, as a message (None: all there)."""
    if args.benchmarks is not None and not args.benchmarks.is_dir():
        return f"{args.benchmarks} is not a directory: run a benchmark first"
    if args.canaries is not None and not (args.canaries / "canaries.json").is_file():
        return f"{args.canaries}/canaries.json not found: run `cdcda audit canaries` first"
    for run in (args.demo, args.quality, args.realtext_run, *args.dp):
        if run is not None and not (run / "results.json").is_file():
            return f"{run}/results.json not found: run it first"
    if args.multitask is not None and not args.multitask.is_file():
        return f"{args.multitask} not found: run experiments/multitask_compare.py --json first"
    for curve in args.share_curve:
        if not (curve / "share_curve.json").is_file():
            return f"{curve}/share_curve.json not found: run experiments/share_curve.py first"
    return None


def _dp_parts(runs: list[Path]) -> list[Part]:
    """One part per DP run, titled by its ε and CDCDA+DP selection rule."""
    parts = []
    for run in runs:
        cfg = json.loads((run / "results.json").read_text())["config"]
        selection = cfg.get("dp.selection") or "synthetic"  # runs from before the key: the default
        command = f"cdcda run experiments/configs/dp_quality.toml --set dp.selection={selection}"
        parts.append(run_part(run, f"DP at ε = {cfg['dp.epsilon']:g}, CDCDA+DP selection `{selection}`", command))
    return parts


def _results_parts(args: argparse.Namespace) -> list[Part]:
    """The README's results section: demo, quality run, real writing and sweep plots, each when named."""
    parts = []
    if args.demo is not None:
        parts.append(run_part(args.demo, "Demo", "./run demo"))
    if args.quality is not None:
        part = run_part(args.quality, "Quality run", "cdcda run experiments/configs/quality.toml")
        part["profile_sizes"] = profile_sizes_of(args.quality)
        parts.append(part)
    if args.realtext is not None:
        parts.append(realtext_part(args.realtext))
    if args.sweep is not None and (sweep := sweep_part(args.sweep)) is not None:
        parts.append(sweep)
    return parts


def main(argv: list[str] | None = None) -> int:
    """Fill every section whose inputs are named; 1 (with a message) when an input or a marker is missing."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (message := _missing_input(args)) is not None:
        print(message, file=sys.stderr)
        return 1
    results_run = args.demo is not None or args.quality is not None or args.realtext is not None
    if not (results_run or args.dp or args.sweep is not None or args.canaries is not None
            or args.benchmarks is not None or args.share_curve or args.realtext_run is not None
            or args.multitask is not None):
        parser.error("name at least one of --demo, --quality, --realtext, --realtext-run, --dp, --sweep, --canaries, "
                     "--benchmarks, --share-curve, --multitask")
    if args.sweep is not None and not results_run:
        # Only the plots: copy them over docs/images/sweep_*.png (docs/results.md links those files).
        sweep_part(args.sweep)
        print(f"plots of {args.sweep} copied to docs/images/sweep_*.png")
    if args.dp and not write_section("dp", _dp_parts(args.dp)):
        return 1
    if args.canaries is not None:
        part = canary_part(args.canaries)
        draw_canary_plot(part["report"], ROOT / "docs" / "images")
        if not write_section("canaries", [part]):
            return 1
    if args.share_curve and not write_section("share-curve", [share_curve_part(c) for c in args.share_curve]):
        return 1
    if args.realtext_run is not None:
        part = run_part(args.realtext_run, "Real writing", "cdcda run experiments/configs/realtext.toml")
        part["profile_sizes"] = profile_sizes_of(args.realtext_run)
        if not write_section("realtext-run", [part]):
            return 1
    if args.multitask is not None:
        part = multitask_part(args.multitask)
        if not (write_section("multitask", [part]) and write_section("multitask-brief", [{**part, "brief": True}])):
            return 1
    if args.benchmarks is not None:
        if not update_perf_sections(args.benchmarks):
            return 1
        print(f"Tables of {' and '.join(PERF_SECTIONS)} updated from {args.benchmarks}")
    if results_run and not write_section("results", _results_parts(args)):
        return 1
    return 0


def _replace_between(readme: Path, begin: str, end: str, lines: list[str]) -> bool:
    """Rewrite a markdown file (the README, a docs/ page) between two markers.

    False, with a message, if they are missing; the file is left untouched when nothing changed.
    """
    text = readme.read_text()
    if begin not in text or end not in text:
        print(f"{readme.name} has no {begin} … {end} section", file=sys.stderr)
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = head + begin + inside_text(lines) + end + tail
    if new != text:
        readme.write_text(new)
    return True


if __name__ == "__main__":
    sys.exit(main())

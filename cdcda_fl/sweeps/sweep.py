"""Privacy-versus-utility sweep: one full CDCDA run per (share fraction, DP ε) grid point.

The two privacy knobs act at different places, so the sweep crosses them:
- ``consent.share-fraction`` is how much of a user's profile leaves the device for the cloud
  (it changes only CDCDA; local LoRA never uses the cloud);
- DP-SGD ε bounds what the private adapter itself can leak (it changes local LoRA and CDCDA).
Each point is a complete ``run_simulation`` (Flower simulation) into ``OUT/points/<name>/`` with
``mia.enabled`` on, so the empirical leakage (membership-inference AUC) sits next to the formal ε
and the number of records/bytes shared. A finished point (its ``results.json`` exists and was made
with the same configuration) is reused on a rerun, so an interrupted sweep resumes; a point that
fails is reported and the sweep goes on.

Sweep file (TOML)::

    [config]                     # the base run config, same keys as `cdcda run`
    tasks = "LaMP_2"
    out-dir = "runs/privacy"     # the sweep directory (points/ go inside)

    [sweep]
    share-fraction = [0, 0.25, 0.5, 1]
    dp-epsilon = ["off", 8, 4, 1]
    reference-share-fraction = 0.5   # optional: the share fraction of the utility-vs-ε plot
    canaries = 2                     # optional: canary exposure audit, canaries per user (0 = off)
    canary-candidates = 128          # optional: candidates each canary is ranked among

With ``canaries`` > 0 the sweep ends with a canary exposure audit over the same users
(:mod:`cdcda_fl.sweeps.sweep_canaries`): exposure joins MIA AUC and ε in sweep.json and the plots.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cdcda_fl.server.aggregate import audit_totals
from cdcda_fl.core.atomic import write_json_atomic, write_text_atomic
from cdcda_fl.core.config import METHODS, ConfigError, Scalar, config_mismatch, load_config, read_toml
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric
from cdcda_fl.core.progress import Progress, log
from cdcda_fl.reporting.paper_table import write_paper_table
from cdcda_fl.reporting.results import METHOD_LABELS, method_interval
from cdcda_fl.server.runs import package_versions
from cdcda_fl.sweeps.sweep_canaries import Auditor, CanaryPlan, attach_exposure, audit_summary, run_sweep_canaries
from cdcda_fl.reporting.sweep_plots import write_sweep_plots
from cdcda_fl.core.run_config import run_config

SWEEP_KEYS = ("share-fraction", "dp-epsilon", "reference-share-fraction", "canaries", "canary-candidates")
DEFAULT_SHARE = (0.0, 0.25, 0.5, 1.0)
DEFAULT_EPSILON: tuple[float | None, ...] = (None, 8.0, 4.0, 1.0)
TRAINED = ("local", "cdcda")
OFF = "off"
Runner = Callable[[dict[str, Scalar]], dict[str, Any]]


class SweepError(ConfigError):
    """A bad sweep file or grid; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: a share fraction and a DP setting (``dp_epsilon`` None = DP off)."""

    share_fraction: float
    dp_epsilon: float | None

    @property
    def name(self) -> str:
        return f"share{self.share_fraction:g}_dp{OFF if self.dp_epsilon is None else f'{self.dp_epsilon:g}'}"

    @property
    def epsilon_label(self) -> str | float:
        return OFF if self.dp_epsilon is None else self.dp_epsilon


@dataclass
class SweepSpec:
    """The base run config and the grid to cross it with."""

    config: dict[str, Scalar]
    share_fractions: list[float] = field(default_factory=lambda: list(DEFAULT_SHARE))
    dp_epsilons: list[float | None] = field(default_factory=lambda: list(DEFAULT_EPSILON))
    reference_share: float | None = None
    source: str = ""
    canaries: CanaryPlan = field(default_factory=CanaryPlan)

    def points(self) -> list[SweepPoint]:
        """DP off first, then ε from weakest to strongest privacy; share fractions ascending."""
        eps_order = sorted(self.dp_epsilons, key=lambda e: -math.inf if e is None else -e)
        return [SweepPoint(s, e) for e in eps_order for s in sorted(self.share_fractions)]

    @property
    def reference(self) -> float:
        """The share fraction the utility-vs-ε plot is drawn at."""
        if self.reference_share is not None:
            return self.reference_share
        base = run_config(self.config).consent.share_fraction
        return base if base in self.share_fractions else max(self.share_fractions)


# ---------------------------------------------------------------------- parsing
def parse_share_fractions(values: Any) -> list[float]:
    items = _as_list(values, "share-fraction")
    out: list[float] = []
    for v in items:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise SweepError(f"sweep.share-fraction: {v!r} is not a number in [0, 1]") from None
        if not 0.0 <= f <= 1.0 or isinstance(v, bool):
            raise SweepError(f"sweep.share-fraction: {v!r} is outside [0, 1]")
        if f not in out:
            out.append(f)
    return out


def parse_epsilons(values: Any) -> list[float | None]:
    items = _as_list(values, "dp-epsilon")
    out: list[float | None] = []
    for v in items:
        if v is False or (isinstance(v, str) and v.strip().lower() in {OFF, "none", "false"}):
            e = None
        else:
            try:
                e = float(v)
            except (TypeError, ValueError):
                raise SweepError(f"sweep.dp-epsilon: {v!r} is neither \"off\" nor a positive number") from None
            if not e > 0 or math.isinf(e) or isinstance(v, bool):
                raise SweepError(f"sweep.dp-epsilon: {v!r} must be a positive finite number (use \"off\" for no DP)")
        if e not in out:
            out.append(e)
    return out


def parse_canary_plan(table: Mapping[str, Any]) -> CanaryPlan:
    """``canaries`` / ``canary-candidates`` of a [sweep] table as a checked plan (default: no audit)."""
    values = {}
    for key, name, default in (("canaries", "canaries", 0), ("canary-candidates", "candidates", 128)):
        raw = table.get(key, default)
        try:
            if isinstance(raw, bool) or float(raw) != int(float(raw)):
                raise ValueError
            values[name] = int(float(raw))
        except (TypeError, ValueError):
            raise SweepError(f"sweep.{key}: expected a whole number, got {raw!r}") from None
    try:
        return CanaryPlan(**values)
    except ValueError as exc:
        raise SweepError(str(exc)) from None


def _as_list(values: Any, key: str) -> list[Any]:
    if isinstance(values, str):
        values = [v for v in (p.strip() for p in values.split(",")) if v]
    if not isinstance(values, list) or not values:
        raise SweepError(f"sweep.{key}: expected a non-empty list, got {values!r}")
    return values


def load_sweep(path: Path | str, sets: Sequence[str] = (), extra: Mapping[str, Any] | None = None,
               grid: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep TOML (``[config]`` + ``[sweep]``); ``sets`` override run keys, ``grid`` axes (``key=v1,v2``)."""
    path = Path(path)
    data = read_toml(path, SweepError, "sweep file")
    if "config" not in data:
        raise SweepError(f"{path}: a sweep file needs a [config] table (the base run config) and a [sweep] table")
    table = dict(data.get("sweep", {}))
    from_cli: set[str] = set()
    for item in grid:
        if "=" not in item:
            raise SweepError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, value = item.split("=", 1)
        table[key.strip()] = value
        from_cli.add(key.strip())
    unknown = sorted(set(table) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown [sweep] key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)} "
                         "(other run keys belong in [config] or --set)")
    cfg = load_config(path, list(sets), extra=extra)
    spec = SweepSpec(config=cfg, source=str(path),
                     share_fractions=parse_share_fractions(table.get("share-fraction", list(DEFAULT_SHARE))),
                     dp_epsilons=parse_epsilons(table.get("dp-epsilon", [OFF, *DEFAULT_EPSILON[1:]])))
    spec.canaries = parse_canary_plan(table)
    if "reference-share-fraction" in table:
        ref = parse_share_fractions([table["reference-share-fraction"]])[0]
        if ref in spec.share_fractions:
            spec.reference_share = ref
        elif "reference-share-fraction" in from_cli:
            raise SweepError(f"--grid reference-share-fraction {ref:g} is not one of the grid's share fractions "
                             f"{spec.share_fractions}")
        else:  # the file's reference no longer fits a grid narrowed with --grid: use the default rule
            log(f"[yellow]sweep: reference-share-fraction {ref:g} is not in the grid {spec.share_fractions}; "
                f"the utility-vs-ε plot uses {spec.reference:g}[/yellow]")
    return spec


# ---------------------------------------------------------------------- running
def point_config(spec: SweepSpec, point: SweepPoint, out_dir: Path) -> dict[str, Scalar]:
    """The run config of one grid point: base config + share fraction + DP + MIA on + its own dir."""
    cfg = dict(spec.config)
    cfg.update({
        "consent.share-fraction": point.share_fraction,
        "dp.enabled": point.dp_epsilon is not None,
        "dp.epsilon": 0.0 if point.dp_epsilon is None else float(point.dp_epsilon),
        "mia.enabled": True,
        "out-dir": str(out_dir / "points" / point.name),
        # One device disk for the whole sweep: adapters are keyed by config and data, so e.g. the
        # local-only adapter (which no share fraction changes) is trained once per DP setting.
        "device.storage-dir": run_config(spec.config).device.storage_dir or str(out_dir / "devices"),
    })
    return cfg


@dataclass
class PointOutcome:
    point: SweepPoint
    status: str  # "ran", "resumed" or "failed"
    seconds: float = 0.0
    results: dict[str, Any] | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        res = self.results or {}
        return {"name": self.point.name, "share_fraction": self.point.share_fraction,
                "dp_epsilon": self.point.epsilon_label, "dir": str(Path("points") / self.point.name),
                "status": self.status, "seconds": round(self.seconds, 1), "error": self.error,
                "user_failures": len(res.get("failures", [])), "users": res.get("users", {}),
                "shared": res.get("shared", {})}


def run_point(spec: SweepSpec, point: SweepPoint, out_dir: Path, runner: Runner) -> PointOutcome:
    """Run (or reuse) one point; never raises for a failing run, so the sweep goes on."""
    cfg = point_config(spec, point, out_dir)
    results_path = Path(run_config(cfg).out_dir) / "results.json"
    if results_path.exists():
        stored = json.loads(results_path.read_text(encoding="utf-8"))
        diff = config_mismatch(stored.get("config", {}), cfg)
        if not diff:
            log(f"[green]{point.name}[/green]: finished earlier, reusing {results_path}")
            return PointOutcome(point, "resumed", results=_with_shared(stored, results_path.parent))
        return PointOutcome(point, "failed", error=(
            f"{results_path.parent} was made with a different config ({', '.join(diff)}); delete it or "
            "sweep into another --out"))
    started = time.perf_counter()
    try:
        results = runner(cfg)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad point must not end the sweep
        tb = traceback.format_exc(limit=4)
        log(f"[red]{point.name} failed:[/red] {type(exc).__name__}: {exc}")
        return PointOutcome(point, "failed", time.perf_counter() - started,
                            error=f"{type(exc).__name__}: {exc}\n{tb}")
    write_paper_table(run_config(cfg).out_dir, results)
    seconds = time.perf_counter() - started
    return PointOutcome(point, "ran", seconds, results=_with_shared(results, Path(run_config(cfg).out_dir)))


def _with_shared(results: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Older run directories lack results["shared"]: recompute it from their audit log."""
    if "shared" not in results:
        results = {**results, "shared": audit_totals(run_dir)}
    return results


def rows_of(outcome: PointOutcome) -> list[dict[str, Any]]:
    """One row per task × method of a finished point (the unit of sweep.csv and of every plot)."""
    if not outcome.results:
        return []
    p = outcome.point
    rows = []
    for r in outcome.results.get("table", []):
        metric = primary_metric(r["task"])
        shared = outcome.results.get("shared", {}).get(r["task"], {})
        rows.append({
            "point": p.name, "share_fraction": p.share_fraction, "dp_epsilon": p.epsilon_label,
            "task": r["task"], "method": r["method"], "primary_metric": metric,
            "utility": r["metrics"].get(metric), "higher_is_better": metric not in LOWER_IS_BETTER,
            "utility_ci": list(method_interval(outcome.results, r["task"], r["method"]) or ()) or None,
            "metrics": dict(r["metrics"]), "epsilon": r.get("epsilon"), "mia_auc": r.get("mia_auc"),
            "records_shared": shared.get("records", 0), "records_total": shared.get("records_total", 0),
            "bytes_shared": shared.get("bytes", 0), "n_synthetic": r.get("n_synthetic", 0.0),
            "n_users": r["n_users"], "n_queries": r["n_queries"],
            "dp_applies": r["method"] in TRAINED, "uses_shared": r["method"] == "cdcda",
        })
    return rows


def run_sweep(spec: SweepSpec, out_dir: Path | str, runner: Runner, auditor: Auditor | None = None) -> dict[str, Any]:
    """Run every grid point (resuming finished ones), the canary audit if asked, then write
    sweep.json, sweep.csv and the plots.

    ``runner`` runs one point's config and returns its results (the app layer passes
    ``strategies.simulation.run_simulation``; tests pass fakes): the library starts no engine itself.
    ``auditor`` replaces :func:`cdcda_fl.sweeps.canary_audit.run_canary_audit` (tests only).
    """
    out = Path(out_dir).expanduser().resolve()
    (out / "points").mkdir(parents=True, exist_ok=True)
    points = spec.points()
    log(f"sweep: {len(points)} point(s) = share fraction {spec.share_fractions} × DP ε "
        f"{[OFF if e is None else e for e in spec.dp_epsilons]} into {out}")
    outcomes: list[PointOutcome] = []
    with Progress("sweep points", total=len(points)) as bar:
        for i, point in enumerate(points, 1):
            log(f"[bold]sweep point {i}/{len(points)}: {point.name}[/bold] (share fraction "
                f"{point.share_fraction:g}, DP {OFF if point.dp_epsilon is None else f'ε={point.dp_epsilon:g}'})")
            outcomes.append(run_point(spec, point, out, runner))
            write_sweep(out, spec, outcomes, plots=False)  # partial report after each point
            bar.advance()
    canaries = (run_sweep_canaries(spec.config, spec.dp_epsilons, out, spec.canaries, auditor)
                if spec.canaries.enabled else None)
    sweep = write_sweep(out, spec, outcomes, plots=True, canaries=canaries)
    failed = [o for o in outcomes if o.status == "failed"]
    log(f"sweep done: {len(outcomes) - len(failed)}/{len(outcomes)} point(s) finished; report {out / 'sweep.json'}")
    return sweep


# ---------------------------------------------------------------------- outputs
CSV_COLUMNS = ("point", "share_fraction", "dp_epsilon", "task", "method", "primary_metric", "utility",
               "higher_is_better", "epsilon", "mia_auc", "exposure", "exposure_control", "records_shared",
               "records_total", "bytes_shared", "n_synthetic", "n_users", "n_queries", "dp_applies", "uses_shared")


def write_sweep(out: Path, spec: SweepSpec, outcomes: Sequence[PointOutcome], *, plots: bool,
                canaries: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``sweep.json`` (+ ``sweep.csv``, + PNG plots when ``plots``); returns sweep.json's content.

    ``canaries`` is the canary audit's report (canaries.json), when the sweep ran one.
    """
    rows = [row for o in outcomes for row in rows_of(o)]
    attach_exposure(rows, canaries)
    sweep: dict[str, Any] = {
        "source": spec.source,
        "grid": {"share-fraction": list(spec.share_fractions),
                 "dp-epsilon": [OFF if e is None else e for e in spec.dp_epsilons]},
        "reference_share_fraction": spec.reference,
        "base_config": dict(spec.config),
        "points": [o.summary() for o in outcomes],
        "complete": len(outcomes) == len(spec.points()) and all(o.status != "failed" for o in outcomes),
        "rows": rows,
        "canary_audit": audit_summary(canaries),
        "plots": [],
        "versions": package_versions(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if plots and rows:
        sweep["plots"] = [str(Path(p).relative_to(out)) for p in write_sweep_plots(out, sweep)]
    write_json_atomic(out / "sweep.json", sweep)
    _write_csv(out / "sweep.csv", rows)
    return sweep


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    metric_names: list[str] = []
    for r in rows:
        metric_names += [m for m in r["metrics"] if m not in metric_names]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CSV_COLUMNS, *metric_names])
    for r in rows:
        cells = ["" if r[c] is None else r[c] for c in CSV_COLUMNS]
        writer.writerow([*cells, *("" if r["metrics"].get(m) is None else r["metrics"][m] for m in metric_names)])
    write_text_atomic(path, buffer.getvalue())


def print_sweep(sweep: Mapping[str, Any], console: Any = None) -> None:
    """Per task: one line per grid point, utility of every method side by side, ε, MIA AUC, what was shared."""
    console = console or Console(width=max(Console().width, 130))
    rows = sweep.get("rows", [])
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        methods = [m for m in METHODS if any(r["method"] == m for r in task_rows)]
        metric = task_rows[0]["primary_metric"]
        arrow = "↑" if task_rows[0]["higher_is_better"] else "↓"
        table = Table(title=f"{task}: {metric} {arrow} by privacy setting (MIA AUC 0.5 = no membership leakage)")
        for col in ("share", "DP ε", "records shared", "bytes"):
            table.add_column(col, justify="right")
        for m in methods:
            table.add_column(METHOD_LABELS.get(m, m), justify="right")
        for m in TRAINED:
            if m in methods:
                table.add_column(f"MIA {m}", justify="right")
        audited = any(r.get("exposure") is not None for r in task_rows)
        if audited:
            table.add_column("exposure local (bits)", justify="right")
        for point in sweep.get("points", []):
            by_method = {r["method"]: r for r in task_rows if r["point"] == point["name"]}
            eps = point["dp_epsilon"]
            achieved = [r["epsilon"] for r in by_method.values() if r.get("epsilon") is not None]
            eps_text = "off" if eps == OFF else f"{eps:g}" + (f" ({max(achieved):.2f})" if achieved else "")
            if not by_method:
                status = f"[red]{point['status']}[/red]" if point["status"] == "failed" else "no results"
                table.add_row(f"{point['share_fraction']:g}", eps_text, status, "", *[""] * len(methods))
                continue
            any_row = next(iter(by_method.values()))
            cells = [_fmt(by_method.get(m, {}).get("utility")) for m in methods]
            mia = [_fmt(by_method.get(m, {}).get("mia_auc")) for m in TRAINED if m in methods]
            exposure = [_exposure_text(by_method.get("local", {}))] if audited else []
            table.add_row(f"{point['share_fraction']:g}", eps_text,
                          f"{any_row['records_shared']}/{any_row['records_total']}", str(any_row["bytes_shared"]),
                          *cells, *mia, *exposure)
        console.print(table)
        off_only = [s for s in (sweep.get("canary_audit") or {}).get("summary", [])
                    if s["task"] == task and not any(str(r["dp_epsilon"]) == str(s["dp_epsilon"]) for r in task_rows)]
        for s in off_only:  # the audit's no-DP reference when the grid has no "off" point
            console.print(f"canary audit, {task}, DP {s['dp_epsilon']} (no grid point): exposure "
                          f"{_fmt(s['exposure_planted']['mean'])} bits planted vs "
                          f"{_fmt(s['exposure_control']['mean'])} never planted")
    failed = [p for p in sweep.get("points", []) if p["status"] == "failed"]
    for p in failed:
        console.print(f"[red]point {p['name']} failed:[/red] {(p['error'] or '').splitlines()[0][:300]}")
    if sweep.get("plots"):
        console.print("plots: " + ", ".join(sweep["plots"]))


def _exposure_text(row: Mapping[str, Any]) -> str:
    """'4.82 [4.44, 5.21] / 3.50': planted exposure with its interval, then the never-planted control."""
    if row.get("exposure") is None:
        return ""
    ci = row.get("exposure_ci")
    band = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    control = f" / {row['exposure_control']:.2f}" if row.get("exposure_control") is not None else ""
    return f"{row['exposure']:.2f}{band}{control}"


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"

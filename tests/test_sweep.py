"""The privacy-versus-utility sweep: grid parsing, resume and failure handling (fast, with a fake
runner), then a real 2 × 2 sweep through Flower's simulation engine on tiny-random (slow)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from cdcda_fl.core.config import Scalar
from cdcda_fl.sweeps.sweep import (SweepError, SweepPoint, config_mismatch, load_sweep, point_config, print_sweep,
                            run_sweep)
from sweep_fixtures import PRIVACY_TINY, tiny_sweep  # noqa: F401

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


# ---------------------------------------------------------------------- grid and config
def test_default_grid_is_four_by_four() -> None:
    spec = load_sweep(CONFIGS / "privacy.toml")
    names = [p.name for p in spec.points()]
    assert len(names) == 16 and names[0] == "share0_dpoff" and names[-1] == "share1_dp1"
    assert spec.share_fractions == [0, 0.25, 0.5, 1] and spec.dp_epsilons == [None, 8, 4, 1]
    assert spec.reference == 0.5


def test_grid_overrides_and_errors(tmp_path: Path) -> None:
    spec = load_sweep(PRIVACY_TINY, sets=["users=3"], grid=["dp-epsilon=off,2", "share-fraction=0.5"])
    assert spec.config["users"] == 3 and [p.name for p in spec.points()] == ["share0.5_dpoff", "share0.5_dp2"]
    for bad, match in ((["dp-epsilon=0"], "positive"), (["share-fraction=1.5"], "outside"),
                       (["share=1"], "unknown"), (["dp-epsilon=abc"], "neither")):
        with pytest.raises(SweepError, match=match):
            load_sweep(PRIVACY_TINY, grid=bad)
    narrowed = load_sweep(CONFIGS / "privacy.toml", grid=["share-fraction=0,1"])  # file's reference 0.5 dropped
    assert narrowed.reference == 1.0
    with pytest.raises(SweepError, match="reference-share-fraction"):
        load_sweep(CONFIGS / "privacy.toml", grid=["share-fraction=0,1", "reference-share-fraction=0.5"])
    flat = tmp_path / "flat.toml"
    flat.write_text('tasks = "LaMP_2"\n[sweep]\nshare-fraction = [0]\n')
    with pytest.raises(SweepError, match=r"\[config\] table"):
        load_sweep(flat)


def test_point_config_sets_the_knobs_and_mia(tmp_path: Path) -> None:
    spec = load_sweep(PRIVACY_TINY)
    off = point_config(spec, SweepPoint(0.0, None), tmp_path)
    dp = point_config(spec, SweepPoint(1.0, 4.0), tmp_path)
    assert off["dp.enabled"] is False and off["consent.share-fraction"] == 0.0 and off["mia.enabled"] is True
    assert dp["dp.enabled"] is True and dp["dp.epsilon"] == 4.0 and dp["out-dir"] == str(tmp_path / "points/share1_dp4")
    assert config_mismatch(off, dict(off, **{"out-dir": "elsewhere"})) == []
    assert config_mismatch(off, dp) == ["consent.share-fraction", "dp.enabled", "dp.epsilon"]


# ---------------------------------------------------------------------- fake runner: fast
def fake_runner(calls: list[str], fail: str = ""):
    """Writes a results.json + audit.jsonl like a real run; utility rises with sharing, falls with DP."""

    def run(cfg: dict[str, Scalar]) -> dict[str, Any]:
        out = Path(str(cfg["out-dir"]))
        calls.append(out.name)
        if fail and fail in out.name:
            raise RuntimeError("simulated crash")
        out.mkdir(parents=True, exist_ok=True)
        share, eps = float(cfg["consent.share-fraction"]), float(cfg["dp.epsilon"]) if cfg["dp.enabled"] else None
        n = int(4 * share)
        (out / "audit.jsonl").write_text(json.dumps({"user": "u0", "task": "LaMP_2", "n_shared": n, "n_total": 4,
                                                     "bytes": 100 * n}) + "\n")
        penalty = 0.0 if eps is None else 0.2 / eps
        table = [{"task": "LaMP_2", "method": m, "metrics": {"accuracy": acc, "f1": acc}, "n_users": 1,
                  "n_queries": 2, "epsilon": eps if m != "base" else None,
                  "mia_auc": None if m == "base" else 0.9 - penalty, "n_synthetic": 0.0}
                 for m, acc in (("base", 0.1), ("local", 0.5 - penalty), ("cdcda", 0.5 + 0.3 * share - penalty))]
        from cdcda_fl.server.aggregate import audit_totals

        results = {"config": dict(cfg), "table": table, "users": {"LaMP_2": 1}, "failures": [],
                   "shared": audit_totals(out)}
        (out / "results.json").write_text(json.dumps(results))
        return results

    return run


def test_sweep_outputs_resume_and_failures(tmp_path: Path) -> None:
    spec = load_sweep(PRIVACY_TINY, grid=["dp-epsilon=off,4,1", "canaries=0"])
    calls: list[str] = []
    sweep = run_sweep(spec, tmp_path, runner=fake_runner(calls, fail="share1_dp1"))
    assert len(calls) == 6 and not sweep["complete"]
    status = {p["name"]: p["status"] for p in sweep["points"]}
    assert status["share1_dp1"] == "failed" and "simulated crash" in sweep["points"][-1]["error"]
    assert len(sweep["rows"]) == 5 * 3  # 5 finished points × 3 methods
    row = next(r for r in sweep["rows"] if r["point"] == "share1_dpoff" and r["method"] == "cdcda")
    assert row["utility"] == pytest.approx(0.8) and row["records_shared"] == 4 and row["bytes_shared"] == 400
    assert row["uses_shared"] and row["dp_applies"] and row["dp_epsilon"] == "off"
    assert sorted(sweep["plots"]) == ["plots/utility_vs_epsilon.png", "plots/utility_vs_mia.png",
                                      "plots/utility_vs_share.png"]
    assert all((tmp_path / p).stat().st_size > 5000 for p in sweep["plots"])
    with (tmp_path / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15 and {"utility", "mia_auc", "records_shared", "bytes_shared", "accuracy"} <= set(rows[0])
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == sweep["rows"]

    # Rerun: finished points are reused, only the failed one runs again.
    calls.clear()
    sweep = run_sweep(spec, tmp_path, runner=fake_runner(calls))
    assert calls == ["share1_dp1"] and sweep["complete"]
    assert sum(p["status"] == "resumed" for p in sweep["points"]) == 5
    # A finished point made with another config is refused, not silently mixed in.
    changed = load_sweep(PRIVACY_TINY, sets=["train.steps=3"],
                         grid=["dp-epsilon=off", "share-fraction=0", "canaries=0"])
    sweep = run_sweep(changed, tmp_path, runner=fake_runner(calls))
    assert sweep["points"][0]["status"] == "failed" and "train.steps" in sweep["points"][0]["error"]


def test_cli_dry_run_lists_points(capsys: pytest.CaptureFixture[str]) -> None:
    from strategies import sweep_cli

    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(PRIVACY_TINY), "--dry-run", "--grid", "dp-epsilon=off,8"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.split() == ["share0_dpoff", "share1_dpoff", "share0_dp8", "share1_dp8"]
    args = parser.parse_args(["sweep", str(PRIVACY_TINY), "--grid", "dp-epsilon=-1"])
    assert args.func(args) == 2


# ---------------------------------------------------------------------- real sweep: slow
@pytest.mark.slow
def test_tiny_sweep_end_to_end(tiny_sweep) -> None:  # noqa: F811
    out, sweep = tiny_sweep
    assert sweep["complete"], [p["error"] for p in sweep["points"]]
    assert [p["name"] for p in sweep["points"]] == ["share0_dpoff", "share1_dpoff", "share0_dp4", "share1_dp4"]
    for p in sweep["points"]:
        assert (out / p["dir"] / "results.json").is_file() and (out / p["dir"] / "table.md").is_file()
    rows = {(r["point"], r["method"]): r for r in sweep["rows"]}
    assert len(rows) == 4 * 3  # base, local, cdcda
    for point in ("share0_dpoff", "share1_dpoff", "share0_dp4", "share1_dp4"):
        assert rows[(point, "base")]["mia_auc"] is None and rows[(point, "base")]["epsilon"] is None
        for m in ("local", "cdcda"):
            assert 0.0 <= rows[(point, m)]["mia_auc"] <= 1.0
    assert rows[("share1_dp4", "cdcda")]["epsilon"] == pytest.approx(4.0, rel=0.05)
    assert rows[("share1_dpoff", "local")]["epsilon"] is None
    assert rows[("share0_dpoff", "cdcda")]["records_shared"] == 0
    assert rows[("share1_dpoff", "cdcda")]["records_shared"] > 0 and rows[("share1_dpoff", "cdcda")]["bytes_shared"] > 0
    for plot in sweep["plots"]:
        assert (out / plot).stat().st_size > 5000
    print_sweep(sweep)


@pytest.mark.slow
def test_tiny_sweep_rerun_runs_nothing(tiny_sweep) -> None:  # noqa: F811
    out, _ = tiny_sweep

    def must_not_run(cfg):
        raise AssertionError(f"point {cfg['out-dir']} was finished and must be reused")

    sweep = run_sweep(load_sweep(PRIVACY_TINY, extra={"out-dir": str(out)}), out, runner=must_not_run)
    assert sweep["complete"] and {p["status"] for p in sweep["points"]} == {"resumed"}


def test_epsilon_axis_is_log_with_off_a_decade_right() -> None:
    from cdcda_fl.reporting.sweep_plots import epsilon_positions

    pos = epsilon_positions([1.0, 4.0, 8.0, "off"])
    assert pos[1.0] == 1.0 and pos[8.0] == 8.0 and pos["off"] == 80.0
    assert epsilon_positions(["off"]) == {"off": 1.0}


def test_epsilon_plot_draws_intervals_and_the_base_floor() -> None:
    from cdcda_fl.reporting.sweep_plots import plot_utility_vs_epsilon

    def row(method: str, eps, u: float, ci=None) -> dict:
        return {"share_fraction": 0.5, "dp_epsilon": eps, "task": "LaMP_2", "method": method, "utility": u,
                "utility_ci": ci, "primary_metric": "accuracy", "higher_is_better": True}

    rows = [row("base", e, 0.2, [0.1, 0.3]) for e in (1.0, 8.0, "off")]
    rows += [row("cdcda", 1.0, 0.25, [0.2, 0.3]), row("cdcda", 8.0, 0.3, [0.22, 0.38]), row("cdcda", "off", 0.4)]
    fig = plot_utility_vs_epsilon({"reference_share_fraction": 0.5, "rows": rows})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["1", "8", "∞ (off)"]
    # The base is one horizontal line (its value), not a series over ε; CDCDA carries error bars.
    floors = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == pytest.approx([0.2, 0.2])]
    assert len(floors) == 1
    assert any(c.__class__.__name__ == "LineCollection" for c in ax.collections)  # the error bars
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---------------------------------------------------------------------- canary exposure in the sweep
def test_canary_plan_parsing_and_errors() -> None:
    spec = load_sweep(PRIVACY_TINY, grid=["canaries=3", "canary-candidates=64"])
    assert spec.canaries.canaries == 3 and spec.canaries.candidates == 64 and spec.canaries.enabled
    assert not load_sweep(PRIVACY_TINY, grid=["canaries=0"]).canaries.enabled
    for bad, match in ((["canaries=-1"], ">= 0"), (["canaries=two"], "whole number"),
                       (["canaries=1.5"], "whole number"), (["canary-candidates=1"], ">= 2")):
        with pytest.raises(SweepError, match=match):
            load_sweep(PRIVACY_TINY, grid=bad)


def test_exposure_is_attached_to_local_rows_only() -> None:
    from cdcda_fl.sweeps.sweep_canaries import attach_exposure, audit_settings

    assert audit_settings([4.0, None, 8.0]) == [None, 8.0, 4.0] and audit_settings([1.0]) == [None, 1.0]
    report = {"summary": [{"task": "LaMP_2", "dp_epsilon": "8.0", "exposure_planted": {"mean": 2.5, "lo": 2.0,
                                                                                        "hi": 3.0},
                           "exposure_control": {"mean": 1.4, "lo": None, "hi": None}}]}
    rows = [{"task": "LaMP_2", "dp_epsilon": 8.0, "method": m} for m in ("base", "local", "cdcda")]
    rows.append({"task": "LaMP_2", "dp_epsilon": "off", "method": "local"})
    attach_exposure(rows, report)
    assert [r["exposure"] for r in rows] == [None, 2.5, None, None]
    assert rows[1]["exposure_ci"] == [2.0, 3.0] and rows[1]["exposure_control"] == 1.4
    attach_exposure(rows, None)  # no audit: the keys exist, empty
    assert all(r["exposure"] is None and r["exposure_ci"] is None for r in rows)


def test_sweep_runs_a_real_canary_audit_and_reuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fake points, real audit (tiny-random): exposure lands in sweep.json, the CSV, the table and a plot."""
    spec = load_sweep(PRIVACY_TINY, grid=["dp-epsilon=4", "share-fraction=1", "canaries=1", "canary-candidates=8"])
    calls: list[str] = []
    sweep = run_sweep(spec, tmp_path, runner=fake_runner(calls))
    audit = sweep["canary_audit"]
    assert audit["settings"] == ["off", 4.0] and audit["file"] == "canaries/canaries.json"
    assert {s["dp_epsilon"] for s in audit["summary"]} == {"off", "4.0"}  # off audited though not in the grid
    report = json.loads((tmp_path / "canaries" / "canaries.json").read_text())
    assert all(u["canaries_shared"] == 0 for u in report["users"])
    rows = {r["method"]: r for r in sweep["rows"]}
    assert 0.0 <= rows["local"]["exposure"] <= 3.0 and rows["local"]["exposure_control"] is not None
    assert rows["cdcda"]["exposure"] is None and rows["base"]["exposure"] is None
    assert "plots/exposure_vs_epsilon.png" in sweep["plots"]
    assert (tmp_path / "plots" / "exposure_vs_epsilon.png").stat().st_size > 5000
    with (tmp_path / "sweep.csv").open() as fh:
        assert "exposure" in next(csv.DictReader(fh))
    print_sweep(sweep)
    printed = capsys.readouterr().out
    assert "exposure local" in printed and "no grid point" in printed  # the off reference is printed too

    def must_not_audit(*args, **kwargs):
        raise AssertionError("the finished audit must be reused")

    again = run_sweep(spec, tmp_path, runner=fake_runner(calls), auditor=must_not_audit)
    assert again["canary_audit"]["summary"] == audit["summary"]
    seen: list[list] = []

    def failing(cfg, settings, **kwargs):
        seen.append(settings)
        raise RuntimeError("audit crashed")

    more = load_sweep(PRIVACY_TINY, grid=["dp-epsilon=4", "share-fraction=1", "canaries=2"])
    broken = run_sweep(more, tmp_path, runner=fake_runner(calls), auditor=failing)  # another plan: audits again
    assert seen == [[None, 4.0]] and broken["canary_audit"] is None and broken["complete"]
    assert "plots/exposure_vs_epsilon.png" not in broken["plots"]
    assert not (tmp_path / "plots" / "exposure_vs_epsilon.png").exists()  # no stale plot of the old audit

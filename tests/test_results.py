"""Reports with uncertainty: results.json intervals from per-user metrics, terminal and Markdown tables."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from cdcda_fl.evaluation.metrics import score
from cdcda_fl.reporting.paper_table import paper_table
from cdcda_fl.reporting.results import print_table, write_plots
from cdcda_fl.server.aggregate import aggregate
from cdcda_fl.server.runs import ResultStore

# Per user: gold ratings and the predictions of local-only and CDCDA (LaMP-3, MAE: lower is better).
USERS = {
    "u0": (["1", "2", "3", "4"], {"local": ["2", "2", "3", "5"], "cdcda": ["1", "2", "3", "5"]}),
    "u1": (["5", "5", "4", "4"], {"local": ["3", "4", "4", "4"], "cdcda": ["4", "4", "4", "4"]}),
    "u2": (["2", "3", "2", "3"], {"local": ["2", "3", "2", "3"], "cdcda": ["2", "3", "2", "3"]}),
    "u3": (["3", "3", "4", "1"], {"local": ["5", "5", "4", "3"], "cdcda": ["4", "4", "4", "2"]}),
}


def _write_users(out: Path, *, with_predictions: bool) -> None:
    store = ResultStore(out)
    for uid, (golds, preds) in USERS.items():
        ids = [f"{uid}-q{i}" for i in range(len(golds))]
        gold_map = dict(zip(ids, golds))
        methods = {}
        for m, p in preds.items():
            pred_map = dict(zip(ids, p))
            methods[m] = {"metrics": score("LaMP_3", gold_map, pred_map)}
            if with_predictions:
                methods[m]["predictions"] = pred_map
        store.write({"task": "LaMP_3", "user_id": uid, "n_queries": len(ids), "golds": gold_map,
                     "n_synthetic_used": 3, "methods": methods})


def _cfg(out: Path) -> dict:
    return {"out-dir": str(out), "methods": "local,cdcda", "tasks": "LaMP_3", "seed": 0}


@pytest.mark.parametrize("with_predictions", [True, False])
def test_aggregate_writes_intervals_from_per_user_metrics(tmp_path: Path, with_predictions: bool) -> None:
    _write_users(tmp_path, with_predictions=with_predictions)
    results = aggregate(_cfg(tmp_path))
    stored = json.loads((tmp_path / "results.json").read_text())
    block = stored["intervals"]["LaMP_3"]
    assert block["metric"] == "mae" and block["higher_is_better"] is False and block["level"] == 0.95
    assert block["resamples"] >= 2000
    # Per-user MAE: local 0.5, 0.75, 0, 1.5 -> pooled 0.6875; CDCDA 0.25, 0.5, 0, 0.75 -> 0.375.
    assert block["per_user"]["local"] == {"u0": 0.5, "u1": 0.75, "u2": 0.0, "u3": 1.5}
    assert block["methods"]["local"]["mean"] == pytest.approx(0.6875)
    assert block["methods"]["cdcda"]["mean"] == pytest.approx(0.375)
    assert block["methods"]["cdcda"]["n_users"] == 4
    lo, hi = block["methods"]["local"]["lo"], block["methods"]["local"]["hi"]
    assert 0.0 <= lo < 0.6875 < hi <= 1.5
    cmp = block["cdcda_vs_local"]
    assert cmp["diff"]["mean"] == pytest.approx(-0.3125)  # CDCDA's MAE minus local's
    assert cmp["gain"]["mean"] == pytest.approx(0.3125)  # positive: CDCDA is better
    assert cmp["gain"]["lo"] == pytest.approx(-cmp["diff"]["hi"])
    assert (cmp["wins"], cmp["ties"], cmp["losses"]) == (3, 1, 0)
    if with_predictions:  # the pooled table value and the interval's point agree
        row = next(r for r in results["table"] if r["method"] == "local")
        assert row["metrics"]["mae"] == pytest.approx(block["methods"]["local"]["mean"])


def test_reports_show_intervals_gain_and_wtl(tmp_path: Path) -> None:
    _write_users(tmp_path, with_predictions=True)
    results = aggregate(_cfg(tmp_path))
    block = results["intervals"]["LaMP_3"]
    md = paper_table(results)
    lo, hi = block["methods"]["local"]["lo"], block["methods"]["local"]["hi"]
    assert f"0.688 [{lo:.2f}, {hi:.2f}]" in md
    gain = block["cdcda_vs_local"]["gain"]
    assert f"| LaMP-3 | mae ↓ | +0.312 [{gain['lo']:+.3f}, {gain['hi']:+.3f}] | 3/1/0 |" in md
    assert "percentile-bootstrap interval over users" in md
    buffer = io.StringIO()
    print_table(results, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "Δ CDCDA vs local" in text and "3/1/0" in text and f"[{lo:.2f}, {hi:.2f}]" in text
    assert "[lo, hi]: 95% percentile-bootstrap" in text
    assert write_plots(tmp_path, results)


def test_reports_without_intervals_still_render() -> None:
    """results.json written before intervals existed (or a 1-user run) renders without them."""
    results = {"table": [{"task": "LaMP_2", "method": "local", "metrics": {"accuracy": 0.5, "f1": 0.4},
                          "n_users": 1, "n_queries": 8, "epsilon": None, "mia_auc": None, "train_seconds": 0.0,
                          "n_synthetic": 0.0}],
               "intervals": {"LaMP_2": {"methods": {"local": {"mean": 0.5, "lo": None, "hi": None, "n_users": 1}},
                                        "level": 0.95, "resamples": 4000, "seed": 0}}}
    md = paper_table(results)
    assert "**0.500** |" in md and "Δ CDCDA" not in md
    buffer = io.StringIO()
    print_table({"table": results["table"]}, Console(file=buffer, width=200))
    assert "0.500" in buffer.getvalue()


def test_readme_section_rebuilds_table_with_intervals(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "experiments" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("update_readme", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _write_users(tmp_path, with_predictions=True)
    cfg = {**_cfg(tmp_path), "device.model": "d", "cloud.model": "c", "train.steps": 1, "synthetic.per-user": 2,
           "consent.share-fraction": 0.5}
    aggregate(cfg, {"timing": {"train": 3.0}})
    (tmp_path / "table.md").write_text("stale table without intervals\n")
    text = "\n".join(module.demo_section(tmp_path, "Quality run", "cdcda run q.toml"))
    assert text.startswith("Quality run (`cdcda run q.toml`, 4 users on LaMP_3")
    assert "stale" not in text and "0.688 [" in text and "| 3/1/0 | better | 4 |" in text
    assert module.main(["--demo", str(tmp_path / "missing")]) == 1
    (tmp_path / "summary.md").write_text("| Task | x |\n|---|---|\n| LaMP-4 | 1 |\n")
    assert "| LaMP-4 | 1 |" in "\n".join(module.realtext_section(tmp_path))


def test_unscorable_method_row_is_reported_not_dropped_silently(tmp_path: Path) -> None:
    _write_users(tmp_path, with_predictions=True)
    store = ResultStore(tmp_path)
    broken = json.loads(store.path("LaMP_3", "u0").read_text())
    broken["methods"]["cdcda"]["predictions"]["stray-q"] = "3"  # a prediction with no gold
    store.write(broken)
    results = aggregate(_cfg(tmp_path))
    assert {r["method"] for r in results["table"]} == {"local"}
    (problem,) = results["problems"]
    assert problem["method"] == "cdcda" and "stray-q" in problem["detail"]
    buf = io.StringIO()
    print_table(results, Console(file=buf, width=200))
    assert "cdcda: not scored" in buf.getvalue()



def _with_cloud(out: Path, errors: dict[str, str | None], used: dict[str, bool]) -> None:
    """Add the server's cloud accounting (and a device decision) to every user of _write_users."""
    store = ResultStore(out)
    for i, uid in enumerate(USERS):
        result = json.loads(store.path("LaMP_3", uid).read_text())
        err = errors.get(uid)
        result["cloud"] = {"n_records": 0 if err else 3, "error": err,
                           "counts": {"generated": 0 if err else 5 + i, "accepted": 0 if err else 3,
                                      **({} if err else {"rejected_near_copy": 1 + i, "rejected_label_quota": 1})}}
        if uid in used:
            result["synthetic_decision"] = {"rule": "r", "used_synthetic": used[uid]}
        store.write(result)


def test_cloud_accounting_reaches_results_json_and_both_reports(tmp_path: Path) -> None:
    _write_users(tmp_path, with_predictions=True)
    _with_cloud(tmp_path, {"u3": "BackendError: HTTP 503"}, {"u0": True, "u1": False, "u2": True})
    aggregate(_cfg(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["per_user"]["LaMP_3"]["u0"]
    assert entry["cloud"] == {"n_records": 3, "error": None,
                              "counts": {"generated": 5, "accepted": 3, "rejected_near_copy": 1, "rejected_label_quota": 1}}
    assert entry["synthetic_decision"]["used_synthetic"] is True and entry["metrics"]["cdcda"]["mae"] == 0.25
    assert results["per_user"]["LaMP_3"]["u3"]["cloud"]["error"] == "BackendError: HTTP 503"
    block = results["cloud"]["LaMP_3"]
    assert (block["users"], block["records_written"], block["records_accepted"], block["records_sent"]) == (4, 18, 9, 9)
    assert block["rejected"] == {"near_copy": 6, "label_quota": 3}
    assert (block["users_with_error"], block["outage"]) == (1, False)
    assert (block["decisions"], block["used_synthetic"], block["fell_back"]) == (3, 2, 1)
    md = paper_table(results)
    assert "| LaMP-3 | 18 | 9 | 9 | near_copy 6, label_quota 3 | 1/4 | 1/3 |" in md
    assert "**0.375 [" in md  # a normal CDCDA cell: no outage
    buffer = io.StringIO()
    print_table(results, Console(file=buffer, width=250))
    text = buffer.getvalue()
    assert "LaMP_3 cloud: 18 synthetic records written, 9 accepted, 9 sent" in text
    assert "cloud errors: 1 of 4 users; devices fell back to local-only: 1 of 3" in text


def test_full_cloud_outage_is_said_in_words_not_shown_as_a_cdcda_row(tmp_path: Path) -> None:
    _write_users(tmp_path, with_predictions=True)
    _with_cloud(tmp_path, {uid: "BackendError: connection refused" for uid in USERS}, {})
    results = aggregate(_cfg(tmp_path))
    assert results["cloud"]["LaMP_3"]["outage"] is True
    md = paper_table(results)
    row = next(line for line in md.splitlines() if line.startswith("| LaMP-3 (product rating)"))
    assert "cloud outage (4/4 users): no synthetic data" in row and "0.375" not in row
    assert "**0.688 [" in row  # local-only is then the best private method
    assert "not compared: cloud outage" in md and "| 3/1/0 |" not in md
    assert "4/4 (**cloud outage**)" in md
    buffer = io.StringIO()
    print_table(results, Console(file=buffer, width=250))
    text = buffer.getvalue()
    assert "CDCDA: cloud outage" in text and "all 4 users got a cloud error" in text and "connection refused" in text
    assert "0.375" not in text and "Δ CDCDA vs local" not in text.split("[lo, hi]")[0]


def _cloud_results(device: str, cloud: str, **extra) -> dict:
    rows = [{"task": "LaMP_2", "method": m, "metrics": {"accuracy": v}, "n_users": 2, "n_queries": 4, "epsilon": None,
             "mia_auc": None, "train_seconds": 0.0, "n_synthetic": 0.0} for m, v in (("local", 0.5), ("cloud", 0.3))]
    return {"table": rows, "config": {"device.model": device, "cloud.model": cloud}, **extra}


@pytest.mark.parametrize(("device", "cloud", "relation"), [
    ("smollm2-135m", "gemma3-270m", "larger"),
    ("smollm2-135m", "qwen2.5-coder-0.5b", "larger"),
    ("smollm2-135m", "smollm2-135m", "same"),
    ("tiny-random", "tiny-random", "same"),
    ("gemma3-270m", "/models/SmolLM2-135M-Instruct", "smaller"),
    ("smollm2-135m", "some/unsized-model", "unknown"),
])
def test_cloud_row_is_an_upper_bound_only_when_the_cloud_model_is_larger(device: str, cloud: str, relation: str) -> None:
    from cdcda_fl.reporting.results import cloud_method_label, cloud_vs_device

    results = _cloud_results(device, cloud)
    assert cloud_vs_device(results) == relation
    md = paper_table(results)
    buffer = io.StringIO()
    print_table(results, Console(file=buffer, width=250))
    text = buffer.getvalue()
    assert cloud_method_label(results) in text
    if relation == "larger":
        assert "the non-private upper bound" in md and "not an upper bound" not in md + text
        assert "| Cloud LLM † |" in md
    else:
        assert "upper bound." not in md.replace("not an upper bound", "").replace("Not an upper bound", "")
        assert "not an upper bound" in text
    if relation in ("same", "smaller"):
        assert "| Cloud model (not an upper bound) † |" in md
        assert ("same size as device" if relation == "same" else "smaller than device") in text


def test_recorded_parameter_counts_beat_the_names() -> None:
    from cdcda_fl.reporting.results import cloud_vs_device

    results = _cloud_results("smollm2-135m", "gemma3-270m",
                             models={"device": {"params": 270_000_000}, "cloud": {"params": 268_000_000}})
    assert cloud_vs_device(results) == "same"
    assert "not an upper bound" in paper_table(results)


def test_rate_and_eta_text() -> None:
    from cdcda_fl.core.progress import rate_eta

    assert rate_eta(0, 10, 5.0, "users") == "0/10 users"
    assert rate_eta(2, 10, 60.0, "users") == "2/10 users, 2.0 users/min, ETA 4m00s"
    assert rate_eta(10, 10, 5.0, "batches") == "10/10 batches, 2.0 batches/s"
    assert rate_eta(1, 200, 60.0, "users").endswith("ETA 3h19m")


def test_dp_fall_backs_to_the_base_are_counted_per_task() -> None:
    from cdcda_fl.server.aggregate import cloud_summary, user_entry

    def result(fell_back: bool) -> dict:
        return {"user_id": "u", "task": "LaMP_2", "cloud": {"n_records": 2, "counts": {"generated": 3, "accepted": 2}},
                "methods": {"cdcda": {"metrics": {"accuracy": 0.5}, "dp": {"chosen": None if fell_back else "public-only",
                                                                            "fell_back": fell_back, "epsilon": 8.0}}}}

    block = cloud_summary([user_entry(result(True)), user_entry(result(False)), user_entry(result(True))])
    assert (block["dp_decisions"], block["dp_fell_back"]) == (3, 2)
    from cdcda_fl.reporting.results import cloud_summary_text

    assert "CDCDA+DP answered with the base model: 2 of 3" in cloud_summary_text("LaMP_2", block)


def test_readme_canary_section_tables_and_plots_the_audit(tmp_path: Path) -> None:
    import importlib.util
    import json

    script = Path(__file__).resolve().parent.parent / "experiments" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("update_readme", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def stat(mean, lo=None, hi=None):
        return {"mean": mean, "lo": lo, "hi": hi}

    summary = [{"task": "LaMP_3", "dp_epsilon": e, "n_users": 8, "exposure_planted": stat(p, p - 0.3, p + 0.3),
                "exposure_control": stat(c), "max_exposure": 7.0, "mia_auc": stat(a), "epsilon": eps}
               for e, p, c, a, eps in (("off", 4.8, 3.5, 0.82, None), ("8.0", 2.7, 2.1, 0.55, 7.98))]
    report = {"config": {"tasks": "LaMP_3", "device.model": "smollm2-135m"}, "canaries_per_user": 2,
              "controls_per_user": 2, "candidates": 128, "summary": summary}
    (tmp_path / "canaries.json").write_text(json.dumps(report))
    text = "\n".join(module.canary_section(tmp_path, images=tmp_path / "img"))
    assert "8 users per task on LaMP_3" in text and "max log2 R = 7" in text
    assert "| LaMP_3 | off | 4.80 [4.50, 5.10] | 3.50 | 0.82 | – | 8 |" in text
    assert "| LaMP_3 | ε = 8 | 2.70 [2.40, 3.00] | 2.10 | 0.55 | 7.98 | 8 |" in text
    assert (tmp_path / "img" / module.CANARY_PLOT).stat().st_size > 5000
    assert module.main(["--canaries", str(tmp_path / "missing")]) == 1


def test_synthetic_count_not_reported_is_not_shown_as_zero(tmp_path: Path) -> None:
    """Real devices report at `metrics` level, without n_synthetic_used: the lab's CDCDA row said
    "synth/user 0.0" while the devices had used the cloud's records (issue 34)."""
    from cdcda_fl.privacy.report import filter_result

    _write_users(tmp_path, with_predictions=True)
    store = ResultStore(tmp_path)
    for uid in USERS:
        path = store.path("LaMP_3", uid)
        path.write_text(json.dumps(filter_result(json.loads(path.read_text()), "metrics")))
    results = aggregate(_cfg(tmp_path))
    row = next(r for r in results["table"] if r["method"] == "cdcda")
    assert row["n_synthetic"] is None
    console = Console(file=io.StringIO(), width=200)
    print_table(results, console=console)
    text = console.file.getvalue()
    assert "n/r" in text and "not reported" in text
    _write_users(tmp_path, with_predictions=True)  # predictions level: the count is there again
    assert next(r for r in aggregate(_cfg(tmp_path))["table"] if r["method"] == "cdcda")["n_synthetic"] == 3.0


def test_family_table_compares_per_user_and_federated_methods_paired() -> None:
    """Issue 31: which family wins where, from the run's paired comparisons (no typed number)."""
    from cdcda_fl.server.aggregate import PAIRS
    from cdcda_fl.reporting.paper_table import family_table
    from cdcda_fl.evaluation.stats import task_intervals

    def intervals(per_user: dict) -> dict:  # as aggregate computes them: one query per user here
        scored = {m: {u: (v, 1.0) for u, v in values.items()} for m, values in per_user.items()}
        return task_intervals(scored, "rouge-1", lower_is_better=False, pairs=PAIRS)

    users = [f"u{i}" for i in range(6)]
    local = dict(zip(users, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    per_user = {"local": local, "cdcda": dict(local),
                "fedavg": {u: v - 0.1 for u, v in local.items()},  # uniformly worse: significant
                "fedavg+local": {u: v + (0.05 if i % 2 else -0.05) for i, (u, v) in enumerate(local.items())}}
    results = {"intervals": {"LaMP_5": intervals(per_user)}}
    lines = family_table(results, ["LaMP_5"])
    row = next(line for line in lines if line.startswith("| LaMP-5"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "**-0.100 [-0.100, -0.100]** 0/0/6"  # FedAvg − local
    assert cells[3].endswith(" 3/0/3") and not cells[3].startswith("**")  # FedAvg + local − local: a wash
    assert cells[5] == "–" and cells[6] == "6"  # no cdcda+fedavg in this run
    # the generated sentence: FedAvg alone is significantly worse than local-only here
    assert lines[-1] == "- LaMP-5: the per-user family is ahead (FedAvg − local -0.100 [-0.100, -0.100])."
    assert family_table({"intervals": {"LaMP_5": intervals({"local": local, "cdcda": local})}}, ["LaMP_5"]) == []

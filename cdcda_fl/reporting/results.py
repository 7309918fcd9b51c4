"""Reports a person can read: the task × method table, CSV (in runs.py), and PNG plots."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cdcda_fl.core.atomic import atomic_path
from cdcda_fl.core.config import CLOUD_DATA_METHODS, METHODS
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER, primary_metric
from cdcda_fl.evaluation.stats import format_interval
from cdcda_fl.core.run_config import run_config

METHOD_LABELS = {"base": "base zero-shot", "rag": "RAG (BM25)", "local": "local LoRA",
                 "cdcda": "CDCDA", "cloud": "cloud (not private)", "fedavg": "FedAvg LoRA",
                 "fedavg+local": "FedAvg + local", "cdcda+fedavg": "CDCDA from FedAvg"}
GAIN_LABEL = "Δ CDCDA vs local"
#: paired comparisons the reports show, in order: results.json "intervals" key -> row label
COMPARISONS = {"cdcda_vs_local": GAIN_LABEL, "cdcda_vs_fedavg+local": "Δ CDCDA vs FedAvg + local"}
_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([kmbt])(?![A-Za-z0-9])", re.IGNORECASE)
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _model_name(results: Mapping[str, Any], role: str) -> str | None:
    """The device's or the cloud's model name: results.json ``models.<role>.name``, else the config."""
    info = (results.get("models") or {}).get(role) or {}
    name = str(info.get("name") or (results.get("config") or {}).get(f"{role}.model") or "").strip()
    return name or None


def model_params(results: Mapping[str, Any], role: str) -> float | None:
    """Parameter count of the ``device`` or ``cloud`` model: ``models.<role>.params`` if the run
    recorded it, else the size in its name (``smollm2-135m`` -> 135e6, ``Qwen2.5-Coder-0.5B`` -> 0.5e9)."""
    info = (results.get("models") or {}).get(role) or {}
    if info.get("params"):
        return float(info["params"])
    name = _model_name(results, role)
    found = _SIZE.findall(Path(name).name) if name else []
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * _SCALE[unit.lower()]


def cloud_vs_device(results: Mapping[str, Any]) -> str:
    """'larger', 'same', 'smaller' or 'unknown': is the cloud model larger than the device's?

    Parameter counts when both are known (recorded, or in the model names); else equal names mean
    'same'. Only 'larger' makes the cloud row an upper bound.
    """
    device, cloud = model_params(results, "device"), model_params(results, "cloud")
    if device and cloud:
        ratio = cloud / device
        return "larger" if ratio > 1.05 else "smaller" if ratio < 1 / 1.05 else "same"
    d_name, c_name = _model_name(results, "device"), _model_name(results, "cloud")
    if d_name and c_name and d_name.lower() == c_name.lower():
        return "same"
    return "unknown"


def cloud_method_label(results: Mapping[str, Any]) -> str:
    """The cloud row's label: an upper bound only when the cloud model is larger than the device's."""
    return {"larger": "cloud (not private): upper bound",
            "same": "cloud model (same size as device: not an upper bound)",
            "smaller": "cloud model (smaller than device: not an upper bound)",
            }.get(cloud_vs_device(results), "cloud model (not private; size vs device unknown: not an upper bound)")


def cloud_note(results: Mapping[str, Any]) -> str:
    """The † footnote of the paper table's cloud column."""
    relation = cloud_vs_device(results)
    d_name, c_name = _model_name(results, "device"), _model_name(results, "cloud")
    if relation == "larger":
        models = f" (`{c_name}`, larger than the device's `{d_name}`)" if c_name and d_name else ""
        return f"† Cloud LLM{models} with the whole profile retrieved: the non-private upper bound."
    why = {"same": "the same size as", "smaller": "smaller than"}.get(relation)
    if why:
        return (f"† Cloud model with the whole profile retrieved (not private). Not an upper bound: the cloud model "
                f"`{c_name}` is {why} the device model `{d_name}`.")
    return ("† Cloud model with the whole profile retrieved (not private). Not labelled an upper bound: the run "
            "does not show that the cloud model is larger than the device model.")


def cloud_block(results: Mapping[str, Any], task: str) -> dict[str, Any] | None:
    """The task's cloud accounting (results.json ``cloud``), if the cloud wrote for any user."""
    block = (results.get("cloud") or {}).get(task)
    return block if block and block.get("users") else None


def cloud_outage(results: Mapping[str, Any], task: str) -> bool:
    """Every user of the task got a cloud error: CDCDA there is local-only training, not CDCDA."""
    block = cloud_block(results, task)
    return bool(block and block.get("outage"))


def outage_text(block: Mapping[str, Any]) -> str:
    error = next(iter(block.get("errors") or {}), "")
    return (f"cloud outage: all {block['users']} users got a cloud error, no synthetic data (CDCDA = local-only)"
            + (f"; e.g. {error[:120]}" if error else ""))


def cloud_summary_text(task: str, block: Mapping[str, Any]) -> str:
    """One line: records written/accepted, rejections by reason, cloud errors, device fall-backs."""
    rejected = ", ".join(f"{k} {v}" for k, v in list(block.get("rejected", {}).items())[:4])
    text = (f"{task} cloud: {block['records_written']} synthetic records written, {block['records_accepted']} "
            f"accepted, {block['records_sent']} sent" + (f" (rejected: {rejected})" if rejected else "")
            + f"; cloud errors: {block['users_with_error']} of {block['users']} users")
    if block.get("decisions"):
        text += f"; devices fell back to local-only: {block['fell_back']} of {block['decisions']}"
    if block.get("dp_decisions"):
        text += f"; CDCDA+DP answered with the base model: {block['dp_fell_back']} of {block['dp_decisions']}"
    if block.get("outage"):
        text += f". {outage_text(block)}"
    return text


def steps_text(results: Mapping[str, Any], task: str) -> str:
    """Which training budget the comparison shows: mean optimizer steps per user of each trained method."""
    steps = {r["method"]: r.get("train_steps") for r in results.get("table", []) if r["task"] == task
             and r.get("train_steps")}
    if not steps:
        return ""
    rc = run_config(results.get("config") or {})
    dp_auto = rc.dp.enabled and rc.dp.auto
    if dp_auto:
        how = ("DP-SGD steps of the few-record plans plus CDCDA's noise-free steps on the cloud's records "
               "(docs/dp.md)")
    else:
        how = ("CDCDA's budget is stretched so real records get as many updates as in local-only training "
               "(train.equal-real-exposure)" if rc.train.equal_real_exposure else "equal step budgets")
    parts = ", ".join(f"{METHOD_LABELS.get(m, m)} {v:.1f}" for m, v in steps.items())
    if any(m.startswith("fedavg") or m.endswith("fedavg") for m in steps):
        how += (f"; FedAvg rows: {rc.fedavg.rounds} rounds × {rc.fedavg.local_steps} local steps "
                "on the shared adapter, plus the user's own steps for +local / CDCDA")
    return f"{task} training steps per user: {parts}; {how}."


def table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(results.get("table", []))


def method_interval(results: Mapping[str, Any], task: str, method: str) -> tuple[float, float] | None:
    """(lo, hi) of the method's primary metric over users (``results.json`` "intervals"), if there is one."""
    entry = results.get("intervals", {}).get(task, {}).get("methods", {}).get(method)
    if not entry or entry.get("lo") is None or entry.get("hi") is None:
        return None
    return float(entry["lo"]), float(entry["hi"])


def comparison(results: Mapping[str, Any], task: str, key: str = "cdcda_vs_local") -> dict[str, Any] | None:
    """The task's paired CDCDA-vs-local block (gain interval, win/tie/loss), if both methods were scored
    (``key``: another pair of :data:`COMPARISONS`)."""
    block = results.get("intervals", {}).get(task, {}).get(key)
    return block if block and block.get("n_users") else None


def comparisons(results: Mapping[str, Any], task: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, block) of every paired comparison of :data:`COMPARISONS` the task has."""
    return [(label, b) for key, label in COMPARISONS.items() if (b := comparison(results, task, key))]


def value_with_interval(value: float, interval: tuple[float, float] | None) -> str:
    """'0.583 [0.41, 0.75]': the pooled value and its 95 % interval over users."""
    return format_interval((value, *(interval or (None, None))), ci_digits=2)


def gain_text(block: Mapping[str, Any]) -> str:
    """'+0.042 [-0.010, +0.090]': CDCDA's paired gain over local-only (positive = CDCDA better)."""
    gain = block["gain"]
    return format_interval((gain["mean"], gain["lo"], gain["hi"]), signed=True)


def wtl_text(block: Mapping[str, Any]) -> str:
    return f"{block['wins']}/{block['ties']}/{block['losses']}"


def interval_note(results: Mapping[str, Any]) -> str:
    """One sentence saying how the intervals were computed (level, resamples, tie tolerance)."""
    blocks = [b for b in results.get("intervals", {}).values() if b.get("methods")]
    if not blocks:
        return ""
    b = blocks[0]
    tie = next((c["tie_tolerance"] for c in (v.get(k) for v in blocks for k in COMPARISONS) if c), None)
    text = (f"[lo, hi]: {b['level']:.0%} percentile-bootstrap interval over users ({b['resamples']} resamples, "
            f"seed {b['seed']}).")
    if tie is not None:
        other = "local" if any(v.get("cdcda_vs_local") for v in blocks) else "FedAvg + local"
        text += (f" Δ CDCDA vs {other}: the paired per-user difference, positive = CDCDA better (for MAE, "
                 f"{other} − CDCDA); "
                 f"W/T/L: users where CDCDA is better / within {tie:g} / worse.")
    if any(r.get("method") in CLOUD_DATA_METHODS and r.get("n_synthetic", 0) is None
           for r in results.get("table", [])):
        text += " synth/user n/r: not reported (the devices' report level carries no counts; see the cloud line)."
    return text


def _synthetic_cell(row: Mapping[str, Any]) -> str:
    """CDCDA rows: synthetic records used per user; ``n/r`` where no device reported it (report level)."""
    if row["method"] not in CLOUD_DATA_METHODS:
        return ""
    value = row.get("n_synthetic")
    return "n/r" if value is None else f"{value:.1f}"


def users_cell(row: Mapping[str, Any]) -> str:
    """'1 (+1 lower)': the users whose metrics the row shows, and those who finished but reported
    at a level that carries none (so a row never counts users it has no metrics from)."""
    lower = int(row.get("n_users_lower") or 0)
    return f"{row['n_users']}" + (f" (+{lower} lower)" if lower else "")


LOWER_NOTE = ("(+N lower): N more users finished but reported at a level without metrics "
              "(eval.report or the owner's report = none); they are not in the row's values.")


def print_table(results: Mapping[str, Any], console: Console | None = None) -> None:
    """Task × method, every metric of the task, best value per task/metric in bold.

    The primary metric carries its 95 % interval over users, and each task where both CDCDA and
    local-only were scored gets a row with CDCDA's paired gain over local-only and win/tie/loss.
    """
    console = console or Console(width=max(Console().width, 140))
    rows = table_rows(results)
    if not rows:
        console.print("[yellow]no results to show[/yellow]")
        return
    metric_names: list[str] = []
    for r in rows:
        for name in r["metrics"]:
            if name not in metric_names:
                metric_names.append(name)
    outages = {r["task"] for r in rows if cloud_outage(results, r["task"])}
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["method"] == "cdcda" and r["task"] in outages:  # not a CDCDA result: never "best"
            continue
        for name, value in r["metrics"].items():
            key = (r["task"], name)
            better = min if name in LOWER_IS_BETTER else max
            best[key] = better(best.get(key, value), value)
    table = Table(title="CDCDA-PLM results (per task; ↓ = lower is better; [95 % interval over users])")
    table.add_column("task")
    table.add_column("method")
    for name in metric_names:
        table.add_column(name + (" ↓" if name in LOWER_IS_BETTER else ""), justify="right")
    table.add_column("users", justify="right")
    table.add_column("ε", justify="right")
    table.add_column("synth/user", justify="right")
    table.add_column("W/T/L", justify="right")
    ordered = sorted(rows, key=lambda r: (r["task"], METHODS.index(r["method"]) if r["method"] in METHODS else 99))
    for i, r in enumerate(ordered):
        primary = primary_metric(r["task"])
        cells = []
        for name in metric_names:
            value = r["metrics"].get(name)
            if value is None:
                text = ""
            elif name == primary:
                text = value_with_interval(value, method_interval(results, r["task"], r["method"]))
            else:
                text = f"{value:.3f}"
            if value is not None and best.get((r["task"], name)) == value:
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        eps = r.get("epsilon")
        first = i == 0 or ordered[i - 1]["task"] != r["task"]
        label = cloud_method_label(results) if r["method"] == "cloud" else METHOD_LABELS.get(r["method"], r["method"])
        if r["method"] == "cdcda" and r["task"] in outages:  # said in words, not shown as a CDCDA row
            label = "[red]CDCDA: cloud outage[/red]"
            cells = [f"[red]{outage_text(cloud_block(results, r['task']))}[/red]" if j == 0 else ""
                     for j in range(len(metric_names))]
        table.add_row(r["task"] if first else "", label, *cells,
                      users_cell(r), "" if eps is None else ("∞" if eps == float("inf") else f"{eps:.2f}"),
                      _synthetic_cell(r), "")
        last_of_task = i == len(ordered) - 1 or ordered[i + 1]["task"] != r["task"]
        blocks = comparisons(results, r["task"]) if last_of_task and r["task"] not in outages else []
        for j, (gain_label, block) in enumerate(blocks):
            gain_cells = [gain_text(block) if name == primary else "" for name in metric_names]
            table.add_row("", f"[italic]{gain_label}[/italic]", *gain_cells, str(block["n_users"]), "", "",
                          f"{wtl_text(block)} ({block['verdict']})", end_section=j == len(blocks) - 1)
    console.print(table)
    if any(r.get("n_users_lower") for r in rows):
        console.print(LOWER_NOTE, markup=False, highlight=False)
    note = interval_note(results)
    if note:
        console.print(note, markup=False, highlight=False)  # "[lo, hi]" is text, not a style tag
    for task in sorted({r["task"] for r in rows}):
        budget = steps_text(results, task)
        if budget:
            console.print(budget, markup=False, highlight=False)
        cblock = cloud_block(results, task)
        if cblock:
            console.print(cloud_summary_text(task, cblock), style="red" if cblock.get("outage") else None,
                          markup=False, highlight=False)
    if results.get("skipped"):
        for method, why in results["skipped"].items():
            console.print(f"[yellow]{method} skipped:[/yellow] {why}")
    for problem in results.get("problems") or []:
        console.print(f"[red]{problem['task']} {problem['method']}: not scored[/red] "
                      f"({problem['error']}: {problem['detail'][:200]})", markup=True, highlight=False)
    if results.get("failures"):
        console.print(f"[red]{len(results['failures'])} failure(s)[/red] (see failures.jsonl):")
        for f in results["failures"][:10]:  # text from nodes: never read as Rich markup
            console.print(f"  {f['who']}: {f['reason'][:200]}", markup=False, highlight=False)


def write_plots(out_dir: str | Path, results: Mapping[str, Any]) -> list[str]:
    """One bar chart per task of its primary metric by method; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    tasks = sorted({r["task"] for r in rows})
    if not tasks:
        return []
    out = Path(out_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = primary_metric(task)
        task_rows = sorted((r for r in rows if r["task"] == task),
                           key=lambda r: METHODS.index(r["method"]) if r["method"] in METHODS else 99)
        names = [r["method"] for r in task_rows]
        values = [r["metrics"][metric] for r in task_rows]
        colors = ["#d62728" if n == "cdcda" else "#7f7f7f" if n == "cloud" else "#1f77b4" for n in names]
        # 95 % intervals over users as error bars (none where a method has fewer than two users).
        spans = [method_interval(results, task, n) for n in names]
        yerr = [[max(0.0, v - s[0]) if s else 0.0 for v, s in zip(values, spans)],
                [max(0.0, s[1] - v) if s else 0.0 for v, s in zip(values, spans)]]
        ax.bar(names, values, color=colors, yerr=yerr if any(spans) else None, capsize=3)
        ax.set_title(f"{task}: {metric}{' (lower is better)' if metric in LOWER_IS_BETTER else ''}", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = out / "methods.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [str(path)]

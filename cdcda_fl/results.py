"""Reports a person can read: the task × method table, CSV (in runs.py), and PNG plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cdcda_fl.config import METHODS
from cdcda_fl.metrics import LOWER_IS_BETTER

METHOD_LABELS = {"base": "base zero-shot", "rag": "RAG (BM25)", "local": "local LoRA",
                 "cdcda": "CDCDA", "cloud": "cloud (not private)"}


def table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(results.get("table", []))


def print_table(results: Mapping[str, Any], console: Console | None = None) -> None:
    """Task × method, every metric of the task, best value per task/metric in bold."""
    console = console or Console(width=max(Console().width, 120))
    rows = table_rows(results)
    if not rows:
        console.print("[yellow]no results to show[/yellow]")
        return
    metric_names: list[str] = []
    for r in rows:
        for name in r["metrics"]:
            if name not in metric_names:
                metric_names.append(name)
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        for name, value in r["metrics"].items():
            key = (r["task"], name)
            better = min if name in LOWER_IS_BETTER else max
            best[key] = better(best.get(key, value), value)
    table = Table(title="CDCDA-PLM results (per task; ↓ = lower is better)")
    table.add_column("task")
    table.add_column("method")
    for name in metric_names:
        table.add_column(name + (" ↓" if name in LOWER_IS_BETTER else ""), justify="right")
    table.add_column("users", justify="right")
    table.add_column("ε", justify="right")
    table.add_column("synth/user", justify="right")
    last_task = None
    for r in sorted(rows, key=lambda r: (r["task"], METHODS.index(r["method"]) if r["method"] in METHODS else 99)):
        cells = []
        for name in metric_names:
            value = r["metrics"].get(name)
            text = "" if value is None else f"{value:.3f}"
            if value is not None and best.get((r["task"], name)) == value:
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        eps = r.get("epsilon")
        table.add_row("" if r["task"] == last_task else r["task"], METHOD_LABELS.get(r["method"], r["method"]), *cells,
                      str(r["n_users"]), "" if eps is None else ("∞" if eps == float("inf") else f"{eps:.2f}"),
                      f"{r['n_synthetic']:.1f}" if r["method"] == "cdcda" else "")
        last_task = r["task"]
    console.print(table)
    if results.get("skipped"):
        for method, why in results["skipped"].items():
            console.print(f"[yellow]{method} skipped:[/yellow] {why}")
    if results.get("failures"):
        console.print(f"[red]{len(results['failures'])} failure(s)[/red] (see failures.jsonl):")
        for f in results["failures"][:10]:
            console.print(f"  {f['who']}: {f['reason'][:200]}")


def write_plots(out_dir: str | Path, results: Mapping[str, Any]) -> list[str]:
    """One bar chart per task of its primary metric by method; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cdcda_fl.metrics import primary_metric

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
        ax.bar(names, values, color=colors)
        ax.set_title(f"{task}: {metric}{' (lower is better)' if metric in LOWER_IS_BETTER else ''}", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = out / "methods.png"
    tmp = out / ".methods.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return [str(path)]


PAPER_COLUMNS = ("base", "rag", "local", "cdcda", "cloud")
PAPER_LABELS = {"base": "Base", "rag": "RAG", "local": "Local LoRA", "cdcda": "CDCDA", "cloud": "Cloud LLM †"}


def paper_table(results: Mapping[str, Any]) -> str:
    """The table as papers lay it out: one row per task (its primary metric), one column per method.

    A Markdown string, so it can be pasted into a README or paper draft. Bold marks the best
    *private* method per task: the cloud column is the non-private upper bound and is never bold,
    so it cannot hide whether CDCDA beats the methods it actually competes with.
    """
    from cdcda_fl.data.tasks import TASK_NAMES, get_task
    from cdcda_fl.metrics import primary_metric

    rows = table_rows(results)
    by_key = {(r["task"], r["method"]): r for r in rows}
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (TASK_NAMES.index(t) if t in TASK_NAMES else 99, t))
    lines = ["| Task | Metric | " + " | ".join(PAPER_LABELS[m] for m in PAPER_COLUMNS) + " | Users |",
             "|---|---|" + "---:|" * len(PAPER_COLUMNS) + "---:|"]
    eps_values: list[float] = []
    for task in tasks:
        metric = primary_metric(task)
        lower = metric in LOWER_IS_BETTER
        values = {m: by_key[(task, m)]["metrics"].get(metric) for m in PAPER_COLUMNS if (task, m) in by_key}
        private = [v for m, v in values.items() if m != "cloud" and v is not None]
        best = (min(private) if lower else max(private)) if private else None
        cells = []
        for m in PAPER_COLUMNS:
            v = values.get(m)
            text = "–" if v is None else f"{v:.3f}"
            if v is not None and m != "cloud" and v == best:
                text = f"**{text}**"
            cells.append(text)
        n_users = max((r["n_users"] for r in rows if r["task"] == task), default=0)
        title = get_task(task).title
        lines.append(f"| {task.replace('_', '-')} ({title}) | {metric} {'↓' if lower else '↑'} | "
                     + " | ".join(cells) + f" | {n_users} |")
        eps_values += [float(r["epsilon"]) for r in rows if r["task"] == task and r.get("epsilon") is not None]
    notes = ["", "Bold: best private method per task. † Cloud LLM with the whole profile retrieved: the non-private "
             "upper bound. –: method not run or skipped. ↑/↓: higher/lower is better."]
    if eps_values:
        notes.append(f"Local LoRA and CDCDA trained with DP-SGD, ε ≤ {max(eps_values):.2f} per user.")
    return "\n".join(lines + notes) + "\n"


def write_paper_table(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write :func:`paper_table` to ``OUT/table.md`` (atomically) and return the path."""
    path = Path(out_dir) / "table.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(paper_table(results), encoding="utf-8")
    tmp.replace(path)
    return path

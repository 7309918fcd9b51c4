"""The results as papers lay them out (Markdown): one row per task, one column per method, each
value with its 95 % interval, then CDCDA's paired gains and what the cloud wrote. ``table.md`` of
every run and the README's results section (experiments/update_readme.py) come from here; the
terminal table and the shared wording (labels, notes, interval texts) are in results.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_text_atomic
from cdcda_fl.core.config import FEDERATED_METHODS
from cdcda_fl.evaluation.metrics import LOWER_IS_BETTER
from cdcda_fl.reporting.results import (LOWER_NOTE, cloud_block, cloud_note, cloud_outage, cloud_vs_device, comparisons,
                              gain_text, interval_note, method_interval, steps_text, table_rows, users_cell,
                              value_with_interval, wtl_text)

PAPER_COLUMNS = ("base", "rag", "local", "cdcda", "cloud")
PAPER_LABELS = {"base": "Base", "rag": "RAG", "local": "Local LoRA", "cdcda": "CDCDA", "cloud": "Cloud LLM †",
                "fedavg": "FedAvg LoRA", "fedavg+local": "FedAvg + local", "cdcda+fedavg": "CDCDA from FedAvg"}
FEDERATED_COLUMNS = FEDERATED_METHODS  # shown only when the run has them


def paper_table(results: Mapping[str, Any]) -> str:
    """The table as papers lay it out: one row per task (its primary metric), one column per method.

    A Markdown string, so it can be pasted into a README or paper draft. Bold marks the best
    *private* method per task: the cloud column is the non-private upper bound and is never bold,
    so it cannot hide whether CDCDA beats the methods it actually competes with.
    """
    from cdcda_fl.data.tasks import TASK_NAMES, get_task
    from cdcda_fl.evaluation.metrics import primary_metric

    rows = table_rows(results)
    by_key = {(r["task"], r["method"]): r for r in rows}
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (TASK_NAMES.index(t) if t in TASK_NAMES else 99, t))
    columns = PAPER_COLUMNS + tuple(m for m in FEDERATED_COLUMNS if any(r["method"] == m for r in rows))
    lines = ["| Task | Metric | " + " | ".join(PAPER_LABELS[m] for m in columns) + " | Users |",
             "|---|---|" + "---:|" * len(columns) + "---:|"]
    eps_values: list[float] = []
    for task in tasks:
        metric = primary_metric(task)
        lower = metric in LOWER_IS_BETTER
        values = {m: by_key[(task, m)]["metrics"].get(metric) for m in columns if (task, m) in by_key}
        outage = cloud_outage(results, task)
        if outage and "cdcda" in values:  # not a CDCDA result: said in words, never bold
            values["cdcda"] = None
        private = [v for m, v in values.items() if m != "cloud" and v is not None]
        best = (min(private) if lower else max(private)) if private else None
        cells = []
        for m in columns:
            v = values.get(m)
            text = "–" if v is None else value_with_interval(v, method_interval(results, task, m))
            if m == "cdcda" and outage:
                block = cloud_block(results, task)
                text = f"cloud outage ({block['users_with_error']}/{block['users']} users): no synthetic data"
            if v is not None and m != "cloud" and v == best:
                text = f"**{text}**"
            cells.append(text)
        widest = max((r for r in rows if r["task"] == task), key=lambda r: r["n_users"])
        title = get_task(task).title
        lines.append(f"| {task.replace('_', '-')} ({title}) | {metric} {'↓' if lower else '↑'} | "
                     + " | ".join(cells) + f" | {users_cell(widest)} |")
        eps_values += [float(r["epsilon"]) for r in rows if r["task"] == task and r.get("epsilon") is not None]
    if cloud_vs_device(results) in ("same", "smaller"):
        lines[0] = lines[0].replace(PAPER_LABELS["cloud"], "Cloud model (not an upper bound) †")
    notes = ["", f"Bold: best private method per task. {cloud_note(results)} –: method not run or skipped. "
             "↑/↓: higher/lower is better."]
    if eps_values:
        notes.append(f"Local LoRA and CDCDA trained with DP-SGD, ε ≤ {max(eps_values):.2f} per user.")
    if any(r.get("n_users_lower") for r in rows):
        notes.append(LOWER_NOTE)
    gains = gain_table(results, tasks) + family_table(results, tasks)
    note = interval_note(results)
    budgets = [t for t in (steps_text(results, task) for task in tasks) if t]
    budgets = ["", *budgets] if budgets else []
    return "\n".join(lines + notes + ([note] if note else []) + gains + budgets + cloud_table(results, tasks)) + "\n"


def cloud_table(results: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """Per task: what the cloud wrote and what reached the devices (empty when no cloud ran)."""
    rows = [(task, cloud_block(results, task)) for task in tasks]
    rows = [(task, block) for task, block in rows if block]
    if not rows:
        return []
    lines = ["", "| Task | Synthetic written | Accepted | Sent | Rejected (by reason) | Users with cloud error "
             "| Devices fell back to local-only |", "|---|---:|---:|---:|---|---:|---:|"]
    for task, b in rows:
        rejected = ", ".join(f"{k} {v}" for k, v in list(b.get("rejected", {}).items())[:4]) or "–"
        fell_back = f"{b['fell_back']}/{b['decisions']}" if b.get("decisions") else "–"
        if b.get("dp_decisions"):  # under DP, CDCDA+DP falls back to the base model, not to local-only
            fell_back = f"{b['dp_fell_back']}/{b['dp_decisions']} to base (DP)"
        error = f"{b['users_with_error']}/{b['users']}" + (" (**cloud outage**)" if b.get("outage") else "")
        lines.append(f"| {task.replace('_', '-')} | {b['records_written']} | {b['records_accepted']} | "
                     f"{b['records_sent']} | {rejected} | {error} | {fell_back} |")
    lines.append("")
    lines.append("Written: records the cloud parsed from its generations; accepted: those its filters kept; sent: "
                 "to the devices. Fell back: devices whose rule chose not to use the synthetic data "
                 "(of those that reported a decision).")
    return lines


def gain_table(results: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """CDCDA against local-only, paired over the same users: one Markdown row per task (empty without data)."""
    from cdcda_fl.evaluation.metrics import primary_metric

    rows = [(task, label, block) for task in tasks for label, block in comparisons(results, task)]
    if not rows:
        return []
    labels = sorted({label for _t, label, _b in rows})
    several = len(labels) > 1
    lines = ["", f"| Task | Metric | {'Δ' if several else labels[0]} (paired, 95 % CI) | W/T/L | Verdict | Users |",
             "|---|---|---:|---:|---|---:|"]
    for task, label, block in rows:
        if several:
            task_label = f"{task.replace('_', '-')}: {label}"
            lines.append(f"| {task_label} | {primary_metric(task)} | {gain_text(block)} | {wtl_text(block)} | "
                         f"{block['verdict']} | {block['n_users']} |")
            continue
        metric = primary_metric(task)
        if cloud_outage(results, task):
            lines.append(f"| {task.replace('_', '-')} | {metric} {'↓' if metric in LOWER_IS_BETTER else '↑'} | – | – | "
                         f"not compared: cloud outage (CDCDA trained on real data only) | {block['n_users']} |")
            continue
        lines.append(f"| {task.replace('_', '-')} | {metric} {'↓' if metric in LOWER_IS_BETTER else '↑'} | "
                     f"{gain_text(block)} | {wtl_text(block)} | {block['verdict']} | {block['n_users']} |")
    return lines


# Which family wins where (issue 31): (label, a, b); the paired a − b per user is computed with every
# other comparison (aggregate.PAIRS -> results.json "intervals"), not here.
FAMILY_PAIRS = (("FedAvg − local", "fedavg", "local"),
                ("FedAvg + local − local", "fedavg+local", "local"),
                ("CDCDA − FedAvg + local", "cdcda", "fedavg+local"),
                ("CDCDA from FedAvg − CDCDA", "cdcda+fedavg", "cdcda"))


def family_table(results: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """Per-user methods (local, CDCDA) against federated ones (FedAvg, FedAvg + local), paired per user.

    Each cell is results.json's comparison block for the pair: the mean per-user gain with its 95 %
    bootstrap interval and W/T/L (positive = the first method is better; for MAE the sign is
    flipped) -- so a reader sees which family wins where without typing a number. Empty when the
    run has no federated method.
    """
    header = "| Task | Metric | " + " | ".join(label for label, _, _ in FAMILY_PAIRS) + " | Users |"
    lines: list[str] = []
    verdicts: list[str] = []
    for task in tasks:
        block = (results.get("intervals") or {}).get(task) or {}
        if not any(f"{a}_vs_{b}" in block for _, a, b in FAMILY_PAIRS[:2]):
            continue
        lower = not block.get("higher_is_better", True)
        cells, widest, significant = [], 0, []
        for label, a, b in FAMILY_PAIRS:
            pair = block.get(f"{a}_vs_{b}")
            if not pair or pair["n_users"] < 2:
                cells.append("–")
                continue
            text = gain_text(pair)
            ahead = pair["verdict"] != "not significant"
            cells.append(f"{'**' + text + '**' if ahead else text} {wtl_text(pair)}")
            if ahead:
                significant.append((label, a, b, pair["gain"]["mean"], text))
            widest = max(widest, int(pair["n_users"]))
        lines.append(f"| {task.replace('_', '-')} | {block.get('metric', '')} {'↓' if lower else '↑'} | "
                     + " | ".join(cells) + f" | {widest} |")
        verdicts.append(family_verdict(task, significant))
    if not lines:
        return []
    return ["", header, "|---|---|" + "---:|" * len(FAMILY_PAIRS) + "---:|", *lines, "",
            "Which family wins where: paired per-user differences, 95 % bootstrap interval and W/T/L (positive = "
            "the first method better; for MAE lower − higher). **Bold**: the interval excludes zero.", "",
            *verdicts]


def family_verdict(task: str, significant: list[tuple[str, str, str, float, str]]) -> str:
    """One sentence per task, from the differences whose interval excludes zero (none: a tie)."""
    name = task.replace("_", "-")
    if not significant:
        return f"- {name}: no family is ahead beyond noise (every interval above contains zero)."
    federated = set(FEDERATED_METHODS)
    federated_ahead = [f"{label} {text}" for label, a, b, mean, text in significant
                       if (a in federated) != (b in federated) and (mean > 0) == (a in federated)]
    per_user_ahead = [f"{label} {text}" for label, a, b, mean, text in significant
                      if (a in federated) != (b in federated) and (mean > 0) != (a in federated)]
    within = [f"{label} {text}" for label, a, b, mean, text in significant if (a in federated) == (b in federated)]
    parts = []
    if federated_ahead:
        parts.append("the federated family is ahead (" + "; ".join(federated_ahead) + ")")
    if per_user_ahead:
        parts.append("the per-user family is ahead (" + "; ".join(per_user_ahead) + ")")
    if within:
        parts.append("within a family: " + "; ".join(within))
    return f"- {name}: " + ", and ".join(parts) + "."


def write_paper_table(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write :func:`paper_table` to ``OUT/table.md`` (atomically) and return the path."""
    return write_text_atomic(Path(out_dir) / "table.md", paper_table(results))

"""The privacy-versus-utility plots of a sweep (and canary exposure), from ``sweep.json`` alone.

Kept apart from the runner so the notebook (and anyone holding only a ``sweep.json``) draws the
same figures without Flower or models. Every method in the sweep is drawn, including the ones a
knob cannot move (local LoRA ignores the share fraction; base/RAG/cloud are not trained, so DP
does not apply): a flat line is the honest answer to "what does this knob cost this method".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import atomic_path
from cdcda_fl.core.config import METHODS

OFF = "off"
# Sizes and z-order differ on purpose: methods that score the same stay visible on top of each
# other (big blue squares under red dots under thin dotted lines) instead of one hiding another.
STYLE: dict[str, dict[str, Any]] = {
    "local": {"color": "#1f77b4", "lw": 3.0, "marker": "s", "ms": 10, "ls": "-", "zorder": 2},
    "cdcda": {"color": "#d62728", "lw": 1.8, "marker": "o", "ms": 6, "ls": "-", "zorder": 3},
    "base": {"color": "#555555", "lw": 1.2, "marker": ".", "ms": 4, "ls": ":", "zorder": 4},
    "rag": {"color": "#2ca02c", "lw": 1.2, "marker": ".", "ms": 4, "ls": ":", "zorder": 4},
    "cloud": {"color": "#9467bd", "lw": 1.2, "marker": ".", "ms": 4, "ls": "--", "zorder": 4},
}
LABELS_SHARE = {"cdcda": "CDCDA (real + synthetic)", "local": "local LoRA (never uses the cloud: flat)",
                "base": "base (untrained)", "rag": "RAG (untrained)", "cloud": "cloud LLM (not private)"}
LABELS_EPS = {"cdcda": "CDCDA (DP-SGD)", "local": "local LoRA (DP-SGD)", "base": "base (no training: no DP)",
              "rag": "RAG (no training: no DP)", "cloud": "cloud LLM (not private)"}


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline", "inline"}:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tasks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({r["task"] for r in rows})


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {r["method"] for r in rows}
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def _eps_key(e: Any) -> float:
    return float("inf") if e == OFF else float(e)


def _axes(n: int, title: str):
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(max(8.0, 5.2 * n), 4.4), squeeze=False)
    fig.suptitle(title, fontsize=11)
    return fig, list(axes[0])


def _ylabel(ax, rows: Sequence[Mapping[str, Any]], task: str) -> None:
    r = next(r for r in rows if r["task"] == task)
    ax.set_ylabel(f"{r['primary_metric']} ({'higher' if r['higher_is_better'] else 'lower'} is better)")
    ax.set_title(task, fontsize=10)
    ax.grid(alpha=0.3)


def share_dp_setting(sweep: Mapping[str, Any]) -> Any:
    """The DP setting the share-fraction plot uses: off when in the grid, else the weakest DP (largest ε)."""
    eps = sweep["grid"]["dp-epsilon"]
    return OFF if OFF in eps else max(eps, key=_eps_key)


def plot_utility_vs_share(sweep: Mapping[str, Any]):
    """Utility against the fraction of records shared with the cloud, one line per method."""
    dp = share_dp_setting(sweep)
    rows = [r for r in sweep["rows"] if r["dp_epsilon"] == dp and r["utility"] is not None]
    tasks = _tasks(rows) or _tasks(sweep["rows"])
    fig, axes = _axes(len(tasks) or 1, f"Utility vs share fraction (DP {'off' if dp == OFF else f'ε={dp:g}'})")
    for ax, task in zip(axes, tasks):
        for m in _methods(rows):
            pts = sorted((r["share_fraction"], r["utility"]) for r in rows if r["task"] == task and r["method"] == m)
            if pts:
                ax.plot(*zip(*pts), label=LABELS_SHARE.get(m, m), **STYLE.get(m, {}))
        ax.set_xlabel("share fraction (records a user lets the cloud see)")
        _ylabel(ax, rows or sweep["rows"], task)
    _legend(fig, axes)
    return fig


def epsilon_positions(settings: Sequence[Any]) -> dict[Any, float]:
    """x position of each DP setting on a log ε axis; "off" (no DP, ε = ∞) sits one decade right of the largest ε."""
    finite = [float(e) for e in settings if e != OFF]
    pos: dict[Any, float] = {e: float(e) for e in settings if e != OFF}
    if OFF in settings:
        pos[OFF] = 10 * max(finite) if finite else 1.0
    return pos


def _errorbars(values: Sequence[float], intervals: Sequence[Sequence[float] | None]
               ) -> tuple[list[float], list[float]] | None:
    """Asymmetric error bars (below, above) from each value's [lo, hi]; None if no value has one."""
    if not any(intervals):
        return None
    below = [v - ci[0] if ci else 0.0 for v, ci in zip(values, intervals)]
    above = [ci[1] - v if ci else 0.0 for v, ci in zip(values, intervals)]
    return [max(0.0, b) for b in below], [max(0.0, a) for a in above]


def plot_utility_vs_epsilon(sweep: Mapping[str, Any]):
    """Utility against DP ε (log axis) at the reference share fraction, with 95 % intervals over users.

    "off" (no DP) is drawn as ∞ one decade right of the largest ε. The untrained base model is
    the floor a private method must not fall below (DP does not apply to it): a dashed
    horizontal line with its interval as a band, instead of a line over ε that would suggest DP
    moved it.
    """
    share = sweep["reference_share_fraction"]
    rows = [r for r in sweep["rows"] if r["share_fraction"] == share and r["utility"] is not None]
    settings = sorted({r["dp_epsilon"] for r in rows}, key=_eps_key)
    pos = epsilon_positions(settings)
    tasks = _tasks(rows) or _tasks(sweep["rows"])
    fig, axes = _axes(len(tasks) or 1, f"Utility vs DP ε (share fraction {share:g}; smaller ε = stronger privacy)")
    for ax, task in zip(axes, tasks):
        for m in _methods(rows):
            mrows = sorted((r for r in rows if r["task"] == task and r["method"] == m),
                           key=lambda r: _eps_key(r["dp_epsilon"]))
            if not mrows:
                continue
            style = STYLE.get(m, {})
            if m == "base":
                value = sum(r["utility"] for r in mrows) / len(mrows)
                ax.axhline(value, color=style.get("color", "k"), lw=1.2, ls="--", zorder=1,
                           label="base model: the floor (untrained, no DP)")
                ci = next((r["utility_ci"] for r in mrows if r.get("utility_ci")), None)
                if ci:
                    ax.axhspan(ci[0], ci[1], color=style.get("color", "k"), alpha=0.08, zorder=0)
                continue
            x = [pos[r["dp_epsilon"]] for r in mrows]
            y = [r["utility"] for r in mrows]
            ax.errorbar(x, y, yerr=_errorbars(y, [r.get("utility_ci") for r in mrows]), capsize=3,
                        label=LABELS_EPS.get(m, m), **style)
        if settings:
            ax.set_xscale("log")
            ax.set_xticks([pos[e] for e in settings], ["∞ (off)" if e == OFF else f"{float(e):g}" for e in settings])
            ax.minorticks_off()
        ax.set_xlabel("DP-SGD ε per user (log scale)")
        _ylabel(ax, rows or sweep["rows"], task)
    _legend(fig, axes)
    return fig


def plot_utility_vs_mia(sweep: Mapping[str, Any]):
    """Utility against membership-inference AUC of the trained adapters (0.5 = no leakage).

    Points of one method and one share fraction are joined in order of ε, so a line shows what
    tightening DP buys in empirical privacy and costs in utility.
    """
    rows = [r for r in sweep["rows"] if r.get("mia_auc") is not None and r["utility"] is not None]
    tasks = _tasks(rows) or _tasks(sweep["rows"])
    fig, axes = _axes(len(tasks) or 1, "Utility vs membership-inference AUC (a line: one share fraction, by ε)")
    for ax, task in zip(axes, tasks):
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.text(0.5, 0.02, " no leakage", transform=ax.get_xaxis_transform(), fontsize=7)
        seen: set[tuple[float, float, str]] = set()
        for m in _methods(rows):
            mrows = [r for r in rows if r["task"] == task and r["method"] == m]
            style = STYLE.get(m, {})
            for i, share in enumerate(sorted({r["share_fraction"] for r in mrows})):
                line = sorted((r for r in mrows if r["share_fraction"] == share),
                              key=lambda r: _eps_key(r["dp_epsilon"]))
                ax.plot([r["mia_auc"] for r in line], [r["utility"] for r in line], color=style.get("color"),
                        lw=1.0, alpha=0.8, marker=style.get("marker", "o"), ms=style.get("ms", 6), ls="-",
                        zorder=style.get("zorder", 2), label=LABELS_EPS.get(m, m) if i == 0 else None)
                for r in line:
                    eps = "∞" if r["dp_epsilon"] == OFF else f"{float(r['dp_epsilon']):g}"
                    # local LoRA ignores the share fraction: label it by ε only, once per position
                    text = f"ε{eps}" if m == "local" else f"s{share:g},ε{eps}"
                    key = (round(r["mia_auc"], 3), round(r["utility"], 3), text)
                    if key not in seen:
                        seen.add(key)
                        ax.annotate(text, (r["mia_auc"], r["utility"]), fontsize=6, textcoords="offset points",
                                    xytext=(3, -9 if m == "local" else 3), color=style.get("color"))
        lo = min([0.45] + [r["mia_auc"] for r in rows if r["task"] == task])
        ax.set_xlim(lo - 0.02, 1.02)
        ax.set_xlabel("MIA AUC (0.5 = chance, 1 = every training record identified)")
        _ylabel(ax, rows or sweep["rows"], task)
    _legend(fig, axes)
    return fig


def plot_exposure_vs_epsilon(sweep: Mapping[str, Any]):
    """Canary exposure of the local adapter against DP ε (log axis), from the sweep's canary audit.

    Planted canaries (in non-shared records) with their 95 % interval over users; the
    never-planted controls are the "nothing leaked" reference (≈ log2 e for a rank estimate, not
    0); the dotted line is log2 R, a canary ranked first among all R candidates.
    """
    summary = (sweep.get("canary_audit") or {}).get("summary", [])
    tasks = sorted({s["task"] for s in summary})
    fig, axes = _axes(len(tasks) or 1, "Canary exposure vs DP ε (local adapter; lower = less memorised)")
    for ax, task in zip(axes, tasks):
        items = sorted((s for s in summary if s["task"] == task), key=lambda s: _eps_key(s["dp_epsilon"]))
        settings = [s["dp_epsilon"] for s in items]
        pos = epsilon_positions(settings)
        x = [pos[e] for e in settings]
        planted = [s["exposure_planted"] for s in items]
        y = [p["mean"] for p in planted]
        err = _errorbars(y, [(p["lo"], p["hi"]) if p["lo"] is not None else None for p in planted])
        ax.errorbar(x, y, yerr=err, capsize=3, label="planted canaries (non-shared records)", **STYLE["local"])
        ax.plot(x, [s["exposure_control"]["mean"] for s in items], color="#555555", lw=1.2, ls="--", marker=".",
                label="never-planted controls (nothing leaked)")
        top = max((s["max_exposure"] for s in items if s.get("max_exposure") is not None), default=None)
        if top is not None:
            ax.axhline(top, color="k", lw=0.8, ls=":", label="log2 R: canary ranked first (memorised)")
        ax.set_xscale("log")
        ax.set_xticks(x, ["∞ (off)" if e == OFF else f"{float(e):g}" for e in settings])
        ax.minorticks_off()
        ax.set_xlabel("DP-SGD ε per user (log scale)")
        ax.set_ylabel("exposure (bits)")
        ax.set_title(f"{task} ({items[0]['n_users']} users)", fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def _legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = max(1, min(len(labels), int(fig.get_figwidth() // 3.3)))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    rows = (len(labels) + ncol - 1) // ncol if labels else 0
    fig.tight_layout(rect=(0, 0.02 + 0.055 * rows, 1, 0.93))


PLOTS = {"utility_vs_share.png": plot_utility_vs_share, "utility_vs_epsilon.png": plot_utility_vs_epsilon,
         "utility_vs_mia.png": plot_utility_vs_mia}


EXPOSURE_PLOT = "exposure_vs_epsilon.png"


def write_sweep_plots(out_dir: Path | str, sweep: Mapping[str, Any]) -> list[str]:
    """Save the three plots (four with a canary audit) as PNG under ``OUT/plots/``; returns their paths."""
    plt = _pyplot()
    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    plots = dict(PLOTS)
    if (sweep.get("canary_audit") or {}).get("summary"):
        plots[EXPOSURE_PLOT] = plot_exposure_vs_epsilon
    else:  # an earlier audit's plot would now describe results this sweep.json does not hold
        (folder / EXPOSURE_PLOT).unlink(missing_ok=True)
    for name, draw in plots.items():
        fig = draw(sweep)
        with atomic_path(folder / name, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        paths.append(str(folder / name))
    return paths

"""The sweep's canary exposure audit: Secret Sharer exposure next to utility, MIA AUC and ε.

With ``[sweep] canaries = N`` (N > 0) a sweep runs, after its grid points, one
:func:`cdcda_fl.sweeps.canary_audit.run_canary_audit` over the same users: N random canaries are
planted in every user's private, non-shared profile, the adapter is trained once without DP and
once per ε of the grid, and each canary's exposure is measured (``OUT/canaries/canaries.json``).
"Off" is always audited, even in a grid without it, because the question the audit answers is
"does DP lower exposure", which needs the no-DP reference.

What the audit trains is the adapter that sees the private records: the local LoRA path
(``train.*`` without DP, DP-SGD's first candidate with it). Its exposure is therefore attached to
the ``local`` rows of ``sweep.json``. CDCDA rows carry none: with DP on and ``dp.selection =
private`` the released CDCDA adapter is trained on cloud records only (derived from shared
records, which canaries never are), so a non-shared canary can reach it only through the one
ε-DP choice between that adapter and the base model; without DP, CDCDA trains on the same
private records as local LoRA plus synthetic ones (docs/dp.md).

The audit is resumable like the points: a ``canaries.json`` made with the same run config,
settings and audit sizes is reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcda_fl.core.config import Scalar, config_mismatch
from cdcda_fl.core.progress import log
from cdcda_fl.core.run_config import run_config

AUDITED_METHOD = "local"
Auditor = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class CanaryPlan:
    """How many canaries per user (0 = no audit) and how many candidates each is ranked among."""

    canaries: int = 0
    candidates: int = 128

    def __post_init__(self) -> None:
        if self.canaries < 0:
            raise ValueError(f"sweep.canaries must be >= 0 (0 = no canary audit), got {self.canaries}")
        if self.candidates < 2:
            raise ValueError(f"sweep.canary-candidates must be >= 2, got {self.candidates}")

    @property
    def enabled(self) -> bool:
        return self.canaries > 0


def audit_settings(dp_epsilons: Sequence[float | None]) -> list[float | None]:
    """No DP first (the reference), then the grid's finite ε from weakest to strongest privacy."""
    finite = sorted({float(e) for e in dp_epsilons if e is not None}, reverse=True)
    return [None, *finite]


def audit_config(config: Mapping[str, Scalar], out: Path) -> dict[str, Scalar]:
    """The sweep's base run config with the audit's own output folder (personas are re-seeded there)."""
    return {**config, "out-dir": str(out / "canaries")}


def _reusable(path: Path, cfg: Mapping[str, Any], settings: list[Any], plan: CanaryPlan) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    wanted = ["off" if e is None else e for e in settings]
    same = (stored.get("settings") == wanted and stored.get("canaries_per_user") == plan.canaries
            and stored.get("candidates") == plan.candidates
            and not config_mismatch(stored.get("config", {}), cfg))
    return stored if same else None


def run_sweep_canaries(config: Mapping[str, Scalar], dp_epsilons: Sequence[float | None], out: Path,
                       plan: CanaryPlan, auditor: Auditor | None = None) -> dict[str, Any] | None:
    """Run (or reuse) the canary audit of a sweep; returns canaries.json's content, None if it failed.

    A failing audit is logged and reported as missing exposure, never a failed sweep: the grid's
    utility results stand on their own.
    """
    if auditor is None:
        from cdcda_fl.sweeps.canary_audit import run_canary_audit as auditor  # lazy: trains adapters (torch)
    cfg = audit_config(config, out)
    settings = audit_settings(dp_epsilons)
    path = Path(run_config(cfg).out_dir) / "canaries.json"
    stored = _reusable(path, cfg, settings, plan)
    if stored is not None:
        log(f"[green]canary audit[/green]: finished earlier, reusing {path}")
        return stored
    log(f"[bold]canary audit[/bold]: {plan.canaries} canar{'y' if plan.canaries == 1 else 'ies'} per user in "
        f"non-shared records, DP {['off' if e is None else e for e in settings]}, {plan.candidates} candidates")
    try:
        return auditor(cfg, settings, n_canaries=plan.canaries, n_candidates=plan.candidates, log=log)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - exposure is an addition to the sweep, not its result
        log(f"[red]canary audit failed:[/red] {type(exc).__name__}: {exc}")
        return None


def attach_exposure(rows: list[dict[str, Any]], report: Mapping[str, Any] | None) -> None:
    """Give every row an exposure field: the audit's figure on local rows, None elsewhere.

    ``exposure`` is the mean planted-canary exposure over users (bits), ``exposure_ci`` its 95 %
    bootstrap interval, ``exposure_control`` the never-planted reference of the same audit.
    """
    by_key = {(s["task"], str(s["dp_epsilon"])): s for s in (report or {}).get("summary", [])}
    for row in rows:
        s = by_key.get((row["task"], str(row["dp_epsilon"]))) if row["method"] == AUDITED_METHOD else None
        planted = (s or {}).get("exposure_planted") or {}
        row["exposure"] = planted.get("mean")
        row["exposure_ci"] = [planted["lo"], planted["hi"]] if planted.get("lo") is not None else None
        row["exposure_control"] = ((s or {}).get("exposure_control") or {}).get("mean")


def audit_summary(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What sweep.json keeps of the audit: its per (task, ε) summary and where the full file is."""
    if report is None:
        return None
    return {"file": "canaries/canaries.json", "method": AUDITED_METHOD, "settings": report.get("settings"),
            "canaries_per_user": report.get("canaries_per_user"), "candidates": report.get("candidates"),
            "summary": report.get("summary", [])}

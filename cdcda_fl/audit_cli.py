"""`cdcda audit`: the empirical privacy audits of the private adapters, as commands.

``cdcda audit canaries`` runs the canary exposure audit (cdcda_fl/sweeps/canary_audit.py), ``cdcda audit
sent`` reads what a device sent from its own audit log (privacy/sent.py). Every ``cdcda`` command
builds this parser, so the audit's training code (torch) is imported only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdcda_fl.core.config import ConfigError, add_config_arguments, load_config, path_overrides
from cdcda_fl.privacy.canary import CanaryError
from cdcda_fl.privacy.sent import cmd_sent
from cdcda_fl.core.run_config import run_config


def canary_settings(values: str) -> list[float | None]:
    """'off,8,1' -> [None, 8.0, 1.0] (None = no DP); a clear error for anything else."""
    out: list[float | None] = []
    for part in (p.strip() for p in str(values).split(",")):
        if not part:
            continue
        if part.lower() in {"off", "none"}:
            eps = None
        else:
            try:
                eps = float(part)
            except ValueError:
                raise ValueError(f"--dp-epsilon: {part!r} is neither 'off' nor a number") from None
            if not 0 < eps < float("inf"):
                raise ValueError(f"--dp-epsilon: {part!r} must be a positive finite number (or 'off')")
        if eps not in out:
            out.append(eps)
    if not out:
        raise ValueError("--dp-epsilon: give at least one setting, e.g. off,8")
    return out


def print_canary_summary(report: dict) -> None:
    """The audit's summary table: one row per (task, DP setting)."""
    print(f"{'task':<8} {'DP ε':>6} {'users':>5} {'exposure planted':>22} {'control':>8} {'max':>5} "
          f"{'MIA AUC':>8} {'ε spent':>8}")
    for r in report["summary"]:
        def f(x):
            return "–" if x is None else f"{x:.2f}"
        p = r["exposure_planted"]
        band = f" [{f(p['lo'])}, {f(p['hi'])}]" if p["lo"] is not None else ""
        print(f"{r['task']:<8} {r['dp_epsilon']:>6} {r['n_users']:>5} {f(p['mean']) + band:>22} "
              f"{f(r['exposure_control']['mean']):>8} {f(r['max_exposure']):>5} {f(r['mia_auc']['mean']):>8} "
              f"{f(r['epsilon']):>8}")


def _cmd_canaries(args: argparse.Namespace) -> int:
    extra = path_overrides(args)
    try:
        cfg = load_config(args.config, args.set, extra=extra)
        settings = canary_settings(args.dp_epsilon)
        for name in ("canaries", "controls", "repeats"):
            if getattr(args, name) < (0 if name == "controls" else 1):
                raise ValueError(f"--{name} must be >= {0 if name == 'controls' else 1}")
        if args.candidates < 2:
            raise ValueError("--candidates must be >= 2")
    except (ConfigError, ValueError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from cdcda_fl.sweeps.canary_audit import run_canary_audit  # lazy: trains adapters (torch); `cdcda --help` stays fast

    try:
        report = run_canary_audit(cfg, settings, n_canaries=args.canaries, n_controls=args.controls,
                                  n_candidates=args.candidates, repeats=args.repeats,
                                  log=lambda m: print(m, file=sys.stderr))
    except CanaryError as exc:
        print(f"canary audit error: {exc}", file=sys.stderr)
        return 2
    print_canary_summary(report)
    print(f"report: {Path(run_config(cfg).out_dir) / 'canaries.json'}")
    return 0


def _cmd_sent(args: argparse.Namespace) -> int:
    return cmd_sent(args.paths, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    """`cdcda audit canaries`: the Secret Sharer exposure audit, with and without DP; `cdcda audit sent`."""
    audit = sub.add_parser("audit", help="empirical privacy audits of the private adapters")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT")
    can = audit_sub.add_parser(
        "canaries", help="plant random canary records in non-shared profiles, train, measure exposure",
        description="Secret Sharer audit: plant canaries (task-format records with random secrets) in each user's "
                    "private, non-shared profile; check they never reach the cloud; train the adapter without and "
                    "with DP; report exposure = log2(R) - log2(rank) next to MIA AUC and ε (canaries.json).")
    add_config_arguments(can, config_help="TOML run config (tasks, users, device.model, train.*)",
                         out_help="output directory (default: out-dir of the config)")
    can.add_argument("--dp-epsilon", default="off,8", help="comma-separated settings, 'off' = no DP (default off,8)")
    can.add_argument("--canaries", type=int, default=2, help="canaries planted per user (default 2)")
    can.add_argument("--controls", type=int, default=2, help="never-planted control canaries per user (default 2)")
    can.add_argument("--candidates", type=int, default=128, help="R: candidates per canary incl. itself (default 128)")
    can.add_argument("--repeats", type=int, default=1, help="copies of each canary in the profile (default 1)")
    can.set_defaults(func=_cmd_canaries)
    sent = audit_sub.add_parser("sent", help="what a device sent, from its own audit log (records, bytes, results)")
    sent.add_argument("paths", nargs="+", metavar="PATH", help="a device's storage dir or its audit.jsonl")
    sent.add_argument("--json", action="store_true", help="one JSON list instead of text")
    sent.set_defaults(func=_cmd_sent)

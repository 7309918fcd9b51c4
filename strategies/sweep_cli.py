"""`cdcda sweep`: the privacy-versus-utility grid from a TOML file (the work is in cdcda_fl.sweeps.sweep).

A ``cdcda`` subcommand plugged in through the ``cdcda.commands`` entry point (pyproject.toml): the
core library never imports the Flower layer; this module gives the sweep its runner, one Flower
simulation per point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdcda_fl.core.config import ConfigError, add_config_arguments, path_overrides
from strategies.simulation import run_simulation
from cdcda_fl.core.run_config import run_config

PRIVACY_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "privacy.toml"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from cdcda_fl.sweeps.sweep import load_sweep, print_sweep, run_sweep  # lazy: scikit-learn; every `cdcda` loads this plugin

    try:
        spec = load_sweep(args.config, args.set, extra=path_overrides(args), grid=args.grid)
    except ConfigError as exc:
        print(f"sweep config error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for point in spec.points():
            print(point.name)
        return 0
    sweep = run_sweep(spec, run_config(spec.config).out_dir, runner=run_simulation)
    print_sweep(sweep)
    return 0 if sweep["complete"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser(
        "sweep", help="privacy-versus-utility grid (share fraction × DP ε): one Flower simulation per point, plots",
        description="Run one full CDCDA simulation per grid point (share fraction × DP ε, membership-inference "
                    "audit on), resume finished points, optionally run the canary exposure audit over the same "
                    "users ([sweep] canaries = N), then write sweep.json, sweep.csv and plots/*.png.")
    add_config_arguments(sweep, config_default=PRIVACY_CONFIG,
                         config_help=f"sweep TOML with [config] and [sweep] tables (default {PRIVACY_CONFIG.name})",
                         out_help="sweep directory (default: out-dir of the config)",
                         set_help="override a run config key for every point (repeatable)")
    sweep.add_argument("--grid", action="append", default=[], metavar="AXIS=V1,V2",
                       help="override a [sweep] key: share-fraction=0,1, dp-epsilon=off,4, canaries=2 (repeatable)")
    sweep.add_argument("--dry-run", action="store_true", help="print the grid points and exit")
    sweep.set_defaults(func=_cmd_sweep)

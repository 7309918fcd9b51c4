"""`cdcda run` and `cdcda demo`: argument parsing for the runs (the work is in strategies/simulation.py).

Plugged into the ``cdcda`` command through the ``cdcda.commands`` entry point (pyproject.toml),
so that ``cdcda_fl`` (the library) never imports Flower or this layer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdcda_fl.core.config import DEFAULTS, ConfigError, add_config_arguments, load_config, path_overrides
from cdcda_fl.data.lamp import LampDataError
from cdcda_fl.server.runs import RunDataError
from strategies.simulation import Interrupted, run_simulation

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "demo.toml"


def _print_config_help() -> None:
    width = max(len(k) for k in DEFAULTS)
    for key, (default, text) in DEFAULTS.items():
        print(f"{key:<{width}}  {default!r:<28} {text}")


def check_config(cfg: dict) -> None:
    """Every check that can fail before anything starts (cdcda_fl/server/run_checks.py): before Ray starts."""
    from cdcda_fl.server.run_checks import validate_run_config

    validate_run_config(cfg)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.help_config:
        _print_config_help()
        return 0
    if args.config is None:
        print("error: a CONFIG.toml is required (or --help-config to list keys)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.set, extra=path_overrides(args))
        check_config(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        results = run_simulation(cfg)
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the run started: nothing to keep
        print("interrupted before the run started; nothing was run", file=sys.stderr)
        return 130
    except (ConfigError, LampDataError, RunDataError) as exc:
        print(f"data error: {exc}" if not isinstance(exc, ConfigError) else f"config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if not results.get("table") else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    args.config = args.config or DEMO_CONFIG
    args.out = args.out or Path("runs/demo")
    args.help_config = False
    return _cmd_run(args)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run CDCDA through Flower's simulation engine from a TOML config",
                         description="Run share -> cloud augmentation -> private LoRA -> offline answers for every "
                                     "user, on Flower's Ray simulation engine. Keys: --help-config.")
    add_config_arguments(run)
    run.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="the main job: a few seeded users on two tasks, all methods, a table")
    demo.add_argument("--config", type=Path, default=None, help=f"demo config (default {DEMO_CONFIG.name})")
    demo.add_argument("--data-dir", type=Path, help="use real LaMP files instead of personas")
    demo.add_argument("--out", type=Path, default=None, help="run directory (default runs/demo)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    demo.set_defaults(func=_cmd_demo)

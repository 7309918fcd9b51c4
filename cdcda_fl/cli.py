"""The `cdcda` command: data, evaluation, runs, sweeps and serving from one entry point.

Examples:
  cdcda data personas --out data/personas --users 8 --tasks LaMP_2,LaMP_5 --seed 0
  cdcda data personas --multitask --out data/people --users 8 --tasks LaMP_2,LaMP_5,LaMP_7
  cdcda data validate ~/LaMP
  cdcda eval --task LaMP_2 --golds dev_outputs.json --preds preds.json --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdcda_fl import audit_cli, inspect_cli
from cdcda_fl.cloud.backends import BackendError
from cdcda_fl.cloud.serve import add_serve_subcommand
from cdcda_fl.core.config import ConfigError
from cdcda_fl.data.lamp import LampDataError, check_path, read_outputs
from cdcda_fl.data.multitask_personas import MULTITASK_TASKS, write_multitask_personas
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import TASK_NAMES, get_task, parse_task_list
from cdcda_fl.device.gguf_parts import ModelIntegrityError
from cdcda_fl.edge import cli as edge_cli
from cdcda_fl.privacy.consent import ConsentError
from cdcda_fl.server.runs import RunDataError


def _cmd_validate(args: argparse.Namespace) -> int:
    task = None
    if args.task:
        try:
            task = get_task(args.task).name
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2
    report = check_path(args.path, task)
    for line in report.lines:
        print(f"ok  {line}")
    shown = report.errors[:max(0, args.max_errors)]
    for exc in shown:
        print(f"invalid: {exc}", file=sys.stderr)
    rest = len(report.errors) - len(shown)
    if rest:
        print(f"... and {rest} more error(s) (--max-errors N shows more)", file=sys.stderr)
    if report.errors:
        print(f"{len(report.errors)} error(s) found", file=sys.stderr)
        return 1
    return 0


def _cmd_personas(args: argparse.Namespace) -> int:
    write = write_multitask_personas if args.multitask else write_personas
    tasks = [t.name for t in parse_task_list(args.tasks or ",".join(MULTITASK_TASKS if args.multitask else TASK_NAMES))]
    try:
        files = write(args.out, users=args.users, tasks=tasks, seed=args.seed, splits=args.splits.split(","),
                      user_prefix=args.user_prefix)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first = f"{args.user_prefix}{args.splits.split(',')[0]}-u0000"
    who = "people, each in every task" if args.multitask else "users"
    print(f"wrote {len(files)} files for {len(tasks)} task(s), {args.users} {who} per split (ids {first}, ...), "
          f"under {Path(args.out).resolve()}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from cdcda_fl.evaluation.metrics import PredictionMismatchError, score  # lazy: scikit-learn (2 s) for one command

    try:
        task = get_task(args.task)
        golds = read_outputs(args.golds, task)
        preds = read_outputs(args.preds, task, check_labels=False)
        metrics = score(task, golds, preds)
    except (LampDataError, PredictionMismatchError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            print(f"{name:>10}  {value:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdcda", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="LaMP data: validate files, generate seeded synthetic users")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    val = data_sub.add_parser("validate", help="check LaMP files (a data dir, a task folder or one file)")
    val.add_argument("path", type=Path, help="data directory (LaMP_k/ folders), task folder or *_questions/outputs.json")
    val.add_argument("--task", help="the task of the files (default: from a LaMP_k folder, else the file's content)")
    val.add_argument("--max-errors", type=int, default=20, metavar="N",
                     help="list at most N errors, then a count of the rest (default 20)")
    val.set_defaults(func=_cmd_validate)
    per = data_sub.add_parser("personas", help="write seeded synthetic users in LaMP's file format")
    per.add_argument("--out", type=Path, required=True, help="output data directory (one LaMP_k/ folder per task)")
    per.add_argument("--users", type=int, default=8, help="users per task and split (default 8)")
    per.add_argument("--tasks", default="", help="comma-separated tasks (default: all six; with --multitask "
                                                 "LaMP_2,LaMP_3,LaMP_5,LaMP_7)")
    per.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    per.add_argument("--splits", default="train,dev", help="comma-separated splits to write (default train,dev)")
    per.add_argument("--user-prefix", default="", metavar="PREFIX",
                     help="put PREFIX in front of every user id (e.g. phone1- gives phone1-dev-u0000): devices that "
                          "each write their own personas need distinct ids, or the server refuses the users they share")
    per.add_argument("--multitask", action="store_true",
                     help="each user id is one person across the tasks: shared interests, casing, length and mood, "
                          "a rich profile in one task and sparse ones in the others (docs/multitask.md)")
    per.set_defaults(func=_cmd_personas)

    ev = sub.add_parser("eval", help="score LaMP-format predictions against golds with LaMP's metrics")
    ev.add_argument("--task", required=True, help="LaMP_1, LaMP_2, LaMP_3, LaMP_4, LaMP_5 or LaMP_7")
    ev.add_argument("--golds", type=Path, required=True, help="{split}_outputs.json with the gold outputs")
    ev.add_argument("--preds", type=Path, required=True, help="predictions in the same format")
    ev.add_argument("--json", action="store_true", help="print one JSON object metric -> value")
    ev.set_defaults(func=_cmd_eval)

    for register in plugin_commands():
        register(sub)
    add_serve_subcommand(sub)
    edge_cli.register(sub)
    audit_cli.register(sub)
    inspect_cli.register(sub)
    return parser


COMMANDS_GROUP = "cdcda.commands"


def plugin_commands() -> list:
    """``register(subparsers)`` functions of the ``cdcda.commands`` entry points, by name.

    Why plug-ins: ``cdcda run``/``demo``/``sweep`` start Flower's engine, and the library must not
    import Flower or the app layer (docs/design.md); the app layer (``strategies/``) declares its
    commands in pyproject.toml instead. A broken plug-in is skipped with a warning, not a crash.
    """
    from importlib.metadata import entry_points

    found = []
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except ImportError as exc:
            print(f"warning: cdcda command {ep.name!r} unavailable ({exc})", file=sys.stderr)
    return found


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can cause (bad config, data, files, models): one line, no traceback.

    Anything else is a bug and keeps its traceback (``CDCDA_TRACEBACK=1`` shows it for these too).
    """
    return (ConfigError, LampDataError, RunDataError, ConsentError, BackendError, ModelIntegrityError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except expected_errors() as exc:
        if os.environ.get("CDCDA_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

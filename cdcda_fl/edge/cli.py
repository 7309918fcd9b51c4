"""``cdcda export``: a user's private adapter (and its base) as llama.cpp GGUF files for an edge board.

Examples:
  cdcda export runs/demo/devices/adapters/LaMP_2-cdcda-…/u1 --out u1.gguf
  cdcda export --run runs/demo --user u1 --task LaMP_2 --method cdcda --out u1.gguf --base-out base.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdcda_fl.edge.export import (
    OUT_TYPES,
    ExportError,
    base_folder,
    export_adapter,
    export_base,
    find_adapter,
    read_adapter,
)


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        if args.out is None and args.base_out is None:
            raise ExportError("nothing to write: give --out FILE.gguf and/or --base-out FILE.gguf")
        selectors = [args.run, args.user, args.task]
        if args.adapter_dir is not None and any(s is not None for s in selectors):
            raise ExportError("give either ADAPTER_DIR or --run/--user/--task, not both")
        if args.adapter_dir is not None:
            adapter = args.adapter_dir
        elif all(s is not None for s in selectors):
            adapter = find_adapter(args.run, args.user, args.task, args.method)
        elif args.base is not None and args.out is None:
            adapter = None  # base only
        else:
            raise ExportError("give ADAPTER_DIR, or all of --run RUN --user U --task T")
        if args.out is not None:
            if adapter is None:
                raise ExportError("--out needs an adapter (ADAPTER_DIR or --run/--user/--task)")
            info = export_adapter(adapter, args.out, base=args.base, outtype=args.outtype)
            print(
                f"wrote {info.path}: {info.arch} LoRA adapter, {info.n_pairs} layers "
                f"({', '.join(info.targets)}), rank {info.rank}, alpha {info.alpha:g}, from {adapter}"
            )
        if args.base_out is not None:
            config = read_adapter(adapter)[0] if adapter is not None else {}
            folder = base_folder(config, args.base, Path(adapter or "."))
            print(f"wrote {export_base(folder, args.base_out)}: llama.cpp base for {folder.name}")
    except (ExportError, FileNotFoundError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``cdcda`` command (see cdcda_fl/cli.py)."""
    ex = sub.add_parser(
        "export",
        help="write a user's LoRA adapter (and the base) as llama.cpp GGUF files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("adapter_dir", nargs="?", type=Path, help="a PEFT adapter folder (adapter_config.json + safetensors)")
    ex.add_argument("--out", type=Path, help="GGUF LoRA adapter file to write")
    ex.add_argument("--run", type=Path, help="run directory whose devices/ hold the adapter")
    ex.add_argument("--user", help="user id (with --run)")
    ex.add_argument("--task", help="task, e.g. LaMP_2 (with --run)")
    ex.add_argument("--method", choices=("local", "cdcda"), default="cdcda", help="which trained adapter (default cdcda)")
    ex.add_argument("--base", help="base model folder or preset, if not the one recorded in the adapter")
    ex.add_argument("--base-out", type=Path, help="also write the matching llama.cpp base GGUF here")
    ex.add_argument("--outtype", choices=OUT_TYPES, default="f32", help="adapter tensor type (default f32)")
    ex.set_defaults(func=_cmd_export)

"""docs/design.md's layering rule, checked: the library never imports Flower or the app layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("flwr", "clients", "strategies", "deploy")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_cdcda_fl_imports_neither_flower_nor_the_app_layer() -> None:
    offenders = {
        str(path.relative_to(ROOT)): bad
        for path in sorted((ROOT / "cdcda_fl").rglob("*.py"))
        if (bad := [n for n in _imports(path) if n.split(".")[0] in FORBIDDEN])
    }
    assert offenders == {}


def test_flower_commands_plug_into_the_cli() -> None:
    """`cdcda run`, `demo` and `sweep` come from the app layer's entry points."""
    from cdcda_fl.cli import build_parser

    help_text = build_parser().format_help()
    for command in ("run", "demo", "sweep", "data", "eval", "serve", "export", "audit"):
        assert command in help_text, command


FOUNDATION = ("config", "method_table", "atomic", "progress", "quiet")


def test_the_foundation_imports_nothing_of_the_project() -> None:
    """config.py, method_table.py, atomic.py, progress.py and quiet.py sit under every layer
    (design.md), so they must not import any of them back: only each other."""
    inside = {f"cdcda_fl.{name}" for name in FOUNDATION}
    offenders = {name: bad for name in FOUNDATION
                 if (bad := [n for n in _imports(ROOT / "cdcda_fl" / f"{name}.py")
                             if n.split(".")[0] == "cdcda_fl" and n not in inside])}
    assert offenders == {}

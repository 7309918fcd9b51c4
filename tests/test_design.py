"""docs/design.md's layering rule, checked: the library never imports Flower or the app layer,
and every layer imports only the layers below it (the import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
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


def test_the_foundation_imports_nothing_of_the_project() -> None:
    """cdcda_fl/core/ sits under every layer (design.md), so it imports nothing of the project
    outside itself (the layer contract holds this too; this test names the offender plainly)."""
    offenders = {path.name: bad for path in sorted((ROOT / "cdcda_fl" / "core").glob("*.py"))
                 if (bad := [n for n in _imports(path)
                             if n.split(".")[0] == "cdcda_fl" and not n.startswith("cdcda_fl.core")])}
    assert offenders == {}


def test_no_default_literal_for_a_run_config_key_outside_config_py() -> None:
    """A run-config key's default lives in config.DEFAULTS only (issue 30): ``cfg.get("train.steps", 12)``
    elsewhere is a second default that drifts. Dotted keys are unambiguous; read them with
    ``config_get``/``cfg[...]``."""
    import re

    from cdcda_fl.core.config import DEFAULTS

    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"""\.get\(\s*["']([a-z0-9\-]+\.[a-z0-9\-\.]+)["']\s*,""")
    found = []
    for folder in ("cdcda_fl", "clients", "strategies", "deploy"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name in ("config.py", "config_keys.py") and path.parent.name == "core":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                found += [f"{path.relative_to(root)}:{i}: {m.group(0)}" for m in pattern.finditer(line)
                          if m.group(1) in DEFAULTS]
    assert not found, "default literals outside config.py:\n" + "\n".join(found)


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts: the layer table, no cycles, no Flower below
    the app layer. import-linter sees imports inside functions too, so a lazy import hides nothing.
    Run in a fresh interpreter, without import-linter's cache: the report is about this tree."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

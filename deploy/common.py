"""Constants and the error type shared by the deploy/ modules (kept apart so none imports the CLI)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every lab process binds and dials loopback only: the lab must never be reachable from the LAN.
HOST = "127.0.0.1"
DEFAULT_WORK = ROOT / ".flwr"


class LabError(RuntimeError):
    """A lab process failed or a run did not complete; the message has the relevant log tail.

    The CLI prints it as ``error: ...`` without a traceback: it describes an environment or run
    problem, not a bug in the lab.
    """


def bin_dir() -> Path:
    """The folder with this interpreter's console scripts (flwr, flower-superlink, ...).

    Using this venv's scripts, not whatever is first on PATH, keeps the Flower version the one
    the project pins.
    """
    return Path(sys.executable).parent

"""Constants and the error type shared by the deploy/ modules (kept apart so none imports the CLI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every lab process binds and dials loopback only: the lab must never be reachable from the LAN.
HOST = "127.0.0.1"


def default_work() -> Path:
    """Where the lab keeps keys, certificates, devices and logs unless told: ``$CDCDA_LAB_DIR``, else
    ``$XDG_STATE_HOME/cdcda-fl/lab`` (``~/.local/state/cdcda-fl/lab``) -- outside the checkout, so a
    private key can never be committed."""
    if os.environ.get("CDCDA_LAB_DIR"):
        return Path(os.environ["CDCDA_LAB_DIR"]).expanduser().resolve()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state).expanduser().resolve() / "cdcda-fl" / "lab"


DEFAULT_WORK = default_work()


class LabError(RuntimeError):
    """A lab process failed or a run did not complete; the message has the relevant log tail.

    The CLI prints it as ``error: ...`` without a traceback: it describes an environment or run
    problem, not a bug in the lab.
    """


def outside_checkout(path: Path | str, what: str) -> Path:
    """``path`` made absolute (relative to the caller's folder), or LabError if it is inside the checkout.

    Why: keys, certificates and device folders written into the repository get committed sooner or
    later; the lab refuses instead of relying on .gitignore.
    """
    p = Path(path).expanduser().resolve()
    if p == ROOT or ROOT in p.parents:
        raise LabError(f"{what} {p} is inside the checkout {ROOT}; keys, certificates and devices must live "
                       f"outside it (e.g. ~/cdcda-lab/{Path(path).name or 'lab'})")
    return p


def bin_dir() -> Path:
    """The folder with this interpreter's console scripts (flwr, flower-superlink, ...).

    Using this venv's scripts, not whatever is first on PATH, keeps the Flower version the one
    the project pins.
    """
    return Path(sys.executable).parent

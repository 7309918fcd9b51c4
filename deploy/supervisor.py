"""Starting and stopping the lab's processes: environment, free ports, process groups, log files.

Nothing here knows about Flower's APIs; :mod:`deploy.session` uses it to run ``flower-superlink``,
``flower-supernode``, ``flwr`` and ``ray``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from .common import HOST, ROOT, bin_dir

# No process started here may reach the network: no model hub, no telemetry, no update check,
# no runtime `uv sync` of the app's dependencies, no Ray usage report.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
# Keep a Ray cluster started here on the loopback interface: with this set to 0, Ray treats the
# machine as a single-node cluster and uses 127.0.0.1 instead of the address of the default route.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Removed from every lab process's environment. In Flower 1.42 these internal toggles make
# flower-superlink start its legacy gRPC Control / Fleet servers next to the HTTP port, bound to
# 0.0.0.0:9093 / 0.0.0.0:9092 by default (flwr/superlink/cli/flower_superlink.py,
# SuperLinkLifespan.startup): every interface, and no account authentication on the Control API.
UNSAFE_ENV = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind port 0 and read what the OS chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (readiness, not health)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def lab_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every lab process: offline, this venv first on PATH, this checkout importable."""
    env = dict(os.environ)
    for name in UNSAFE_ENV:
        env.pop(name, None)
    env.update(OFFLINE_ENV)
    env.update(LOOPBACK_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for error messages (a missing log says so)."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Proc:
    """A started process in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group and every descendant, then SIGKILL what is left.

        The group covers what Flower starts in it (a SuperNode's ``flower-superexec``, ClientApp
        processes); descendants that left the group are signalled by pid: the SuperLink starts its
        ``flower-superexec`` in a new session, which would otherwise outlive it for seconds.
        """
        pgid = self.popen.pid  # start_new_session=True: the group id is the leader's pid
        family = _descendants(self.popen.pid)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            family += [p for p in _descendants(self.popen.pid) if p not in family]
            _signal(pgid, family, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(pgid) and not any(map(_running, family)):
                    return self.popen.returncode
                time.sleep(0.1)
        try:
            return self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie is gone, waiting for its parent to reap it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(pgid: int, family: Sequence[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_process(name: str, args: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path) -> Proc:
    """Start ``args`` in a new session (its own process group, so :meth:`Proc.stop` gets its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("wb")
    try:
        popen = subprocess.Popen(list(args), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=dict(env), cwd=cwd, start_new_session=True)
    finally:
        handle.close()
    return Proc(name, popen, log)

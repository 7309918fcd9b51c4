"""One lab session: a SuperLink, SuperNodes, `flwr` CLI calls and an optional Ray head, torn down together.

Every process binds 127.0.0.1 only (``--host 127.0.0.1`` for the SuperLink's single HTTP port,
which in Flower 1.42 serves the Control, Fleet and Runtime APIs, and for each SuperNode's runtime
API), runs in its own process group with a log file under ``WORK/logs/``, and is stopped when
the ``with Lab(...)`` block ends, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import DEFAULT_WORK, HOST, ROOT, LabError, bin_dir
from .flwr_config import node_config_arg, toml_value, write_flwr_config, write_run_config
from .pki import NodeKeys, TlsFiles
from .supervisor import Proc, free_port, lab_env, port_open, start_process, tail


@dataclass
class SuperLink:
    """A started ``flower-superlink`` and how to reach it (what the CLI connection is written from)."""

    address: str  # host:port of the one HTTP endpoint (Control, Fleet and Runtime APIs)
    proc: Proc
    tls: TlsFiles | None
    auth: bool
    simulation: bool


@dataclass
class Lab:
    """Processes of one lab session; ``with Lab(work) as lab: ...`` always tears them down."""

    work: Path = DEFAULT_WORK
    env_extra: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    superlink: SuperLink | None = None
    connection: str = "local-deployment"  # set by start_superlink: local-simulation / local-deployment
    ray_temp_dirs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work = Path(self.work).resolve()
        (self.work / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def flwr_home(self) -> Path:
        return self.work / "home"

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        return lab_env(flwr_home or self.flwr_home, self.env_extra)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process (newest first); a second Ctrl-C meanwhile cannot cut the cleanup short."""
        with _sigint_ignored():
            for proc in reversed(self.procs):
                proc.stop()
            self.procs.clear()
        for temp in self.ray_temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)
        self.ray_temp_dirs.clear()

    def start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Proc:
        """Start a process that :meth:`close` will stop; output in ``WORK/logs/NAME.log``."""
        proc = start_process(name, args, self.work / "logs" / f"{name}.log", env or self.env(), self.work)
        self.procs.append(proc)
        return proc

    # ------------------------------------------------------------------------------ SuperLink
    def start_superlink(self, *, simulation: bool = False, tls: TlsFiles | None = None, auth: bool = False,
                        port: int | None = None, timeout: float = 60.0) -> SuperLink:
        port = port or free_port()
        args = [str(bin_dir() / "flower-superlink"), "--host", HOST, "--port", str(port),
                "--disable-runtime-dependency-installation", "--database", str(self.work / "superlink.db")]
        if (self.work / "superlink.db").exists():
            (self.work / "superlink.db").unlink()  # a fresh state per lab session
        if simulation:
            args.append("--simulation")
        if tls is None:
            args.append("--insecure")
        else:
            args += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                     "--ssl-keyfile", str(tls.server_key)]
        if auth:
            args.append("--enable-supernode-auth")
        proc = self.start("superlink", args)
        _wait_ready(proc, "Application startup complete", port, timeout, "flower-superlink", 0.2)
        address = f"{HOST}:{port}"
        self.connection = "local-simulation" if simulation else "local-deployment"
        conn: dict[str, Any] = {"address": address}
        if tls is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(tls.ca_cert.resolve())
        write_flwr_config(self.flwr_home, {self.connection: conn})
        self.superlink = SuperLink(address, proc, tls, auth, simulation)
        return self.superlink

    # ------------------------------------------------------------------------------ Flower CLI
    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(bin_dir() / "flwr"), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), cwd=ROOT, timeout=timeout)
        if check and res.returncode != 0:
            raise LabError(f"`flwr {' '.join(args)}` failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def flwr_json(self, *args: str, timeout: float = 120.0) -> Any:
        res = self.flwr(*args, "--format", "json", timeout=timeout)
        return json.loads(res.stdout[res.stdout.index("{"):])

    def register(self, keys: NodeKeys) -> Any:
        """``flwr supernode register PUBLIC_KEY CONNECTION``: allow this SuperNode to connect."""
        return self.flwr_json("supernode", "register", str(keys.public_key), self.connection)

    def list_supernodes(self) -> list[dict[str, Any]]:
        data = self.flwr_json("supernode", "list", self.connection)
        return list(data.get("nodes", data.get("supernodes", [])))

    # ------------------------------------------------------------------------------ SuperNodes
    def start_supernode(self, name: str, node_config: Mapping[str, Any], keys: NodeKeys | None = None,
                        max_wait: float | None = 120.0, trusted_entities: Path | None = None) -> Proc:
        """A SuperNode with its own FLWR_HOME (its own installed apps, as on a separate device).

        ``trusted_entities``: a YAML file for ``--trusted-entities`` (see pki.write_trusted_entities);
        the node then runs only FABs signed by one of those keys. With Flower 1.42 that refuses
        every app started with ``flwr run APP_DIR`` (docs/flower.md, "App verification").
        """
        if self.superlink is None:
            raise LabError("start the SuperLink first")
        args = [str(bin_dir() / "flower-supernode"), "--superlink", self.superlink.address,
                "--host", HOST, "--port", str(free_port()), "--isolation", "subprocess"]
        if node_config:
            args += ["--node-config", node_config_arg(node_config)]
        if self.superlink.tls is None:
            args.append("--insecure")
        else:
            args += ["--root-certificates", str(self.superlink.tls.ca_cert)]
        if keys is not None:
            args += ["--auth-supernode-private-key", str(keys.private_key)]
        if max_wait:
            args += ["--max-wait-time", str(max_wait)]
        if trusted_entities is not None:
            args += ["--trusted-entities", str(trusted_entities)]
        home = self.work / "nodes" / name
        home.mkdir(parents=True, exist_ok=True)
        return self.start(f"supernode-{name}", args, env=self.env(home))

    # ------------------------------------------------------------------------------ runs
    def run(self, app_dir: Path = ROOT, run_config: Mapping[str, Any] | None = None,
            federation_config: Mapping[str, Any] | None = None, timeout: float = 600.0) -> dict[str, Any]:
        """``flwr run APP CONNECTION --stream`` and wait until the run is finished; return its ``flwr ls`` row."""
        args = ["run", str(app_dir), self.connection, "--stream"]
        if run_config:
            args += ["--run-config", str(write_run_config(self.work / "run-config.toml", run_config))]
        if federation_config:
            args += ["--federation-config", " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())]
        log = self.work / "logs" / "flwr-run.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen([str(bin_dir() / "flwr"), *args], stdout=handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env(), cwd=ROOT, start_new_session=True)
            proc = Proc("flwr-run", popen, log)
            try:
                popen.wait(timeout=timeout)
            except BaseException as exc:  # Ctrl-C included: `flwr run` is in its own session, stop it here
                if not isinstance(exc, subprocess.TimeoutExpired):
                    with _sigint_ignored():
                        proc.stop()
                    raise
                proc.stop()
                run_id = _run_id(log)
                if run_id:
                    self.flwr("stop", run_id, self.connection, check=False, timeout=30)
                raise LabError(f"flwr run did not finish within {timeout:.0f}s:\n{tail(log)}") from None
        run_id = _run_id(log)
        if popen.returncode != 0 or not run_id:
            raise LabError(f"flwr run failed ({popen.returncode}):\n{tail(log)}")
        # --stream returns when the run's log stream ends; confirm the run itself is finished.
        deadline = time.monotonic() + 60
        while True:
            row = self.run_status(run_id)
            if str(row.get("status", "")).startswith("finished") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        row["log"] = str(log)
        return row

    def run_status(self, run_id: str) -> dict[str, Any]:
        data = self.flwr_json("ls", self.connection, "--run-id", str(run_id))
        runs = data.get("runs", [])
        return dict(runs[0]) if runs else {}

    # ------------------------------------------------------------------------------ Ray
    def start_ray_head(self, num_cpus: int = 2, port: int | None = None, timeout: float = 90.0,
                       object_store_mb: int = 256) -> str:
        """A Ray head node on 127.0.0.1 (``ray start --head --block`` in this lab's process group).

        Stopped with the lab by killing that process group, not with ``ray stop`` (which would
        stop every Ray instance on the machine). All Ray ports are chosen free ports; usage stats
        and the dashboard are off. Returns the address for ``sim.ray-address``.
        """
        import tempfile

        port = port or free_port()
        # Ray's socket paths must stay short (AF_UNIX limit), so its temp dir lives in /tmp.
        temp = Path(tempfile.mkdtemp(prefix="cdcda-ray-", dir="/tmp"))
        args = [str(bin_dir() / "ray"), "start", "--head", "--block", "--node-ip-address", HOST,
                "--port", str(port), "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp),
                "--object-store-memory", str(object_store_mb * 1024 * 1024),
                "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port())]
        proc = self.start("ray-head", args)
        self.ray_temp_dirs.append(temp)
        _wait_ready(proc, "Ray runtime started", port, timeout, "ray start", 0.3, ready_name="Ray head")
        return f"{HOST}:{port}"


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block (main thread only; elsewhere signals cannot be changed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _run_id(log: Path) -> str | None:
    """The run id ``flwr run`` printed (needed to poll and to stop a run that overran)."""
    for line in tail(log, 400).splitlines():
        if "Successfully started run" in line:
            return line.split("Successfully started run", 1)[1].split()[0]
    return None


def run_succeeded(row: Mapping[str, Any]) -> bool:
    """Whether a ``flwr ls`` row is a completed run (stopped and failed runs are not)."""
    return str(row.get("status", "")) == "finished:completed"


def _wait_ready(proc: Any, marker: str, port: int, timeout: float, name: str, interval: float,
                ready_name: str | None = None) -> None:
    """Wait until ``proc`` logged ``marker`` and listens on ``port``; LabError (with its log tail)
    if it exits first or is not ready in ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while marker not in proc.log_text() or not port_open(HOST, port):
        if not proc.alive():
            raise LabError(f"{name} exited with {proc.popen.returncode}:\n{tail(proc.log)}")
        if time.monotonic() > deadline:
            raise LabError(f"{ready_name or name} not ready after {timeout:.0f}s:\n{tail(proc.log)}")
        time.sleep(interval)

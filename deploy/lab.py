"""A Flower lab on one machine: SuperLink, SuperNodes and `flwr run`, all on 127.0.0.1, offline.

What it does (each step is a function, usable from tests and scripts):

- ``generate_tls(dir)``: a CA and a server certificate for 127.0.0.1/localhost (``cryptography``);
- ``generate_supernode_keys(dir, name)``: an ECDSA P-384 key pair per SuperNode, OpenSSH formats
  (``flower-supernode --auth-supernode-private-key`` reads the private key, ``flwr supernode
  register`` the public one);
- ``Lab``: starts ``flower-superlink`` (simulation or deployment, insecure or TLS, with or without
  SuperNode authentication) and ``flower-supernode`` processes on free ports, each in its own
  process group with a log file, registers keys, runs ``flwr run`` and stops everything on exit;
- ``local_simulation(cfg)``: `flwr run . local-simulation` on a SuperLink started with
  ``--simulation --disable-runtime-dependency-installation`` (the `:local:` SuperLink the CLI starts
  by itself would install the app's dependencies from PyPI);
- ``deployment(cfg, ...)``: the same apps on a SuperLink and N SuperNodes (one per device).

Everything runs with a project-local ``FLWR_HOME`` (``.flwr/`` by default, see
``deploy/flwr-config.toml``), Flower telemetry and update checks off, Ray usage stats off and the
Hugging Face libraries offline. Command line: ``python -m deploy.lab --help``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_WORK = ROOT / ".flwr"

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


class LabError(RuntimeError):
    """A lab process failed or a run did not complete; the message has the relevant log tail."""


# ---------------------------------------------------------------------------------------- helpers
def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind port 0 and read what the OS chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def bin_dir() -> Path:
    """The folder with this interpreter's console scripts (flwr, flower-superlink, ...)."""
    return Path(sys.executable).parent


def lab_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every lab process: offline, this venv first on PATH, this checkout importable."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.update(LOOPBACK_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# ---------------------------------------------------------------------------------------- TLS + keys
@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def generate_tls(directory: Path | str, hosts: Sequence[str] = (HOST, "localhost"), days: int = 30) -> TlsFiles:
    """A self-signed CA and a server certificate for ``hosts`` (IPs and DNS names), PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdcda-fl lab CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    files.server_key.chmod(0o600)
    return files


@dataclass(frozen=True)
class NodeKeys:
    private_key: Path
    public_key: Path


def generate_supernode_keys(directory: Path | str, name: str) -> NodeKeys:
    """An ECDSA SECP384R1 key pair: ``NAME`` (OpenSSH private key) and ``NAME.pub`` (OpenSSH public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(directory / name, directory / f"{name}.pub")
    keys.private_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    keys.private_key.chmod(0o600)
    keys.public_key.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return keys


# ---------------------------------------------------------------------------------------- configs
def toml_value(value: Any) -> str:
    """A scalar as TOML (strings as literal strings where possible: Windows paths need no escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "'" not in text and "\n" not in text:
        return f"'{text}'"
    if '"' in text:
        raise ValueError(f"cannot pass a value with both ' and \" through Flower's key=value parser: {text!r}")
    return json.dumps(text)


def node_config_arg(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` text: space-separated ``key=value`` pairs, values in TOML syntax."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())


def write_flwr_config(flwr_home: Path, connections: Mapping[str, Mapping[str, Any]],
                      default: str | None = None) -> Path:
    """``$FLWR_HOME/config.toml`` with the given SuperLink connections (replaces the file)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by deploy/lab.py (see deploy/flwr-config.toml)", "[superlink]",
             f"default = {json.dumps(default or next(iter(connections)))}", ""]
    for name, conn in connections.items():
        lines.append(f"[superlink.{name}]")
        lines += [f"{k} = {json.dumps(v) if isinstance(v, str) else toml_value(v)}" for k, v in conn.items()]
        lines.append("")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def app_run_config_keys(app_dir: Path = ROOT) -> dict[str, Any]:
    """The flat run-config keys (and defaults) the Flower app declares in pyproject.toml."""
    from cdcda_fl.config import _flatten

    data = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    return _flatten(data["tool"]["flwr"]["app"].get("config", {}))


def flwr_run_config(cfg: Mapping[str, Any], app_dir: Path = ROOT) -> dict[str, Any]:
    """The ``--run-config`` overrides that make the app's run config equal to ``cfg``.

    Flower only accepts keys declared in ``[tool.flwr.app.config]``; a key missing there whose
    value differs from cdcda-fl's default cannot be passed, and silently dropping it would run a
    different experiment, so that is an error.
    """
    from cdcda_fl.config import DEFAULTS

    declared = app_run_config_keys(app_dir)
    lost = {k: v for k, v in cfg.items() if k not in declared and v != DEFAULTS[k][0]}
    if lost:
        raise LabError(f"run-config keys {sorted(lost)} are not declared in [tool.flwr.app.config] of "
                       f"{app_dir / 'pyproject.toml'}; `flwr run` cannot set them (add them there)")
    return {k: cfg[k] for k in declared if k in cfg}


def write_run_config(path: Path, overrides: Mapping[str, Any]) -> Path:
    """A TOML file for ``flwr run --run-config FILE.toml`` (quoted dotted keys stay flat)."""
    lines = [f"{json.dumps(k)} = {json.dumps(v) if isinstance(v, str) else toml_value(v)}"
             for k, v in overrides.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- processes
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
        """SIGTERM the whole process group (Flower starts SuperExec/ServerApp/ClientApp children), then SIGKILL."""
        pgid = self.popen.pid  # start_new_session=True: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(pgid):
                    return self.popen.returncode
                time.sleep(0.1)
        try:
            return self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class SuperLink:
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
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        for temp in self.ray_temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)
        self.ray_temp_dirs.clear()

    def start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Proc:
        log = self.work / "logs" / f"{name}.log"
        handle = log.open("wb")
        try:
            popen = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(env or self.env()), cwd=self.work, start_new_session=True)
        finally:
            handle.close()
        proc = Proc(name, popen, log)
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
        deadline = time.monotonic() + timeout
        while "Application startup complete" not in proc.log_text() or not port_open(HOST, port):
            if not proc.alive():
                raise LabError(f"flower-superlink exited with {proc.popen.returncode}:\n{tail(proc.log)}")
            if time.monotonic() > deadline:
                raise LabError(f"flower-superlink not ready after {timeout:.0f}s:\n{tail(proc.log)}")
            time.sleep(0.2)
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
                        max_wait: float | None = 120.0) -> Proc:
        """A SuperNode with its own FLWR_HOME (its own installed apps, as on a separate device)."""
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
            except subprocess.TimeoutExpired:
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
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in proc.log_text() or not port_open(HOST, port):
            if not proc.alive():
                raise LabError(f"ray start exited with {proc.popen.returncode}:\n{tail(proc.log)}")
            if time.monotonic() > deadline:
                raise LabError(f"Ray head not ready after {timeout:.0f}s:\n{tail(proc.log)}")
            time.sleep(0.3)
        return f"{HOST}:{port}"


def _run_id(log: Path) -> str | None:
    for line in tail(log, 400).splitlines():
        if "Successfully started run" in line:
            return line.split("Successfully started run", 1)[1].split()[0]
    return None


def run_succeeded(row: Mapping[str, Any]) -> bool:
    return str(row.get("status", "")) == "finished:completed"


# ---------------------------------------------------------------------------------------- recipes
def prepare_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Absolute out-dir (the ServerApp runs from an installed FAB folder) and personas written once."""
    from cdcda_fl.runs import prepare_run_dir

    return dict(prepare_run_dir(dict(cfg)))


def read_results(cfg: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    path = Path(str(cfg["out-dir"])) / "results.json"
    if not run_succeeded(row) or not path.exists():
        raise LabError(f"the run did not complete ({row.get('status')}); no {path}:\n{tail(Path(row['log']))}")
    return json.loads(path.read_text(encoding="utf-8"))


def local_simulation(cfg: Mapping[str, Any], *, work: Path | str = DEFAULT_WORK, app_dir: Path = ROOT,
                     timeout: float = 1800.0) -> dict[str, Any]:
    """`flwr run APP local-simulation` on a local simulation SuperLink; the same run as ``cdcda run`` for ``cfg``."""
    from cdcda_fl.runs import list_users

    cfg = prepare_cfg(cfg)
    results_path = Path(str(cfg["out-dir"])) / "results.json"
    if results_path.exists():
        results_path.unlink()  # a stale report must not pass for this run's
    nodes = int(cfg["sim.num-supernodes"]) or len(list_users(cfg))
    cfg["min-nodes"] = nodes  # the ServerApp waits for this many nodes (sim.num-supernodes is not a run-config key)
    federation = {"num-supernodes": nodes, "client-resources-num-cpus": max(1, round(float(cfg["sim.client-cpus"])))}
    if float(cfg["sim.client-gpus"]):
        federation["client-resources-num-gpus"] = float(cfg["sim.client-gpus"])
    if int(cfg["sim.cpus"]) > 0:
        federation["init-args-num-cpus"] = int(cfg["sim.cpus"])
    overrides = flwr_run_config(cfg, app_dir)
    with Lab(Path(work)) as lab:
        lab.start_superlink(simulation=True)
        row = lab.run(app_dir, overrides, federation, timeout=timeout)
        return read_results(cfg, row)


def deployment(cfg: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]], *, work: Path | str = DEFAULT_WORK,
               tls: bool = True, auth: bool = True, app_dir: Path = ROOT, timeout: float = 1800.0,
               lab: Lab | None = None) -> dict[str, Any]:
    """SuperLink + one SuperNode per entry of ``nodes`` (each a node config), then `flwr run`."""
    cfg = prepare_cfg(cfg)
    results_path = Path(str(cfg["out-dir"])) / "results.json"
    if results_path.exists():
        results_path.unlink()
    cfg["min-nodes"] = len(nodes)
    overrides = flwr_run_config(cfg, app_dir)
    own = lab is None
    lab = lab or Lab(Path(work))
    try:
        files = generate_tls(lab.work / "certs") if tls else None
        lab.start_superlink(tls=files, auth=auth)
        for i, node_config in enumerate(nodes):
            keys = None
            if auth:
                keys = generate_supernode_keys(lab.work / "keys", f"node{i}")
                lab.register(keys)
            lab.start_supernode(f"node{i}", node_config, keys)
        row = lab.run(app_dir, overrides, timeout=timeout)
        return read_results(cfg, row)
    finally:
        if own:
            lab.close()


def device_nodes(cfg: Mapping[str, Any], data_dir: Path | None = None) -> list[dict[str, Any]]:
    """One device per user id of the run: its own ``data-dir``, ``user-id`` and ``storage-dir``.

    A real device has only its own user's files; here all devices read one shared ``data-dir``
    (the run's personas by default) and ``user-id`` selects the device's user in every task.
    """
    from cdcda_fl.runs import list_users

    cfg = dict(cfg)
    if data_dir is not None:
        cfg["data-dir"] = str(Path(data_dir).resolve())
    data = str(cfg["data-dir"]) if cfg["data-dir"] else str(Path(str(cfg["out-dir"])) / "data")
    ids = sorted({u.user_id for u in list_users(cfg)})
    out = Path(str(cfg["out-dir"]))
    return [{"data-dir": data, "user-id": uid, "storage-dir": str(out / "devices" / f"node{i}")}
            for i, uid in enumerate(ids)]


# ---------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from cdcda_fl.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m deploy.lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulation", help="`flwr run` on a local simulation SuperLink (offline)")
    dep = sub.add_parser("deploy", help="SuperLink + one SuperNode per user id on 127.0.0.1, then `flwr run`")
    for p in (sim, dep):
        p.add_argument("config", nargs="?", help="cdcda run config (TOML); default: pyproject's run config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--work", default=str(DEFAULT_WORK), help="FLWR_HOME, logs, certificates (default .flwr/)")
        p.add_argument("--timeout", type=float, default=1800.0, help="seconds before the run is stopped")
    dep.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication")
    dep.add_argument("--no-auth", action="store_true", help="TLS but no SuperNode authentication")
    certs = sub.add_parser("certs", help="write ca.crt, server.pem, server.key for 127.0.0.1/localhost")
    certs.add_argument("dir")
    certs.add_argument("--host", action="append", default=[], help="extra host name or IP for the certificate")
    keys = sub.add_parser("keys", help="write an ECDSA P-384 SuperNode key pair NAME and NAME.pub (OpenSSH)")
    keys.add_argument("dir")
    keys.add_argument("name")
    args = parser.parse_args(argv)

    if args.cmd == "certs":
        files = generate_tls(args.dir, (HOST, "localhost", *args.host))
        print(f"CA {files.ca_cert}\ncertificate {files.server_cert}\nkey {files.server_key}")
        return 0
    if args.cmd == "keys":
        k = generate_supernode_keys(args.dir, args.name)
        print(f"private {k.private_key}\npublic {k.public_key}")
        return 0
    try:
        cfg = load_config(args.config or ROOT / "pyproject.toml", args.set)
        if args.cmd == "simulation":
            results = local_simulation(cfg, work=args.work, timeout=args.timeout)
        else:
            prepared = prepare_cfg(cfg)
            results = deployment(prepared, device_nodes(prepared), work=args.work,
                                 tls=not args.insecure, auth=not (args.insecure or args.no_auth),
                                 timeout=args.timeout)
    except (ConfigError, LabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"results: {Path(str(results['config']['out-dir'])) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`cdcda run`: the same ServerApp and ClientApp, run by Flower's simulation engine in-process.

`flwr run .` runs the very same apps through the Flower CLI; this entry point exists so that a
config file plus ``--set`` overrides is one command, and so that the number of simulated devices
follows the number of users by default.

Faults: the data are validated first (invalid records skip their users, or refuse the run with
``data.strict``); SIGINT/SIGTERM stop the run within seconds (see :class:`StopOnSignal`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cdcda_fl.core.config import Scalar
from cdcda_fl.privacy.policy_file import owners_policy_file
from cdcda_fl.core.progress import log
from cdcda_fl.core.quiet import private_network_defaults, quiet_libraries
from cdcda_fl.data.run_data import hosted_count, user_refs
from cdcda_fl.server.runs import check_run_data, describe_issues, prepare_run_dir, unknown_consent_users
from cdcda_fl.core.run_config import run_config

# Seconds the run gets to wind down after a stop signal before its Ray processes are killed.
STOP_GRACE_S = 5.0


class Interrupted(Exception):
    """The run stopped on SIGINT/SIGTERM; ``str()`` says what was kept and how to resume."""


def backend_config(cfg: dict[str, Scalar]) -> dict[str, Any]:
    """Flower's Ray backend settings from the run config (client resources, cluster address)."""
    rc = run_config(cfg)
    init_args: dict[str, Any] = {"log_to_driver": True}
    if rc.sim.ray_address:
        init_args["address"] = rc.sim.ray_address
    else:
        init_args["_node_ip_address"] = "127.0.0.1"
        if rc.sim.cpus > 0:
            init_args["num_cpus"] = rc.sim.cpus
    return {
        "client_resources": {"num_cpus": rc.sim.client_cpus, "num_gpus": rc.sim.client_gpus},
        "init_args": init_args,
    }


def init_ray(cfg: dict[str, Scalar]) -> None:
    """Start (or join) Ray in this process the way Flower's Ray backend would, before Flower does.

    Why here: ``ray.init`` installs Ray's own SIGTERM handler (it aborts the driver). Starting Ray
    first lets :class:`StopOnSignal` install its handlers afterwards; Flower's backend then finds
    Ray initialised, uses it, and shuts it down at the end of the run as usual.
    """
    import ray

    init_args = dict(backend_config(cfg)["init_args"])
    init_args.setdefault("include_dashboard", False)
    pythonpath = os.pathsep.join([*sys.path, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)


def _kill_descendants(also: list[Any] | None = None) -> None:
    """Kill every process this driver started (Ray's raylet, GCS, workers): nothing is left running.

    ``also``: processes seen earlier (Ray actors are re-parented away from us once the raylet
    exits, so they are collected when the stop signal arrives, before Ray shuts down).
    """
    import psutil

    children = list({p.pid: p for p in [*(also or []), *psutil.Process().children(recursive=True)]}.values())
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=3)


def _finished_users(out: Path) -> int:
    return sum(1 for _ in (out / "users").rglob("*.json")) if (out / "users").is_dir() else 0


class StopOnSignal:
    """SIGINT/SIGTERM handling for one run, installed in the main thread for its duration.

    First signal: ask the ServerApp to stop (``cloud_augment.STOP``: it stops polling for replies,
    so users still training on the devices are abandoned; every finished user is already on disk,
    written atomically). If the engine has not wound down after ``STOP_GRACE_S`` seconds (a Ray
    actor busy training finishes its current message otherwise), the run's Ray processes are
    killed and the process exits with 130. A second signal does that at once.
    """

    def __init__(self, out: Path, grace: float = STOP_GRACE_S):
        self.out = out
        self.grace = grace
        self.signum: int | None = None
        self.processes: list[Any] = []  # this run's processes when the stop signal arrived
        self._previous: dict[int, Any] = {}

    def message(self) -> str:
        name = signal.Signals(self.signum).name if self.signum else "signal"
        return (f"stopped by {name}: {_finished_users(self.out)} finished user(s) kept in {self.out / 'users'}, "
                f"users in flight abandoned. Resume by running the same command again (same out-dir): "
                f"finished users are skipped.")

    def __enter__(self) -> StopOnSignal:
        from strategies.cloud_augment import STOP  # lazy: flwr, imported after private_network_defaults

        STOP.clear()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        from strategies.cloud_augment import STOP  # lazy: flwr, imported after private_network_defaults

        if self.signum is not None:  # a second Ctrl-C: no more waiting
            self._hard_exit()
        self.signum = signum
        STOP.set()
        try:
            import psutil

            self.processes = psutil.Process().children(recursive=True)
        except Exception:  # a snapshot is best effort; the kill below also looks again
            self.processes = []
        print(f"\nstopping ({signal.Signals(signum).name}): abandoning users in flight, keeping finished ones "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self) -> None:
        time.sleep(self.grace)
        self._hard_exit()

    def _hard_exit(self) -> None:
        _kill_descendants(self.processes)
        print(self.message(), file=sys.stderr, flush=True)
        os._exit(130)


def run_simulation(cfg: dict[str, Scalar]) -> dict[str, Any]:
    """Run CDCDA on Flower's Ray simulation engine; return ``results.json``'s content.

    Raises LampDataError/RunDataError for bad data (before anything starts) and Interrupted on
    SIGINT/SIGTERM.
    """
    private_network_defaults(join_cluster=bool(run_config(cfg).sim.ray_address))
    cfg = prepare_run_dir(cfg)
    rc = run_config(cfg)
    issues = check_run_data(cfg)
    if issues:
        log(f"skipping the users of {len(issues)} invalid record(s) (reported in failures.jsonl):\n"
            f"{describe_issues(issues)}")
    owners = owners_policy_file(rc.data_dir)
    if owners is not None:
        log(f"simulating the owners' consent: {owners}, combined with the run's consent.* keys (the stricter per "
            "key), is each simulated device's policy (devices/consent.toml)")
    unknown = unknown_consent_users(cfg)
    if unknown:
        log(f"[yellow]warning:[/yellow] consent overrides name user(s) no task of this run holds: "
            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} (misspelled? they get the [default] policy)")
    refs = user_refs(cfg)
    n_users = len(refs)
    if not n_users:
        raise RuntimeError("no valid users to run (see the data errors above)")
    # Flower and Ray read the environment when imported, so only after private_network_defaults:
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.device import simulation_app as client_app  # lazy: flwr + torch, after the defaults above
    from strategies.cloud_augment import RunInterrupted, make_server_app  # lazy: flwr, after the defaults above

    quiet_libraries()
    per_node = max(1, rc.sim.users_per_node)
    num_nodes = rc.sim.num_supernodes or -(-hosted_count(cfg, refs) // per_node)
    cfg["sim.num-supernodes"] = num_nodes
    log(f"simulating {num_nodes} device(s) for {n_users} user(s); run dir {rc.out_dir}")
    # The actors must find this checkout's packages (clients/, strategies/) when run from elsewhere.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    out = Path(rc.out_dir)
    results_path = out / "results.json"
    if results_path.exists():
        results_path.unlink()  # a stale report must not pass for this run's
    init_ray(cfg)
    with StopOnSignal(out) as stopper:
        logging.getLogger("flwr").setLevel(logging.ERROR)  # its run_simulation deprecation notice is noise here
        try:
            flwr_run_simulation(server_app=make_server_app(cfg, expected_nodes=num_nodes, prepared=True), client_app=client_app,
                                num_supernodes=num_nodes, backend_config=backend_config(cfg))
        except (RunInterrupted, RuntimeError):
            if stopper.signum is None:
                raise
        if stopper.signum is not None:
            _kill_descendants(stopper.processes)  # Flower shut Ray down; make sure no actor lingers
            raise Interrupted(stopper.message())
    if not results_path.exists():
        raise RuntimeError(f"the run did not finish: no {results_path} (see the log above)")
    return json.loads(results_path.read_text(encoding="utf-8"))

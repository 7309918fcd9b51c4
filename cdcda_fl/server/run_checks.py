"""Every check of a run config that can fail before anything starts, in one place (issue 30).

`cdcda run` calls :func:`validate_run_config` before Ray starts (strategies/run_cli.py), and the
orchestrator calls it again before any node is contacted, because `flwr run .` and deployments
reach the ServerApp without the CLI. So a bad setting is one line and exit 2 -- never a failure
per user after the devices trained, or a cloud that fails after every device shared.
The checks themselves stay with the code that reads the keys (one definition each); this module
only names them all.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdcda_fl.cloud.backends import BACKENDS
from cdcda_fl.cloud.reference_writers import REFERENCE_POOLS
from cdcda_fl.core.config import (ConfigError, Scalar, adapter_scope, check_dp_selection, check_lora_layers, federated_methods,
                             methods_of)
from cdcda_fl.data.tasks import parse_task_list
from cdcda_fl.device.schedule import schedule_name
from cdcda_fl.device.select import SelectConfig
from cdcda_fl.device.synthetic_gate import GateConfig
from cdcda_fl.edge.runtime import check_runtime
from cdcda_fl.privacy.report import check_level
from cdcda_fl.core.run_config import run_config


def check_tasks(cfg: Mapping[str, Scalar]) -> None:
    try:
        if not parse_task_list(run_config(cfg).tasks):
            raise ConfigError("tasks: no task given")
    except KeyError as exc:
        raise ConfigError(f"tasks: {exc.args[0]}") from None


def check_cloud_backend(cfg: Mapping[str, Scalar]) -> str:
    """``cloud.backend``: an LLM backend or a simulation-only reference writer (oracle, noise)."""
    kind = run_config(cfg).cloud.kind
    known = [*BACKENDS, *REFERENCE_POOLS]
    if kind not in known:
        raise ConfigError(f"cloud.backend must be one of {', '.join(known)}, got {run_config(cfg).cloud.backend!r}")
    return kind


def check_federated(cfg: Mapping[str, Scalar]) -> None:
    """The FedAvg keys, when a federated method runs (a round count of 0 would train nothing)."""
    if not federated_methods(cfg):
        return
    rc = run_config(cfg)
    for key, value in (("fedavg.rounds", rc.fedavg.rounds), ("fedavg.local-steps", rc.fedavg.local_steps),
                       ("fedavg.min-nodes", rc.fedavg.min_nodes)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1 with methods {rc.methods}, got {value}")
    if not 0.0 < rc.fedavg.fraction <= 1.0:
        raise ConfigError(f"fedavg.fraction must be in (0, 1], got {rc.fedavg.fraction}")


def check_adapter_scope(cfg: Mapping[str, Scalar]) -> None:
    """``train.adapter-scope``: a known scope, and ``user`` only where it is built (issue 32).

    ``synthetic.person-context`` needs scope ``user``: only there does a user id name one person
    across tasks (the single-task personas reuse ids for strangers, whose records must not meet).
    """
    context = run_config(cfg).synthetic.person_context
    if context < 0:
        raise ConfigError(f"synthetic.person-context must be >= 0, got {context}")
    if adapter_scope(cfg) != "user":
        if context > 0:
            raise ConfigError("synthetic.person-context needs train.adapter-scope=user (only there does a user id "
                              "name one person across tasks)")
        return
    federated = federated_methods(cfg)
    if federated:
        raise ConfigError(f"train.adapter-scope=user does not support the federated methods yet ({', '.join(federated)}): "
                          "FedAvg trains one global adapter per task")


def validate_run_config(cfg: Mapping[str, Scalar]) -> None:
    """Raise ConfigError (one line: key, value, what is allowed) for the first bad setting."""
    rc = run_config(cfg)
    try:
        rc.checked()  # every key read once through the typed config (a value of the wrong type fails here)
        check_tasks(cfg)
        methods_of(cfg)
        check_runtime(rc.device.runtime)
        check_dp_selection(cfg)
        GateConfig.from_config(cfg)  # the device check and the CDCDA schedule: else every user would fail
        schedule_name(cfg)
        SelectConfig.from_config(cfg)
        check_lora_layers(cfg)
        check_cloud_backend(cfg)
        check_level(rc.eval.report, "eval.report")
        check_federated(cfg)
        check_adapter_scope(cfg)
    except ConfigError:
        raise
    except ValueError as exc:  # the readers' own errors (runtime, report level): same one line, exit 2
        raise ConfigError(str(exc)) from None

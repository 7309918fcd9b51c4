"""Silence library chatter (per-load progress bars, debug loggers) in bulk runs.

Thousands of simulated devices each loading a model must not print thousands of progress bars;
the run's own progress bars and log lines say what is happening.
"""

from __future__ import annotations

import logging
import os
import warnings


class _DropRoutineShutdown(logging.Filter):
    """Drops Flower's "Manually terminating ClientAppActor": its Ray actors say it, at WARNING,
    each time a simulation ends normally (two console lines per actor at the end of every run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Manually terminating %s" and record.args == ("ClientAppActor",))


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # kernels (via bitsandbytes) warns at every quantized load that it skips its publisher trust
    # check "because Hugging Face Hub is in offline mode": offline is this product's design.
    for name in ("bm25s", "transformers", "peft", "bitsandbytes", "opacus", "accelerate", "httpx", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    flwr = logging.getLogger("flwr")
    if not any(isinstance(f, _DropRoutineShutdown) for f in flwr.filters):
        flwr.addFilter(_DropRoutineShutdown())
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; this only guards odd environments
        pass
    # Only known noise is silenced, never whole categories: deprecations of the APIs we call
    # and numerical warnings must stay visible (tests show them in pytest's summary).
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    # torch 2.13 deprecates torch.jit.script_method, which a dependency still calls at import
    # (not our code): one line per Ray actor in every run's console otherwise.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.* is deprecated", category=DeprecationWarning)


def private_network_defaults(join_cluster: bool = False) -> None:
    """No traffic off the machine unless asked: telemetry off, a local Ray bound to loopback.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported: at 0 a locally started Ray
    is single-node and advertises 127.0.0.1 instead of the machine's address. Joining a cluster
    leaves Ray's networking alone. Values already in the environment win.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray 2.55 warns (FutureWarning) on every start that it will stop overriding the visible
    # accelerators for num_gpus=0; opting in to that future behaviour silences just that notice.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not join_cluster:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

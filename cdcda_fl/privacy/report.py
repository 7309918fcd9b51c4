"""What a device's *result* reply may carry: the report policy (``eval.report``) and generic errors.

A result is computed from the user's private held-out data, so it leaves the device only as far as
the report level allows (docs/privacy.md lists every field):

* ``predictions``: everything :func:`cdcda_fl.device.personalize.personalize_user` returns --
  per-method predictions, golds, metrics, ε, timings, counts. For simulation, where the server
  wrote the data anyway, and for owners who opt in.
* ``metrics``: per method only the metric values, ε and the membership-inference AUC, plus the
  number of held-out queries (to weight the mean over users). No prediction, gold, query text,
  profile size, token count or timing. The default on real devices.
* ``none``: only that the user finished.

The level is negotiated like consent: the server asks (``eval.report``; ``auto`` = the device's
default), the device's owner allows (``report`` in its consent file; default ``metrics`` on a real
device, ``predictions`` in simulation), and the lower of the two wins.

Errors leave a device as a code plus record index and field name -- never the exception
text, which can quote a private value or a local path. The full message stays in the device's
own log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from cdcda_fl.data.lamp import LampDataError
from cdcda_fl.privacy.consent import ConsentError

LEVELS = ("none", "metrics", "predictions")  # increasing disclosure
AUTO = "auto"
# "dp" (the DP decision: chosen candidate or fall-back, validation losses on the cloud's records,
# σ, ε, δ) is post-processing of the DP release and public settings (docs/dp.md), so it may leave
# at `metrics`; the per-candidate training loss and timing stay in PrivateDecision.details.
METRIC_ENTRY_KEYS = ("metrics", "epsilon", "mia_auc", "skipped", "decision", "dp")


class ReportError(ValueError):
    """An unknown report level; the message names where it came from."""


def check_level(value: Any, where: str) -> str:
    level = str(value).strip().lower()
    if level not in (*LEVELS, AUTO):
        raise ReportError(f"{where}: report level must be one of {', '.join((*LEVELS, AUTO))}, got {value!r}")
    return level


def effective_level(requested: Any, device_allows: Any, *, real_device: bool) -> str:
    """The lower of what the server asks and what the owner allows (``auto`` = the device default)."""
    default = "metrics" if real_device else "predictions"
    allow = check_level(device_allows or default, "device consent file 'report'")
    allow = default if allow == AUTO else allow
    asked = check_level(requested or AUTO, "eval.report")
    asked = allow if asked == AUTO else asked
    return min(asked, allow, key=LEVELS.index)


def filter_result(result: Mapping[str, Any], level: str) -> dict[str, Any]:
    """The part of ``result`` that may leave the device at ``level`` (a new dict)."""
    if level == "predictions":
        return {**dict(result), "report": level}
    base = {"user_id": result["user_id"], "task": result["task"], "report": level}
    if level == "none":
        return base
    methods: dict[str, Any] = {}
    for name, entry in (result.get("methods") or {}).items():
        methods[name] = {k: entry[k] for k in METRIC_ENTRY_KEYS if k in entry}
    return {**base, "n_queries": int(result.get("n_queries", 0)), "methods": methods}


def generic_error(exc: BaseException) -> str:
    """A code (and, for data errors, record index and field) -- never the message text or a record id."""
    code = getattr(exc, "error_code", None)  # an error that names its own code (e.g. model_not_allowed)
    if isinstance(code, str) and code.isidentifier():
        return code
    if isinstance(exc, LampDataError):
        where = []
        if exc.index is not None:
            where.append(f"record {exc.index}")
        # No record id: the record may be one the user never shared (ids can be meaningful).
        if exc.field_name is not None:
            where.append(f"field {exc.field_name!r}")
        return "data_error" + (f" ({', '.join(where)})" if where else "")
    if isinstance(exc, (ConsentError, ReportError)):
        return "consent_error (see the device's own log)"
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    return f"device_error {type(exc).__name__} (see the device's own log)"


# ---------------------------------------------------------------------- the server's side
_ROOT_MEAN_SQUARE = {"rmse"}
_NOT_POOLABLE = {"f1"}  # macro-F1 over users' pooled predictions is not a mean of per-user F1


def pool_user_metrics(per_user: Iterable[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """A task's metrics from per-user metrics weighted by their query counts.

    Exact for per-example means (accuracy, MAE, ROUGE) and for RMSE (root of the weighted mean of
    squares); macro-F1 is left out because it cannot be recovered from per-user values. Used
    when users report metrics but no predictions.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, n in per_user:
        for name, value in metrics.items():
            if name in _NOT_POOLABLE or value is None:
                continue
            v = float(value) ** 2 if name in _ROOT_MEAN_SQUARE else float(value)
            sums[name] = sums.get(name, 0.0) + v * n
            weights[name] = weights.get(name, 0.0) + n
    out = {}
    for name, total in sums.items():
        mean = total / weights[name]
        out[name] = math.sqrt(mean) if name in _ROOT_MEAN_SQUARE else mean
    return out

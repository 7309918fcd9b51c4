"""How cdcda-fl objects travel in Flower messages: JSON text inside ConfigRecords.

Payloads are small (records, predictions, metrics), so JSON keeps them readable in logs and
audits and avoids any tensor ever being attached by accident: a reply has no ArrayRecord at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from cdcda_fl.core.config import ReceivedConfig, Scalar, received_config

CONFIG = "config"
PAYLOAD = "payload"


def config_record(cfg: Mapping[str, Scalar]) -> ConfigRecord:
    return ConfigRecord(dict(cfg))


def pack(cfg: Mapping[str, Scalar] | None = None, **payload: Any) -> RecordDict:
    """A RecordDict with the run config (if given) and JSON-encoded payload fields."""
    records: dict[str, Any] = {PAYLOAD: ConfigRecord({k: json.dumps(v) for k, v in payload.items()})}
    if cfg is not None:
        records[CONFIG] = config_record(cfg)
    return RecordDict(records)


def unpack(message: Message) -> dict[str, Any]:
    record = message.content[PAYLOAD] if PAYLOAD in message.content else {}
    return {k: json.loads(str(v)) for k, v in record.items()}


def config_of(message: Message, kind: str) -> ReceivedConfig:
    """The run config the ServerApp shipped with a ``kind`` message: checked keys, only the kind's
    (``config.MESSAGE_KEYS``), defaults for the ones it left out."""
    return received_config(kind, dict(message.content[CONFIG]) if CONFIG in message.content else {})


# ---------------------------------------------------------------------- FedAvg (issue 31)
#: keys Flower's FedAvg train messages carry in their ConfigRecord besides the run config:
#: Flower's own ``server-round``, the task whose adapter trains and the rounds done before a resume
FEDAVG_META = ("server-round", "cdcda.task", "cdcda.round-offset")
GLOBAL_PREFIX = "global/"  # ArrayRecords of a personalize message: the global adapter per task


def split_fedavg_config(message: Message) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run config part, the FedAvg meta part) of a FedAvg train message's ConfigRecord."""
    raw = dict(message.content[CONFIG]) if CONFIG in message.content else {}
    meta = {k: raw.pop(k) for k in FEDAVG_META if k in raw}
    return raw, meta


def global_arrays(message: Message) -> dict[str, dict[str, Any]]:
    """task -> numpy arrays of the global adapters a personalize message carries (empty: none)."""
    from flwr.app import ArrayRecord

    return {name[len(GLOBAL_PREFIX):]: {k: v.numpy() for k, v in rec.items()}
            for name, rec in message.content.items() if name.startswith(GLOBAL_PREFIX) and isinstance(rec, ArrayRecord)}


def array_record(arrays: Mapping[str, Any]):
    """An ArrayRecord of numpy arrays, in name order."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(v) for k, v in sorted(arrays.items())})

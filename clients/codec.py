"""How cdcda-fl objects travel in Flower messages: JSON text inside ConfigRecords.

Payloads are small (records, predictions, metrics), so JSON keeps them readable in logs and
audits and avoids any tensor ever being attached by accident: a reply has no ArrayRecord at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from cdcda_fl.config import ReceivedConfig, Scalar, received_config

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

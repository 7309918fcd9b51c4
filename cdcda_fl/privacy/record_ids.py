"""Opaque record ids: what a shared record is called once it leaves the device.

A record's own id is the owner's string (``cancer-biopsy-jane.doe@example.org`` is a valid LaMP
id), and ids are not text the deny terms, the PII scrubber or the field allow-list look at. So an
id never leaves as it is: a shared record is named by ``HMAC-SHA256(key, task, user, id)``
(:func:`opaque_id`), with a random key kept on the device (:func:`device_key`). Why keyed:
LaMP ids are short numbers, and a plain hash of a guessable id is a lookup table away from the id.
Why a persistent key rather than a fresh one per share: the same record keeps its name across
rounds and runs, so the device (and only the device) can map any id the server names back to its
record (:func:`own_ids`), e.g. when its owner reads the server's audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

KEY_FILENAME = "record-id.key"
KEY_BYTES = 32
ID_PREFIX = "r-"
ID_HEX = 24  # 96 bits: no collision within any profile, short in the payload


class RecordIdKeyError(ValueError):
    """The device's record-id key file is unusable; the message names the file."""


def fresh_key() -> bytes:
    """A one-off key (library calls with no device home): its ids are unlinkable to any other call's."""
    return secrets.token_bytes(KEY_BYTES)


def opaque_id(key: bytes, task: str, user_id: str, record_id: str) -> str:
    """The name a record of ``user_id`` on ``task`` leaves the device under."""
    message = json.dumps([str(task), str(user_id), str(record_id)], ensure_ascii=False).encode("utf-8")
    return ID_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()[:ID_HEX]


def own_ids(key: bytes, task: str, user_id: str, record_ids: Iterable[str]) -> dict[str, str]:
    """{opaque id: the owner's id} over ``record_ids`` (the user's profile): the device's way back."""
    return {opaque_id(key, task, user_id, rid): str(rid) for rid in record_ids}


def device_key(home: str | os.PathLike[str]) -> bytes:
    """The device's key, ``<home>/record-id.key`` (0600), created on first use.

    Several workers of one device may start at once: the key is written to a private temporary
    file and linked into place, so exactly one key wins and every worker reads that one.
    """
    path = Path(home) / KEY_FILENAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILENAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another worker was first: use its key
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise RecordIdKeyError(f"cannot read the record-id key {str(path)!r}: {exc.strerror or exc}") from None
    if len(key) != KEY_BYTES:
        raise RecordIdKeyError(f"record-id key {str(path)!r} holds {len(key)} bytes, expected {KEY_BYTES} "
                               "(delete it to make a new one; ids already sent then no longer map back)")
    return key

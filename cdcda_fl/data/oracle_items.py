"""Further real items per user, kept beside a LaMP data dir for the simulation-only reference writers.

A *perfect* cloud writer would return new records that are exactly like the user's own; in a
simulation that writer exists: more items of the same user (for personas, drawn from the same latent
traits; for real writing, the same author's items outside the profile and query windows). The
data builders write them to ``LaMP_k/{split}_oracle.json`` beside the question and output files:

    {"task": "LaMP_2", "split": "dev", "note": "...", "users": {"<user id>": [profile items]}}

Devices never read this file (they load ``{split}_questions.json`` only): it is the server's, and
only the ``oracle`` and ``noise`` writers (cdcda_fl/cloud/reference_writers.py) use it, and they
refuse to run outside a simulation. Nothing here is private-data-safe by design: it is a ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.data.lamp import LampDataError, _load_json
from cdcda_fl.data.tasks import get_task

NOTE = ("further real items per user for the simulation-only oracle/noise cloud writers; "
        "devices never read this file")


def oracle_path(data_dir: Path | str, task: str, split: str) -> Path:
    """Where a data dir keeps the further items of ``task``'s ``split``."""
    return Path(data_dir) / get_task(task).name / f"{split}_oracle.json"


def write_oracle_items(path: Path | str, task: str, split: str, users: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Write the sidecar (atomic): user id -> further items in the task's profile-item schema."""
    spec = get_task(task)
    write_json_atomic(path, {"task": spec.name, "split": split, "note": NOTE,
                             "users": {str(u): [dict(it) for it in items] for u, items in users.items()}})
    return Path(path)


def read_oracle_items(data_dir: Path | str, task: str, split: str) -> dict[str, list[dict[str, Any]]]:
    """The further items of every user; a missing file says which command writes it.

    Items that do not fit the task's profile schema are an error naming the file, user and item,
    like every other malformed LaMP input.
    """
    spec = get_task(task)
    path = oracle_path(data_dir, task, split)
    if not path.is_file():
        raise LampDataError(path, "no further items for the oracle/noise writers: write the data with "
                                  "`cdcda data personas` (or experiments/realtext_git.py), which put them here")
    data = _load_json(path)
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise LampDataError(path, "expected an object with a 'users' object (user id -> items)")
    out: dict[str, list[dict[str, Any]]] = {}
    for uid, items in users.items():
        if not isinstance(items, list):
            raise LampDataError(path, f"user {uid!r}: items must be a list")
        for i, item in enumerate(items):
            problem = spec.validate_item(item) if isinstance(item, dict) else "not an object"
            if problem is not None:
                raise LampDataError(path, f"user {uid!r}: {problem}", index=i,
                                    record_id=item.get("id") if isinstance(item, dict) else None)
        out[str(uid)] = [dict(it) for it in items]
    return out


def item_texts(item: Mapping[str, Any]) -> set[str]:
    """The normalized field values of an item (ids excluded): what "the same item" means here."""
    return {" ".join(str(v).split()).lower() for k, v in item.items() if k != "id" and str(v).strip()}


def disjoint_items(candidates: Sequence[Mapping[str, Any]], profile: Sequence[Mapping[str, Any]],
                   query_texts: Sequence[str], min_chars: int = 20) -> list[dict[str, Any]]:
    """The candidates that repeat no profile item and whose long fields appear in no query.

    Why: the oracle must never hand a device an item it already has or a query's gold (or the
    query's own input text); labels such as a tag are short and shared by many items, so only
    long values (``min_chars``) count as evidence of the same item.
    """
    known = [item_texts(p) for p in profile]
    queries = [" ".join(q.split()).lower() for q in query_texts]
    out = []
    for cand in candidates:
        texts = item_texts(cand)
        if any(texts == k for k in known):
            continue
        long_values = [t for t in texts if len(t) >= min_chars]
        if any(t in k for t in long_values for k in known) or any(t in q for t in long_values for q in queries):
            continue
        out.append(dict(cand))
    return out

"""An on-disk index of one task's LaMP split: who the users are and where their records live.

Why: real LaMP files are hundreds of MB of JSON per task. Loading them whole in every Ray worker
(each serves a few users) costs GBs per worker. The index is built once per run (by the driver,
streaming the questions file record by record), and then a node reads only its own users'
records by byte offset, so a worker's memory does not grow with the data set.

Layout of an index folder (written atomically: a temp folder, then rename)::

    header.json   sources (path, size, mtime), users [[user_id, n_profile, offset, length], ...],
                  issues (every invalid record, with the user it makes us skip)
    users.jsonl   one line per valid user: {"user_id", "questions": [[offset, length], ...],
                  "golds": {question id: output}}

Validation happens while indexing: a user with any invalid record (question or gold), or a
question without a gold, is left out of the index and reported as an issue; problems with a whole
file (missing, not JSON, wrong top-level type, another task's outputs) raise LampDataError.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cdcda_fl.data.lamp import (
    LampDataError,
    User,
    _load_json,
    find_split_files,
    group_users,
    outputs_with_errors,
    record_user_id,
    validate_question,
)
from cdcda_fl.data.tasks import TaskSpec, get_task

INDEX_VERSION = 1
_WS = " \t\r\n"


# ---------------------------------------------------------------------- streaming a JSON list
def iter_json_list(path: Path, chunk_size: int = 1 << 20) -> Iterator[tuple[int, int, int, Any]]:
    """Yield ``(index, byte_offset, byte_length, value)`` for each element of a top-level JSON list.

    Holds about one chunk plus the current element in memory. The offsets let a reader seek to
    one element later (``json.loads(f.read(length))`` after ``f.seek(offset)``).
    """
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        buf = ""
        pos = 0
        byte_pos = 0  # byte offset in the file of buf[pos]
        eof = False
        want = chunk_size

        def fill() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            data = handle.read(want)
            try:
                text = text_decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise LampDataError(path, f"not UTF-8 text ({exc.reason} near byte {byte_pos})") from None
            if not data:
                eof = True
            buf = buf[pos:] + text
            pos = 0
            return True

        def skip_ws() -> None:
            nonlocal pos, byte_pos
            while True:
                while pos < len(buf) and buf[pos] in _WS:
                    pos += 1
                    byte_pos += 1
                if pos < len(buf) or not fill():
                    return

        fill()
        if buf.startswith("\ufeff"):  # a UTF-8 byte-order mark
            pos, byte_pos = 1, 3
        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise LampDataError(path, "a questions file must hold a JSON list")
        pos += 1
        byte_pos += 1
        index = 0
        while True:
            skip_ws()
            if pos >= len(buf):
                raise LampDataError(path, f"not valid JSON: the list is not closed (at byte {byte_pos})")
            if buf[pos] == "]":
                pos += 1
                skip_ws()
                if pos < len(buf):
                    raise LampDataError(path, f"not valid JSON: extra data after the list (at byte {byte_pos})")
                return
            if index:
                if buf[pos] != ",":
                    raise LampDataError(path, f"not valid JSON: expected ',' between records (at byte {byte_pos})")
                pos += 1
                byte_pos += 1
                skip_ws()
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as exc:
                    if eof:
                        raise LampDataError(path, f"not valid JSON: {exc.msg} (record {index}, "
                                                  f"near byte {byte_pos + len(buf[pos:exc.pos].encode())})") from None
                # The element may run past the buffer: read more (doubling, so a huge record is linear).
                want = min(want * 2, 1 << 26)
                fill()
            length = len(buf[pos:end].encode("utf-8"))
            yield index, byte_pos, length, value
            index += 1
            pos = end
            byte_pos += length
            want = chunk_size
            if pos > chunk_size:
                buf, pos = buf[pos:], 0


def read_record(handle: BinaryIO, offset: int, length: int) -> Any:
    handle.seek(offset)
    return json.loads(handle.read(length).decode("utf-8"))


# ---------------------------------------------------------------------- the index
@dataclass(frozen=True)
class UserRef:
    """A user as the index knows them: enough to select and place them, not their data."""

    task: str
    user_id: str
    n_profile: int
    offset: int  # of their line in users.jsonl
    length: int


@dataclass(frozen=True)
class DataIssue:
    """One invalid record and the user it makes the run skip (None when no user can be told)."""

    task: str
    user: str | None
    file: str
    message: str  # LampDataError's text: names file, record and field

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "user": self.user, "file": self.file, "message": self.message}


class TaskIndex:
    """A built index folder; :meth:`load_user` reads one user's records from the LaMP files."""

    def __init__(self, folder: Path, header: dict[str, Any]):
        self.folder = folder
        self.task = str(header["task"])
        self.questions_path = Path(header["questions"]["path"])
        self.users = [UserRef(self.task, u[0], u[1], u[2], u[3]) for u in header["users"]]
        self.issues = [DataIssue(**i) for i in header["issues"]]

    def load_users(self, refs: list[UserRef]) -> list[User]:
        """The given users, read by offset (questions re-validated: the file may have changed)."""
        spec = get_task(self.task)
        out: list[User] = []
        with (self.folder / "users.jsonl").open("rb") as lines, self.questions_path.open("rb") as questions:
            for ref in refs:
                entry = read_record(lines, ref.offset, ref.length)
                records = []
                for index, (offset, length) in entry["questions"]:
                    record = read_record(questions, offset, length)
                    validate_question(record, index, spec, self.questions_path)
                    records.append(record)
                out += group_users(records, entry["golds"], self.task)
        return out


def _fingerprint(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def index_folder(root: Path, questions: Path, split: str, task: str) -> Path:
    digest = hashlib.sha256(str(questions.resolve()).encode()).hexdigest()[:12]
    return root / f"{task}-{split}-{digest}"


def task_index(data_dir: Path | str, task: str, split: str, root: Path | str) -> TaskIndex:
    """The index of ``data_dir/<task>/**/{split}_questions.json`` under ``root`` (built when missing or stale).

    Many processes may ask at once (Ray workers): a file lock makes one build it, the rest read it.
    """
    from filelock import FileLock

    spec = get_task(task)
    questions, outputs = find_split_files(Path(data_dir) / spec.name, split)
    if outputs is None:
        raise LampDataError(questions.parent, f"no {split}_outputs.json found: golds are needed to evaluate")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = index_folder(root, questions, split, spec.name)
    sources = {"questions": _fingerprint(questions), "outputs": _fingerprint(outputs)}
    with FileLock(str(folder) + ".lock"):
        header = _read_header(folder)
        if header is None or header.get("version") != INDEX_VERSION or \
                {k: header.get(k) for k in sources} != sources:
            header = _build(folder, spec, questions, outputs, sources)
    return TaskIndex(folder, header)


def _read_header(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "header.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _build(folder: Path, spec: TaskSpec, questions: Path, outputs: Path,
           sources: dict[str, Any]) -> dict[str, Any]:
    """Stream the questions, check every record and gold, write the index folder atomically."""
    golds, gold_errors = outputs_with_errors(_load_json(outputs), spec, outputs)
    bad_golds = {}  # question id -> the error of its gold record
    for err in gold_errors:
        if err.record_id is not None:
            bad_golds.setdefault(str(err.record_id), err)
    issues: list[DataIssue] = []
    bad_users: set[str] = set()
    order: list[str] = []
    spans: dict[str, list[list[Any]]] = {}  # user -> [record index, offset, length, question id]
    items: dict[str, set[str]] = {}
    seen_ids: dict[str, int] = {}
    for index, offset, length, record in iter_json_list(questions):
        uid = record_user_id(record)
        problem: LampDataError | None = None
        try:
            validate_question(record, index, spec, questions)
            qid = record["id"]
            if qid in seen_ids:
                problem = LampDataError(questions, f"duplicate id (also record {seen_ids[qid]})", index=index,
                                        record_id=qid, field_name="id")
            elif qid in bad_golds:
                problem = bad_golds[qid]
            elif qid not in golds:
                problem = LampDataError(outputs, f"question id {qid!r} (record {index} of {questions.name}) "
                                                 "has no gold output")
            seen_ids.setdefault(qid, index)
        except LampDataError as exc:
            problem = exc
        if problem is not None:
            issues.append(DataIssue(spec.name, uid, problem.path, str(problem)))
            if uid is not None:
                bad_users.add(uid)
            continue
        if uid not in spans:
            order.append(uid)
            spans[uid] = []
            items[uid] = set()
        spans[uid].append([index, offset, length, qid])
        items[uid].update(item["id"] for item in record["profile"])
    for err in gold_errors:
        if err.record_id is None:  # a gold entry we cannot tie to a question
            issues.append(DataIssue(spec.name, None, err.path, str(err)))

    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        users = []
        with (tmp / "users.jsonl").open("wb") as handle:
            for uid in order:
                if uid in bad_users:
                    continue
                entry = {"user_id": uid,
                         "questions": [[i, [o, n]] for i, o, n, _ in spans[uid]],
                         "golds": {qid: golds[qid] for *_, qid in spans[uid]}}
                line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
                users.append([uid, len(items[uid]), handle.tell(), len(line)])
                handle.write(line)
        header = {"version": INDEX_VERSION, "task": spec.name, **sources, "users": users,
                  "issues": [i.to_dict() for i in issues]}
        (tmp / "header.json").write_text(json.dumps(header, ensure_ascii=False), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return header


def select_users(refs: list[UserRef], max_users: int | None) -> list[UserRef]:
    """All users in file order, or the ``max_users`` with the most history (as OPPU does), ties by id."""
    if max_users is not None and max_users < len(refs):
        return sorted(refs, key=lambda r: (-r.n_profile, r.user_id))[:max_users]
    return list(refs)

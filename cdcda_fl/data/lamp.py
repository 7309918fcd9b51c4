"""LaMP files in and out, with validation that names the file, the record and the field.

Formats (the benchmark's own):
- ``{split}_questions.json``: a list of ``{"id", "input", "profile": [...], ["user_id"]}``.
- ``{split}_outputs.json``: ``{"task": "LaMP_2", "golds": [{"id", "output"}, ...]}``; predictions use
  the same format.

A *data directory* holds one folder per task (``LaMP_2/`` …) in which the split files are found by
name at any depth (the official download nests them as ``train/train_questions.json``).

Users: in the time-based split questions carry ``user_id`` and are grouped by it; in the
user-based split each question is its own user with its own profile. A user's profile is their
local training data; their questions with golds are their held-out evaluation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_json_atomic  # noqa: F401  (re-exported: callers import it from here)
from cdcda_fl.data.tasks import TASKS, TaskSpec, get_task


class LampDataError(ValueError):
    """Malformed LaMP data: the message names the file, the record (index and id) and the field."""

    def __init__(self, path: Path | str, message: str, *, index: int | None = None, record_id: Any = None,
                 field_name: str | None = None) -> None:
        where = [str(path)]
        if index is not None:
            where.append(f"record {index}" + (f" (id {record_id!r})" if record_id is not None else ""))
        if field_name is not None:
            where.append(f"field {field_name!r}")
        super().__init__(": ".join([", ".join(where), message]))
        self.path = str(path)
        self.index = index
        self.record_id = record_id
        self.field_name = field_name


@dataclass
class Query:
    """One held-out question of a user: the LaMP input and, when known, the gold output."""

    id: str
    input: str
    gold: str | None = None


@dataclass
class User:
    """A LaMP user as a device sees it: private profile (training data) and held-out queries."""

    user_id: str
    task: str
    profile: list[dict[str, Any]]
    queries: list[Query] = field(default_factory=list)


# ---------------------------------------------------------------------- reading
def _load_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise LampDataError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise LampDataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise LampDataError(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _field_error(path: Path, index: int, record: Mapping[str, Any], name: str, message: str) -> LampDataError:
    return LampDataError(path, message, index=index, record_id=record.get("id"), field_name=name)


def validate_question(record: Any, index: int, task: TaskSpec, path: Path) -> None:
    """Check one question record (ids normalised to str in place) or raise LampDataError.

    One record at a time so that a streaming reader (``cdcda_fl.data.index``) and the whole-file
    reader share one set of rules, and a lenient run can skip just the user whose record is bad.
    """
    if not isinstance(record, dict):
        raise LampDataError(path, f"must be an object, got {type(record).__name__}", index=index)
    for name in ("id", "input", "profile"):
        if name not in record:
            raise _field_error(path, index, record, name, "missing field")
    if isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)):
        raise _field_error(path, index, record, "id", f"must be a string, got {type(record['id']).__name__}")
    record["id"] = str(record["id"])
    if not isinstance(record["input"], str):
        raise _field_error(path, index, record, "input", f"must be a string, got {type(record['input']).__name__}")
    if "user_id" in record and (isinstance(record["user_id"], bool) or not isinstance(record["user_id"], (str, int))):
        raise _field_error(path, index, record, "user_id", "must be a string")
    profile = record["profile"]
    if not isinstance(profile, list):
        raise _field_error(path, index, record, "profile", f"must be a list, got {type(profile).__name__}")
    if not profile:
        raise _field_error(path, index, record, "profile", "is empty: a user needs at least one profile item")
    item_ids: set[str] = set()
    for j, item in enumerate(profile):
        problem = task.validate_item(item)
        if problem:
            raise _field_error(path, index, record, f"profile[{j}]", problem)
        item["id"] = str(item["id"])
        if item["id"] in item_ids:
            raise _field_error(path, index, record, f"profile[{j}].id", f"duplicate profile item id {item['id']!r}")
        item_ids.add(item["id"])


def record_user_id(record: Any) -> str | None:
    """The user a question record belongs to (``user_id``, else its own ``id``); None if unreadable."""
    if not isinstance(record, dict):
        return None
    uid = record.get("user_id", record.get("id"))
    return None if uid is None or isinstance(uid, (bool, dict, list, float)) else str(uid)


def question_errors(data: Any, task: TaskSpec, path: Path) -> list[LampDataError]:
    """Every problem of a parsed questions file (not just the first), in record order."""
    if not isinstance(data, list):
        return [LampDataError(path, f"a questions file must hold a JSON list, got {type(data).__name__}")]
    errors: list[LampDataError] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(data):
        try:
            validate_question(record, index, task, path)
        except LampDataError as exc:
            errors.append(exc)
            continue
        if record["id"] in seen:
            errors.append(_field_error(path, index, record, "id", f"duplicate id (also record {seen[record['id']]})"))
        else:
            seen[record["id"]] = index
    return errors


def validate_questions(data: Any, task: TaskSpec, path: Path) -> list[dict[str, Any]]:
    """Check a parsed questions file; return it unchanged (ids normalised to str) or raise LampDataError."""
    errors = question_errors(data, task, path)
    if errors:
        raise errors[0]
    return data


def _outputs_header(data: Any, task: TaskSpec, path: Path) -> None:
    if not isinstance(data, dict):
        raise LampDataError(path, f"an outputs file must hold a JSON object, got {type(data).__name__}")
    for name in ("task", "golds"):
        if name not in data:
            raise LampDataError(path, "missing top-level field", field_name=name)
    try:
        declared = get_task(str(data["task"])).name
    except KeyError:
        raise LampDataError(path, f"unknown task {data['task']!r}", field_name="task") from None
    if declared != task.name:
        raise LampDataError(path, f"file says task {data['task']!r} but {task.name} was expected", field_name="task")
    if not isinstance(data["golds"], list):
        raise LampDataError(path, "must be a list", field_name="golds")


def outputs_with_errors(data: Any, task: TaskSpec, path: Path, *,
                        check_labels: bool = True) -> tuple[dict[str, str], list[LampDataError]]:
    """The valid id -> output pairs of an outputs file and every per-record problem.

    A file-level problem (not an object, wrong task, no ``golds`` list) raises LampDataError: no
    record of such a file can be trusted.
    """
    _outputs_header(data, task, path)
    out: dict[str, str] = {}
    errors: list[LampDataError] = []
    for index, record in enumerate(data["golds"]):
        if not isinstance(record, dict):
            errors.append(LampDataError(path, f"golds entry must be an object, got {type(record).__name__}",
                                        index=index))
            continue
        missing = [name for name in ("id", "output") if name not in record]
        if missing:
            errors.append(_field_error(path, index, record, missing[0], "missing field"))
            continue
        rid = str(record["id"])
        if rid in out:
            errors.append(_field_error(path, index, record, "id", "duplicate id"))
            continue
        if check_labels:
            problem = task.validate_output(record["output"])
            if problem:
                errors.append(_field_error(path, index, record, "output", problem.removeprefix("field 'output' ")))
                continue
        elif not isinstance(record["output"], str):
            errors.append(_field_error(path, index, record, "output",
                                       f"must be a string, got {type(record['output']).__name__}"))
            continue
        out[rid] = record["output"]
    return out, errors


def validate_outputs(data: Any, task: TaskSpec, path: Path, *, check_labels: bool = True) -> dict[str, str]:
    """Check a parsed outputs (golds or predictions) file; return id -> output."""
    out, errors = outputs_with_errors(data, task, path, check_labels=check_labels)
    if errors:
        raise errors[0]
    return out


def read_questions(path: Path | str, task: str | TaskSpec) -> list[dict[str, Any]]:
    """Read and validate a ``*_questions.json`` file (one copy in memory, validated in place)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    path = Path(path)
    return validate_questions(_load_json(path), spec, path)


def read_outputs(path: Path | str, task: str | TaskSpec, *, check_labels: bool = True) -> dict[str, str]:
    """Read and validate a ``*_outputs.json`` file (golds or predictions): id -> output."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    path = Path(path)
    return validate_outputs(_load_json(path), spec, path, check_labels=check_labels)


def detect_task(path: Path | str) -> str | None:
    """The task named by an outputs file, or by a ``LaMP_k`` folder on the path, else None."""
    path = Path(path)
    for part in reversed(path.resolve().parts):
        if re.fullmatch(r"(?i)lamp_?\d+\w*", part):
            try:
                return get_task(re.match(r"(?i)lamp_?(\d+)", part).group(1)).name
            except KeyError:
                continue
    return None


# ---------------------------------------------------------------------- writing



def write_questions(path: Path | str, questions: Sequence[Mapping[str, Any]]) -> None:
    write_json_atomic(path, list(questions))


def write_outputs(path: Path | str, task: str, outputs: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
    """Write golds or predictions in LaMP's outputs format."""
    items = outputs.items() if isinstance(outputs, Mapping) else outputs
    write_json_atomic(path, {"task": get_task(task).name, "golds": [{"id": i, "output": o} for i, o in items]})


# ---------------------------------------------------------------------- data directories
def find_split_files(task_dir: Path | str, split: str) -> tuple[Path, Path | None]:
    """Find ``{split}_questions.json`` (required) and ``{split}_outputs.json`` at any depth."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise LampDataError(task_dir, "task folder not found")

    def first(name: str) -> Path | None:
        hits = sorted(task_dir.rglob(name), key=lambda p: (len(p.parts), str(p)))
        return hits[0] if hits else None

    questions = first(f"{split}_questions.json")
    if questions is None:
        raise LampDataError(task_dir, f"no {split}_questions.json found (searched all sub-folders)")
    return questions, first(f"{split}_outputs.json")


def group_users(questions: Sequence[Mapping[str, Any]], golds: Mapping[str, str] | None, task: str) -> list[User]:
    """Group questions into users: by ``user_id`` when present, else one user per question.

    Profiles of one user's questions are merged by item id (time-based LaMP repeats them), keeping
    first-seen order so the result is deterministic.
    """
    users: dict[str, User] = {}
    profile_ids: dict[str, set[str]] = {}
    for q in questions:
        uid = str(q.get("user_id", q["id"]))
        user = users.get(uid)
        if user is None:
            user = users[uid] = User(user_id=uid, task=task, profile=[])
            profile_ids[uid] = set()
        for item in q["profile"]:
            if item["id"] not in profile_ids[uid]:
                profile_ids[uid].add(item["id"])
                user.profile.append(item)
        user.queries.append(Query(id=q["id"], input=q["input"], gold=(golds or {}).get(q["id"])))
    return list(users.values())


def load_task_users(data_dir: Path | str, task: str, split: str = "dev", *, max_users: int | None = None,
                    require_golds: bool = True) -> list[User]:
    """Load one task's users from a data directory (``DIR/LaMP_k/**/{split}_questions.json``).

    With ``max_users`` the users with the most history are kept (as OPPU does), ties by id.
    """
    spec = get_task(task)
    task_dir = Path(data_dir) / spec.name
    questions_path, outputs_path = find_split_files(task_dir, split)
    questions = read_questions(questions_path, spec)
    golds = read_outputs(outputs_path, spec) if outputs_path else None
    if require_golds and golds is None:
        raise LampDataError(task_dir, f"no {split}_outputs.json found: golds are needed to evaluate")
    if golds is not None:
        missing = [q["id"] for q in questions if q["id"] not in golds]
        if missing:
            raise LampDataError(outputs_path or task_dir, f"{len(missing)} question id(s) have no gold, e.g. {missing[:5]}")
    users = group_users(questions, golds, spec.name)
    if max_users is not None and max_users < len(users):
        users = sorted(users, key=lambda u: (-len(u.profile), u.user_id))[:max_users]
    return users


def infer_task(data: Any) -> str | None:
    """The task a parsed LaMP file holds, from its content (None when it cannot be told).

    Outputs files name their task. Questions files are told apart by the fields of their profile
    items (LaMP_1 and LaMP_5 share ``title``/``abstract``: LaMP_1 inputs offer references [1]/[2]).
    """
    if isinstance(data, dict):
        try:
            return get_task(str(data.get("task", ""))).name
        except KeyError:
            return None
    if not isinstance(data, list):
        return None
    votes: dict[str, int] = {}
    for record in data[:200]:
        if not isinstance(record, dict) or not isinstance(record.get("profile"), list):
            continue
        for item in record["profile"][:20]:
            if not isinstance(item, dict):
                continue
            keys = set(item) - {"id"}
            for spec in TASKS.values():
                if keys == set(spec.profile_fields):
                    name = spec.name
                    if name in ("LaMP_1", "LaMP_5"):
                        text = str(record.get("input", ""))
                        name = "LaMP_1" if "[1]" in text and "[2]" in text else "LaMP_5"
                    votes[name] = votes.get(name, 0) + 1
    if not votes:
        return None
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])
    if len(ranked) > 1 and ranked[1][1] * 2 > ranked[0][1]:
        return None  # no clear majority: refuse to guess
    return ranked[0][0]


@dataclass
class PathReport:
    """What ``cdcda data validate`` found: one summary line per good file, every problem found."""

    lines: list[str] = field(default_factory=list)
    errors: list[LampDataError] = field(default_factory=list)


def _lamp_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.json") if p.name.endswith(("_questions.json", "_outputs.json")))


def check_path(path: Path | str, task: str | None = None) -> PathReport:
    """Validate a data directory, a task folder or a single LaMP file, collecting every error.

    The task comes from ``task`` if given, else a ``LaMP_k`` folder on the path, else the file's
    content (:func:`infer_task`).
    """
    path = Path(path)
    report = PathReport()
    if not path.exists():
        report.errors.append(LampDataError(path, "no such file or folder"))
        return report
    files = _lamp_files(path)
    if not files:
        report.errors.append(LampDataError(path, "no *_questions.json or *_outputs.json files found"))
    for file in files:
        try:
            data = _load_json(file)
            name = task or detect_task(file) or infer_task(data)
            if name is None:
                raise LampDataError(file, "cannot tell the task from the folder or the content: pass --task LaMP_k")
            spec = get_task(name)
        except (LampDataError, KeyError) as exc:
            report.errors.append(exc if isinstance(exc, LampDataError) else LampDataError(file, str(exc.args[0])))
            continue
        if file.name.endswith("_outputs.json") or isinstance(data, dict):
            try:
                golds, errors = outputs_with_errors(data, spec, file)
            except LampDataError as exc:
                report.errors.append(exc)
                continue
            report.errors += errors
            if not errors:
                report.lines.append(f"{file}: {spec.name}, {len(golds)} outputs")
        else:
            errors = question_errors(data, spec, file)
            report.errors += errors
            if not errors:
                users = len({str(r.get("user_id", r["id"])) for r in data})
                report.lines.append(f"{file}: {spec.name}, {len(data)} questions, {users} users")
    return report


def validate_path(path: Path | str, task: str | None = None) -> list[str]:
    """Validate like :func:`check_path`; return the summary lines or raise the first LampDataError."""
    report = check_path(path, task)
    if report.errors:
        raise report.errors[0]
    return report.lines

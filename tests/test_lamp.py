"""LaMP file layer: round trips for every task and each validation error, named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.data.lamp import (
    LampDataError,
    find_split_files,
    group_users,
    load_task_users,
    read_outputs,
    read_questions,
    validate_path,
    write_outputs,
    write_questions,
)
from cdcda_fl.data.personas import make_task_split
from cdcda_fl.data.tasks import TASK_NAMES


@pytest.mark.parametrize("task", TASK_NAMES)
def test_round_trip_every_task(tmp_path: Path, task: str) -> None:
    questions, golds = make_task_split(task, "dev", users=2, seed=3)
    write_questions(tmp_path / "q.json", questions)
    write_outputs(tmp_path / "o.json", task, golds)
    assert read_questions(tmp_path / "q.json", task) == questions
    assert read_outputs(tmp_path / "o.json", task) == dict(golds)
    # Writing what was read gives the same bytes.
    before = (tmp_path / "q.json").read_bytes()
    write_questions(tmp_path / "q.json", read_questions(tmp_path / "q.json", task))
    assert (tmp_path / "q.json").read_bytes() == before


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


GOOD_Q = {"id": "q1", "input": "Generate a title for the following abstract of a paper: x",
          "profile": [{"id": "p1", "abstract": "a", "title": "t"}]}


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda q: q.pop("input"), ["record 0 (id 'q1')", "field 'input'", "missing field"]),
        (lambda q: q.update(input=5), ["field 'input'", "must be a string"]),
        (lambda q: q["profile"][0].pop("title"), ["field 'profile[0]'", "missing field 'title'"]),
        (lambda q: q["profile"][0].update(abstract=["x"]), ["profile[0]", "'abstract' must be a string"]),
        (lambda q: q.update(profile=[]), ["field 'profile'", "is empty"]),
        (lambda q: q.update(profile="nope"), ["field 'profile'", "must be a list"]),
        (lambda q: q["profile"].append({"id": "p1", "abstract": "b", "title": "u"}), ["duplicate profile item id"]),
    ],
)
def test_question_validation_names_file_record_and_field(tmp_path: Path, mutate, expect) -> None:
    record = json.loads(json.dumps(GOOD_Q))
    mutate(record)
    path = _write(tmp_path / "dev_questions.json", [record])
    with pytest.raises(LampDataError) as err:
        read_questions(path, "LaMP_5")
    message = str(err.value)
    assert str(path) in message
    for fragment in expect:
        assert fragment in message


def test_duplicate_question_id(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.json", [GOOD_Q, dict(GOOD_Q)])
    with pytest.raises(LampDataError, match=r"record 1 \(id 'q1'\).*duplicate id"):
        read_questions(path, "LaMP_5")


def test_score_field_checked(tmp_path: Path) -> None:
    q = {"id": "1", "input": "r", "profile": [{"id": "a", "text": "ok", "score": "9"}]}
    with pytest.raises(LampDataError, match="within 1..5"):
        read_questions(_write(tmp_path / "q.json", [q]), "LaMP_3")


def test_outputs_task_disagrees(tmp_path: Path) -> None:
    path = _write(tmp_path / "o.json", {"task": "LaMP_3", "golds": [{"id": "1", "output": "3"}]})
    with pytest.raises(LampDataError, match="file says task 'LaMP_3' but LaMP_2 was expected"):
        read_outputs(path, "LaMP_2")


def test_outputs_label_outside_list_and_missing_fields(tmp_path: Path) -> None:
    bad_label = _write(tmp_path / "a.json", {"task": "LaMP_2", "golds": [{"id": "1", "output": "western"}]})
    with pytest.raises(LampDataError, match="record 0 .*'output'.*not one of the task's labels"):
        read_outputs(bad_label, "LaMP_2")
    # predictions are read without the label check: a wrong label is scored, not rejected
    assert read_outputs(bad_label, "LaMP_2", check_labels=False) == {"1": "western"}
    with pytest.raises(LampDataError, match="missing top-level field"):
        read_outputs(_write(tmp_path / "b.json", {"golds": []}), "LaMP_2")
    with pytest.raises(LampDataError, match="field 'output'.*missing"):
        read_outputs(_write(tmp_path / "c.json", {"task": "LaMP_2", "golds": [{"id": "1"}]}), "LaMP_2")


def test_bad_json_names_position(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text('[{"id": "1",', encoding="utf-8")
    with pytest.raises(LampDataError, match=r"q.json.*not valid JSON.*line 1"):
        read_questions(path, "LaMP_2")


def test_split_files_found_at_any_depth_and_users_grouped(tmp_path: Path) -> None:
    questions, golds = make_task_split("LaMP_2", "dev", users=3, seed=1)
    nested = tmp_path / "LaMP_2" / "dev"
    write_questions(nested / "dev_questions.json", questions)
    write_outputs(nested / "dev_outputs.json", "LaMP_2", golds)
    q, o = find_split_files(tmp_path / "LaMP_2", "dev")
    assert q.parent == nested and o is not None
    users = load_task_users(tmp_path, "LaMP_2", "dev")
    assert len(users) == 3
    assert all(len(u.queries) == 8 and all(x.gold for x in u.queries) for u in users)
    assert load_task_users(tmp_path, "LaMP_2", "dev", max_users=1)[0].user_id in {u.user_id for u in users}
    with pytest.raises(LampDataError, match="no train_questions.json"):
        load_task_users(tmp_path, "LaMP_2", "train")


def test_user_based_split_each_question_is_a_user() -> None:
    qs = [dict(GOOD_Q, id="a"), dict(GOOD_Q, id="b")]
    users = group_users(qs, {"a": "x", "b": "y"}, "LaMP_5")
    assert [u.user_id for u in users] == ["a", "b"]
    assert users[1].queries[0].gold == "y"


def test_validate_path_reports_summary_and_errors(tmp_path: Path) -> None:
    questions, golds = make_task_split("LaMP_3", "dev", users=2, seed=0)
    write_questions(tmp_path / "LaMP_3" / "dev_questions.json", questions)
    write_outputs(tmp_path / "LaMP_3" / "dev_outputs.json", "LaMP_3", golds)
    lines = validate_path(tmp_path)
    assert any("16 questions, 2 users" in line for line in lines)
    questions[5]["profile"] = []
    write_questions(tmp_path / "LaMP_3" / "dev_questions.json", questions)
    with pytest.raises(LampDataError, match=r"record 5 .*'profile'.*empty"):
        validate_path(tmp_path)


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path) -> None:
    """A writer that fails half-way leaves the previous file intact and no temp file behind."""
    from cdcda_fl.core.atomic import atomic_path, write_text_atomic

    target = tmp_path / "report.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]

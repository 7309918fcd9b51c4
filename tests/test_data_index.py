"""The on-disk data index: streamed offsets, per-user reads, lenient validation, rebuild on change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config
from cdcda_fl.data.index import iter_json_list, read_record, task_index
from cdcda_fl.data.lamp import LampDataError, load_task_users, write_outputs, write_questions
from cdcda_fl.data.personas import make_task_split, write_personas

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_stream_offsets_read_back_every_record(tmp_path: Path, chunk: int) -> None:
    records = [{"id": str(i), "text": "é ü 雪 " * i, "n": [i, {"x": "]},"}]} for i in range(40)]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    seen = list(iter_json_list(path, chunk_size=chunk))
    assert [v for *_, v in seen] == records
    with path.open("rb") as handle:
        assert [read_record(handle, off, n) for _, off, n, _ in seen] == records


@pytest.mark.parametrize("text, fragment", [
    ('{"a": 1}', "must hold a JSON list"),
    ('[{"id": "1"}, {"id": ', "not valid JSON"),
    ('[{"id": "1"} {"id": "2"}]', "expected ','"),
    ('[{"id": "1"}] x', "extra data"),
])
def test_stream_rejects_broken_json(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "q.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LampDataError, match=fragment):
        list(iter_json_list(path, chunk_size=5))


def _task_dir(tmp_path: Path, task: str = "LaMP_2", users: int = 4) -> tuple[list, dict]:
    questions, golds = make_task_split(task, "dev", users=users, seed=5)
    return json.loads(json.dumps(questions)), dict(golds)


def _write(tmp_path: Path, questions: list, golds: dict, task: str = "LaMP_2") -> None:
    write_questions(tmp_path / "data" / task / "dev_questions.json", questions)
    write_outputs(tmp_path / "data" / task / "dev_outputs.json", task, golds)


def test_index_matches_whole_file_reader(tmp_path: Path) -> None:
    questions, golds = _task_dir(tmp_path)
    _write(tmp_path, questions, golds)
    index = task_index(tmp_path / "data", "LaMP_2", "dev", tmp_path / "idx")
    assert not index.issues
    expected = load_task_users(tmp_path / "data", "LaMP_2", "dev")
    assert [r.user_id for r in index.users] == [u.user_id for u in expected]
    assert [r.n_profile for r in index.users] == [len(u.profile) for u in expected]
    assert index.load_users(index.users) == expected
    assert index.load_users(index.users[2:3]) == expected[2:3]


def test_invalid_records_skip_their_user_only(tmp_path: Path) -> None:
    questions, golds = _task_dir(tmp_path)
    users = []
    for q in questions:
        if q["user_id"] not in users:
            users.append(q["user_id"])
    bad_item = next(i for i, q in enumerate(questions) if q["user_id"] == users[0])
    del questions[bad_item]["profile"][0]["tag"]  # one item of one user's first question
    last = max(i for i, q in enumerate(questions) if q["user_id"] == users[1])
    golds[questions[last]["id"]] = "not-a-tag"  # a gold outside the label list
    del golds[next(q["id"] for q in questions if q["user_id"] == users[2])]  # a question with no gold
    _write(tmp_path, questions, golds)
    index = task_index(tmp_path / "data", "LaMP_2", "dev", tmp_path / "idx")
    assert [r.user_id for r in index.users] == users[3:]
    skipped = {i.user: i for i in index.issues}
    assert set(skipped) == set(users[:3])
    assert f"record {bad_item}" in skipped[users[0]].message and "missing field 'tag'" in skipped[users[0]].message
    assert skipped[users[0]].file.endswith("dev_questions.json")
    assert "not one of the task's labels" in skipped[users[1]].message
    assert skipped[users[1]].file.endswith("dev_outputs.json")
    assert "has no gold" in skipped[users[2]].message


def test_index_is_rebuilt_only_when_a_file_changes(tmp_path: Path) -> None:
    questions, golds = _task_dir(tmp_path)
    _write(tmp_path, questions, golds)
    first = task_index(tmp_path / "data", "LaMP_2", "dev", tmp_path / "idx")
    header = first.folder / "header.json"
    stamp = header.stat().st_mtime_ns
    assert task_index(tmp_path / "data", "LaMP_2", "dev", tmp_path / "idx").folder == first.folder
    assert header.stat().st_mtime_ns == stamp  # read, not rebuilt
    _write(tmp_path, questions[: len(questions) // 2], golds)
    again = task_index(tmp_path / "data", "LaMP_2", "dev", tmp_path / "idx")
    assert len(again.users) < len(first.users)


def test_file_level_problem_refuses(tmp_path: Path) -> None:
    questions, golds = _task_dir(tmp_path)
    _write(tmp_path, questions, golds)
    write_outputs(tmp_path / "data" / "LaMP_2" / "dev_outputs.json", "LaMP_3", {})
    with pytest.raises(LampDataError, match="file says task 'LaMP_3'"):
        task_index(tmp_path / "data", "LaMP_2", "dev", tmp_path / "idx")


def test_node_reads_only_its_own_users(tmp_path: Path, monkeypatch) -> None:
    """hosted_users loads the records of the node's partition, never the others'."""
    from cdcda_fl.device import node as device
    from cdcda_fl.data import index as index_mod

    write_personas(tmp_path / "data", users=6, tasks=["LaMP_2"], seed=1, splits=("dev",))
    cfg = load_config(ROOT / "experiments" / "configs" / "tiny.toml",
                      [f"out-dir={tmp_path / 'out'}", f"data-dir={tmp_path / 'data'}", "tasks=LaMP_2", "users=0"])
    loaded: list[str] = []
    original = index_mod.TaskIndex.load_users

    def spy(self, refs):
        loaded.extend(r.user_id for r in refs)
        return original(self, refs)

    monkeypatch.setattr(index_mod.TaskIndex, "load_users", spy)
    users = device.hosted_users({"partition-id": 1, "num-partitions": 3, device.SIMULATED: True}, cfg)
    everyone = [r.user_id for r in device.user_refs(cfg)]
    assert [u.user_id for u in users] == everyone[1::3] == loaded

"""`cdcda data …` and `cdcda eval` as a user calls them."""

from __future__ import annotations

import json
from pathlib import Path

from cdcda_fl.cli import main


def test_personas_validate_eval(tmp_path: Path, capsys) -> None:
    assert main(["data", "personas", "--out", str(tmp_path), "--users", "2", "--tasks", "LaMP_2,LaMP_5", "--seed", "4"]) == 0
    assert main(["data", "validate", str(tmp_path)]) == 0
    golds = tmp_path / "LaMP_2" / "dev_outputs.json"
    assert main(["eval", "--task", "LaMP_2", "--golds", str(golds), "--preds", str(golds), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(out) == {"accuracy": 1.0, "f1": json.loads(out)["f1"]}
    assert json.loads(out)["f1"] > 0


def test_validate_fails_with_location(tmp_path: Path, capsys) -> None:
    main(["data", "personas", "--out", str(tmp_path), "--users", "1", "--tasks", "LaMP_3"])
    qfile = tmp_path / "LaMP_3" / "dev_questions.json"
    data = json.loads(qfile.read_text())
    del data[2]["profile"][0]["score"]
    qfile.write_text(json.dumps(data))
    assert main(["data", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "dev_questions.json" in err and "record 2" in err and "missing field 'score'" in err


def test_eval_reports_id_mismatch(tmp_path: Path, capsys) -> None:
    golds = tmp_path / "g.json"
    preds = tmp_path / "p.json"
    golds.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "1", "output": "3"}]}))
    preds.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "2", "output": "3"}]}))
    assert main(["eval", "--task", "LaMP_3", "--golds", str(golds), "--preds", str(preds)]) == 1
    assert "have no prediction" in capsys.readouterr().err


def _lone_lamp3_file(tmp_path: Path, broken: int) -> Path:
    """A LaMP_3 questions file outside any LaMP_k folder, with ``broken`` records missing 'score'."""
    from cdcda_fl.data.lamp import write_questions
    from cdcda_fl.data.personas import make_task_split

    questions = json.loads(json.dumps(make_task_split("LaMP_3", "dev", users=6, seed=2)[0]))  # unshared items
    for q in questions[:broken]:
        del q["profile"][0]["score"]
    path = tmp_path / "somewhere" / "my_questions.json"
    write_questions(path, questions)
    return path


def test_validate_lone_file_infers_task_from_content(tmp_path: Path, capsys) -> None:
    path = _lone_lamp3_file(tmp_path, broken=0)
    assert main(["data", "validate", str(path)]) == 0
    assert "LaMP_3" in capsys.readouterr().out
    assert main(["data", "validate", str(path), "--task", "LaMP_4"]) == 1  # LaMP_4 items need 'title'
    assert "missing field 'title'" in capsys.readouterr().err


def test_validate_lists_every_error_bounded(tmp_path: Path, capsys) -> None:
    path = _lone_lamp3_file(tmp_path, broken=7)
    assert main(["data", "validate", str(path), "--max-errors", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("invalid:") == 3 and "record 0" in err and "record 2" in err
    assert "and 4 more error(s)" in err and "7 error(s) found" in err
    assert main(["data", "validate", str(path)]) == 1
    assert capsys.readouterr().err.count("invalid:") == 7


def test_validate_cannot_tell_task_asks_for_flag(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x_questions.json"
    path.write_text(json.dumps([{"id": "1", "input": "?", "profile": [{"id": "a", "weird": "x"}]}]))
    assert main(["data", "validate", str(path)]) == 1
    assert "--task" in capsys.readouterr().err
    assert main(["data", "validate", str(path), "--task", "LaMP_99"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_user_prefix_gives_each_device_its_own_ids_and_the_same_texts(tmp_path: Path, capsys) -> None:
    """Two devices that each write one persona must not both hold ``dev-u0000`` (issue 34)."""
    for name in ("phone1", "phone2"):
        assert main(["data", "personas", "--out", str(tmp_path / name), "--users", "1", "--tasks", "LaMP_2",
                     "--splits", "dev", "--user-prefix", f"{name}-"]) == 0
    assert "ids phone2-dev-u0000" in capsys.readouterr().out
    one, two = (json.loads((tmp_path / n / "LaMP_2" / "dev_questions.json").read_text()) for n in ("phone1", "phone2"))
    assert {q["user_id"] for q in one} == {"phone1-dev-u0000"} and {q["user_id"] for q in two} == {"phone2-dev-u0000"}
    assert not {q["id"] for q in one} & {q["id"] for q in two}
    assert all(p["id"].startswith("phone1-dev-u0000-p") for p in one[0]["profile"])
    assert [q["input"] for q in one] == [q["input"] for q in two]  # only the ids changed
    assert main(["data", "validate", str(tmp_path / "phone1")]) == 0
    assert main(["data", "personas", "--out", str(tmp_path / "bad"), "--users", "1", "--user-prefix", "a/b"]) == 2
    assert "user prefix 'a/b'" in capsys.readouterr().err

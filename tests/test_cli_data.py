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

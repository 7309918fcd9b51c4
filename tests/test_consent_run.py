"""A real `cdcda run` (Flower's simulation engine, tiny-random) with real owners' consent in the data
dir, seen from the server's side (issue 29.1 and 29.13).

The held-out check of issue 29.13: a data dir whose consent.toml says one user shares nothing and
the others deny a term, run with the widest consent.* keys (share everything, no scrubbing, no deny
terms). Before, the owners' file was ignored and every canary reached the cloud. And the server's
view (its audit log: who shared how many records, how many bytes) must be the same whether a user
has 2 or 6 denied records (29.1): no count it sees depends on records that were not shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.cli import main
from cdcda_fl.privacy.audit_log import read_audit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "tiny.toml"
QUIET = "dev-u0000"  # shares nothing, by its owner's file
OWNERS = f'[default]\nshare-fraction = 1.0\ndeny-terms = ["oncology"]\n\n["{QUIET}"]\nshare-fraction = 0\n'
WIDE = ["consent.share-fraction=1.0", "consent.scrub=false", "consent.deny-terms="]
TINY = ["tasks=LaMP_2", "users=3", "methods=cdcda", "train.steps=1", "train.synthetic-gate=none",
        "synthetic.per-user=2", "synthetic.max-new-tokens=8", "eval.max-queries=1", "sim.users-per-node=3"]


def _data(root: Path, denied: int) -> Path:
    """Personas with canaries: every record of QUIET, and ``denied`` extra records per other user."""
    from cdcda_fl.data.personas import write_personas

    write_personas(root, users=3, tasks=["LaMP_2"], splits=("dev",), profile_size=(6, 6), queries_per_user=1)
    path = root / "LaMP_2" / "dev_questions.json"
    questions = json.loads(path.read_text())
    for q in questions:
        if q["user_id"] == QUIET:
            for i, item in enumerate(q["profile"]):
                item["description"] += f" QUIETCANARY{i}"
        else:
            q["profile"] += [{"id": f"{q['user_id']}-d{k}", "tag": "comedy",
                              "description": f"An oncology ward drama DENIEDCANARY{k}."} for k in range(denied)]
    path.write_text(json.dumps(questions))
    (root / "consent.toml").write_text(OWNERS)
    return root


def _run(tmp: Path, name: str, denied: int) -> Path:
    out = tmp / name / "run"
    args = ["run", str(CONFIG), "--data-dir", str(_data(tmp / name / "data", denied)), "--out", str(out)]
    assert main([*args, *[a for s in (*WIDE, *TINY) for a in ("--set", s)]]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("consent-run")
    return _run(tmp, "two", 2), _run(tmp, "six", 6)


def _server_view(out: Path) -> dict[str, tuple[int, int]]:
    return {ln["user"]: (ln["n_shared"], ln["bytes"]) for ln in read_audit(out / "audit.jsonl") if ln["kind"] == "share"}


def test_the_owners_file_in_the_data_dir_holds_in_a_simulation(runs) -> None:
    out = runs[0]
    view = _server_view(out)
    assert view[QUIET] == (0, 2) and all(n == 6 for u, (n, _b) in view.items() if u != QUIET)  # "[]" is 2 bytes
    device = [ln for ln in read_audit(out / "devices" / "audit.jsonl") if ln["kind"] == "share"]
    assert all(not any("-d" in i for i in ln["own_ids"]) for ln in device)  # no denied record left a device
    import tomllib

    merged = tomllib.loads((out / "devices" / "consent.toml").read_text())
    assert "oncology" in merged["default"]["deny-terms"] and QUIET in merged
    assert merged["default"]["scrub"] is True


def test_the_server_sees_the_same_whatever_the_number_of_denied_records(runs) -> None:
    two, six = (_server_view(out) for out in runs)
    assert two == six and len(two) == 3


def test_no_opaque_id_names_an_owners_record(runs) -> None:
    lines = [ln for ln in read_audit(runs[0] / "audit.jsonl") if ln["kind"] == "share"]
    ids = [i for ln in lines for i in ln["record_ids"]]
    assert ids and all(i.startswith("r-") and "dev-u" not in i for i in ids)


def test_a_broken_owners_file_refuses_the_run_naming_it(tmp_path, capsys) -> None:
    data = _data(tmp_path / "data", 0)
    (data / "consent.toml").write_text('[default]\nshare-fraction = 0.5\n\n["dev-u0001"]\nrecord-ids = ["x"]\n')
    code = main(["run", str(CONFIG), "--data-dir", str(data), "--out", str(tmp_path / "out"), "--set", "tasks=LaMP_2"])
    err = capsys.readouterr().err
    assert code == 2 and "consent.toml" in err and "dev-u0001" in err and "Traceback" not in err

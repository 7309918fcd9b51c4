"""The simulation-only reference writers (oracle = ceiling, noise = floor) and their data sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.cloud.reference_writers import LABELS, NotSimulated, make_reference_writer
from cdcda_fl.core.config import load_config
from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.oracle_items import item_texts, oracle_path, read_oracle_items
from cdcda_fl.data.personas import write_personas
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import SharedRecords

TASKS = ("LaMP_2", "LaMP_3", "LaMP_5", "LaMP_7")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("personas")
    write_personas(out, users=6, tasks=TASKS, seed=3, splits=("dev",), queries_per_user=5)
    return out


def _share(user, fraction: float = 0.5) -> SharedRecords:
    spec = get_task(user.task)
    k = max(1, int(len(user.profile) * fraction))
    recs = [dict(r) for r in user.profile[:k]]
    return SharedRecords(user.user_id, user.task, recs, [r["id"] for r in recs], ["id", *spec.profile_fields],
                         len(user.profile), k, 0)


def _writer(kind: str, data: Path, **sets):
    cfg = load_config(None, [f"cloud.backend={kind}", "synthetic.per-user=6", "split=dev",
                             *[f"{k}={v}" for k, v in sets.items()]])
    return make_reference_writer(cfg, simulated=True, data_dir=str(data))


@pytest.mark.parametrize("task", TASKS)
def test_oracle_never_hands_a_profile_item_a_query_or_a_gold(data: Path, task: str) -> None:
    users = load_task_users(data, task, "dev")
    results = _writer("oracle", data).augment([_share(u, 1.0) for u in users])
    given = 0
    for u in users:
        known = [item_texts(p) for p in u.profile]
        queries = [" ".join(f"{q.input} {q.gold}".split()).lower() for q in u.queries]
        for rec in results[u.user_id].records:
            given += 1
            texts = item_texts({k: v for k, v in rec.items() if k != "synthetic"})
            assert texts not in known
            long_values = [t for t in texts if len(t) >= 20]
            assert not any(t in q for t in long_values for q in queries), rec
            assert rec["synthetic"] is True and rec["id"].startswith(f"syn-{u.user_id}-")
    assert given > 0


def test_oracle_records_are_the_users_own_further_items(data: Path) -> None:
    users = load_task_users(data, "LaMP_5", "dev")
    pool = read_oracle_items(data, "LaMP_5", "dev")
    results = _writer("oracle", data).augment([_share(u) for u in users])
    for u in users:
        own = [item_texts({k: v for k, v in it.items() if k != "id"}) for it in pool[u.user_id]]
        for rec in results[u.user_id].records:
            assert item_texts({k: v for k, v in rec.items() if k not in ("id", "synthetic")}) in own
        assert results[u.user_id].counts["accepted"] == len(results[u.user_id].records) <= 6


def test_noise_records_are_other_users_items_with_labels_of_the_task(data: Path) -> None:
    users = load_task_users(data, "LaMP_2", "dev")
    pool = read_oracle_items(data, "LaMP_2", "dev")
    results = _writer("noise", data, **{"synthetic.label-quota": "false"}).augment([_share(u) for u in users])
    spec = get_task("LaMP_2")
    for u in users:
        own = {it["description"] for it in pool[u.user_id]}
        recs = results[u.user_id].records
        assert recs and all(r["description"] not in own for r in recs)
        assert all(r["tag"] in spec.labels for r in recs)


def test_no_shared_record_no_oracle_record(data: Path) -> None:
    u = load_task_users(data, "LaMP_2", "dev")[0]
    empty = SharedRecords(u.user_id, u.task, [], [], ["id", "description", "tag"], len(u.profile), 0, 0)
    res = _writer("oracle", data).augment([empty])[u.user_id]
    assert res.records == [] and res.counts == {"no_shared_records": 1}


def test_reference_writers_are_refused_outside_a_simulation(data: Path) -> None:
    cfg = load_config(None, ["cloud.backend=oracle"])
    with pytest.raises(NotSimulated, match="only in Flower's simulation"):
        make_reference_writer(cfg, simulated=False, data_dir=str(data))


def test_the_orchestrator_refuses_an_oracle_run_over_real_devices(tmp_path: Path) -> None:
    """A transport that does not say it is simulated (a SuperLink deployment) gets no oracle."""
    from cdcda_fl.server import orchestrator

    class RealDevices:  # a Grid adapter without ``simulated``: nothing is sent before the refusal
        def node_ids(self):
            raise AssertionError("must refuse before contacting any node")

    cfg = load_config(None, ["cloud.backend=oracle", f"out-dir={tmp_path / 'run'}", "methods=local,cdcda"])
    with pytest.raises(NotSimulated):
        orchestrator.run_cdcda(RealDevices(), cfg)
    assert not (tmp_path / "run").exists()


def test_grid_transport_is_simulated_only_for_flowers_in_memory_grid() -> None:
    from flwr.superlink.grid import InMemoryGrid

    from strategies.cloud_augment import GridTransport

    assert GridTransport(object()).simulated is False  # type: ignore[arg-type]
    fake = InMemoryGrid.__new__(InMemoryGrid)
    assert GridTransport(fake).simulated is True


def test_sidecar_errors_name_the_file_and_say_what_writes_it(tmp_path: Path) -> None:
    from cdcda_fl.data.lamp import LampDataError

    with pytest.raises(LampDataError, match="cdcda data personas"):
        read_oracle_items(tmp_path, "LaMP_2", "dev")
    path = oracle_path(tmp_path, "LaMP_2", "dev")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"users": {"u1": [{"id": "x", "description": "a film"}]}}))
    with pytest.raises(LampDataError, match=r"dev_oracle.json.*record 0.*'tag'"):
        read_oracle_items(tmp_path, "LaMP_2", "dev")


def test_labels_say_what_each_writer_is() -> None:
    assert "not private" in LABELS["oracle"] and "ceiling" in LABELS["oracle"]
    assert "floor" in LABELS["noise"]


def test_personas_question_files_do_not_change_with_the_sidecar(tmp_path: Path) -> None:
    """The sidecar is written beside the LaMP files; the files devices read stay byte-identical."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_personas(a, users=3, tasks=("LaMP_2",), seed=1, splits=("dev",), oracle_items=0)
    write_personas(b, users=3, tasks=("LaMP_2",), seed=1, splits=("dev",))
    for name in ("dev_questions.json", "dev_outputs.json"):
        assert (a / "LaMP_2" / name).read_bytes() == (b / "LaMP_2" / name).read_bytes()
    assert not oracle_path(a, "LaMP_2", "dev").exists() and oracle_path(b, "LaMP_2", "dev").exists()

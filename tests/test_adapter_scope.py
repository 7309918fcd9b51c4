"""``train.adapter-scope = user``: one adapter per person over every task the device holds (issue 32).

What must hold: one adapter folder per person, from which every task's answers come; a task's
share of the training weight follows the documented n^0.5 rule; one person's records never train
another person's adapter; simulated nodes hold whole people and the orchestrator never splits a
person across messages; under DP one ε covers a person's adapter; the scope is refused where it
is not built (FedAvg).
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdcda_fl.core.config import ConfigError, adapter_scope, load_config
from cdcda_fl.data.index import UserRef
from cdcda_fl.data.lamp import Query, User
from cdcda_fl.data.run_data import node_share, people_count
from cdcda_fl.device.methods.person import MIX_ALPHA, person_mixture, task_masses
from cdcda_fl.device.schedule import exposure_scale
from cdcda_fl.server.unit_order import chunked, node_ordered, personalize_units
from cdcda_fl.server.run_checks import validate_run_config


def _lamp2(uid: str, n: int, seed: int) -> User:
    r = random.Random(seed)
    tags = ["comedy", "horror", "romance"]
    profile = [{"id": f"{uid}-m{i}", "description": f"{uid} likes a film about {r.choice(['cats', 'ghosts', 'love'])} {i}",
                "tag": r.choice(tags)} for i in range(n)]
    queries = [Query(id=f"{uid}-q{i}", input="Which tag does this movie relate to among the following tags? "
                     f"tags: [comedy, horror, romance] description: a {r.choice(['sad', 'odd'])} film {i}",
                     gold=r.choice(tags)) for i in range(2)]
    return User(user_id=uid, task="LaMP_2", profile=profile, queries=queries)


def _lamp5(uid: str, n: int) -> User:
    profile = [{"id": f"{uid}-a{i}", "abstract": f"{uid} studies graph number {i} with care.",
                "title": f"{uid} graphs {i}"} for i in range(n)]
    queries = [Query(id=f"{uid}-t{i}", input=f"Generate a title for the following abstract of a paper: We model {i}.",
                     gold=f"Model {i}") for i in range(2)]
    return User(user_id=uid, task="LaMP_5", profile=profile, queries=queries)


def _records(user: User, n: int) -> list[dict]:
    """``n`` cloud records in the user's task's format."""
    if user.task == "LaMP_2":
        return [{"id": f"s{i}", "description": f"a synthetic film {i}", "tag": user.profile[0]["tag"]} for i in range(n)]
    return [{"id": f"s{i}", "abstract": f"We study synthetic graph {i}.", "title": f"Synthetic {i}"} for i in range(n)]


# ---------------------------------------------------------------------- the mixing rule
def test_task_masses_follow_n_to_the_half() -> None:
    masses = task_masses([4, 40])
    assert MIX_ALPHA == 0.5
    assert masses == pytest.approx([2 / (2 + 40 ** 0.5), 40 ** 0.5 / (2 + 40 ** 0.5)])
    assert masses[0] == pytest.approx(0.240, abs=1e-3)  # proportional mixing would give 4/44 = 0.091
    assert sum(task_masses([3, 7, 20])) == pytest.approx(1.0)
    assert task_masses([0, 9]) == [0.0, 1.0]
    assert task_masses([5, 5], alpha=0.0) == [0.5, 0.5]


def test_the_person_mixture_gives_each_task_its_share_and_keeps_local_steps_per_task() -> None:
    sparse, rich = _lamp2("p1", 4, 0), _lamp5("p1", 40)
    run = SimpleNamespace(user=sparse, person=(sparse, rich), siblings=(), cfg={})
    real, real_w, synth, synth_w, tasks = person_mixture(run, with_records=False)  # type: ignore[arg-type]
    assert tasks == 2 and not synth and not synth_w and len(real) == 44
    lamp2_share = sum(real_w[:4]) / sum(real_w)
    assert lamp2_share == pytest.approx(task_masses([4, 40])[0])
    # the weights average 1: train.equal-real-exposure leaves the budget at train.steps x tasks
    assert exposure_scale({"train.equal-real-exposure": True}, real_w, real) == pytest.approx(1.0)
    assert all("Which tag" in p for p, _ in real[:4]) and all("Generate a title" in p for p, _ in real[4:])


def test_a_persons_adapter_reads_only_that_persons_records() -> None:
    """Sibling runs are grouped by user id, and the mixture reads ``run.person`` alone."""
    from cdcda_fl.device.personalize import _link_siblings

    a2, a5, b2 = _lamp2("a", 5, 1), _lamp5("a", 3), _lamp2("b", 5, 2)
    runs = [SimpleNamespace(user=u, siblings=()) for u in (a2, b2, a5)]
    _link_siblings(runs)  # type: ignore[arg-type]
    assert [r.user for r in runs[0].siblings] == [a2, a5]
    assert [r.user for r in runs[1].siblings] == [b2]
    run = SimpleNamespace(user=a2, person=(a2, a5), siblings=(), cfg={})
    real, *_ = person_mixture(run, with_records=False)  # type: ignore[arg-type]
    outputs = {o for _p, o in real}
    assert outputs == {i["tag"] for i in a2.profile} | {i["title"] for i in a5.profile}
    assert not any(item["description"] in p for p, _o in real for item in b2.profile)


# ---------------------------------------------------------------------- where people live
def _refs(people: list[str], tasks: list[str]) -> list[UserRef]:
    return [UserRef(task=t, user_id=p, n_profile=1, offset=0, length=0) for t in tasks for p in people]


def test_nodes_hold_whole_people_under_user_scope() -> None:
    refs = _refs([f"u{i}" for i in range(5)], ["LaMP_2", "LaMP_5", "LaMP_7"])
    assert people_count(refs) == 5
    by_node = [node_share(refs, p, 2, "user") for p in range(2)]
    key = lambda r: (r.task, r.user_id)
    assert sorted((r for share in by_node for r in share), key=key) == sorted(refs, key=key)
    for share in by_node:
        ids = {r.user_id for r in share}
        assert all(sum(1 for r in share if r.user_id == i) == 3 for i in ids)  # every task of each person
    assert node_share(refs, 0, 2, "task") == refs[0::2]  # task scope: as before


def test_a_person_is_never_split_across_rounds_or_chunks() -> None:
    keys = [f"{t}/u{i}" for t in ("LaMP_2", "LaMP_5") for i in range(5)]
    units = personalize_units(keys, "user")
    assert units[0] == ("LaMP_2/u0", "LaMP_5/u0") and len(units) == 5
    assert personalize_units(keys, "task") == [(k,) for k in keys]
    user_node = {k: 0 for k in keys}
    ordered = node_ordered(keys, user_node, "user")
    for size in (1, 3, 4):
        for chunk in chunked(ordered, size, "user"):
            people = {k.split("/")[1] for k in chunk}
            assert all(sum(1 for k in chunk if k.endswith("/" + p)) == 2 for p in people), chunk
    assert [len(c) for c in chunked(sorted(keys), 3, "task")] == [3, 3, 3, 1]


# ---------------------------------------------------------------------- config
def test_the_scope_is_checked_before_anything_starts() -> None:
    assert adapter_scope(load_config(None, [])) == "task"
    with pytest.raises(ConfigError, match="train.adapter-scope must be one of task, user"):
        validate_run_config(load_config(None, ["train.adapter-scope=person"]))
    validate_run_config(load_config(None, ["train.adapter-scope=user", "dp.enabled=true", "dp.epsilon=8"]))
    with pytest.raises(ConfigError, match="federated methods"):
        validate_run_config(load_config(None, ["train.adapter-scope=user", "methods=local,fedavg"]))
    validate_run_config(load_config(None, ["train.adapter-scope=user"]))


# ---------------------------------------------------------------------- on a device
@pytest.fixture(scope="module")
def tiny_model():
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model

    return DeviceModel(get_base_model("tiny-random"))


def test_one_adapter_per_person_answers_every_task(tiny_model, tmp_path: Path) -> None:
    from cdcda_fl.device.personalize import personalize_users

    people = {uid: [_lamp2(uid, 4, i), _lamp5(uid, 6)] for i, uid in enumerate(("a", "b"))}
    jobs = [(u, []) for uid in people for u in people[uid]]
    cfg = load_config(None, ["methods=base,local,cdcda", "device.model=tiny-random", "train.steps=2",
                             "train.batch-size=2", "eval.batch-size=4", "train.adapter-scope=user"])
    outcomes = personalize_users(jobs, cfg, storage_dir=tmp_path, device_model=tiny_model, people=people)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    folders = sorted(p.relative_to(tmp_path / "adapters") for p in (tmp_path / "adapters").glob("*/*")
                     if (p / "adapter_model.safetensors").is_file())
    assert len(folders) == 2 and all(str(f).startswith("person-local-") for f in folders), folders
    assert {f.name for f in folders} == {"a", "b"}
    for outcome in outcomes:
        local = outcome["methods"]["local"]
        assert local["train"]["tasks"] == 2 and local["train"]["steps"] == 4  # train.steps x tasks
        assert local["train"]["n_real"] == 10  # both tasks' items
        assert outcome["methods"]["cdcda"]["predictions"] == local["predictions"]  # no records: local
    trained = [o["methods"]["local"]["train"] for o in outcomes]
    assert sum(1 for t in trained if not t.get("reused")) == 2  # the first task trains, the second reloads
    # the same users under task scope: one adapter per task
    task_cfg = load_config(None, ["methods=local", "device.model=tiny-random", "train.steps=2",
                                  "train.batch-size=2", "eval.batch-size=4"])
    personalize_users(jobs, task_cfg, storage_dir=tmp_path / "task", device_model=tiny_model)
    assert len([p for p in (tmp_path / "task" / "adapters").glob("*/*")
                if (p / "adapter_model.safetensors").is_file()]) == 4


def test_cdcda_trains_one_adapter_per_person_on_every_tasks_passed_records(tiny_model, tmp_path: Path) -> None:
    """With the check off (``none``: always use), the person's CDCDA adapter holds the real items
    and the cloud's records of both tasks, and both tasks answer with it."""
    from cdcda_fl.device.personalize import personalize_users

    people = {"a": [_lamp2("a", 4, 0), _lamp5("a", 6)]}
    jobs = [(u, _records(u, 3 if u.task == "LaMP_2" else 2)) for u in people["a"]]
    cfg = load_config(None, ["methods=local,cdcda", "device.model=tiny-random", "train.steps=2",
                             "train.batch-size=2", "eval.batch-size=4", "train.adapter-scope=user",
                             "train.synthetic-gate=none"])
    outcomes = personalize_users(jobs, cfg, storage_dir=tmp_path, device_model=tiny_model, people=people)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    cdcda_dirs = [p for p in (tmp_path / "adapters").glob("person-cdcda-*/a")]
    assert len(cdcda_dirs) == 1
    for outcome in outcomes:
        entry = outcome["methods"]["cdcda"]
        assert entry["train"]["n_synthetic"] == 5 and entry["train"]["n_real"] == 10
        assert entry["decision"]["answer_with"] == "cdcda"
    assert [o["n_synthetic_used"] for o in outcomes] == [3, 2]


@pytest.mark.parametrize("gate", ["holdout", "crossfit"])
def test_each_tasks_own_check_decides_for_the_persons_cdcda_adapter(tiny_model, tmp_path: Path, gate: str) -> None:
    """The device's checks under scope user: every task gets its own decision from its own check
    (holdout or crossfit, task-scope fold adapters); the person has at most one CDCDA adapter; a
    task answers with it only if some task's records passed, else with local or base."""
    from cdcda_fl.device.personalize import personalize_users

    people = {"a": [_lamp2("a", 8, 0), _lamp5("a", 8)]}
    jobs = [(u, _records(u, 4)) for u in people["a"]]
    cfg = load_config(None, ["methods=base,local,cdcda", "device.model=tiny-random", "train.steps=2",
                             "train.batch-size=2", "eval.batch-size=4", "train.adapter-scope=user",
                             f"train.synthetic-gate={gate}"])
    outcomes = personalize_users(jobs, cfg, storage_dir=tmp_path, device_model=tiny_model, people=people)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    decisions = [o["methods"]["cdcda"]["decision"] for o in outcomes]
    assert all(d.get("answer_with") in {"cdcda", "local", "base"} for d in decisions), decisions
    assert all(gate in str(d["rule"]) for d in decisions), decisions  # each task's own check ran
    assert len(list((tmp_path / "adapters").glob("person-cdcda-*/a"))) <= 1
    for o, d in zip(outcomes, decisions):
        preds = o["methods"]["cdcda"]["predictions"]
        if d["answer_with"] == "local":
            assert preds == o["methods"]["local"]["predictions"]
        if d["answer_with"] == "base":
            assert preds == o["methods"]["base"]["predictions"]


def test_a_run_can_write_multitask_personas_itself(tmp_path: Path) -> None:
    """``personas.multitask = true``: the run's own personas are one person per id across tasks
    (the multitask experiment needs no separate data step)."""
    from cdcda_fl.data.lamp import load_task_users
    from cdcda_fl.data.multitask_personas import write_multitask_personas
    from cdcda_fl.core.config import resolve
    from cdcda_fl.server.runs import prepare_run_dir

    cfg = prepare_run_dir(resolve({"tasks": "LaMP_2,LaMP_5", "users": 2, "out-dir": str(tmp_path / "run"),
                                   "personas.queries": 2, "personas.multitask": True}))
    write_multitask_personas(tmp_path / "direct", users=2, tasks=("LaMP_2", "LaMP_5"), seed=0, splits=("dev",),
                             queries_per_user=2)
    for task in ("LaMP_2", "LaMP_5"):
        name = f"{task}/dev_questions.json"
        assert (Path(cfg["out-dir"]) / "data" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    ids = [{u.user_id for u in load_task_users(Path(cfg["out-dir"]) / "data", t, "dev")} for t in ("LaMP_2", "LaMP_5")]
    assert ids[0] == ids[1] and len(ids[0]) == 2


def test_export_finds_the_persons_adapter_for_every_task(tmp_path: Path) -> None:
    """`cdcda export RUN --user U --task T` under scope user: the one person folder, whatever T."""
    import json as _json

    from cdcda_fl.device.adapter_store import ADAPTER_WEIGHTS
    from cdcda_fl.edge.export import find_adapter

    run = tmp_path / "run"
    folder = run / "devices" / "adapters" / "person-local-abc123" / "dev-u0000"
    folder.mkdir(parents=True)
    (folder / ADAPTER_WEIGHTS).write_bytes(b"x")
    (run / "config.json").write_text(_json.dumps({"config": {"train.adapter-scope": "user"}}))
    for task in ("LaMP_2", "LaMP_5", "LaMP_7"):
        assert find_adapter(run, "dev-u0000", task, method="local") == folder


def test_under_dp_a_person_has_one_private_adapter_and_one_epsilon_for_every_task(tiny_model, tmp_path: Path) -> None:
    """DP-SGD on the union of the person's tasks: one stored decision per person and method (the
    first task trains, the second reloads it), every task reports the same ε, and the real pairs
    of both tasks are in it. Private selection (the default) chooses on both tasks' unshared records."""
    from cdcda_fl.device.personalize import personalize_users

    people = {"a": [_lamp2("a", 4, 0), _lamp5("a", 6)]}
    jobs = [(u, _records(u, 4)) for u in people["a"]]
    cfg = load_config(None, ["methods=base,local,cdcda", "device.model=tiny-random", "train.steps=2",
                             "train.batch-size=2", "eval.batch-size=4", "train.adapter-scope=user",
                             "dp.enabled=true", "dp.epsilon=8", "dp.public-steps=2"])
    outcomes = personalize_users(jobs, cfg, storage_dir=tmp_path, device_model=tiny_model, people=people)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    stored = sorted(p.parent.name.split("-dp-")[0] for p in (tmp_path / "adapters").glob("*/a"))
    assert stored == ["person-cdcda", "person-local"], stored  # no per-task DP adapter
    for method in ("local", "cdcda"):
        first, second = (o["methods"][method] for o in outcomes)
        assert first["epsilon"] == second["epsilon"] and 0 < first["epsilon"] <= 8.0 + 1e-6
        assert first["dp"] == second["dp"]  # one decision for the person
        assert not first["train"].get("reused") and second["train"]["reused"]
    assert outcomes[0]["methods"]["local"]["train"]["n_real"] == 10  # both tasks' real items

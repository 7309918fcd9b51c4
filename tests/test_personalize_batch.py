"""A node answers all its users' queries together: mixed-adapter batches over one base model.

personalize_users must give exactly the predictions of personalizing each user on its own
(greedy decoding), answer in one mixed-adapter pass, keep one user's failure to that user, and
leave no kept adapter behind.
"""

from __future__ import annotations

import random

import pytest

from cdcda_fl.core.config import load_config


@pytest.fixture(scope="module")
def tiny_model():
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model

    return DeviceModel(get_base_model("tiny-random"))


def _lamp2_user(uid: str, seed: int):
    from cdcda_fl.data.lamp import Query, User

    r = random.Random(seed)
    tags = ["comedy", "horror", "romance"]
    profile = [{"id": f"p{i}", "description": f"a film about {r.choice(['cats', 'ghosts', 'love'])} {i}",
                "tag": r.choice(tags)} for i in range(6)]
    queries = [Query(id=f"q{i}", input=f"Which tag does this movie relate to among the following tags? "
                     f"tags: [comedy, horror, romance] description: a {r.choice(['sad', 'odd'])} film {i}",
                     gold=r.choice(tags)) for i in range(3)]
    return User(user_id=uid, task="LaMP_2", profile=profile, queries=queries)


def _lamp5_user(uid: str):
    from cdcda_fl.data.lamp import Query, User

    profile = [{"id": f"p{i}", "abstract": f"We study graph number {i} with care.", "title": f"Graphs {i}"}
               for i in range(4)]
    queries = [Query(id=f"q{i}", input=f"Generate a title for the following abstract of a paper: We model {i}.",
                     gold=f"Model {i}") for i in range(2)]
    return User(user_id=uid, task="LaMP_5", profile=profile, queries=queries)


def _synthetic(user):
    if user.task == "LaMP_2":
        return [{"id": f"s{i}", "description": f"a synthetic film {i}", "tag": "horror", "synthetic": True}
                for i in range(3)]
    return [{"id": f"s{i}", "abstract": f"We study synthetic graph {i}.", "title": f"Synthetic {i}",
             "synthetic": True} for i in range(3)]


def _cfg(**over):
    sets = {"methods": "base,rag,local,cdcda", "device.model": "tiny-random", "train.steps": 3,
            "train.batch-size": 2, "train.lr": 0.05, "eval.batch-size": 4, "train.synthetic-gate": "none", **over}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def _predictions(result):
    return {m: e["predictions"] for m, e in result["methods"].items()}


def test_kept_adapters_released_then_a_new_training_works(tiny_model):
    """Regression: releasing kept adapters left peft's active adapter pointing at a deleted one."""
    from cdcda_fl.device.training import LoraTrainConfig

    pairs = [("a b c", "d"), ("e f", "g")]
    cfg = LoraTrainConfig(steps=1, batch_size=2)
    tiny_model.train(pairs, cfg)
    tiny_model.keep("x")
    tiny_model.generate(["hi"], max_new_tokens=2, adapters=["x"])
    tiny_model.release("x")
    tiny_model.train(pairs, cfg)  # raised KeyError in PeftModel.active_peft_config
    tiny_model.clear_adapter()
    assert tiny_model.kept == ()


def _count_mixed_calls(model, monkeypatch) -> list[int]:
    """Spy on ``model.generate``: the returned list gets the row count of every mixed-adapter call."""
    mixed_calls: list[int] = []
    real_generate = model.generate

    def spy(prompts, *args, **kwargs):
        if kwargs.get("adapters") is not None:
            mixed_calls.append(len(prompts))
        return real_generate(prompts, *args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return mixed_calls


def test_node_answers_equal_user_by_user_answers_in_one_mixed_pass(tiny_model, tmp_path, monkeypatch):
    from cdcda_fl.device.personalize import personalize_user, personalize_users

    users = [_lamp2_user("a", 1), _lamp2_user("b", 2), _lamp5_user("c")]
    alone = [personalize_user(u, _synthetic(u), _cfg(), storage_dir=tmp_path / "alone", device_model=tiny_model)
             for u in users]

    mixed_calls = _count_mixed_calls(tiny_model, monkeypatch)
    together = personalize_users([(u, _synthetic(u)) for u in users], _cfg(), storage_dir=tmp_path / "node",
                                 device_model=tiny_model)

    assert mixed_calls == [3 * 4 + 3 * 4 + 2 * 4]  # every user's every method in one call
    for a, t in zip(alone, together):
        assert not isinstance(t, Exception), t
        assert _predictions(t) == _predictions(a)
        assert list(t["methods"]) == ["base", "rag", "local", "cdcda"]  # the configured order
        assert all(e["seconds"] > 0 for e in t["methods"].values())
    trained = {p for r in together for m in ("local", "cdcda") for p in _predictions(r)[m].values()}
    assert trained - {""}, "the trained adapters answered nothing: the equality above would be vacuous"
    assert tiny_model.kept == ()  # no user's adapter stays in the shared model


def test_one_users_failure_stays_that_users(tiny_model, tmp_path):
    from cdcda_fl.data.lamp import User
    from cdcda_fl.device.personalize import personalize_users

    good = _lamp2_user("good", 3)
    bad = User(user_id="bad", task="LaMP_2", profile=[], queries=good.queries)  # nothing to train on
    out = personalize_users([(bad, []), (good, [])], _cfg(methods="base,local"), storage_dir=tmp_path,
                            device_model=tiny_model)
    assert isinstance(out[0], ValueError) and "no training examples" in str(out[0])
    assert set(out[1]["methods"]) == {"base", "local"} and "metrics" in out[1]["methods"]["local"]
    assert tiny_model.kept == ()


def test_cdcda_that_falls_back_reuses_local_answers_without_answering_twice(tiny_model, tmp_path, monkeypatch):
    from cdcda_fl.device.personalize import personalize_users

    rows: list[int] = []
    real_generate = tiny_model.generate
    monkeypatch.setattr(tiny_model, "generate",
                        lambda p, *a, **k: (rows.append(len(p)) if k.get("adapters") else None)
                        or real_generate(p, *a, **k))
    user = _lamp2_user("fb", 4)
    (res,) = personalize_users([(user, _synthetic(user))],
                               _cfg(**{"methods": "local,cdcda", "train.synthetic-gate": "holdout",
                                       "train.synthetic-gate-margin": 1e9}),
                               storage_dir=tmp_path, device_model=tiny_model)
    assert res["methods"]["cdcda"]["decision"]["used_synthetic"] is False
    assert res["methods"]["cdcda"]["predictions"] == res["methods"]["local"]["predictions"]
    assert rows == [3]  # local's 3 queries; CDCDA's fall-back answers are local's, not generated again
    # Regression: CDCDA's seconds started after the holdout check, so its two trainings cost nothing.
    assert res["methods"]["cdcda"]["seconds"] >= 0.5 * res["methods"]["local"]["train"]["seconds"]
    # The check's share is reported apart (benchmarks/per_user.py shows it as its own column).
    check = res["methods"]["cdcda"]["check_seconds"]
    assert 0.5 * res["methods"]["local"]["train"]["seconds"] <= check <= res["methods"]["cdcda"]["seconds"]


def test_after_every_adapter_is_released_the_base_still_answers(tiny_model):
    """Regression: with no adapter left, PeftModel.generate looked up the deleted active adapter."""
    from cdcda_fl.device.training import LoraTrainConfig

    before = tiny_model.generate(["hello there"], max_new_tokens=3)
    tiny_model.train([("a b c", "d"), ("e f", "g")], LoraTrainConfig(steps=1, batch_size=2))
    tiny_model.keep("only")
    tiny_model.release("only")
    tiny_model.release_all()
    assert tiny_model.generate(["hello there"], max_new_tokens=3) == before
    assert tiny_model.generate(["hello there"], max_new_tokens=3, adapters=[None]) == before
    tiny_model.train([("a b c", "d"), ("e f", "g")], LoraTrainConfig(steps=1, batch_size=2))
    tiny_model.clear_adapter()


def test_the_cloud_row_of_the_devices_own_model_is_answered_in_the_nodes_batch(tiny_model, tmp_path, monkeypatch):
    """cloud.model = device.model: the upper bound's prompts join the node's mixed batch (no second
    copy of the weights, issue 33); with rag.k = rag.cloud-k its prompts are rag's, so are its answers."""
    from cdcda_fl.device.methods import cloud as cloud_method
    from cdcda_fl.device.personalize import personalize_users

    def no_second_copy(*_args, **_kwargs):
        raise AssertionError("the cloud model was loaded beside the device's own copy")

    monkeypatch.setattr(cloud_method, "cloud_backend", no_second_copy)
    mixed_calls = _count_mixed_calls(tiny_model, monkeypatch)
    cfg = _cfg(methods="rag,cloud", **{"cloud.model": "tiny-random", "rag.k": 2, "rag.cloud-k": 2})
    users = [_lamp2_user("a", 1), _lamp5_user("c")]
    out = personalize_users([(u, []) for u in users], cfg, storage_dir=tmp_path, device_model=tiny_model)
    assert mixed_calls == [2 * 3 + 2 * 2]
    for r in out:
        assert not isinstance(r, Exception), r
        assert _predictions(r)["cloud"] == _predictions(r)["rag"]
    assert cloud_method.CloudUpperBound.from_config(_cfg(**{"cloud.model": "smollm2-135m"})).on_device_base is False
    quantized = _cfg(**{"cloud.model": "tiny-random", "device.quantization": "4bit"})
    assert cloud_method.CloudUpperBound.from_config(quantized).on_device_base is False


def test_a_user_run_is_what_the_parts_below_the_methods_are_typed_against(tiny_model, tmp_path):
    """stored.py, cloud_records.py and holdout_check.py type against run_view's protocols, not
    UserRun (which would close an import circle); UserRun and CloudRecords must still fit them."""
    from cdcda_fl.device.methods.run_view import DeviceRun, RecordPool
    from cdcda_fl.device.methods.user_run import UserRun
    from cdcda_fl.edge.runtime import make_answerer

    cfg = _cfg()
    run = UserRun(_lamp2_user("a", 1), [], cfg, storage_dir=tmp_path, model=tiny_model,
                  answerer=make_answerer(cfg, device_model=tiny_model, storage_dir=tmp_path))
    for proto, obj in ((DeviceRun, run), (RecordPool, run.cloud)):
        members = set(proto.__annotations__) | {n for n in vars(proto) if not n.startswith("_")}
        missing = sorted(m for m in members if not hasattr(obj, m))
        assert not missing, f"{type(obj).__name__} lacks {missing} of {proto.__name__}"


def test_a_user_without_cloud_records_is_told_so_not_that_labels_did_not_fit(tiny_model, tmp_path):
    """A LaMP-5 user (no labels) whose cloud sent nothing read "no synthetic record fits the
    user's items (labels)" in the tiny run's decision table (2026-12-07)."""
    from cdcda_fl.device.personalize import personalize_user

    cfg = _cfg(methods="local,cdcda", **{"train.synthetic-gate": "crossfit"})
    result = personalize_user(_lamp5_user("c"), [], cfg, storage_dir=tmp_path, device_model=tiny_model)
    reason = result["synthetic_decision"]["reason"]
    assert "the cloud sent no usable record" in reason and "labels" not in reason

"""synthetic.person-context (issue 32.3): the writer sees a person's tasks together, and nobody else's."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcda_fl.cloud.augment import AugmentConfig, CloudAugmenter, person_writing
from cdcda_fl.core.config import ConfigError, resolve
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.server.cloud_writer import CloudWriter
from cdcda_fl.server.run_checks import validate_run_config
from cdcda_fl.server.writer_cache import WriterCache, call_key
from tests.test_augment import RecordingBackend


def _titles(user: str) -> SharedRecords:
    recs = [{"id": f"{user}-p{i}", "abstract": f"We study graphs number {i} with care and method.",
             "title": f"{user}word title {i}"} for i in range(4)]
    return SharedRecords(user, "LaMP_5", recs, [r["id"] for r in recs], ["id", "abstract", "title"], 4, 4, 100)


def _tweets(user: str) -> SharedRecords:
    recs = [{"id": f"{user}-t{i}", "text": f"loving my morning run #{user}tag number {i}"} for i in range(3)]
    return SharedRecords(user, "LaMP_7", recs, [r["id"] for r in recs], ["id", "text"], 3, 3, 60)


def _tags(user: str) -> SharedRecords:
    recs = [{"id": f"{user}-m{i}", "description": f"{user}film about space {i}", "tag": "sci-fi"} for i in range(3)]
    return SharedRecords(user, "LaMP_2", recs, [r["id"] for r in recs], ["id", "description", "tag"], 3, 3, 60)


def _title_answer(prompt, i: int) -> str:
    return f" A fresh title number {i}\n\n"


def test_person_writing_takes_each_tasks_own_text_and_skips_movie_tags() -> None:
    lines = person_writing([_tweets("ann"), _tags("ann")])
    assert lines == [f"loving my morning run #anntag number {i}" for i in range(3)]  # LaMP-2 is not the person's writing


@pytest.mark.parametrize("style", ["continuation", "chat"])
def test_prompts_show_only_the_same_persons_other_task_lines(style: str) -> None:
    backend = RecordingBackend(_title_answer)
    cfg = AugmentConfig(per_user=2, max_rounds=1, person_context=2, prompt_style=style)
    context = {u: person_writing([_tweets(u)]) for u in ("ann", "bob")}
    CloudAugmenter(backend, cfg).augment([_titles("ann"), _titles("bob")], context=context)
    assert backend.prompts
    for p in backend.prompts:
        text = p.flat_text()
        owner = "ann" if "annword" in text else "bob"
        other = "bob" if owner == "ann" else "ann"
        assert f"#{owner}tag" in text, text  # the person's own tweets are shown
        assert other not in text, text  # never the other user's titles or tweets
        assert text.count(f"#{owner}tag") <= 2  # at most person-context lines


def test_without_the_setting_prompts_are_exactly_what_they_were() -> None:
    plain, ignored = RecordingBackend(_title_answer), RecordingBackend(_title_answer)
    requests = [_titles("ann"), _titles("bob")]
    CloudAugmenter(plain, AugmentConfig(per_user=2, max_rounds=1)).augment(requests)
    CloudAugmenter(ignored, AugmentConfig(per_user=2, max_rounds=1)).augment(
        requests, context={"ann": ["loving #anntag"], "bob": ["loving #bobtag"]})  # context given, setting 0
    assert [p.flat_text() for p in plain.prompts] == [p.flat_text() for p in ignored.prompts]


class ContextRecorder:
    """Stands in for the writer: remembers the context each call got."""

    def __init__(self) -> None:
        self.contexts: list[dict] = []

    def augment(self, requests, context=None):
        from cdcda_fl.cloud.augment import AugmentResult

        self.contexts.append(dict(context or {}))
        return {r.user_id: AugmentResult(r.user_id, r.task, [], {"accepted": 0}) for r in requests}


def _writer(cfg, augmenter, cache: Path | None = None) -> CloudWriter:
    writer = CloudWriter.__new__(CloudWriter)
    writer.cfg, writer.label, writer.accounting = cfg, "hf:fake", {}
    writer._augmenter, writer.cache = augmenter, (WriterCache(cache) if cache else None)
    return writer


def test_the_cloud_groups_a_chunk_by_person_and_never_crosses_users() -> None:
    cfg = resolve({"train.adapter-scope": "user", "synthetic.person-context": 3})
    recorder = ContextRecorder()
    _writer(cfg, recorder).run([_titles("ann"), _tweets("ann"), _tags("ann"), _titles("bob"), _tags("bob")])
    by_call = recorder.contexts  # sorted by task: LaMP_2, LaMP_5, LaMP_7
    assert len(by_call) == 3
    lamp2, lamp5, lamp7 = by_call
    assert set(lamp2["ann"]) == {*(r["title"] for r in _titles("ann").records), *(r["text"] for r in _tweets("ann").records)}
    assert lamp5 == {"ann": [r["text"] for r in _tweets("ann").records]}  # bob shared no other writing than titles
    assert lamp7 == {"ann": [r["title"] for r in _titles("ann").records]}
    assert set(lamp2["bob"]) == {r["title"] for r in _titles("bob").records}
    for call in by_call:
        for user, lines in call.items():
            assert all(("ann" in line) == (user == "ann") for line in lines)


def test_off_by_default_and_the_cache_key_covers_the_context(tmp_path: Path) -> None:
    recorder = ContextRecorder()
    _writer(resolve({"train.adapter-scope": "user"}), recorder).run([_titles("ann"), _tweets("ann")])
    assert recorder.contexts == [{}, {}]
    cfg = resolve({"train.adapter-scope": "user", "synthetic.person-context": 2})
    requests = [_titles("ann")]
    assert call_key(cfg, "hf:x", "LaMP_5", requests) != call_key(cfg, "hf:x", "LaMP_5", requests, {"ann": ["a tweet"]})
    assert call_key(cfg, "hf:x", "LaMP_5", requests, {"ann": ["a tweet"]}) != \
        call_key(cfg, "hf:x", "LaMP_5", requests, {"ann": ["another tweet"]})


def test_person_context_is_refused_where_an_id_is_not_one_person() -> None:
    with pytest.raises(ConfigError, match="adapter-scope=user"):
        validate_run_config(resolve({"synthetic.person-context": 2}))
    with pytest.raises(ConfigError, match="person-context"):
        validate_run_config(resolve({"train.adapter-scope": "user", "synthetic.person-context": -1}))
    validate_run_config(resolve({"train.adapter-scope": "user", "synthetic.person-context": 2}))

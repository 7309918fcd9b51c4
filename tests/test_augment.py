"""Synthesis: isolation (canaries), parsing/filtering of junk, outages, and the real SmolLM2 on six tasks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import pytest

from cdcda_fl.cloud.augment import AugmentConfig, CloudAugmenter
from cdcda_fl.cloud.backends import BackendError, Prompt
from cdcda_fl.cloud.filters import parse_records
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.audit_log import AuditLog, read_audit
from cdcda_fl.privacy.consent import ConsentPolicy

LAMP2 = get_task("LaMP_2")
CANARY = re.compile(r"CANARY-(\w+)-(\w+)")


class RecordingBackend:
    """Scripted fake: records every prompt it receives, answers with ``respond(prompt, i)``."""

    name = "fake"
    prefers_chat = False

    def __init__(self, respond: Callable[[Prompt, int], str], fail: Callable[[Sequence[Prompt]], bool] | None = None) -> None:
        self.respond = respond
        self.fail = fail
        self.prompts: list[Prompt] = []
        self.calls: list[int] = []

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        self.prompts.extend(prompts)
        self.calls.append(len(prompts))
        if self.fail is not None and self.fail(prompts):
            raise BackendError("http://127.0.0.1:9/v1/completions failed after 4 attempt(s); last: HTTP 503")
        return [self.respond(p, len(self.prompts) + i) for i, p in enumerate(prompts)]


VOCAB = (
    "robots gardens moon lighthouse keepers radio signals desert train orphan violin empire rebels ocean "
    "storm detective memory clone archive winter circus pilot forest machine prophecy harbor clockmaker "
    "mirror satellite tribe glacier courier painter asylum frontier comet vault whistle lantern orchard"
).split()


def novel(i: int, k: int = 9) -> str:
    import random

    return " ".join(random.Random(i).sample(VOCAB, k))


def novel_movie(p: Prompt, i: int) -> str:
    """A clean continuation: finishes the started record, then writes one more whole record."""
    return f" A story of {novel(i)}.\n\ntag: dystopia\ndescription: Another tale of {novel(10_000 + i)}.\n\n"


def movie_user(user: str, n: int = 8) -> list[dict]:
    tags = ["dystopia", "sci-fi", "dystopia", "comedy"]
    return [
        {"id": f"m{i}", "description": f"A film about topic {i} for {user} CANARY-{user}-m{i} with more words here.", "tag": tags[i % 4]}
        for i in range(n)
    ]


def test_prompts_hold_only_consented_records_fields_and_one_user_each(tmp_path) -> None:
    users = {u: movie_user(u) for u in ("alice", "bob", "carol")}
    cfg = {"consent.share-fraction": 0.5, "consent.deny-labels": "comedy"}
    shared = [ConsentPolicy.from_config(cfg, u).apply(LAMP2, u, items) for u, items in users.items()]
    consented = {(s.user_id, rid) for s in shared for rid in s.local_ids}  # the owners' ids (canaries name them)
    assert 0 < len(consented) < 24
    backend = RecordingBackend(novel_movie)
    audit = AuditLog(tmp_path)
    results = CloudAugmenter(backend, {"synthetic.per-user": 4, "cloud.batch-size": 4}, audit=audit).augment(shared)

    assert max(backend.calls) > 1
    for p in backend.prompts:
        found = set(CANARY.findall(p.flat_text()))
        assert found, "every prompt shows some of its user's records"
        assert len({u for u, _ in found}) == 1, f"two users in one prompt: {found}"
        assert found <= consented, f"non-consented record in a prompt: {found - consented}"
    # The audit names exactly the consented records, and never copies their text.
    lines = read_audit(tmp_path)
    assert {(ln["user"], rid) for ln in lines for rid in ln["record_ids"]} == {(s.user_id, rid) for s in shared
                                                                               for rid in s.record_ids}
    assert "CANARY" not in (tmp_path / "audit.jsonl").read_text()
    for u, res in results.items():
        assert res.error is None and len(res.records) == 4
        assert all(r["synthetic"] and r["id"].startswith(f"syn-{u}-") and LAMP2.validate_item(r) is None for r in res.records)
        assert res.counts["accepted"] == 4 and res.counts["generated"] >= 4


def test_field_allow_list_keeps_other_fields_out_of_prompts() -> None:
    items = [{"id": f"p{i}", "abstract": f"Secret ABSCANARY{i} study of things.", "title": f"Visible Title {i} On Graphs"} for i in range(4)]
    shared = ConsentPolicy.from_config({"consent.share-fraction": 1, "consent.fields": "title"}, "u").apply(get_task("LaMP_5"), "u", items)
    backend = RecordingBackend(lambda p, i: f" Learning {novel(i, 4)}\n\n")
    res = CloudAugmenter(backend, {"synthetic.per-user": 2}).augment([shared])["u"]
    assert backend.prompts and all("ABSCANARY" not in p.flat_text() and "abstract" not in p.flat_text() for p in backend.prompts)
    assert res.records and all(set(r) == {"id", "title", "synthetic"} for r in res.records)


def test_label_conditioned_prompts_use_the_users_own_labels() -> None:
    shared = ConsentPolicy(share_fraction=1.0).apply(LAMP2, "u", movie_user("u"))
    backend = RecordingBackend(novel_movie)
    CloudAugmenter(backend, {"synthetic.per-user": 6}).augment([shared])
    targets = {re.search(r"tag: ([^\n]+)\ndescription:$", p.text).group(1) for p in backend.prompts}
    assert targets and targets <= {"dystopia", "sci-fi", "comedy"}


def test_junk_is_filtered_and_counted_never_raised() -> None:
    junk = [
        "",
        " \n\n\n",
        "!!!! ???? <unk> <unk>",
        " too short\n\n",  # length
        " A film about topic 1 for u CANARY-u-m1 with more words here.\n\n",  # copy of a shared record
        " word word word word word word word word word word word\n\n",  # repetitive
        " Cut off by the token limit in the middle of a",  # truncated (no newline, no stop)
        " \n\ntag: not-a-tag\ndescription: A perfectly fine new film about a baker who travels in time.\n\n",  # label
        " Fine new film about orbiting libraries and their keepers.\n\ntag: comedy\ndescription: Fine new film about orbiting libraries and their keeper.\n\n",
    ]
    backend = RecordingBackend(lambda p, i: junk[i % len(junk)])
    shared = ConsentPolicy(share_fraction=1.0).apply(LAMP2, "u", movie_user("u"))
    res = CloudAugmenter(backend, {"synthetic.per-user": 30, "synthetic.max-rounds": 2}).augment([shared])["u"]
    c = res.counts
    assert res.error is None
    assert c["junk_generations"] >= 1
    for reason in ("length", "duplicate", "repetitive", "truncated", "label", "near_duplicate"):
        assert c.get(f"rejected_{reason}", 0) >= 1, (reason, c)
    assert c["accepted"] == len(res.records) >= 1
    assert c["generated"] == c["accepted"] + sum(v for k, v in c.items() if k.startswith("rejected_") and k != "rejected_surplus") + c.get("rejected_surplus", 0)


def test_outage_gives_errors_for_affected_users_only() -> None:
    shared = [ConsentPolicy(share_fraction=1.0).apply(LAMP2, u, movie_user(u)) for u in ("alice", "bob", "carol")]
    down = RecordingBackend(novel_movie, fail=lambda ps: True)
    results = CloudAugmenter(down, {"synthetic.per-user": 2}).augment(shared)
    assert all(r.records == [] and "HTTP 503" in (r.error or "") for r in results.values())
    # Failing only on bob's prompts, one prompt per call: alice and carol are unaffected.
    partial = RecordingBackend(novel_movie, fail=lambda ps: any("CANARY-bob" in p.text for p in ps))
    results = CloudAugmenter(partial, {"synthetic.per-user": 2, "cloud.batch-size": 1}).augment(shared)
    assert results["bob"].error and results["bob"].records == []
    assert results["alice"].error is None and len(results["alice"].records) == 2
    assert results["carol"].error is None and len(results["carol"].records) == 2


def test_user_with_nothing_shared_sends_no_request(tmp_path) -> None:
    none = ConsentPolicy(share_fraction=0.0).apply(LAMP2, "shy", movie_user("shy"))
    some = ConsentPolicy(share_fraction=1.0).apply(LAMP2, "open", movie_user("open"))
    backend = RecordingBackend(novel_movie)
    results = CloudAugmenter(backend, {"synthetic.per-user": 2}, audit=AuditLog(tmp_path)).augment([none, some])
    assert results["shy"].records == [] and results["shy"].counts == {"no_shared_records": 1} and results["shy"].error is None
    assert not any("CANARY-shy" in p.text for p in backend.prompts)
    assert [ln["user"] for ln in read_audit(tmp_path)] == ["open"]
    with pytest.raises(ValueError, match="one request per user"):
        CloudAugmenter(backend, {}).augment([some, some])


def test_parse_reads_every_complete_record_through_markup() -> None:
    text = (
        "Sure! Here are records:\n1. **tag:** sci-fi\n   **description:** A ship that\n dreams.\n\n"
        "- tag: comedy\n- description: \"Two cooks swap lives.\"\nRecord 3\ntag: romance\ndescription: unfinished"
    )
    recs = parse_records(text, ["tag", "description"], label_fields=["tag"])
    assert [r.fields for r in recs] == [
        {"tag": "sci-fi", "description": "A ship that dreams."},
        {"tag": "comedy", "description": "Two cooks swap lives."},
        {"tag": "romance", "description": "unfinished"},
    ]
    assert [r.complete for r in recs] == [True, True, False]
    assert parse_records(text, ["tag", "description"], label_fields=["tag"], ended=True)[-1].complete


def test_augment_config_keys_and_errors() -> None:
    cfg = AugmentConfig.from_config({"synthetic.per-user": "5", "cloud.prompt-style": "chat", "cloud.embed-filter": "true", "seed": 9})
    assert (cfg.per_user, cfg.prompt_style, cfg.embed_filter, cfg.seed, cfg.temperature, cfg.max_new_tokens) == (5, "chat", True, 9, 0.8, 64)
    with pytest.raises(ValueError, match="prompt-style"):
        AugmentConfig.from_config({"cloud.prompt-style": "poetry"})


def test_chat_style_prompts_and_embedding_filter() -> None:
    shared = ConsentPolicy(share_fraction=1.0).apply(LAMP2, "u", movie_user("u"))
    answers = [
        "tag: dystopia\ndescription: A film about a city where citizens are watched by drones all day.\n\n"
        "tag: sci-fi\ndescription: Quarterly tax accounting spreadsheet reconciliation procedures.\n",
    ]
    backend = RecordingBackend(lambda p, i: answers[0])
    cfg = {"cloud.prompt-style": "chat", "synthetic.per-user": 3, "synthetic.max-rounds": 1, "cloud.embed-filter": True, "cloud.embed-min-sim": 0.25}
    res = CloudAugmenter(backend, cfg).augment([shared])["u"]
    assert all(p.is_chat and "CANARY-u" in p.text for p in backend.prompts)
    assert res.counts.get("rejected_embed_off_topic", 0) >= 1
    assert any("drones" in r["description"] for r in res.records)


# ---------------------------------------------------------------------- the real model
TINY: dict[str, list[dict]] = {
    "LaMP_1": [
        {"id": "a1", "title": "Sparse Attention for Long Document Summarization", "abstract": "We propose a sparse attention mechanism that scales linearly with document length and improves summarization of long scientific articles."},
        {"id": "a2", "title": "Efficient Transformers for Legal Text Classification", "abstract": "Legal documents are long and structured. We adapt efficient transformer variants to classify court decisions and report strong gains."},
        {"id": "a3", "title": "Retrieval-Augmented Question Answering over Scientific Papers", "abstract": "We combine a dense retriever with a reader model to answer questions about scientific papers, outperforming extractive baselines."},
    ],
    "LaMP_2": [
        {"id": "m1", "description": "In a future where the state controls every thought, a clerk begins to question the regime.", "tag": "dystopia"},
        {"id": "m2", "description": "A crew of astronauts travels through a wormhole to find a new home for humanity.", "tag": "sci-fi"},
        {"id": "m3", "description": "After a plague, survivors live in walled cities ruled by a cruel council.", "tag": "dystopia"},
        {"id": "m4", "description": "Two rival magicians compete to create the ultimate illusion, with deadly results.", "tag": "twist ending"},
    ],
    "LaMP_3": [
        {"id": "r1", "text": "Great blender, crushes ice easily and is easy to clean. Would buy again.", "score": "5"},
        {"id": "r2", "text": "Works fine but the lid leaks a little when it is full.", "score": "4"},
        {"id": "r3", "text": "Sturdy, quiet and powerful. Best kitchen purchase this year.", "score": "5"},
    ],
    "LaMP_4": [
        {"id": "n1", "text": "The city council voted on Tuesday to expand the bike lane network across downtown, citing safety concerns after a rise in accidents.", "title": "Council Approves Downtown Bike Lane Expansion"},
        {"id": "n2", "text": "Local schools will start classes an hour later next fall after research showed teenagers learn better with more sleep.", "title": "Schools Push Back Start Times for Teen Sleep"},
        {"id": "n3", "text": "A new community garden opened in the east side neighborhood, offering free plots to residents and weekly workshops.", "title": "East Side Garden Offers Free Plots to Residents"},
    ],
    "LaMP_5": [
        {"id": "p1", "abstract": "We study graph neural networks for molecular property prediction and show that message passing with edge features improves accuracy on benchmark datasets.", "title": "Edge-Aware Message Passing for Molecular Property Prediction"},
        {"id": "p2", "abstract": "We introduce a contrastive pretraining method for protein sequences that learns representations useful for structure prediction.", "title": "Contrastive Pretraining of Protein Language Models"},
        {"id": "p3", "abstract": "This paper presents a benchmark for evaluating generative models of small molecules under realistic synthesis constraints.", "title": "A Synthesis-Aware Benchmark for Molecular Generation"},
    ],
    "LaMP_7": [
        {"id": "t1", "text": "just finished my morning run, legs are jelly but the sunrise was worth it #running"},
        {"id": "t2", "text": "coffee number three and it's only 10am. send help"},
        {"id": "t3", "text": "new personal best on the 10k today!! so happy right now #running"},
        {"id": "t4", "text": "rainy day = movie marathon on the couch. any recommendations?"},
    ],
}


@pytest.fixture(scope="module")
def smollm2_backend():
    """The real SmolLM2-135M-Instruct in-process (weights from the process-level cache)."""
    from cdcda_fl.cloud.backends import HFBackend

    return HFBackend("smollm2-135m", batch_size=12)


@pytest.mark.slow
def test_each_task_yields_valid_records_from_real_smollm2(smollm2_backend) -> None:
    """One user per task, all six tasks' prompts mixed into shared batches of the real model.

    Two rounds: on an AMD AVX2 CPU one round gave LaMP-1 three schema-invalid records (the
    sampled tokens depend on the CPU's float kernels); a second round asks again only for the
    users still short, which is what a run does.
    """
    policy = ConsentPolicy(share_fraction=1.0)
    aug = CloudAugmenter(smollm2_backend, {
        "synthetic.per-user": 2, "synthetic.max-rounds": 2, "synthetic.max-new-tokens": 64,
        "synthetic.few-shot": 3, "cloud.batch-size": 12, "seed": 0,
    })
    # augment() takes one request per user; six users (one per task) go in one call.
    reqs = [policy.apply(get_task(t), f"user-{t}", items) for t, items in TINY.items()]
    results = aug.augment(reqs)
    for task_name, items in TINY.items():
        res = results[f"user-{task_name}"]
        task = get_task(task_name)
        assert res.error is None, res.error
        assert res.records, f"{task_name}: no valid synthetic record; counts {res.counts}"
        for rec in res.records:
            assert task.validate_item(rec) is None, (task_name, rec)
            assert rec["synthetic"] is True
            assert all(task.profile_to_pairs([rec])), rec
        real_texts = {json.dumps({k: v for k, v in r.items() if k != "id"}, sort_keys=True) for r in items}
        assert not any(json.dumps({k: v for k, v in r.items() if k not in ("id", "synthetic")}, sort_keys=True) in real_texts for r in res.records)

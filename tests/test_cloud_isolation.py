"""One user cannot deny augmentation to, or receive the records of, the users batched with them
(issue 29, items 8 and 9): real augment batches, over real HTTP to `cdcda serve` where it matters."""

from __future__ import annotations

import re
from collections.abc import Sequence


from cdcda_fl.cloud.augment import CloudAugmenter
from cdcda_fl.cloud.backends import Generation, OpenAIBackend, Prompt
from cdcda_fl.cloud.serve import make_server
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import ConsentPolicy, SharedRecords

LAMP5 = get_task("LaMP_5")
LAMP2 = get_task("LaMP_2")
WORDS = ("graphs robots speech vision proteins markets climate sensors rivers ledgers compilers queues "
         "lattices swarms kernels maps tides choirs engines orbits").split()


def _novel(i: int, k: int = 10) -> str:
    import random

    return " ".join(random.Random(i).sample(WORDS, k))


def _papers(user: str, n: int = 4) -> list[dict]:
    return [{"id": f"{user}{i}", "abstract": f"We study {_novel(hash((user, i)) % 997)} for {user} today.",
             "title": f"On {_novel(i, 4)} {user}"} for i in range(n)]


def _share(task, user: str, items: list[dict]) -> SharedRecords:
    return ConsentPolicy(share_fraction=1.0, scrub=False).apply(task, user, items)


class PaperWriter:
    """The served model: writes one fresh LaMP-5 record per prompt (continuation of ``abstract:``);
    fails a whole batch that holds a prompt containing ``poison`` (as a model a record crashes)."""

    name = "writer"

    def __init__(self, poison: str | None = None) -> None:
        self.poison, self.calls, self.longest = poison, 0, 0

    def generate_detailed(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float,
                          seed: int) -> list[Generation]:
        self.calls += 1
        self.longest = max([self.longest, *(len(p.text) for p in prompts)])
        if self.poison and any(self.poison in p.text for p in prompts):
            raise RuntimeError("model crashed on this batch")
        return [Generation(f" We propose {_novel(seed + 7 * i + self.calls * 131)} here.\ntitle: A {_novel(seed + i, 5)}\n\n",
                           "stop", 20, 5) for i, p in enumerate(prompts)]

    def generate(self, prompts, **kw):  # pragma: no cover - protocol completeness
        return [g.text for g in self.generate_detailed(prompts, **kw)]


def _augment_over_http(shared: list[SharedRecords], model: PaperWriter, **cfg) -> dict:
    with make_server(None, backend=model, model_name="writer", batch_size=8, max_wait_ms=20).start() as server, \
            OpenAIBackend("writer", base_url=server.url, concurrency=4, max_retries=0, prefers_chat=False) as be:
        settings = {"synthetic.per-user": 2, "synthetic.max-rounds": 1, "cloud.batch-size": 4, **cfg}
        return CloudAugmenter(be, settings).augment(shared)


def test_a_huge_record_without_spaces_does_not_cost_the_batch_its_augmentation() -> None:
    """Reproduction (item 8): alice shares a 9 MB abstract with no spaces (a device that does not cap,
    through the cloud's side only); before, her prompt exceeded the server's 8 MB body limit, the
    endpoint answered 413 and alice and bob both got 0 records."""
    alice = _papers("alice")
    alice[0]["abstract"] = "x" * (9 * 1024 * 1024)
    shared = [_share(LAMP5, "alice", alice), _share(LAMP5, "bob", _papers("bob"))]
    model = PaperWriter()
    results = _augment_over_http(shared, model)
    assert results["bob"].error is None and len(results["bob"].records) == 2
    assert results["alice"].error is None and len(results["alice"].records) == 2
    assert model.longest < 20_000  # shortened by characters, not only at spaces


def test_a_batch_one_user_breaks_is_retried_per_user() -> None:
    """Item 8: alice's records make every batch they are in fail; bob and carol, batched with her,
    still get their records (each user's prompts are retried on their own), alice gets an error."""
    alice = _papers("alice")
    alice[1]["abstract"] = "We study POISONPILL inputs that crash the model."
    shared = [_share(LAMP5, u, alice if u == "alice" else _papers(u)) for u in ("alice", "bob", "carol")]
    results = _augment_over_http(shared, PaperWriter(poison="POISONPILL"), **{"synthetic.few-shot": 4})
    assert results["alice"].error and results["alice"].records == []
    for user in ("bob", "carol"):
        assert results[user].error is None and len(results[user].records) == 2, results[user]


# ---------------------------------------------------------------------- item 9: another user's records
def _movies(user: str, n: int = 6) -> list[dict]:
    return [{"id": f"{user}{i}", "tag": ("dystopia", "sci-fi")[i % 2],
             "description": f"Private note of {user} number {i}: {_novel(hash((user, i)) % 991, 9)} end."}
            for i in range(n)]


class RowMixer:
    """A backend that mixes rows of a batch: every prompt of alice is answered with one of bob's
    shared descriptions (verbatim or lightly edited), then one fresh record."""

    name, prefers_chat = "mixer", False

    def __init__(self, bob: list[dict]) -> None:
        self.bob, self.n = bob, 0

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        out = []
        for p in prompts:
            self.n += 1
            fresh = f"tag: dystopia\ndescription: A tale of {_novel(5000 + self.n, 9)} again.\n\n"
            if "alice" in p.text:
                leak = self.bob[self.n % len(self.bob)]["description"].replace("Private", "A")
                out.append(f" {leak}\n\n{fresh}")
            else:
                out.append(f" A story of {_novel(9000 + self.n, 9)} too.\n\n{fresh}")
        return out


def test_a_backend_that_mixes_rows_cannot_hand_bob_s_records_to_alice() -> None:
    bob = _movies("bob")
    shared = [_share(LAMP2, "alice", _movies("alice")), _share(LAMP2, "bob", bob)]
    results = CloudAugmenter(RowMixer(bob), {"synthetic.per-user": 3, "cloud.batch-size": 4,
                                             "synthetic.label-quota": False}).augment(shared)
    alice = results["alice"]
    assert alice.counts.get("rejected_cross_user", 0) >= 1, alice.counts
    bob_words = {tuple(re.findall(r"\w+", r["description"].lower())[5:13]) for r in bob}
    for rec in alice.records:
        toks = re.findall(r"\w+", rec["description"].lower())
        assert not any(tuple(toks[i:i + 8]) in bob_words for i in range(len(toks))), rec
    assert len(alice.records) == 3 and results["bob"].counts.get("rejected_cross_user", 0) == 0


def test_cross_user_index_spares_common_phrases() -> None:
    from cdcda_fl.cloud.filters import CrossUserIndex

    common = "in this paper we propose a novel method for"
    bobs = "my oncologist said the biopsy came back positive"
    index = CrossUserIndex()
    index.add("alice", [{"abstract": f"{common} graphs."}], ["abstract"])
    index.add("bob", [{"abstract": f"{common} speech. {bobs}", "title": "Bob's Secret Diary Entry"}], ["abstract", "title"])
    assert not index.foreign("alice", [f"{common} trees."])  # alice wrote it too
    assert not index.foreign("carol", [f"{common} trees."])  # two users wrote it: a common phrase
    assert index.foreign("carol", [f"Today {bobs}."]) and index.foreign("alice", [f"Today {bobs}."])
    assert index.foreign("alice", ["bob's secret diary entry"])  # a short field, whole
    assert not index.foreign("alice", ["a diary"])  # too short to mean anything
    assert not index.foreign("bob", [f"{common} speech. {bobs}"])

"""Cloud-side synthesis: new profile records in each user's style, from that user's shared records only.

Flow per call: audit every request -> rounds of (build prompts for users still short of
``per_user`` -> batched generation, prompts of many users per batch but never two users in
one prompt -> parse every record -> filter with counted reasons) -> one :class:`AugmentResult`
per user.

Prompt design (docs/design.md, "Facts"): a base model given a few-shot continuation prompt writes clean
records, often several per generation; so the default for base models is continuation, and for
chat models a chat instruction with the same records. Tasks with a fixed label list are
*label-conditioned*: each prompt ends in (continuation) or asks for (chat) a target label drawn
from the user's own label distribution, because free continuation drifted toward one label.
Long free-text fields are shown shortened, so the model writes records that fit the token
budget instead of being cut off.

Failure: a batch that fails is retried per user, so a backend error costs only the users whose
own prompts fail; they get ``AugmentResult(records=[], error=...)`` and train on real data only.
Junk is counted, never raised; a record that repeats another user's shared words is dropped
(``cross_user``, :class:`~cdcda_fl.cloud.filters.CrossUserIndex`).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcda_fl.cloud.backends import Generation, LLMBackend, Prompt
from cdcda_fl.cloud.filters import CrossUserIndex, FilterSettings, RecordFilter, parse_records
from cdcda_fl.core.config import default_of
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.core.progress import Progress
from cdcda_fl.core.run_config import run_config

PROMPT_STYLES = ("auto", "continuation", "chat")

# What a record *is*, for chat instructions.
TASK_NOUNS: dict[str, tuple[str, str]] = {
    "LaMP_1": ("papers (title and abstract)", "paper"),
    "LaMP_2": ("movies with the tag this user gave them", "movie"),
    "LaMP_3": ("product reviews with the user's rating", "review"),
    "LaMP_4": ("news articles with the headline the user wrote", "article"),
    "LaMP_5": ("papers (abstract and title)", "paper"),
    "LaMP_7": ("tweets", "tweet"),
}
SHORT_FIELDS = frozenset({"title", "tag", "score"})
#: The field of a task's profile items that the person wrote themselves: what the writer of the
#: person's *other* tasks is shown under ``synthetic.person-context``. LaMP-2 has none (the
#: descriptions are the studio's, the tag is a choice from a list).
PERSON_WRITING: dict[str, str] = {"LaMP_1": "title", "LaMP_3": "text", "LaMP_4": "title", "LaMP_5": "title",
                                  "LaMP_7": "text"}
#: Words of one context line at most (a review or an abstract-length text is cut, not dropped).
CONTEXT_WORDS = 24


@dataclass(frozen=True)
class AugmentConfig:
    """Synthesis settings; see :meth:`from_config` for the run-config keys."""

    per_user: int = int(default_of("synthetic.per-user"))
    max_rounds: int = int(default_of("synthetic.max-rounds"))
    temperature: float = float(default_of("synthetic.temperature"))
    max_new_tokens: int = int(default_of("synthetic.max-new-tokens"))
    few_shot: int = int(default_of("synthetic.few-shot"))
    seed: int = int(default_of("seed"))
    prompt_style: str = str(default_of("cloud.prompt-style"))
    batch_size: int = int(default_of("cloud.batch-size"))
    max_prompts_per_round: int = int(default_of("synthetic.max-prompts-per-round"))
    near_dup: float = float(default_of("synthetic.near-dup"))
    embed_filter: bool = bool(default_of("cloud.embed-filter"))
    embed_min_sim: float = float(default_of("cloud.embed-min-sim"))
    embed_max_sim: float = float(default_of("cloud.embed-max-sim"))
    label_quota: bool = bool(default_of("synthetic.label-quota"))
    person_context: int = int(default_of("synthetic.person-context"))

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"cloud.prompt-style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.per_user < 0 or self.max_rounds < 1 or self.max_new_tokens < 1 or self.few_shot < 1 or self.batch_size < 1:
            raise ValueError(
                "synthetic.per-user must be >= 0 and synthetic.max-rounds, synthetic.max-new-tokens, "
                f"synthetic.few-shot, cloud.batch-size >= 1 (got {self})"
            )
        if self.person_context < 0:
            raise ValueError(f"synthetic.person-context must be >= 0, got {self.person_context}")
        if not 0 < self.near_dup <= 1:
            raise ValueError(f"synthetic.near-dup must be in (0, 1], got {self.near_dup}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AugmentConfig:
        """The ``synthetic.*`` and ``cloud.*`` keys this step reads; defaults and meanings are in
        :data:`cdcda_fl.core.config.DEFAULTS` (``cdcda run --help-config``). ``seed`` seeds sampling."""
        try:
            rc = run_config(cfg)
            syn, cloud = rc.synthetic, rc.cloud
            return cls(
                per_user=syn.per_user,
                max_rounds=syn.max_rounds,
                temperature=syn.temperature,
                max_new_tokens=syn.max_new_tokens,
                few_shot=syn.few_shot,
                seed=rc.seed,
                prompt_style=cloud.prompt_style.strip().lower(),
                batch_size=cloud.batch_size,
                max_prompts_per_round=syn.max_prompts_per_round,
                near_dup=syn.near_dup,
                embed_filter=cloud.embed_filter,
                embed_min_sim=cloud.embed_min_sim,
                embed_max_sim=cloud.embed_max_sim,
                label_quota=syn.label_quota,
                person_context=syn.person_context,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad synthetic.*/cloud.* setting: {exc}") from exc


@dataclass
class AugmentResult:
    """Synthetic records for one user (task schema, ``synthetic: True``), counts, and any error.

    ``error`` set means the backend failed for this user: ``records`` is then empty and the
    device trains on real data only.
    """

    user_id: str
    task: str
    records: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "task": self.task, "records": self.records, "counts": self.counts, "error": self.error}


@dataclass
class PromptJob:
    """One prompt, and what is needed to read its answer. Built from ONE user's records."""

    user_id: str
    prompt: Prompt
    prefix: str  # text the generation continues (continuation prompts), prepended before parsing
    target_label: str | None


#: Characters per word (token budget) a shown value may use at most: English averages ~6 with
#: its space; the cap is what stops a value without spaces (one "word" of megabytes) at the budget.
CHARS_PER_WORD = 8
SHORT_FIELD_WORDS = 24  # titles, tags and scores are shown whole up to this many words


def _shorten(value: str, max_words: int) -> str:
    """First ``max_words`` words and at most ``CHARS_PER_WORD * max_words`` characters, cut
    back to a sentence end when one is near.

    Why both bounds: a word count alone lets one user's record with no spaces (a 9 MB
    abstract) through whole, which made the endpoint refuse the batch every other user was in.
    """
    text = re.sub(r"\s+", " ", str(value)).strip()
    words = text.split(" ")
    max_chars = CHARS_PER_WORD * max_words
    if len(words) <= max_words and len(text) <= max_chars:
        return text
    text = " ".join(words[:max_words])
    if len(text) > max_chars:
        head = text[:max_chars]
        space = head.rfind(" ")
        text = head[:space] if space > max_chars // 2 else head
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    return text[: cut + 1] if cut > len(text) // 2 else text.rstrip(",;:") + "."


def person_writing(others: Sequence[SharedRecords]) -> list[str]:
    """What one person wrote in their *other* tasks' shared records (:data:`PERSON_WRITING`), in
    task order: the lines a prompt may show under ``synthetic.person-context``.

    Why only this field: it is the person's own text (titles they gave, tweets, reviews), where
    their vocabulary shows; the inputs of those tasks (abstracts, articles) are not theirs.
    """
    lines: list[str] = []
    for other in sorted(others, key=lambda s: s.task):
        name = PERSON_WRITING.get(other.task)
        if name is None or name not in other.fields:
            continue
        lines.extend(_shorten(str(r[name]), CONTEXT_WORDS) for r in other.records if str(r.get(name, "")).strip())
    return lines


class TaskPrompter:
    """Builds one user's prompts for one task: field order, examples, label conditioning, and
    (``synthetic.person-context``) a few lines the same person wrote in their other tasks."""

    def __init__(self, task: Any, shared: SharedRecords, cfg: AugmentConfig, style: str,
                 context: Sequence[str] = ()) -> None:
        self.task = task
        self.context = list(context) if cfg.person_context > 0 else []
        self.shared = shared
        self.cfg = cfg
        self.style = style
        shared_fields = [f for f in shared.fields if f != "id" and f in task.profile_fields]
        self.label_field = task.label_field if (task.labels and task.label_field in shared_fields) else None
        if self.label_field:  # label first, so generation can be conditioned on it
            order = [self.label_field] + [f for f in task.profile_fields if f in shared_fields and f != self.label_field]
        else:  # free-text output (titles) last, after the content it summarizes
            order = [f for f in task.profile_fields if f in shared_fields and f != task.label_field]
            if task.label_field in shared_fields:
                order.append(task.label_field)
        self.fields = order
        self.records = [r for r in shared.records if all(f in r for f in order)]
        self.labels = [str(r[self.label_field]).strip() for r in self.records] if self.label_field else []
        # Shown examples are shortened so a whole record fits in max_new_tokens (~0.75 words/token).
        self.shot_words = max(12, int(cfg.max_new_tokens * 0.45))
        self.rng = random.Random(f"{cfg.seed}:{shared.user_id}:{shared.task}")

    def render(self, rec: Mapping[str, Any]) -> str:
        lines = []
        for f in self.fields:
            value = str(rec[f])
            lines.append(f"{f}: {_shorten(value, SHORT_FIELD_WORDS if f in SHORT_FIELDS else self.shot_words)}")
        return "\n".join(lines)

    def _shots(self, target: str | None) -> list[Mapping[str, Any]]:
        k = min(self.cfg.few_shot, len(self.records))
        shots = self.rng.sample(self.records, k)
        if target is not None and all(str(s[self.label_field]).strip() != target for s in shots):  # type: ignore[index]
            same = [r for r in self.records if str(r[self.label_field]).strip() == target]  # type: ignore[index]
            if same:
                shots[-1] = self.rng.choice(same)
        self.rng.shuffle(shots)
        return shots

    def _context_lines(self) -> list[str]:
        """Up to ``person_context`` of the person's other-task lines for one prompt (none when off,
        so the random stream, and every prompt, stay what they were without the setting)."""
        if not self.context:
            return []
        return self.rng.sample(self.context, min(self.cfg.person_context, len(self.context)))

    def job(self) -> PromptJob:
        target = self.rng.choice(self.labels) if self.labels else None
        body = "\n\n".join(self.render(s) for s in self._shots(target))
        context = self._context_lines()
        if self.style == "continuation":
            first_free = next(f for f in self.fields if f != self.label_field)
            prefix = (f"{self.label_field}: {target}\n" if target is not None else "") + f"{first_free}:"
            head = f"Also written by this person: {' | '.join(context)}\n\n" if context else ""
            return PromptJob(self.shared.user_id, Prompt.continuation(f"{head}{body}\n\n{prefix}"), prefix, target)
        plural, single = TASK_NOUNS.get(self.task.name, ("records", "record"))
        want = f" Every new {single} must have `{self.label_field}: {target}`." if target is not None else ""
        elsewhere = ("This user also wrote, elsewhere (use their words and style, not these topics):\n"
                     + "\n".join(f"- {line}" for line in context) + "\n\n") if context else ""
        user = (
            f"{elsewhere}Here are {plural} from one user:\n\n{body}\n\n"
            f"Write 3 new {single}s in the same style and exact format: one `name: value` line per field "
            f"({', '.join(self.fields)}), a blank line between records, nothing else. Do not copy the examples.{want}"
        )
        system = "You write new records that imitate one person's style and format. Reply with records only."
        return PromptJob(self.shared.user_id, Prompt.chat(user, system=system), "", target)


def _cross_user_index(requests: Sequence[SharedRecords]) -> CrossUserIndex:
    """The n-grams of every user's shared content fields in this call (for the ``cross_user`` filter)."""
    index = CrossUserIndex()
    for req in requests:
        task = get_task(req.task)
        fields = [f for f in task.profile_fields if f in req.fields and not (task.labels and f == task.label_field)]
        index.add(str(req.user_id), req.records, fields)
    return index


@dataclass
class _UserState:
    shared: SharedRecords
    task: Any
    prompter: TaskPrompter
    filter: RecordFilter
    counts: Counter = field(default_factory=Counter)
    error: str | None = None
    prompts: int = 0

    @property
    def need(self) -> int:
        return max(0, self.filter.target - len(self.filter.accepted))


class CloudAugmenter:
    """Writes synthetic records for many users with one backend; see the module docstring."""

    def __init__(self, backend: LLMBackend, cfg: AugmentConfig | Mapping[str, Any] | None = None, *, audit: Any = None) -> None:
        self.backend = backend
        self.cfg = cfg if isinstance(cfg, AugmentConfig) else AugmentConfig.from_config(cfg or {})
        self.audit = audit
        style = self.cfg.prompt_style
        if style == "auto":
            style = "chat" if getattr(backend, "prefers_chat", False) else "continuation"
        self.style = style

    # ------------------------------------------------------------------ public
    def augment(self, requests: Sequence[SharedRecords],
                context: Mapping[str, Sequence[str]] | None = None) -> dict[str, AugmentResult]:
        """One result per requesting user (call once per task when users share several tasks).

        ``context``: per user id, lines that user wrote in their other tasks (:func:`person_writing`
        of their own other requests), shown in their prompts when ``synthetic.person-context`` > 0.
        A user's prompts only ever read their own entry.
        """
        users = [str(r.user_id) for r in requests]
        dupes = sorted(u for u, c in Counter(users).items() if c > 1)
        if dupes:
            raise ValueError(f"one request per user per augment() call; repeated users: {dupes} (call once per task)")
        results: dict[str, AugmentResult] = {}
        states: dict[str, _UserState] = {}
        settings = FilterSettings(self.cfg.near_dup, self.cfg.embed_filter, self.cfg.embed_min_sim, self.cfg.embed_max_sim, self.cfg.label_quota)
        others = _cross_user_index(requests)
        for req in requests:
            uid = str(req.user_id)
            if not req.records:
                results[uid] = AugmentResult(uid, req.task, counts={"no_shared_records": 1})
                continue
            if self.audit is not None:
                self.audit.record(req, destination=getattr(self.backend, "name", type(self.backend).__name__))
            task = get_task(req.task)
            prompter = TaskPrompter(task, req, self.cfg, self.style, (context or {}).get(uid, ()))
            if not prompter.records or not any(f != prompter.label_field for f in prompter.fields):
                results[uid] = AugmentResult(uid, req.task, counts={"no_usable_fields": 1})
                continue
            filt = RecordFilter(task, prompter.fields, prompter.records, self.cfg.per_user, settings, others=others, user=uid)
            states[uid] = _UserState(req, task, prompter, filt)
        for rnd in range(self.cfg.max_rounds):
            active = [s for s in states.values() if s.error is None and s.need > 0]
            if not active:
                break
            jobs = self._round_jobs(active)
            for s in active:
                s.counts["rounds"] += 1
            self._run_jobs(jobs, states, rnd)
        for uid, s in states.items():
            counts = dict(s.counts)
            counts["accepted"] = 0 if s.error else len(s.filter.accepted)
            counts.update({f"rejected_{k}": v for k, v in s.filter.counts.items()})
            records = [] if s.error else self._finalize(uid, s)
            results[uid] = AugmentResult(uid, s.shared.task, records, counts, s.error)
        return {u: results[u] for u in users}

    # ------------------------------------------------------------------ internals
    def _round_jobs(self, active: Sequence[_UserState]) -> list[PromptJob]:
        """Prompts for this round: enough per user for what is missing, at the observed yield."""
        per_user: list[list[PromptJob]] = []
        for s in active:
            accepted = len(s.filter.accepted)
            yield_est = min(3.0, max(0.34, accepted / s.prompts)) if s.prompts else 1.0
            n = max(1, min(self.cfg.max_prompts_per_round, math.ceil(s.need / yield_est)))
            per_user.append([s.prompter.job() for _ in range(n)])
            s.prompts += n
        # Interleave users so every backend batch mixes users (each prompt is still one user's).
        jobs: list[PromptJob] = []
        for i in range(max(len(p) for p in per_user)):
            jobs.extend(p[i] for p in per_user if i < len(p))
        return jobs

    def _generate(self, prompts: list[Prompt], seed: int) -> list[Generation]:
        kw = {"max_new_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature, "seed": seed}
        detailed = getattr(self.backend, "generate_detailed", None)
        if callable(detailed):
            gens = list(detailed(prompts, **kw))
        else:
            gens = [Generation(t, "unknown") for t in self.backend.generate(prompts, **kw)]
        if len(gens) != len(prompts):
            raise RuntimeError(f"backend returned {len(gens)} generations for {len(prompts)} prompts")
        return gens

    def _run_jobs(self, jobs: list[PromptJob], states: dict[str, _UserState], rnd: int) -> None:
        size = self.cfg.batch_size
        task = next(iter(states.values())).shared.task if states else "?"
        with Progress(f"cloud {task} round {rnd + 1}: prompt batches", total=-(-len(jobs) // size),
                      unit="batches") as bar:
            for b in range(0, len(jobs), size):
                self._run_batch(jobs[b : b + size], states, rnd, b)
                bar.advance()

    def _run_batch(self, batch: list[PromptJob], states: dict[str, _UserState], rnd: int, b: int) -> None:
        """Generate one prompt batch; if it fails, each user's prompts are retried on their own.

        Why the retry: a batch holds several users' prompts, and one user's records can make the
        whole call fail (a prompt the endpoint refuses as too large, a record that crashes the
        model). Without it, everyone batched with that user would lose augmentation; with it,
        only users whose own prompts fail get an error (the cost: one extra call per user of a
        failed batch).
        """
        chunk = [j for j in batch if states[j.user_id].error is None]
        if not chunk:
            return
        seed = int(hashlib.sha256(f"{self.cfg.seed}:{rnd}:{b}".encode()).hexdigest()[:8], 16)
        try:
            gens = self._generate([j.prompt for j in chunk], seed)
        except Exception as exc:  # noqa: BLE001 - any backend failure only costs these users
            by_user: dict[str, list[PromptJob]] = {}
            for j in chunk:
                by_user.setdefault(j.user_id, []).append(j)
            if len(by_user) == 1:
                states[chunk[0].user_id].error = f"{type(exc).__name__}: {exc}"
                return
            for jobs in by_user.values():
                self._run_batch(jobs, states, rnd, b)  # one user each: fails (at most) that user
            return
        for job, gen in zip(chunk, gens):
            self._absorb(states[job.user_id], job, gen)

    def _absorb(self, s: _UserState, job: PromptJob, gen: Generation) -> None:
        s.counts["generations"] += 1
        text = job.prefix + (gen.text if isinstance(gen.text, str) else "")
        ended = gen.finish_reason == "stop"
        label_fields = [s.prompter.label_field] if s.prompter.label_field else []
        parsed = parse_records(text, s.prompter.fields, label_fields=label_fields, ended=ended)
        if not any(all(r.fields.get(f) for f in s.prompter.fields) for r in parsed):
            s.counts["junk_generations"] += 1  # not one whole record in this generation
        for rec in parsed:
            s.counts["generated"] += 1
            if not rec.complete:
                s.filter.counts["truncated"] += 1
                continue
            reason, _ = s.filter.check(rec.fields)
            if reason is not None:
                s.filter.counts[reason] += 1

    def _finalize(self, uid: str, s: _UserState) -> list[dict[str, Any]]:
        out = []
        for n, rec in enumerate(s.filter.accepted):
            item: dict[str, Any] = {"id": f"syn-{uid}-{n}"}
            item.update(rec)
            item["synthetic"] = True
            out.append(item)
        return out

"""Partial records from the cloud made usable: the device fills in the fields the user did not share.

A consent policy may share only some fields (``consent.fields = "title"`` on LaMP-5, or
``"description"`` on LaMP-2). The cloud then sees, and writes, records with those fields only, and
a training pair needs both the input and the output field. Dropping them would silently turn CDCDA
into local-only training. The device holds what the cloud lacks, so it completes them, privately:

- **output missing** (e.g. descriptions without a tag, abstracts without a title): the device's
  own local-only adapter answers the task for the synthetic input, the user's model labelling
  in-style inputs (self-training on the cloud's inputs);
- **input missing** (e.g. titles without an abstract, tags without a description): the device's
  base model writes a short input for the given output with a fixed per-task instruction.

Records that cannot be completed (a task without such a field pair, an empty or unparseable
completion) are dropped with a reason the synthetic log keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cdcda_fl.data.tasks import TaskSpec

#: task -> (input field, output field) of the two-field tasks whose records the device can complete
FIELD_PAIRS: dict[str, tuple[str, str]] = {
    "LaMP_2": ("description", "tag"),
    "LaMP_3": ("text", "score"),
    "LaMP_4": ("text", "title"),
    "LaMP_5": ("abstract", "title"),
}

#: task -> instruction for writing a missing input from the output (the base model answers it)
INPUT_PROMPTS: dict[str, str] = {
    "LaMP_2": "Write a one-sentence description of a movie that a viewer would tag as {tag}.",
    "LaMP_3": "Write a short product review by a customer who rated the product {score} out of 5 stars.",
    "LaMP_4": "Write the first two sentences of a news article with the headline: {title}",
    "LaMP_5": "Write a short abstract of a research paper titled: {title}",
}
INPUT_MAX_NEW_TOKENS = 64

Generate = Callable[[list[str], int], list[str]]  # (user texts, max new tokens) -> answers


def missing_fields(spec: TaskSpec, record: Mapping[str, Any]) -> list[str]:
    """Profile fields the record lacks (or holds as an empty string)."""
    return [f for f in spec.profile_fields if f not in record or str(record[f]).strip() == ""]


def is_partial(spec: TaskSpec, record: Mapping[str, Any]) -> bool:
    """True for a record that lacks some profile fields but is otherwise well formed (so worth completing)."""
    missing = missing_fields(spec, record)
    filled = {**record, **{f: _placeholder(spec) for f in missing}}
    return bool(missing) and "id" in record and spec.validate_item(filled) is None


def complete_records(spec: TaskSpec, records: Sequence[Mapping[str, Any]], *, answer_with_local: Generate,
                     write_with_base: Generate) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(completed records, [(record, reason dropped)]) for records missing one field of the task's pair.

    ``answer_with_local`` answers task prompts with the user's local-only adapter; it is called once
    with every missing output. ``write_with_base`` writes missing inputs with the base model.
    Each completed record is marked ``completed: <field>``.
    """
    done: list[dict[str, Any]] = []
    dropped: list[tuple[dict[str, Any], str]] = []
    pair = FIELD_PAIRS.get(spec.name)
    need_output: list[dict[str, Any]] = []
    need_input: list[dict[str, Any]] = []
    for rec in (dict(r) for r in records):
        missing = missing_fields(spec, rec)
        if pair is None or len(missing) != 1:
            dropped.append((rec, f"incomplete: missing {', '.join(missing) or 'nothing'}; cannot complete"))
        elif missing == [pair[1]]:
            need_output.append(rec)
        else:
            need_input.append(rec)
    if need_output:
        _, out_field = pair  # type: ignore[misc]
        prompts = [spec.profile_to_pairs([{**r, out_field: _placeholder(spec)}])[0][0] for r in need_output]
        for rec, text in zip(need_output, answer_with_local(prompts, spec.max_new_tokens)):
            _fill(spec, rec, out_field, spec.parse_answer(text), done, dropped)
    if need_input:
        in_field, out_field = pair  # type: ignore[misc]
        prompts = [INPUT_PROMPTS[spec.name].format(**{out_field: rec[out_field]}) for rec in need_input]
        for rec, text in zip(need_input, write_with_base(prompts, INPUT_MAX_NEW_TOKENS)):
            _fill(spec, rec, in_field, " ".join(str(text).split()), done, dropped)
    return done, dropped


def _placeholder(spec: TaskSpec) -> str:
    """A valid output value, only so the task's own pair builder renders the input prompt."""
    return spec.labels[0] if spec.labels else "x"


def _fill(spec: TaskSpec, rec: dict[str, Any], name: str, value: Any, done: list, dropped: list) -> None:
    if value is None or str(value).strip() == "":
        dropped.append((rec, f"incomplete: the device's completion of {name!r} was empty"))
        return
    candidate = {**rec, name: str(value), "completed": name}
    problem = spec.validate_item(candidate)
    if problem is not None or (spec.labels and name == spec.label_field and str(value).strip() not in spec.labels):
        dropped.append((rec, f"incomplete: the device's completion of {name!r} was not valid ({problem or value!r})"))
        return
    done.append(candidate)

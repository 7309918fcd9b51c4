"""Task registry: parsers and pair builders."""

from __future__ import annotations

import pytest

from cdcda_fl.data.tasks import MOVIE_TAGS, TASK_NAMES, get_task, neutralize_tweet


def test_lookup_forms_and_unknown() -> None:
    assert get_task("lamp2").name == get_task("2").name == "LaMP_2"
    with pytest.raises(KeyError, match="unknown task 'LaMP_6'"):
        get_task("LaMP_6")


@pytest.mark.parametrize(
    ("task", "text", "answer"),
    [
        ("LaMP_1", "The answer is [2].", "[2]"),
        ("LaMP_1", "2", "[2]"),
        ("LaMP_1", "neither", "neither"),
        ("LaMP_2", "Tag: dark comedy, I think", "dark comedy"),
        ("LaMP_2", "Sci-Fi", "sci-fi"),
        ("LaMP_2", "it is a romance, not a comedy", "romance"),
        ("LaMP_3", "Score: 4", "4"),
        ("LaMP_3", "4.0", "4"),
        ("LaMP_3", "seven", "seven"),
        ("LaMP_5", '\n Title: "Towards Robust X"\nmore', "Towards Robust X"),
        ("LaMP_7", "", ""),
    ],
)
def test_parse_answer(task: str, text: str, answer: str) -> None:
    assert get_task(task).parse_answer(text) == answer


def test_fifteen_tags() -> None:
    assert len(MOVIE_TAGS) == 15 and len(set(MOVIE_TAGS)) == 15


@pytest.mark.parametrize("task", TASK_NAMES)
def test_pairs_are_strings_and_outputs_parse(task: str) -> None:
    from cdcda_fl.data.personas import make_task_split

    questions, _ = make_task_split(task, "dev", users=1, seed=0)
    spec = get_task(task)
    pairs = spec.profile_to_pairs(questions[0]["profile"])
    assert len(pairs) == len(questions[0]["profile"])
    for prompt, output in pairs:
        assert isinstance(prompt, str) and isinstance(output, str) and output
        if spec.labels:
            assert spec.parse_answer(output) in spec.labels


def test_lamp1_pairs_balance_positions() -> None:
    items = [{"id": str(i), "title": f"Title {i}", "abstract": "x"} for i in range(4)]
    answers = [a for _, a in get_task("LaMP_1").profile_to_pairs(items)]
    assert answers == ["[1]", "[2]", "[1]", "[2]"]


def test_neutralize_tweet_strips_style() -> None:
    assert neutralize_tweet("JUST WON!!! #blessed @bob 😂 http://x.co/a") == "just won"


def test_query_text_of_input_strips_instruction() -> None:
    from cdcda_fl.data.tasks import LAMP2_TEMPLATE, LAMP7_TEMPLATE

    assert get_task("LaMP_2").query_text_of_input(LAMP2_TEMPLATE.format(description="A: b; c.")) == "A: b; c."
    assert get_task("LaMP_7").query_text_of_input(LAMP7_TEMPLATE.format(text="hi there")) == "hi there"
    assert get_task("LaMP_5").query_text_of_input("no marker here") == "no marker here"


def test_bm25s_debug_logging_stays_off_after_import() -> None:
    """Regression: bm25s sets its logger to DEBUG at import (one debug line per user in the demo)."""
    import logging

    import cdcda_fl.data.retrieval  # noqa: F401

    assert logging.getLogger("bm25s").getEffectiveLevel() >= logging.WARNING

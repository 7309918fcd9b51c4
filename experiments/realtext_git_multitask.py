"""A real multi-task testbed from a public git history: one author, two tasks (issue 32).

The multi-task personas are a testbed we wrote; one adapter per person must also be checked on
people who really write in two tasks. A commit author writes two kinds of text that this project
has a LaMP format for:

- **LaMP-4 (headline from article)**: the commit body -> the subject line the author gave it
  (as ``experiments/realtext_git.py``);
- **LaMP-7 (restyle a text in the user's voice)**: the body's opening sentence, written in the
  author's own way. As for the personas' tweets, the input is that sentence with its style
  removed (``neutralize_tweet``: casing, punctuation, emphasis) and the gold is the author's
  sentence, so the task is to write a given content the way this author writes it.

Per author, the commits (non-merge, body of at least ``--min-words`` words, oldest first) alternate
between the two tasks, so no commit serves both. Each author gets one **rich** task
(``--rich`` profile items) and one **sparse** task (``--sparse``), which one alternating between
authors, then ``--queries`` later commits per task as time-later queries. The same ``author-NNN``
id names the author in both tasks, so ``train.adapter-scope = user`` pools their tasks. Nothing of
the repository is committed to this project; the generator is:

    python experiments/realtext_git_multitask.py --repo /path/to/git.git --out runs/realtext-mt
    cdcda run --data-dir runs/realtext-mt --set tasks=LaMP_4,LaMP_7 --set users=16 ...
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from cdcda_fl.data.lamp import write_outputs, write_questions
from cdcda_fl.data.tasks import LAMP4_TEMPLATE, LAMP7_TEMPLATE, neutralize_tweet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the single-task generator beside this script
from realtext_git import add_source_args, clean_body, commits  # noqa: E402

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")


def opening_sentence(body: str, min_words: int = 8, max_words: int = 40) -> str | None:
    """The body's first sentence when it is prose of a usable length, else None."""
    first = SENTENCE_END.split(body.strip(), maxsplit=1)[0].strip()
    n = len(first.split())
    return first if min_words <= n <= max_words else None


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(ap)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--rich", type=int, default=16, help="profile items of each author's rich task")
    ap.add_argument("--sparse", type=int, default=4, help="profile items of each author's sparse task")
    ap.add_argument("--queries", type=int, default=6, help="held-out queries per author and task")
    args = ap.parse_args(argv)
    excluded = {a.strip() for a in args.exclude.split(",") if a.strip()}
    by_author: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
    for sha, author, subject, body in commits(args.repo, args.since):
        text = clean_body(body, args.max_words)
        sentence = opening_sentence(text)
        if author in excluded or len(text.split()) < args.min_words or not subject or sentence is None:
            continue
        by_author[author].append((sha, subject, text, sentence))
    need = 2 * (args.rich + args.queries)
    authors = sorted((a for a, c in by_author.items() if len(c) >= need), key=lambda a: (-len(by_author[a]), a))
    questions: dict[str, list[dict]] = {"LaMP_4": [], "LaMP_7": []}
    golds: dict[str, list[tuple[str, str]]] = {"LaMP_4": [], "LaMP_7": []}
    for n, author in enumerate(authors[: args.users]):
        uid = f"author-{n:03d}"
        items = by_author[author]
        split = {"LaMP_4": items[0::2], "LaMP_7": items[1::2]}
        rich = ("LaMP_4", "LaMP_7")[n % 2]
        for task, rows in split.items():
            size = args.rich if task == rich else args.sparse
            if task == "LaMP_4":
                profile = [{"id": sha[:12], "text": text, "title": subject} for sha, subject, text, _ in rows[:size]]
            else:
                profile = [{"id": sha[:12], "text": sentence} for sha, _, _, sentence in rows[:size]]
            for sha, subject, text, sentence in rows[size:size + args.queries]:
                qid = f"git-{task[-1]}-{n:03d}-{sha[:12]}"
                prompt = (LAMP4_TEMPLATE.format(text=text) if task == "LaMP_4"
                          else LAMP7_TEMPLATE.format(text=neutralize_tweet(sentence)))
                questions[task].append({"id": qid, "user_id": uid, "input": prompt, "profile": profile})
                golds[task].append((qid, subject if task == "LaMP_4" else sentence))
    for task in questions:
        write_questions(args.out / task / "dev_questions.json", questions[task])
        write_outputs(args.out / task / "dev_outputs.json", task, golds[task])
    print(f"{min(args.users, len(authors))} authors, {sum(map(len, questions.values()))} queries -> {args.out}")


if __name__ == "__main__":
    main()

"""A real-writing testbed in LaMP-4 format from a public git history: commit body -> subject line.

The personas are a testbed we wrote; a method must also hold on real people's writing
(docs/design.md). A project's commit history is public text with real, named authors, each with
their own habits in how they title a change ("area: lowercase summary", word choice, length).
LaMP-4 (news headline generation) has the same shape: an article (the commit message body) and the
headline its author wrote for it (the subject line).

Per author (non-merge commits whose body has at least ``--min-words`` words, trailers such as
Signed-off-by removed, cut to ``--max-words``): the oldest ``--profile`` commits form the profile,
the next ``--queries`` commits are the held-out, time-later queries (LaMP's time-based split).
Authors are the ``--users`` with the most such commits. ``--profile-sizes 4,8,16,32`` gives the
authors profiles of those sizes in turn (sparse and rich users side by side); ``--oracle-items K``
writes each author's next K commits after the query window to ``dev_oracle.json`` for the
simulation-only oracle/noise writers (cdcda_fl/data/oracle_items.py; devices never read it). Nothing of the repository is committed to
this project; the generator is, and it writes ``OUT/LaMP_4/dev_questions.json`` and
``dev_outputs.json``:

    python experiments/realtext_git.py --repo /path/to/git.git --out runs/realtext --since 2023-01-01
    python experiments/augment_compare.py --data-dir runs/realtext --tasks LaMP_4 --users 12 ...
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections import defaultdict
from pathlib import Path

from cdcda_fl.data.lamp import write_outputs, write_questions
from cdcda_fl.data.oracle_items import oracle_path, write_oracle_items
from cdcda_fl.data.tasks import LAMP4_TEMPLATE

TRAILER = re.compile(r"^[A-Z][A-Za-z-]+(-by|-to|-id)?:\s", re.IGNORECASE)
SEP = "\x1e"


def commits(repo: Path, since: str) -> list[tuple[str, str, str, str]]:
    """(sha, author, subject, body) of non-merge commits, oldest first."""
    out = subprocess.run(
        ["git", f"--git-dir={repo}", "log", "--no-merges", "--reverse", f"--since={since}",
         f"--format=%H%x1f%an%x1f%s%x1f%b{SEP}"],
        check=True, capture_output=True, text=True, errors="replace").stdout
    rows = []
    for chunk in out.split(SEP):
        parts = chunk.strip("\n").split("\x1f")
        if len(parts) == 4:
            rows.append((parts[0], parts[1], parts[2].strip(), parts[3]))
    return rows


def clean_body(body: str, max_words: int) -> str:
    """The prose of a commit message: trailers, quoted output and indented blocks removed."""
    lines = [ln for ln in body.splitlines() if not TRAILER.match(ln.strip()) and not ln.startswith(("    ", "\t", ">"))]
    words = " ".join(" ".join(lines).split()).split(" ")
    return " ".join(words[:max_words]).strip()


def add_source_args(ap: argparse.ArgumentParser) -> None:
    """The repository, output and commit-filter flags every git testbed generator takes."""
    ap.add_argument("--repo", type=Path, required=True, help="a git directory (bare or .git)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--since", default="2023-01-01")
    ap.add_argument("--min-words", type=int, default=25, help="commits whose body has fewer words are skipped")
    ap.add_argument("--max-words", type=int, default=120, help="bodies are cut to this many words")
    ap.add_argument("--exclude", default="Junio C Hamano", help="comma-separated authors to leave out (the maintainer's "
                    "many one-line release commits dominate otherwise)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(ap)
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--profile", type=int, default=6, help="profile items per user (sparse, as the method targets)")
    ap.add_argument("--queries", type=int, default=6)
    ap.add_argument("--profile-sizes", default="", help="comma-separated profile sizes given to the authors in turn "
                    "(overrides --profile), e.g. 4,8,16,32")
    ap.add_argument("--oracle-items", type=int, default=16, help="further commits per author for the oracle writer "
                    "(0 = no dev_oracle.json)")
    args = ap.parse_args()
    excluded = {a.strip() for a in args.exclude.split(",") if a.strip()}
    by_author: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for sha, author, subject, body in commits(args.repo, args.since):
        text = clean_body(body, args.max_words)
        if author in excluded or len(text.split()) < args.min_words or not subject:
            continue
        by_author[author].append((sha, subject, text))
    sizes = [int(x) for x in args.profile_sizes.split(",") if x.strip()] or [args.profile]
    need = max(sizes) + args.queries + args.oracle_items
    authors = sorted((a for a, c in by_author.items() if len(c) >= need), key=lambda a: (-len(by_author[a]), a))
    questions, golds, further = [], [], {}
    for n, author in enumerate(authors[: args.users]):
        size = sizes[n % len(sizes)]
        items = by_author[author]
        profile = [{"id": f"{sha[:12]}", "text": text, "title": subject} for sha, subject, text in items[:size]]
        for sha, subject, text in items[size:size + args.queries]:
            qid = f"git-{n:03d}-{sha[:12]}"
            questions.append({"id": qid, "user_id": f"author-{n:03d}", "input": LAMP4_TEMPLATE.format(text=text),
                              "profile": profile})
            golds.append((qid, subject))
        later = items[size + args.queries:size + args.queries + args.oracle_items]
        further[f"author-{n:03d}"] = [{"id": f"{sha[:12]}", "text": text, "title": subject} for sha, subject, text in later]
    out = args.out / "LaMP_4"
    write_questions(out / "dev_questions.json", questions)
    write_outputs(out / "dev_outputs.json", "LaMP_4", golds)
    if args.oracle_items > 0:
        write_oracle_items(oracle_path(args.out, "LaMP_4", "dev"), "LaMP_4", "dev", further)
    print(f"{min(args.users, len(authors))} authors, {len(questions)} queries -> {out}")


if __name__ == "__main__":
    main()

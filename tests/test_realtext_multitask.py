"""experiments/realtext_git_multitask.py: one author, two tasks, from a git history (issue 32)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from experiment_scripts import load_experiment

from cdcda_fl.data.lamp import load_task_users
from cdcda_fl.data.tasks import neutralize_tweet

BODY = ("When the {i}th index is written by author {a}, we used to recompute the whole table. "
        "This change keeps the previous table and only appends the new rows, which is much faster on "
        "large repositories with many packs and a long history of commits.")


def _repo(tmp_path: Path, authors: int = 3, per_author: int = 44) -> Path:
    """A bare repository whose authors each made ``per_author`` commits with prose bodies (git fast-import)."""
    repo = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(repo)], check=True)
    stream, mark, t = [], 0, 1_700_000_000
    for i in range(per_author):
        for a in range(authors):
            mark += 1
            t += 60
            msg = f"area{a}: change number {i}\n\n{BODY.format(i=i, a=a)}\n\nSigned-off-by: A{a} <a{a}@x>\n"
            data = msg.encode()
            stream.append(f"commit refs/heads/main\nmark :{mark}\nauthor A{a} <a{a}@x> {t} +0000\n"
                          f"committer A{a} <a{a}@x> {t} +0000\ndata {len(data)}\n".encode() + data
                          + (f"from :{mark - 1}\n" if mark > 1 else "").encode()
                          + f"M 644 inline f{a}\ndata 2\n{i % 10}\n\n".encode())
    subprocess.run(["git", f"--git-dir={repo}", "fast-import", "--quiet"], input=b"".join(stream), check=True)
    return repo


def test_each_author_is_one_person_with_a_rich_and_a_sparse_task(tmp_path: Path) -> None:
    gen = load_experiment("realtext_git_multitask")
    out = tmp_path / "data"
    gen.main(["--repo", str(_repo(tmp_path)), "--out", str(out), "--since", "2000-01-01", "--users", "3",
              "--rich", "8", "--sparse", "2", "--queries", "3"])
    lamp4 = {u.user_id: u for u in load_task_users(out, "LaMP_4")}
    lamp7 = {u.user_id: u for u in load_task_users(out, "LaMP_7")}
    assert set(lamp4) == set(lamp7) == {"author-000", "author-001", "author-002"}  # one id, both tasks
    for n, uid in enumerate(sorted(lamp4)):
        sizes = (len(lamp4[uid].profile), len(lamp7[uid].profile))
        assert sizes == ((8, 2) if n % 2 == 0 else (2, 8))  # the rich task alternates between authors
        assert len(lamp4[uid].queries) == len(lamp7[uid].queries) == 3
        ids4 = {p["id"] for p in lamp4[uid].profile}
        ids7 = {p["id"] for p in lamp7[uid].profile}
        assert not ids4 & ids7  # no commit serves both tasks
        for q in lamp7[uid].queries:  # the input is the gold without its style
            assert q.input.endswith(neutralize_tweet(q.gold)) and q.gold[0].isupper()
        assert all("Signed-off-by" not in p["text"] for p in lamp4[uid].profile)

"""BM25 retrieval over one user's profile, for the RAG baseline and the cloud upper bound.

Uses ``bm25s`` (sparse-matrix BM25). A profile is a handful to a few hundred items, so an index
is built per user per call; that costs well under a millisecond per item.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import bm25s

from cdcda_fl.data.tasks import TaskSpec

# bm25s sets its own logger to DEBUG when it is imported, which undoes an earlier
# quiet_libraries() and puts "DEBUG:bm25s:Building index ..." into every Ray actor's output
# once per user; its warnings stay visible.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def retrieve(task: TaskSpec, profile: Sequence[Mapping[str, Any]], queries: Sequence[str], k: int) -> list[list[Mapping[str, Any]]]:
    """Top-``k`` profile items for each query (fewer when the profile is smaller), best first."""
    if k <= 0 or not profile:
        return [[] for _ in queries]
    k = min(k, len(profile))
    corpus = [task.item_text(item) for item in profile]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    # A query made only of stop-words tokenizes to nothing; bm25s still returns k items (score 0).
    indices, _scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return [[profile[int(i)] for i in row] for row in indices]

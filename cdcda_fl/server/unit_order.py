"""Which users a round takes together and in which order: the orchestrator's unit of work.

A unit is one ``task/user`` key, or under ``train.adapter-scope = user`` every key of one person
(their one adapter trains on all of their tasks at once). Units are sent in chunks ordered by the
node that holds them, so a message carries whole nodes (and whole people), and a rerun cuts the
same chunks. Pure functions of the keys: server/orchestrator.py calls them, tests pin them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


def node_ordered(users: Sequence[str], user_node: Mapping[str, int], scope: str = "task") -> list[str]:
    """``users`` grouped by the node that holds them, groups in the order of their first user key.

    Why: simulated nodes hold users ``p, p+N, …`` of the sorted list, so a chunk of consecutive
    keys gave each of 1000 nodes one user and one message: at 10 000 users with 10 users per node
    the devices answered 2.1 users/s instead of 3.5 (benchmarks/scale.py, 2026-12-07), every
    message and every node's batched answering carrying one user. A chunk now carries whole nodes.
    The order depends on which users share a node and on their keys, never on node ids or reply
    order, so the chunks of a rerun are the same. Under ``scope = user`` a node's users are ordered
    by person, so a person's tasks sit side by side (:func:`chunked` keeps them in one message).
    """
    groups: dict[int, list[str]] = {}
    for u in sorted(users, key=_person_order if scope == "user" else None):
        groups.setdefault(user_node[u], []).append(u)
    return [u for group in sorted(groups.values(), key=lambda g: g[0]) for u in group]


def person_of(key: str) -> str:
    """The person of a ``task/user`` key (the user id: under scope user it names one person across tasks)."""
    return key.split("/", 1)[1]


def _person_order(key: str) -> tuple[str, str]:
    task, person = key.split("/", 1)
    return person, task


def personalize_units(keys: Sequence[str], scope: str) -> list[tuple[str, ...]]:
    """What a round samples: each ``task/user`` key alone, or (scope user) all keys of one person."""
    if scope != "user":
        return [(k,) for k in keys]
    people: dict[str, list[str]] = {}
    for k in sorted(keys, key=_person_order):
        people.setdefault(person_of(k), []).append(k)
    return [tuple(v) for _p, v in sorted(people.items())]


def chunked(keys: Sequence[str], size: int, scope: str) -> Iterator[list[str]]:
    """Consecutive chunks of about ``size`` keys; under ``scope = user`` a chunk ends only where a
    person ends, because a person's CDCDA adapter trains on the records of every task of theirs
    that the device received together."""
    chunk: list[str] = []
    for i, key in enumerate(keys):
        chunk.append(key)
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        if len(chunk) >= size and (scope != "user" or nxt is None or person_of(nxt) != person_of(key)):
            yield chunk
            chunk = []
    if chunk:
        yield chunk

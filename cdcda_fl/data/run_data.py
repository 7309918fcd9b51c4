"""Which users a run reads from its data dir, and how one user is named: shared by both sides.

The server (orchestrator, run dir) and the device node (its hosted users) resolve the same users
in the same fixed order from the same index; this lives in the data layer so the device side does
not import the server's run-directory module to do it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cdcda_fl.core.config import Scalar, adapter_scope
from cdcda_fl.data.index import DataIssue, TaskIndex, UserRef, select_users, task_index
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import parse_task_list
from cdcda_fl.core.run_config import run_config


def user_key(task: str, user_id: str) -> str:
    return f"{task}/{user_id}"


def data_dir_of(cfg: Mapping[str, Scalar]) -> Path:
    """The data directory a run reads: the configured one, else the personas inside the run dir."""
    rc = run_config(cfg)
    return Path(rc.data_dir) if rc.data_dir else Path(rc.out_dir) / "data"


def index_root(cfg: Mapping[str, Scalar]) -> Path:
    """Where a run keeps its data indexes (``cdcda_fl.data.index``): built once, read by every node."""
    return Path(run_config(cfg).out_dir) / "index"


def task_indexes(cfg: Mapping[str, Scalar], root: Path | None = None) -> list[TaskIndex]:
    """One validated index per task of the run (raises LampDataError for a broken file)."""
    rc = run_config(cfg)
    return [task_index(data_dir_of(cfg), spec.name, rc.split, root or index_root(cfg))
            for spec in parse_task_list(rc.tasks)]


def user_refs(cfg: Mapping[str, Scalar], root: Path | None = None) -> list[UserRef]:
    """All valid users of the run, task-major, in a fixed order (the order nodes are assigned in).

    Only the index is read, not the users' records: cheap in every Ray worker.
    """
    max_users = run_config(cfg).users or None
    return [ref for index in task_indexes(cfg, root) for ref in select_users(index.users, max_users)]


def node_share(refs: Sequence[UserRef], p: int, n: int, scope: str = "task") -> list[UserRef]:
    """The users simulated node ``p`` of ``n`` holds.

    ``scope = task``: every n-th user of the task-major list (a person's tasks may sit on different
    nodes). ``scope = user`` (``train.adapter-scope``): every n-th *person* of the sorted distinct
    user ids, with all of their tasks, because one adapter per person needs every task of that
    person on one device -- as on a real phone.
    """
    if scope != "user":
        return list(refs[p::n])
    mine = set(sorted({r.user_id for r in refs})[p::n])
    return [r for r in refs if r.user_id in mine]


def people_count(refs: Sequence[UserRef]) -> int:
    """Distinct people (user ids) among ``refs``: the devices a ``scope = user`` simulation needs."""
    return len({r.user_id for r in refs})


def hosted_count(cfg: Mapping[str, Scalar], refs: Sequence[UserRef]) -> int:
    """How many units simulated devices host: (task, user) pairs, or under ``train.adapter-scope =
    user`` people, since a node then holds whole people (:func:`node_share`)."""
    return people_count(refs) if adapter_scope(cfg) == "user" else len(refs)


def load_users(cfg: Mapping[str, Scalar], refs: Sequence[UserRef], root: Path | None = None) -> list[User]:
    """The records of just these users, read by offset from the LaMP files (order kept)."""
    by_task = {index.task: index for index in task_indexes(cfg, root)}
    return [user for ref in refs for user in by_task[ref.task].load_users([ref])]


def list_users(cfg: Mapping[str, Scalar]) -> list[User]:
    """All users of the run with their records (see :func:`user_refs` for the order)."""
    return load_users(cfg, user_refs(cfg))


def data_issues(cfg: Mapping[str, Scalar]) -> list[DataIssue]:
    """Every invalid record of the run's data and the user it makes the run skip."""
    return [issue for index in task_indexes(cfg) for issue in index.issues]

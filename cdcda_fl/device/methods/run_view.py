"""What the parts below a method need of a user's run: typed views, so they never import ``UserRun``.

``UserRun`` (user_run.py) builds the user's :class:`~.cloud_records.CloudRecords`, and the cloud
records, the adapter store helpers (stored.py) and the holdout check work *on* the run. Typed
against ``UserRun`` itself they closed an import circle (type-only, but a circle a reader has to
untangle: farm-studio, 2026-12-07). They are typed against these protocols instead, which
``UserRun`` satisfies structurally; a test keeps it so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import TaskSpec
from cdcda_fl.device.adapter_store import AdapterStore
from cdcda_fl.device.select import SelectConfig, Selection


class DeviceRun(Protocol):
    """One user's run as the adapter store, the cloud's records and the checks see it."""

    user: User
    cfg: Mapping[str, Any]
    spec: TaskSpec
    model: Any
    store: AdapterStore
    storage_dir: Path
    adapter_dir: Path | None
    real_pairs: list[tuple[str, str]]
    batch: int
    result: dict[str, Any]
    step: Callable[[str], None]
    person: tuple[User, ...]  # every task-user of this person on the device (adapter-scope user)
    siblings: tuple[Any, ...]  # this person's runs in the same personalize call

    def hold(self, adapter_dir: Path) -> None: ...

    def clear(self) -> None: ...

    def answer_in_training_runtime(self, prompts: list[str]) -> list[str]: ...


class RecordPool(Protocol):
    """The cloud's records as the holdout check draws on them (``CloudRecords`` is one)."""

    usable: list[dict[str, Any]]

    @property
    def selector(self) -> SelectConfig: ...

    def select(self) -> Selection: ...

    def weighted(self, real_items: Sequence[Mapping[str, Any]], synthetic: Sequence[Mapping[str, Any]] | None = None
                 ) -> tuple[list[dict[str, Any]], list[float], list[float]]: ...

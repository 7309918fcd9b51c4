"""What every method a device compares is: a small object built once per personalize call.

A method reads its own settings from the run config once (:meth:`Method.from_config`), then
:meth:`Method.run` does its part for one user: train or reuse what it needs, and queue its
answers (``UserRun.defer``) for the node's batched answering step. Under ``dp.enabled`` the
registry asks the class for its private form (:meth:`Method.private`): methods that train on the
user's records return the DP wrapper (``methods/private.py``) around themselves, so DP is one
composable piece, not a branch inside each method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from cdcda_fl.device.methods.user_run import UserRun


class Method(ABC):
    """One way of answering a user's held-out queries (``name`` as in ``methods`` and reports)."""

    name: ClassVar[str]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Method:
        """The method with its settings read from the run config (none by default)."""
        return cls()

    @classmethod
    def private(cls, cfg: Mapping[str, Any]) -> Method:
        """The method as it runs under ``dp.enabled``. By default unchanged: it trains on none of
        the user's records (base, rag, cloud) or is a non-private baseline (the FedAvg ones)."""
        return cls.from_config(cfg)

    @abstractmethod
    def run(self, run: UserRun) -> None:
        """Do this method's part for one user; on return its answers are queued or recorded."""


@dataclass(frozen=True)
class Refused(Method):
    """A method that is not defined under the run's settings: each user's outcome is the error."""

    method: str
    reason: str

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.method

    def run(self, run: UserRun) -> None:
        raise ValueError(f"{self.method} {self.reason}")

"""``local``: a private LoRA adapter trained on the user's real records only (OPPU-style)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from cdcda_fl.device.methods.method import Method
from cdcda_fl.device.methods.private import Private
from cdcda_fl.device.methods.stored import train_local
from cdcda_fl.device.methods.user_run import UserRun


class Local(Method):
    """The local-only adapter: trained once per user (or reloaded from the device's store)."""

    name: ClassVar[str] = "local"

    @classmethod
    def private(cls, cfg: Mapping[str, Any]) -> Method:
        return Private.around(cls.name, cfg)

    def run(self, run: UserRun) -> None:
        started = time.perf_counter()
        info = train_local(run)
        run.defer(self.name, run.inputs, started, train=info, epsilon=info.get("epsilon"), **run.mia())

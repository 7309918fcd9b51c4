"""quiet_libraries silences known noise only (cdcda_fl/core/quiet.py)."""

from __future__ import annotations

import logging

from cdcda_fl.core.quiet import quiet_libraries


def test_flower_actor_shutdown_notice_is_dropped_but_other_flower_warnings_stay(caplog):
    """Every simulation ends with Flower's "Manually terminating ClientAppActor" per Ray actor
    (two console lines each); it is routine, so it goes, and nothing else Flower says does."""
    from flwr.supercore.logger import log

    quiet_libraries()
    quiet_libraries()  # idempotent: one filter, not one per message
    flwr = logging.getLogger("flwr")
    assert sum(type(f).__name__ == "_DropRoutineShutdown" for f in flwr.filters) == 1
    with caplog.at_level(logging.WARNING, logger="flwr"):
        flwr.addHandler(caplog.handler)
        try:
            log(logging.WARNING, "Manually terminating %s", "ClientAppActor")
            log(logging.WARNING, "Manually terminating %s", "SomethingElse")
            log(logging.WARNING, "ClientApp raised an exception")
        finally:
            flwr.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records]
    assert "Manually terminating ClientAppActor" not in messages
    assert "Manually terminating SomethingElse" in messages and "ClientApp raised an exception" in messages


def test_kernels_offline_trust_check_notice_is_silenced():
    """Seen in the 2026-12-04 quality run: one "Skipping publisher trust check ... offline mode" per actor."""
    import logging

    from cdcda_fl.core.quiet import quiet_libraries

    quiet_libraries()
    hub = logging.getLogger("kernels._internals.hf_hub")
    assert not hub.isEnabledFor(logging.WARNING) and hub.isEnabledFor(logging.ERROR)

"""cloud.cache-dir: a rerun of the same shares reuses the writer's records, and nothing else does."""

from __future__ import annotations

from pathlib import Path

from cdcda_fl.cloud.augment import AugmentResult
from cdcda_fl.core.config import resolve
from cdcda_fl.privacy.consent import SharedRecords
from cdcda_fl.server.cloud_writer import CloudWriter
from cdcda_fl.server.writer_cache import WriterCache, call_key


class CountingAugmenter:
    """Writes one record per user from its first shared record; fails for users named in ``fail``."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.calls = 0
        self.fail = fail

    def augment(self, requests, context=None):
        self.calls += 1
        return {r.user_id: AugmentResult(r.user_id, r.task, [] if r.user_id in self.fail else
                                         [{"id": "s0", "tag": r.records[0]["tag"], "description": f"call {self.calls}"}],
                                         {"accepted": 1}, "TimeoutError" if r.user_id in self.fail else None)
                for r in requests}


def _writer(cfg: dict, augmenter: CountingAugmenter) -> CloudWriter:
    writer = CloudWriter.__new__(CloudWriter)
    writer.cfg, writer.label, writer.accounting = cfg, "hf:fake", {}
    writer._augmenter, writer.cache = augmenter, WriterCache(cfg["cloud.cache-dir"])
    return writer


def _shares(tag: str = "comedy", ids: str = "r") -> list[SharedRecords]:
    return [SharedRecords(u, "LaMP_2", [{"id": f"{ids}{u}", "tag": tag, "description": "a film"}], [f"{ids}{u}"],
                          ["id", "tag", "description"], 1, 1, 10) for u in "ab"]


def test_the_same_call_is_written_once_even_under_other_record_ids(tmp_path: Path) -> None:
    cfg = resolve({"cloud.cache-dir": str(tmp_path / "cache")})
    first = CountingAugmenter()
    out1 = _writer(cfg, first).run(_shares())
    again = CountingAugmenter()
    writer = _writer(cfg, again)
    out2 = writer.run(_shares(ids="x"))  # another run dir: the devices' opaque ids differ, the prompt does not
    assert again.calls == 0 and out2 == out1
    assert writer.accounting["LaMP_2/a"]["cached"] is True


def test_another_record_setting_or_seed_is_written_again(tmp_path: Path) -> None:
    cfg = resolve({"cloud.cache-dir": str(tmp_path / "cache")})
    _writer(cfg, CountingAugmenter()).run(_shares())
    for changed_cfg, shares in ((cfg, _shares(tag="romance")),
                                (resolve({**cfg, "synthetic.temperature": 0.3}), _shares()),
                                (resolve({**cfg, "seed": 1}), _shares())):
        augmenter = CountingAugmenter()
        _writer(changed_cfg, augmenter).run(shares)
        assert augmenter.calls == 1
    # the call's timeout is how it is made, not what it writes
    assert call_key(cfg, "hf:fake", "LaMP_2", _shares()) == \
        call_key(resolve({**cfg, "cloud.timeout": 5.0}), "hf:fake", "LaMP_2", _shares())


def test_a_call_with_an_error_is_not_replayed(tmp_path: Path) -> None:
    cfg = resolve({"cloud.cache-dir": str(tmp_path / "cache")})
    _writer(cfg, CountingAugmenter(fail=frozenset({"b"}))).run(_shares())
    retry = CountingAugmenter()
    out = _writer(cfg, retry).run(_shares())
    assert retry.calls == 1 and out["LaMP_2/b"]  # the outage is not cached: the rerun writes for b


def test_off_by_default() -> None:
    from cdcda_fl.server.writer_cache import writer_cache

    assert writer_cache(resolve()) is None

"""The Flower-free orchestrator over an in-memory transport: rounds, fraction, timeouts, lost replies.

No Ray, no Flower: nodes are functions that answer (or do not). Each test runs in about a second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from cdcda_fl.server import orchestrator
from cdcda_fl.core.config import resolve
from cdcda_fl.server.orchestrator import PERSONALIZE, SHARE, Reply
from cdcda_fl.data.run_data import list_users, user_key
from cdcda_fl.server.runs import prepare_run_dir

Node = Callable[[str, Mapping[str, Any]], "dict[str, Any] | Exception | None"]


class MemoryTransport:
    """Requests are answered at once by the node's function; None = the node never replies."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.nodes = nodes
        self.sent: list[tuple[int, str, dict]] = []
        self.batches: list[tuple[str, int]] = []  # (kind, users asked) per send: one per round chunk
        self.configs: list[tuple[str, dict]] = []  # (kind, run config) per send, as it would travel
        self._ready: dict[str, Reply] = {}
        self._n = 0

    def node_ids(self) -> list[int]:
        return list(self.nodes)

    def send(self, kind: str, cfg: Mapping[str, Any], requests: list[tuple[int, Mapping[str, Any]]]) -> list[str]:
        handles = []
        self.batches.append((kind, sum(len(p.get("synthetic", {})) for _, p in requests)))
        self.configs.append((kind, dict(cfg)))
        for node, payload in requests:
            self._n += 1
            handle = f"m{self._n}"
            self.sent.append((node, kind, json.loads(json.dumps(payload))))
            answer = self.nodes[node](kind, payload)
            if isinstance(answer, Exception):
                self._ready[handle] = Reply(node, None, f"{type(answer).__name__}: {answer}")
            elif answer is not None:
                self._ready[handle] = Reply(node, json.loads(json.dumps(answer)))
            handles.append(handle)
        return handles

    def poll(self, handles: list[str]) -> list[tuple[str, Reply]]:
        return [(h, self._ready.pop(h)) for h in handles if h in self._ready]


def _cfg(tmp_path: Path, **extra: Any) -> dict:
    return prepare_run_dir(resolve({"tasks": "LaMP_2", "users": 4, "out-dir": str(tmp_path / "run"),
                                    "methods": "base", "personas.queries": 2, "node-wait": 3.0, **extra}))


def fake_device(cfg: dict, hosted: list[str], *, drop: set[str] = frozenset()) -> Node:
    """A device that hosts ``hosted`` users and answers every query with its gold label."""
    users = {user_key(u.task, u.user_id): u for u in list_users(cfg)}

    def node(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if kind == SHARE:
            return {"users": hosted, "shares": [], "errors": []}
        results = []
        for key in payload["synthetic"]:
            if key in drop:
                continue
            u = users[key]
            preds = {q.id: q.gold for q in u.queries}
            results.append({"user_id": u.user_id, "task": u.task, "n_queries": len(preds), "golds": preds,
                            "methods": {"base": {"predictions": preds, "metrics": {"accuracy": 1.0}}}})
        return {"results": results}

    return node


def _keys(cfg: dict) -> list[str]:
    return sorted(user_key(u.task, u.user_id) for u in list_users(cfg))


def test_rounds_and_fraction_cover_every_user_once(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, rounds=3, fraction=0.5)
    keys = _keys(cfg)
    transport = MemoryTransport({1: fake_device(cfg, keys[:2]), 2: fake_device(cfg, keys[2:])})
    results = orchestrator.run_cdcda(transport, cfg)
    asked = [k for _, kind, p in transport.sent if kind == PERSONALIZE for k in p["synthetic"]]
    assert sorted(asked) == keys  # every user exactly once over the rounds
    # round 1 takes round(0.5*4)=2 users, round 2 round(0.5*2)=1, round 3 the last one
    assert [n for kind, n in transport.batches if kind == PERSONALIZE] == [2, 1, 1]
    assert results["users"] == {"LaMP_2": 4} and not results["failures"]
    assert results["table"][0]["metrics"]["accuracy"] == 1.0


def test_a_prepared_run_does_not_prepare_or_check_its_data_again(tmp_path: Path, monkeypatch) -> None:
    """`cdcda run` prepares the run dir and checks the data before Ray starts; the ServerApp it
    starts must not read and check every record a second time (issue 30.4)."""
    cfg = orchestrator.prepare_run_dir(_cfg(tmp_path))
    orchestrator.check_run_data(cfg)
    keys = _keys(cfg)
    calls: list[str] = []
    monkeypatch.setattr(orchestrator, "prepare_run_dir", lambda c: calls.append("prepare") or c)
    monkeypatch.setattr(orchestrator, "check_run_data", lambda c: calls.append("check") or [])
    results = orchestrator.run_cdcda(MemoryTransport({1: fake_device(cfg, keys)}), cfg, prepared=True)
    assert calls == [] and results["users"] == {"LaMP_2": len(keys)}
    orchestrator.run_cdcda(MemoryTransport({1: fake_device(cfg, keys)}), cfg)  # flwr run: prepares itself
    assert calls == ["prepare", "check"]


def test_fraction_below_one_with_one_round_leaves_the_rest_for_a_rerun(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, rounds=1, fraction=0.5)
    keys = _keys(cfg)
    transport = MemoryTransport({1: fake_device(cfg, keys)})
    assert orchestrator.run_cdcda(transport, cfg)["users"] == {"LaMP_2": 2}
    rerun = MemoryTransport({1: fake_device(cfg, keys)})
    assert orchestrator.run_cdcda(rerun, cfg)["users"] == {"LaMP_2": 3}  # resumes: half of the remaining 2
    asked_again = [k for _, kind, p in rerun.sent if kind == PERSONALIZE for k in p["synthetic"]]
    assert len(asked_again) == 1


def test_a_silent_node_times_out_and_the_others_finish(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, timeout=0.5)
    keys = _keys(cfg)

    def silent_in_personalize(kind: str, payload: Mapping[str, Any]):
        return {"users": keys[2:], "shares": [], "errors": []} if kind == SHARE else None

    transport = MemoryTransport({1: fake_device(cfg, keys[:2]), 2: silent_in_personalize})
    results = orchestrator.run_cdcda(transport, cfg)
    assert results["users"] == {"LaMP_2": 2}
    timed_out = {f["who"] for f in results["failures"] if f["reason"] == "no reply before timeout"}
    assert timed_out == set(keys[2:])


def test_error_replies_and_lost_results_are_failures_not_crashes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    keys = _keys(cfg)

    def crashing(kind: str, payload: Mapping[str, Any]):
        return {"users": [keys[3]], "shares": [], "errors": []} if kind == SHARE else RuntimeError("device died")

    transport = MemoryTransport({1: fake_device(cfg, keys[:3], drop={keys[1]}), 2: crashing,
                                 3: lambda kind, p: RuntimeError("no share") if kind == SHARE else None})
    results = orchestrator.run_cdcda(transport, cfg)
    reasons = {f["who"]: f["reason"] for f in results["failures"]}
    assert reasons[keys[3]] == "RuntimeError: device died"
    assert reasons[keys[1]] == "the device's reply had no result for this user"
    assert reasons["node 3"] == "RuntimeError: no share"
    assert results["users"] == {"LaMP_2": 2}


def test_synthetic_sets_go_only_to_the_node_that_holds_the_user(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, methods="base,cdcda")
    keys = _keys(cfg)

    class StubWriter:
        def __init__(self, cfg: Mapping[str, Any]) -> None:
            pass

        def run(self, shares) -> dict[str, list[dict]]:
            return {user_key(s.task, s.user_id): [{"id": f"syn-{s.user_id}", "description": "x", "tag": "comedy"}]
                    for s in shares}

    def sharing(hosted: list[str]) -> Node:
        inner = fake_device(cfg, hosted)

        def node(kind: str, payload: Mapping[str, Any]):
            if kind != SHARE:
                return inner(kind, payload)
            shares = [{"user_id": k.split("/", 1)[1], "task": "LaMP_2", "records": [{"id": "r1", "tag": "comedy"}],
                       "record_ids": ["r1"], "fields": ["id", "tag"], "n_shared": 1, "bytes": 0} for k in hosted]
            return {"users": hosted, "shares": shares, "errors": []}
        return node

    transport = MemoryTransport({1: sharing(keys[:2]), 2: sharing(keys[2:])})
    orchestrator.run_cdcda(transport, cfg, writer_factory=StubWriter)
    for node, kind, payload in transport.sent:
        if kind == PERSONALIZE:
            hosted = keys[:2] if node == 1 else keys[2:]
            assert set(payload["synthetic"]) <= set(hosted)
            for key, records in payload["synthetic"].items():
                assert records == [{"id": f"syn-{key.split('/', 1)[1]}", "description": "x", "tag": "comedy"}]


def test_stop_flag_interrupts_between_polls(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, timeout=5.0)
    keys = _keys(cfg)
    transport = MemoryTransport({1: lambda kind, p: {"users": keys, "shares": [], "errors": []} if kind == SHARE
                                 else (orchestrator.STOP.set() or None)})
    try:
        with pytest.raises(orchestrator.RunInterrupted):
            orchestrator.run_cdcda(transport, cfg)
    finally:
        orchestrator.STOP.clear()


def test_cloud_counts_and_errors_reach_each_users_result_and_results_json(tmp_path: Path) -> None:
    """The cloud's per-user accounting is server data: stored with the result (replacing anything a
    device sent under ``cloud``) and summarised per task; a writer without ``accounting`` still
    records how many records each user got."""
    cfg = _cfg(tmp_path, methods="base,cdcda")
    keys = _keys(cfg)

    class AccountingWriter:
        def __init__(self, cfg: Mapping[str, Any]) -> None:
            self.accounting: dict[str, dict] = {}

        def run(self, shares) -> dict[str, list[dict]]:
            out = {}
            for s in shares:
                key = user_key(s.task, s.user_id)
                failed = key == keys[0]
                out[key] = [] if failed else [{"id": f"syn-{s.user_id}", "description": "x", "tag": "comedy"}]
                self.accounting[key] = orchestrator.cloud_accounting(
                    out[key], {"generated": 4, "accepted": len(out[key]), "rejected_near_copy": 3},
                    "BackendError: HTTP 503" if failed else None)
            return out

    def sharing(run_cfg: dict, hosted: list[str], *, spoof: bool = False) -> Node:
        inner = fake_device(run_cfg, hosted)

        def node(kind: str, payload: Mapping[str, Any]):
            if kind != SHARE:
                body = inner(kind, payload)
                if spoof:  # a device must not be able to write the cloud's accounting
                    for r in body["results"]:
                        r["cloud"] = {"n_records": 999, "counts": {}, "error": None}
                return body
            shares = [{"user_id": k.split("/", 1)[1], "task": "LaMP_2", "records": [{"id": "r1", "tag": "comedy"}],
                       "record_ids": ["r1"], "fields": ["id", "tag"], "n_shared": 1, "bytes": 0} for k in hosted]
            return {"users": hosted, "shares": shares, "errors": []}
        return node

    transport = MemoryTransport({1: sharing(cfg, keys[:2], spoof=True), 2: sharing(cfg, keys[2:])})
    results = orchestrator.run_cdcda(transport, cfg, writer_factory=AccountingWriter)
    uid0 = keys[0].split("/", 1)[1]
    stored = json.loads((Path(cfg["out-dir"]) / "users" / "LaMP_2" / f"{uid0}.json").read_text())
    assert stored["cloud"] == {"n_records": 0, "counts": {"generated": 4, "accepted": 0, "rejected_near_copy": 3},
                               "error": "BackendError: HTTP 503"}
    on_disk = json.loads((Path(cfg["out-dir"]) / "results.json").read_text())
    per_user = on_disk["per_user"]["LaMP_2"]
    assert {u: e["cloud"]["n_records"] for u, e in per_user.items()} == {k.split("/", 1)[1]: (0 if k == keys[0] else 1)
                                                                         for k in keys}
    block = on_disk["cloud"]["LaMP_2"]
    assert (block["users"], block["records_written"], block["records_accepted"], block["users_with_error"]) == (4, 16, 3, 1)
    assert block["rejected"] == {"near_copy": 12} and block["outage"] is False
    assert results["cloud"] == on_disk["cloud"]

    # A writer without accounting (and a later resume) still leaves a per-user record count.
    cfg2 = _cfg(tmp_path / "b", methods="base,cdcda")
    keys2 = _keys(cfg2)

    class Plain:
        def __init__(self, cfg: Mapping[str, Any]) -> None:
            pass

        def run(self, shares) -> dict[str, list[dict]]:
            return {user_key(s.task, s.user_id): [] for s in shares}

    orchestrator.run_cdcda(MemoryTransport({1: sharing(cfg2, keys2)}), cfg2, writer_factory=Plain)
    plain = json.loads((Path(cfg2["out-dir"]) / "results.json").read_text())["per_user"]["LaMP_2"]
    assert all(e["cloud"] == {"n_records": 0, "counts": {}, "error": None} for e in plain.values())


def test_cloud_writer_keeps_the_augmenters_counts_and_errors_per_user() -> None:
    from cdcda_fl.cloud.augment import AugmentResult
    from cdcda_fl.privacy.consent import SharedRecords

    class FakeAugmenter:
        def augment(self, requests, context=None):
            return {r.user_id: (AugmentResult(r.user_id, r.task, [], {"accepted": 0, "generations": 2}, "TimeoutError: x")
                                if r.user_id == "b" else
                                AugmentResult(r.user_id, r.task, [{"id": "s0", "tag": "comedy", "description": "d"}],
                                              {"accepted": 1, "generated": 3, "rejected_truncated": 2}))
                    for r in requests}

    writer = orchestrator.CloudWriter.__new__(orchestrator.CloudWriter)
    writer._augmenter, writer.cache, writer.cfg = FakeAugmenter(), None, {}
    writer.accounting, writer.label = {}, "hf:fake"
    shares = [SharedRecords(u, "LaMP_2", [{"id": "r", "tag": "comedy"}], ["r"], ["id", "tag"], 1, 1, 10) for u in "ab"]
    out = writer.run(shares)
    assert len(out["LaMP_2/a"]) == 1 and out["LaMP_2/b"] == []
    assert writer.accounting == {
        "LaMP_2/a": {"n_records": 1, "counts": {"accepted": 1, "generated": 3, "rejected_truncated": 2}, "error": None,
                     "writer": "hf:fake"},
        "LaMP_2/b": {"n_records": 0, "counts": {"accepted": 0, "generations": 2}, "error": "TimeoutError: x",
                     "writer": "hf:fake"},
    }


def test_messages_carry_only_the_keys_their_device_side_reads(tmp_path: Path) -> None:
    """The cloud's endpoint, the name of its key variable and the server's own paths never reach a device."""
    from cdcda_fl.core.config import message_keys

    overrides = tmp_path / "server-secret" / "overrides.toml"
    overrides.parent.mkdir()
    overrides.write_text("")
    cfg = _cfg(tmp_path, **{"cloud.base-url": "https://cloud.example/v1", "cloud.api-key-env": "CLOUD_KEY",
                            "consent.overrides": str(overrides)})
    keys = _keys(cfg)
    transport = MemoryTransport({1: fake_device(cfg, keys)})
    orchestrator.run_cdcda(transport, cfg)
    assert {kind for kind, _ in transport.configs} == {SHARE, PERSONALIZE}
    for kind, sent in transport.configs:
        assert sorted(sent) == sorted(message_keys(kind))
        text = json.dumps(sent)
        for secret in ("cloud.example", "CLOUD_KEY", "server-secret"):
            assert secret not in text, (kind, secret)
        assert not any(k.startswith(("synthetic.", "sim.")) for k in sent)


def _sharing_device(cfg: dict, hosted: list[str]) -> Node:
    """A device that shares one record per hosted user when asked (``share`` true), else none."""
    inner = fake_device(cfg, hosted)

    def node(kind: str, payload: Mapping[str, Any]):
        if kind != SHARE:
            return inner(kind, payload)
        shares = [{"user_id": k.split("/", 1)[1], "task": "LaMP_2", "records": [{"id": "r1", "tag": "comedy"}],
                   "record_ids": ["r1"], "fields": ["id", "tag"], "n_shared": 1, "bytes": 0}
                  for k in hosted] if payload.get("share", True) else []
        return {"users": hosted, "shares": shares, "errors": []}
    return node


class _EmptyWriter:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        pass

    def run(self, shares) -> dict[str, list[dict]]:
        return {user_key(s.task, s.user_id): [] for s in shares}


def test_devices_holding_the_same_user_ids_stop_the_run_before_any_record_is_asked(tmp_path: Path) -> None:
    """Two devices built with the same personas (both ``dev-u0000``): a clear error, nothing shared (issue 34)."""
    cfg = _cfg(tmp_path, methods="base,cdcda")
    keys = _keys(cfg)
    transport = MemoryTransport({1: _sharing_device(cfg, keys), 2: _sharing_device(cfg, keys)})
    with pytest.raises(orchestrator.UsersRefused, match="claimed by several nodes.*--user-prefix"):
        orchestrator.run_cdcda(transport, cfg, writer_factory=_EmptyWriter)
    assert [p["share"] for _, kind, p in transport.sent if kind == SHARE] == [False, False]
    assert not any(kind == PERSONALIZE for _, kind, _ in transport.sent)


def test_a_node_claiming_another_nodes_user_shares_nothing_and_the_others_go_on(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, methods="base,cdcda")
    keys = _keys(cfg)
    transport = MemoryTransport({1: _sharing_device(cfg, keys[:2]), 2: _sharing_device(cfg, keys[1:3]),
                                 3: _sharing_device(cfg, keys[3:])})
    results = orchestrator.run_cdcda(transport, cfg, writer_factory=_EmptyWriter)
    asked = sorted(node for node, kind, p in transport.sent if kind == SHARE and p["share"])
    assert asked == [3]  # nodes 1 and 2 both claim keys[1]: neither is asked for records
    reasons = {(f["who"], f["reason"]) for f in results["failures"]}
    assert (keys[1], "claimed by nodes 1 and 2: given to none") in reasons
    assert ("node 1", "not asked for records: it claims a user another node also claims") in reasons
    assert results["users"] == {"LaMP_2": 3}  # keys[0], keys[2] (no cloud data) and keys[3]


def test_one_node_is_asked_once(tmp_path: Path) -> None:
    """No announcement round when no other node can contest a user (one node: one message)."""
    cfg = _cfg(tmp_path, methods="base,cdcda")
    transport = MemoryTransport({1: _sharing_device(cfg, _keys(cfg))})
    orchestrator.run_cdcda(transport, cfg, writer_factory=_EmptyWriter)
    assert [p["share"] for _, kind, p in transport.sent if kind == SHARE] == [True]


def test_chunks_carry_whole_nodes_in_an_order_that_ignores_node_ids() -> None:
    """At 10 000 users a chunk of consecutive keys gave 1000 nodes one user each (issue 33)."""
    from cdcda_fl.server.unit_order import node_ordered

    users = [f"LaMP_2/u{i:02d}" for i in range(12)]
    by_node = {u: 100 + i % 4 for i, u in enumerate(users)}  # node p holds users p, p+4, p+8
    ordered = node_ordered(list(reversed(users)), by_node)
    assert ordered[:3] == ["LaMP_2/u00", "LaMP_2/u04", "LaMP_2/u08"]
    assert [by_node[u] for u in ordered] == [100] * 3 + [101] * 3 + [102] * 3 + [103] * 3
    relabelled = {u: 7 - (n - 100) for u, n in by_node.items()}  # other node ids, the same partition
    assert node_ordered(users, relabelled) == ordered
    assert sorted(ordered) == sorted(users)


def test_a_bounded_transport_never_has_more_messages_queued_than_its_window() -> None:
    """Flower's simulation scans every queued message for each node at every poll, so the server
    keeps a few per Ray actor queued (GridTransport.max_in_flight), sending more as replies come."""
    from cdcda_fl.core.config import resolve
    from cdcda_fl.server.orchestrator import exchange

    class Bounded(MemoryTransport):
        max_in_flight = 3

        def __init__(self, nodes: dict[int, Node]) -> None:
            super().__init__(nodes)
            self.queued: set[str] = set()
            self.most = 0

        def send(self, kind, cfg, requests):
            handles = super().send(kind, cfg, requests)
            self.queued |= set(handles)
            self.most = max(self.most, len(self.queued))
            return handles

        def poll(self, handles):
            out = super().poll(handles[:1])  # one reply per poll: the window has to slide
            self.queued -= {h for h, _ in out}
            return out

    silent = 9  # never replies: it keeps a slot, and is reported lost at the timeout
    nodes = {n: (lambda kind, payload: {"ok": True}) for n in range(10)}
    nodes[silent] = lambda kind, payload: None
    t = Bounded(nodes)
    replied: list[int] = []
    lost = exchange(t, [(n, {}) for n in range(10)], SHARE, resolve({}), 2.0,
                    lambda r: replied.append(r.node), "test")
    assert t.most == 3 and sorted(replied) == [n for n in range(10) if n != silent] and lost == [silent]
    assert exchange(MemoryTransport(nodes), [(n, {}) for n in range(3)], SHARE, resolve({}), None,
                    lambda r: None, "unbounded") == []


def test_the_simulation_window_is_four_messages_per_ray_actor() -> None:
    from strategies.cloud_augment import simulation_window

    assert simulation_window({"sim.cpus": 2, "sim.client-cpus": 1.0}) == 8
    assert simulation_window({"sim.cpus": 8, "sim.client-cpus": 2.0}) == 16
    assert simulation_window({"sim.max-in-flight": 5, "sim.cpus": 2}) == 5


def test_under_user_scope_rounds_take_whole_people_and_a_rerun_redoes_an_unfinished_person(tmp_path: Path) -> None:
    """``train.adapter-scope = user`` (issue 32): a round samples people, not (task, user) pairs, and
    a person with one task finished and one not is asked again for both: their one adapter trains
    on the records of every task the device receives together."""
    cfg = _cfg(tmp_path, tasks="LaMP_2,LaMP_5", rounds=1, fraction=0.5, **{"train.adapter-scope": "user"})
    keys = _keys(cfg)
    transport = MemoryTransport({1: fake_device(cfg, keys)})
    orchestrator.run_cdcda(transport, cfg)
    asked = [k for _, kind, p in transport.sent if kind == PERSONALIZE for k in p["synthetic"]]
    people = {k.split("/")[1] for k in asked}
    assert len(people) == 2 and sorted(asked) == sorted(k for k in keys if k.split("/")[1] in people)
    # one task of a person finished, the other not (e.g. its result was lost): a rerun asks both
    cfg = _cfg(tmp_path / "b", tasks="LaMP_2,LaMP_5", **{"train.adapter-scope": "user"})
    keys = _keys(cfg)
    person = keys[0].split("/")[1]
    orchestrator.run_cdcda(MemoryTransport({1: fake_device(cfg, keys, drop={f"LaMP_5/{person}"})}), cfg)
    rerun = MemoryTransport({1: fake_device(cfg, keys)})
    orchestrator.run_cdcda(rerun, cfg)
    asked_again = sorted(k for _, kind, p in rerun.sent if kind == PERSONALIZE for k in p["synthetic"])
    assert asked_again == [f"LaMP_2/{person}", f"LaMP_5/{person}"]

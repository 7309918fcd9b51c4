"""The cloud: a Flower ServerApp whose "aggregation" is data augmentation, not FedAvg.

Flow (Flower Message API):
1. wait for the nodes (``grid.get_node_ids()`` starts empty in Flower 1.42: poll);
2. ``query.share`` to every node: each returns its users and the records they consented to share;
   everything received is appended to the audit log;
3. per round, for a fraction of the unfinished users: the cloud LLM writes synthetic records per
   user (batched across users, one user per prompt), then ``train.personalize`` sends each node its
   users' synthetic sets; replies are written to disk as they arrive (resumable);
4. the report: LaMP-format predictions, ``results.json``, ``summary.csv``, plots, a table.

A node that fails (exception, timeout) is reported with its users and the run goes on.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from cdcda_fl.config import Scalar, methods_of, resolve
from cdcda_fl.node_guard import NodeGuard, Refused
from cdcda_fl.privacy.consent import SharedRecords, payload_bytes
from cdcda_fl.progress import Progress, log
from cdcda_fl.runs import ResultStore, aggregate, check_run_data, prepare_run_dir, user_key
from clients.codec import pack, unpack

SHARE = "query.share"
PERSONALIZE = "train.personalize"


def wait_for_nodes(grid: Grid, expected: int, wait_s: float, settle_s: float = 1.0) -> list[int]:
    """Poll until at least ``expected`` nodes are connected and their number has not changed for
    ``settle_s`` seconds (or ``wait_s`` has passed).

    Why settle: under plain ``flwr run .`` the ServerApp cannot know how many SuperNodes the
    federation has (Flower's default is 2, ``--federation-config num-supernodes=N`` changes it),
    so it takes every node that is there once the count stops growing, instead of waiting
    ``node-wait`` seconds for a ``min-nodes`` that may never come.
    """
    deadline = time.monotonic() + wait_s
    nodes: list[int] = []
    changed = time.monotonic()
    while True:
        now_nodes = sorted(grid.get_node_ids())
        if now_nodes != nodes:
            nodes, changed = now_nodes, time.monotonic()
        now = time.monotonic()
        if (len(nodes) >= expected and now - changed >= settle_s) or now > deadline:
            return nodes
        time.sleep(0.1)


# Set by the driver's SIGINT/SIGTERM handler (strategies/simulation.py): stop at the next poll.
STOP = threading.Event()


class RunInterrupted(Exception):
    """The run was asked to stop (Ctrl-C / SIGTERM); finished users are on disk, the rest resume."""


def exchange(grid: Grid, messages: list[Message], timeout: float | None,
             on_reply: Callable[[Message, Message], int | None], label: str, *,
             total: int | None = None, unit: str = "nodes") -> list[Message]:
    """Push messages, then pull replies as they arrive, handing each to ``on_reply``.

    Progress counts ``unit``s: ``on_reply`` returns how many a reply finished (None = 1), so a
    node that hosts several users advances the bar by its users, out of ``total``.

    Returns the messages that got no reply before ``timeout`` (None = wait for all).
    Streaming (instead of ``send_and_receive``) lets results be written as soon as a device
    finishes, so a crash or Ctrl-C loses at most the users in flight. Raises RunInterrupted
    as soon as :data:`STOP` is set (replies still in flight are abandoned).
    """
    if STOP.is_set():
        raise RunInterrupted("stop requested")
    ids = list(grid.push_messages(messages))
    pending = {mid: msg for mid, msg in zip(ids, messages)}
    deadline = None if not timeout else time.monotonic() + timeout
    delay = 0.05
    with Progress(label, total=len(pending) if total is None else total, unit=unit) as bar:
        while pending and (deadline is None or time.monotonic() < deadline):
            if STOP.is_set():
                raise RunInterrupted(f"stop requested during {label}")
            replies = list(grid.pull_messages(list(pending)))
            for reply in replies:
                sent = pending.pop(reply.metadata.reply_to_message_id, None)
                if sent is not None:
                    done = on_reply(sent, reply)
                    bar.advance(1 if done is None else done)
            delay = 0.05 if replies else min(delay * 1.5, 1.0)
            if pending:
                time.sleep(delay)
    return list(pending.values())


def _error_text(reply: Message) -> str:
    return str(reply.error.reason) if reply.has_error() else ""


def run_cdcda(grid: Grid, cfg: dict[str, Scalar], *, expected_nodes: int | None = None) -> dict[str, Any]:
    """The whole CDCDA run on an existing Grid; returns the aggregated results."""
    methods_of(cfg)  # fail early on a bad method list
    clock = _PhaseClock()
    cfg = prepare_run_dir(cfg)
    check_run_data(cfg)  # invalid records: skip (and report) their users, or refuse with data.strict
    store = ResultStore(cfg["out-dir"])
    timeout = float(cfg["timeout"]) or None
    expected = expected_nodes or int(cfg["sim.num-supernodes"]) or int(cfg["min-nodes"])
    with clock("wait_nodes"):
        nodes = wait_for_nodes(grid, expected, float(cfg["node-wait"]))
    log(f"{len(nodes)} device node(s) connected")
    if not nodes:
        raise RuntimeError("no device nodes connected")

    # ---------------------------------------------------------------- 1. share
    wants_cloud_data = "cdcda" in methods_of(cfg)
    guard = NodeGuard()  # nodes are untrusted: who may speak for which user (cdcda_fl/node_guard.py)
    raw_shares: list[tuple[int, Any]] = []

    def on_share(sent: Message, reply: Message) -> None:
        node = sent.metadata.dst_node_id
        if reply.has_error():
            store.record_failure(f"node {node}", _error_text(reply), phase="share")
            return
        try:
            body = unpack(reply)
            users, errors, node_shares = list(body["users"]), list(body["errors"]), list(body["shares"])
        except (KeyError, TypeError, ValueError):
            store.record_failure(f"node {node}", "malformed share reply", phase="share")
            return
        for who, reason in guard.announce(node, users):
            store.record_failure(who, reason, phase="share", node=node)
        for err in errors:
            who = err.get("user") if isinstance(err, dict) else None
            store.record_failure(str(who)[:160] if who else f"node {node}", str(err.get("reason", ""))[:500]
                                 if isinstance(err, dict) else "malformed error", phase="share", node=node)
        raw_shares.extend((node, raw) for raw in node_shares)

    share_msgs = [Message(pack(cfg, share=wants_cloud_data), dst_node_id=n, message_type=SHARE) for n in nodes]
    with clock("share"):
        lost_shares = exchange(grid, share_msgs, timeout, on_share, "share (consented records)")
    for lost in lost_shares:
        store.record_failure(f"node {lost.metadata.dst_node_id}", "no reply before timeout", phase="share")

    # Shares are accepted only once every announcement is in: a user claimed by two nodes is
    # then known to be contested, whichever reply came first.
    user_node = guard.owner_map()
    shares: dict[str, SharedRecords] = {}
    audit = _audit_log(cfg)
    for node, raw in raw_shares:
        try:
            key = guard.check_share(node, raw)
            shared = SharedRecords.from_dict(raw)
            shared.bytes = payload_bytes(shared.records)  # the audit counts what arrived, not what was claimed
        except (Refused, TypeError, ValueError) as exc:
            store.record_failure(f"node {node}", str(exc), phase="share", node=node)
            continue
        shares[key] = shared
        audit.record(shared, destination=f"cloud:{cfg['cloud.backend']}:{cfg['cloud.model']}", request="augment")

    # ---------------------------------------------------------------- 2. rounds: augment + personalize
    # Sorted: which users share a round or chunk must not depend on the order replies arrived in.
    remaining = sorted(u for u in user_node if not store.done(*u.split("/", 1)))
    skipped = len(user_node) - len(remaining)
    if skipped:
        log(f"resuming: {skipped} user(s) already finished, {len(remaining)} to go")
    rng = random.Random(int(cfg["seed"]))
    with clock("cloud_load"):
        augmenter = _Augmenter(cfg) if wants_cloud_data else None
    chunk_size = max(1, int(cfg["chunk-users"]))
    for rnd in range(1, int(cfg["rounds"]) + 1):
        if not remaining:
            break
        take = max(1, round(float(cfg["fraction"]) * len(remaining)))
        selected = sorted(rng.sample(remaining, take)) if take < len(remaining) else list(remaining)
        # Chunks bound what the server holds at once (synthetic sets, messages in flight), so its
        # memory does not grow with the number of users; results stream to disk as they arrive.
        for start in range(0, len(selected), chunk_size):
            chunk = selected[start:start + chunk_size]
            label = f"round {rnd}: personalize on devices" + (
                f" ({start + len(chunk)}/{len(selected)})" if len(selected) > chunk_size else "")
            _personalize(grid, cfg, chunk, shares, user_node, augmenter, store, clock, timeout, label)
            for u in chunk:
                shares.pop(u, None)
        done_now = set(selected)
        remaining = [u for u in remaining if u not in done_now]

    # ---------------------------------------------------------------- 3. report
    from cdcda_fl.data.lamp import write_json_atomic
    from cdcda_fl.results import print_table, write_paper_table, write_plots

    with clock("report"):
        results = aggregate(cfg, {"timing": clock.seconds, "nodes": len(nodes)})
        results["plots"] = write_plots(cfg["out-dir"], results)
        results["table_md"] = str(write_paper_table(cfg["out-dir"], results))
        write_json_atomic(Path(str(cfg["out-dir"])) / "results.json", results)
    print_table(results)
    return results


def _personalize(grid: Grid, cfg: Mapping[str, Scalar], chunk: list[str], shares: Mapping[str, SharedRecords],
                 user_node: Mapping[str, int], augmenter: _Augmenter | None, store: ResultStore,
                 clock: _PhaseClock, timeout: float | None, label: str) -> None:
    """Augment one chunk of users in the cloud, send each device its users' sets, store replies."""
    audit = _audit_log(cfg)
    with clock("augment"):
        synthetic = augmenter.run([shares[u] for u in chunk if u in shares]) if augmenter else {}
    by_node: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for u in chunk:
        by_node.setdefault(user_node[u], {})[u] = synthetic.get(u, [])

    def on_result(sent: Message, reply: Message) -> int:
        node = sent.metadata.dst_node_id
        expected, seen = set(by_node[node]), set()
        if reply.has_error():
            for u in by_node[node]:
                store.record_failure(u, _error_text(reply), phase="personalize", node=node)
            return len(expected)
        try:
            results = list(unpack(reply)["results"])
        except (KeyError, TypeError, ValueError):
            results = [{"user_id": "*", "task": "*", "error": "malformed result reply"}]
        for result in results:
            try:
                key = NodeGuard.check_result(node, result, expected, seen)
            except Refused as exc:
                if isinstance(result, dict) and "error" in result:  # a node-wide error (user "*")
                    for u in expected - seen:
                        store.record_failure(u, str(result["error"])[:500], phase="personalize", node=node)
                    seen.update(expected)
                else:
                    store.record_failure(f"node {node}", str(exc), phase="personalize", node=node)
                continue
            # The cloud's view of every result reply, to compare with the device's own log.
            audit.record_payload("result", str(result.get("user_id")), str(result.get("task")), result,
                                 destination="server", request="personalize", report=result.get("report", "error"))
            if "error" in result:
                store.record_failure(key, str(result["error"])[:500], phase="personalize", node=node)
            else:
                store.write(result)
        for u in sorted(expected - seen):
            store.record_failure(u, "the device's reply had no result for this user", phase="personalize", node=node)
        return len(expected)

    msgs = [Message(pack(cfg, synthetic=payload), dst_node_id=node, message_type=PERSONALIZE)
            for node, payload in by_node.items()]
    with clock("personalize"):
        lost = exchange(grid, msgs, timeout, on_result, label, total=sum(map(len, by_node.values())), unit="users")
    for msg in lost:
        for u in by_node[msg.metadata.dst_node_id]:
            store.record_failure(u, "no reply before timeout", phase="personalize")


class _PhaseClock:
    """Wall seconds per phase of the run (summed over rounds), for results.json and benchmarks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - started, 3)


class _Augmenter:
    """The cloud model, loaded once per run, writing synthetic records task by task."""

    def __init__(self, cfg: Mapping[str, Scalar]):
        from cdcda_fl.cloud.augment import AugmentConfig, CloudAugmenter
        from cdcda_fl.cloud.backends import make_backend

        self.cfg = cfg
        log(f"cloud: loading {cfg['cloud.backend']} backend ({cfg['cloud.model']})")
        self.augmenter = CloudAugmenter(make_backend(cfg), AugmentConfig.from_config(cfg))

    def run(self, shared: Iterable[SharedRecords]) -> dict[str, list[dict[str, Any]]]:
        by_task: dict[str, list[SharedRecords]] = {}
        for s in shared:
            by_task.setdefault(s.task, []).append(s)
        out: dict[str, list[dict[str, Any]]] = {}
        # Sorted, so the cloud's sampling does not depend on the order in which devices replied.
        for task, requests in sorted(by_task.items()):
            requests = sorted(requests, key=lambda r: r.user_id)
            started = time.perf_counter()
            results = self.augmenter.augment(requests)
            accepted = 0
            for uid, res in results.items():
                out[user_key(task, uid)] = list(res.records)
                accepted += len(res.records)
                if res.error:
                    log(f"cloud: {task}/{uid}: {res.error} (falls back to real data only)")
            log(f"cloud: {task}: {accepted} synthetic records for {len(requests)} user(s) "
                f"in {time.perf_counter() - started:.1f}s")
        return out


def _audit_log(cfg: Mapping[str, Scalar]):
    from cdcda_fl.privacy.audit_log import AuditLog

    return AuditLog(Path(str(cfg["out-dir"])) / "audit.jsonl")


def make_server_app(cfg: Mapping[str, Scalar] | None = None, *, expected_nodes: int | None = None) -> ServerApp:
    """A ServerApp bound to ``cfg`` (for `cdcda run`), else reading Flower's run config (`flwr run`)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = dict(cfg) if cfg is not None else resolve(dict(context.run_config))
        run_cdcda(grid, run_cfg, expected_nodes=expected_nodes)

    return server


app = make_server_app()

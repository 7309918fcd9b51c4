"""The cloud side of a CDCDA run, without Flower: scheduling, rounds, resume, failures, reporting.

Flow:
1. wait for the device nodes (their number settles: see :func:`wait_for_nodes`);
2. ``share`` to every node: each returns its users and the records they consented to share;
   the server's :class:`~cdcda_fl.server.node_guard.NodeGuard` decides which node may speak for which
   user, and every accepted share is appended to the server's audit log;
3. per round, for a ``fraction`` of the unfinished users, in chunks of ``chunk-users``: the cloud
   LLM writes synthetic records per user (batched across users, one user per prompt), then
   ``personalize`` sends each node its users' sets; results are written to disk as they arrive
   (atomic, resumable) and audited;
4. the report: LaMP-format predictions, ``results.json``, ``summary.csv``, plots, a table.

A node that fails (error reply, malformed reply, timeout) is reported with its users and the
run goes on. Messages travel through a :class:`Transport`: the Flower ServerApp adapts Flower's
Grid to it (``strategies/cloud_augment.py``), and tests use an in-memory one, so everything here
runs in seconds without Ray.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cdcda_fl.server.aggregate import aggregate
from cdcda_fl.core.atomic import write_json_atomic
from cdcda_fl.cloud.reference_writers import refuse_outside_simulation
from cdcda_fl.server.cloud_writer import CloudWriter, cloud_accounting  # noqa: F401  (cloud_accounting: tests, fakes)
from cdcda_fl.core.config import Scalar, adapter_scope, federated_methods, message_config, uses_cloud_data
from cdcda_fl.reporting.decision_table import print_decisions
from cdcda_fl.server.federated import measured_bytes as fedavg_report
from cdcda_fl.server.federated import personalize_requests, run_federated_phase
from cdcda_fl.server.node_guard import NodeGuard, Refused, node_text
from cdcda_fl.privacy.audit_log import AuditLog
from cdcda_fl.privacy.consent import SharedRecords, payload_bytes
from cdcda_fl.core.progress import Progress, log
from cdcda_fl.reporting.paper_table import write_paper_table
from cdcda_fl.reporting.results import print_table, write_plots
from cdcda_fl.server.run_checks import validate_run_config
from cdcda_fl.server.unit_order import chunked, node_ordered, person_of, personalize_units
from cdcda_fl.server.runs import ResultStore, check_run_data, prepare_run_dir
from cdcda_fl.core.run_config import run_config

SHARE = "share"
PERSONALIZE = "personalize"

# Set by the driver's SIGINT/SIGTERM handler (strategies/simulation.py): stop at the next poll.
STOP = threading.Event()


class RunInterrupted(Exception):
    """The run was asked to stop (Ctrl-C / SIGTERM); finished users are on disk, the rest resume."""


@dataclass
class Reply:
    """A node's answer: its decoded payload, or the transport's error text (then ``body`` is None)."""

    node: int
    body: dict[str, Any] | None
    error: str = ""


class Transport(Protocol):
    """How the orchestrator reaches device nodes (Flower's Grid in production)."""

    def node_ids(self) -> list[int]:
        """The nodes connected now."""

    def send(self, kind: str, cfg: Mapping[str, Scalar], requests: list[tuple[int, Mapping[str, Any]]]) -> list[str]:
        """Queue ``(node, payload)`` requests of one ``kind`` (SHARE | PERSONALIZE); one handle each.
        (Federated baselines: also ``arrays=`` and a ``federated_rounds`` method, cdcda_fl/server/federated.py.)"""

    def poll(self, handles: list[str]) -> list[tuple[str, Reply]]:
        """The replies that have arrived for these handles (each at most once)."""


def is_simulated(transport: Transport) -> bool:
    """Does ``transport`` reach simulated devices (Flower's simulation engine, or a test's in-memory
    nodes)? Only then may the simulation-only reference writers run. Unknown means no."""
    return bool(getattr(transport, "simulated", False))


def wait_for_nodes(transport: Transport, expected: int, wait_s: float, settle_s: float = 1.0) -> list[int]:
    """Poll until at least ``expected`` nodes are connected and their number has not changed for
    ``settle_s`` seconds (or ``wait_s`` has passed).

    Why settle: under plain ``flwr run .`` the server cannot know how many SuperNodes the
    federation has (Flower's default is 2, ``--federation-config num-supernodes=N`` changes it),
    so it takes every node that is there once the count stops growing, instead of waiting
    ``node-wait`` seconds for a ``min-nodes`` that may never come.
    """
    deadline = time.monotonic() + wait_s
    nodes: list[int] = []
    changed = time.monotonic()
    while True:
        now_nodes = sorted(transport.node_ids())
        if now_nodes != nodes:
            nodes, changed = now_nodes, time.monotonic()
        now = time.monotonic()
        if (len(nodes) >= expected and now - changed >= settle_s) or now > deadline:
            return nodes
        time.sleep(0.1)


def exchange(transport: Transport, requests: list[tuple[int, Mapping[str, Any]]], kind: str,
             cfg: Mapping[str, Scalar], timeout: float | None, on_reply: Callable[[Reply], int | None],
             label: str, *, total: int | None = None, unit: str = "nodes", arrays: Mapping[str, Any] | None = None
             ) -> list[int]:
    """Send ``(node, payload)`` requests, then hand each reply to ``on_reply`` as it arrives.

    Returns the nodes that did not reply before ``timeout`` (None = wait for all). Streaming lets
    results be written as soon as a device finishes, so a crash or Ctrl-C loses at most the users
    in flight. Progress counts ``unit``s: ``on_reply`` returns how many a reply finished (None =
    1) out of ``total``. Raises RunInterrupted as soon as :data:`STOP` is set.
    """
    if STOP.is_set():
        raise RunInterrupted("stop requested")
    # only the keys a device reads for this kind leave the server (config.MESSAGE_KEYS)
    sent_cfg = message_config(kind, cfg)
    extra = {"arrays": arrays} if arrays else {}  # the federated methods' global adapters, if any
    unsent = list(requests)
    # A transport may bound the messages queued at once (GridTransport in simulation: a few per
    # Ray actor): more would only wait, and Flower's engine scans the whole queue for every node.
    window = int(getattr(transport, "max_in_flight", 0) or 0) or len(unsent)
    pending: dict[str, int] = {}

    def send_more() -> None:
        room = window - len(pending)
        if room > 0 and unsent:
            batch = unsent[:room]
            del unsent[:room]
            pending.update(zip(transport.send(kind, sent_cfg, batch, **extra), (node for node, _ in batch)))

    send_more()
    deadline = None if not timeout else time.monotonic() + timeout
    delay = 0.05
    with Progress(label, total=len(requests) if total is None else total, unit=unit) as bar:
        while pending and (deadline is None or time.monotonic() < deadline):
            if STOP.is_set():
                raise RunInterrupted(f"stop requested during {label}")
            replies = transport.poll(list(pending))
            for handle, reply in replies:
                if pending.pop(handle, None) is not None:
                    done = on_reply(reply)
                    bar.advance(1 if done is None else done)
            send_more()
            delay = 0.05 if replies else min(delay * 1.5, 1.0)
            if pending:
                time.sleep(delay)
    return [*pending.values(), *(node for node, _ in unsent)]


class PhaseClock:
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


def _audit_log(cfg: Mapping[str, Scalar]) -> AuditLog:
    return AuditLog(Path(run_config(cfg).out_dir) / "audit.jsonl")


def run_cdcda(transport: Transport, cfg: dict[str, Scalar], *, expected_nodes: int | None = None,
              writer_factory: Callable[[Mapping[str, Scalar]], Any] = CloudWriter,
              prepared: bool = False) -> dict[str, Any]:
    """The whole CDCDA run over ``transport``; returns the aggregated results.

    ``writer_factory`` builds the cloud writer (anything with ``run(shares) -> {user key: records}``);
    tests pass a stub, the product the real :class:`CloudWriter`. ``prepared``: the caller already
    ran :func:`prepare_run_dir` and :func:`check_run_data` on ``cfg`` (`cdcda run` does, to size the
    simulation), so they are not run a second time; `flwr run` and deployments leave it False.
    """
    simulated = is_simulated(transport)
    if uses_cloud_data(cfg):  # before any node is contacted: a real deployment gets no oracle
        refuse_outside_simulation(cfg, simulated)
    if writer_factory is CloudWriter:
        writer_factory = functools.partial(CloudWriter, simulated=simulated)
    validate_run_config(cfg)  # before the run dir or any node: a bad setting is one line
    clock = PhaseClock()
    if not prepared:
        cfg = prepare_run_dir(cfg)
        check_run_data(cfg)  # invalid records: skip (and report) their users, or refuse with data.strict
    rc = run_config(cfg)  # the typed view; prepare_run_dir made its paths absolute
    store = ResultStore(rc.out_dir)
    timeout = rc.timeout or None
    expected = expected_nodes or rc.sim.num_supernodes or rc.min_nodes
    with clock("wait_nodes"):
        nodes = wait_for_nodes(transport, expected, rc.node_wait)
    log(f"{len(nodes)} device node(s) connected")
    if not nodes:
        raise RuntimeError("no device nodes connected")

    wants_cloud_data = uses_cloud_data(cfg)
    with clock("share"):
        user_node, shares = _share_phase(transport, cfg, nodes, store, wants_cloud_data, timeout)
    with clock("federated") if federated_methods(cfg) else contextlib.nullcontext():  # FedAvg first (issue 31)
        global_adapters = run_federated_phase(transport, cfg, user_node, store.record_failure)

    # Sorted: which users share a round or chunk must not depend on the order replies arrived in.
    remaining = sorted(u for u in user_node if not store.done(*u.split("/", 1)))
    scope = adapter_scope(cfg)
    if scope == "user":  # a person resumes whole: their adapter trains on every task's records
        unfinished = {person_of(u) for u in remaining}
        remaining = sorted(u for u in user_node if person_of(u) in unfinished)
    skipped = len(user_node) - len(remaining)
    if skipped:
        log(f"resuming: {skipped} user(s) already finished, {len(remaining)} to go")
    rng = random.Random(rc.seed)
    with clock("cloud_load"):
        writer = writer_factory(cfg) if wants_cloud_data else None
    chunk_size = max(1, rc.chunk_users)
    for rnd in range(1, rc.rounds + 1):
        if not remaining:
            break
        units = personalize_units(remaining, scope)  # a person's tasks travel together under scope user
        take = max(1, round(rc.fraction * len(units)))
        picked = sorted(rng.sample(units, take)) if take < len(units) else units
        selected = node_ordered([u for unit in picked for u in unit], user_node, scope)
        # Chunks bound what the server holds at once (synthetic sets, messages in flight), so its
        # memory does not grow with the number of users; results stream to disk as they arrive.
        done_so_far = 0
        for chunk in chunked(selected, chunk_size, scope):
            done_so_far += len(chunk)
            label = f"round {rnd}: personalize on devices" + (
                f" ({done_so_far}/{len(selected)})" if len(selected) > chunk_size else "")
            with clock("augment"):
                synthetic = writer.run([shares[u] for u in chunk if u in shares]) if writer else {}
            # The cloud's counts and errors per user (writers without ``accounting``, e.g. test stubs,
            # get the record counts only); stored with each result, so they reach results.json.
            cloud_info = ({u: dict(getattr(writer, "accounting", {}).get(u)
                                   or cloud_accounting(list(synthetic.get(u, [])), None, None)) for u in chunk}
                          if writer else {})
            for u in chunk:
                if writer and u not in shares:  # the cloud was never asked for this user
                    cloud_info[u]["counts"].setdefault("no_share_received", 1)
            with clock("personalize"):
                _personalize_chunk(transport, cfg, chunk, synthetic, user_node, store, timeout, label, cloud_info,
                                   global_adapters)
            for u in chunk:
                shares.pop(u, None)
        done_now = set(selected)
        remaining = [u for u in remaining if u not in done_now]

    with clock("report"):
        results = aggregate(cfg, {"timing": clock.seconds, "nodes": len(nodes),
                                  **({"fedavg": fedavg_report(rc.out_dir)} if global_adapters else {})})
        results["plots"] = write_plots(rc.out_dir, results)
        results["table_md"] = str(write_paper_table(rc.out_dir, results))
        write_json_atomic(Path(rc.out_dir) / "results.json", results)
    print_table(results)
    print_decisions(results)
    return results


class UsersRefused(RuntimeError):
    """Every user the devices announced was refused (typically: two devices hold the same user ids).

    Raised after the announcement, before any device is asked for a record, so the run stops with
    the reasons instead of finishing with an empty table (issue 34).
    """


def _share_phase(transport: Transport, cfg: Mapping[str, Scalar], nodes: list[int], store: ResultStore,
                 wants_cloud_data: bool, timeout: float | None) -> tuple[dict[str, int], dict[str, SharedRecords]]:
    """Ask every node for its users and consented records; returns (user -> node, user -> share).

    With several nodes and a method that uses the cloud, the nodes first only announce their users
    (``{"share": False}``): records are then asked only from nodes none of whose users another node
    also claims, so no record of a contested user ever leaves a device, and a run whose every user is
    contested stops (:class:`UsersRefused`) before anything is shared.
    """
    guard = NodeGuard()  # nodes are untrusted: who may speak for which user (cdcda_fl/server/node_guard.py)
    claims: dict[int, list[Any]] = {}
    raw_shares: list[tuple[int, Any]] = []
    raw_errors: list[tuple[int, Any]] = []
    two_step = wants_cloud_data and len(nodes) > 1

    def on_reply(reply: Reply, announce: bool) -> None:
        node = reply.node
        if reply.body is None:
            store.record_failure(f"node {node}", node_text(reply.error), phase="share")
            return
        try:
            body = reply.body
            users, errors, node_shares = list(body["users"]), list(body["errors"]), list(body["shares"])
        except (KeyError, TypeError, ValueError):
            store.record_failure(f"node {node}", "malformed share reply", phase="share")
            return
        if announce:
            claims[node] = users
            for who, reason in guard.announce(node, users):
                store.record_failure(who, reason, phase="share", node=node)
        raw_errors.append((node, errors))
        if not (two_step and announce):  # an announcement's records (a misbehaving node's) are ignored
            raw_shares.extend((node, raw) for raw in node_shares)

    lost = exchange(transport, [(n, {"share": wants_cloud_data and not two_step}) for n in nodes], SHARE, cfg,
                    timeout, lambda r: on_reply(r, True), "share: users" if two_step else "share (consented records)")
    for node in lost:
        store.record_failure(f"node {node}", "no reply before timeout", phase="share")
    _stop_if_every_user_refused(guard)
    if two_step:
        sharing = _nodes_to_ask_for_records(guard, claims, store)
        lost = [] if not sharing else exchange(transport, [(n, {"share": True}) for n in sharing], SHARE, cfg, timeout,
                        lambda r: on_reply(r, False), "share (consented records)")
        for node in lost:
            store.record_failure(f"node {node}", "no reply before timeout", phase="share")

    # Shares (and errors naming users) are accepted only once every announcement is in: a user
    # claimed by two nodes is then known to be contested, whichever reply came first.
    seen_errors: set[tuple[int, str, str]] = set()  # a node-wide error repeats in both steps: file it once
    for node, errors in raw_errors:
        for who, reason in guard.share_failures(node, errors):
            if (node, who, reason) not in seen_errors:
                seen_errors.add((node, who, reason))
                store.record_failure(who, reason, phase="share", node=node)
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
        audit.record(shared, destination=f"cloud:{run_config(cfg).cloud.backend}:{run_config(cfg).cloud.model}", request="augment")
    return guard.owner_map(), shares


def _stop_if_every_user_refused(guard: NodeGuard) -> None:
    """:class:`UsersRefused` when users were announced but the server can give none of them to a node."""
    contested = sorted(guard.contested())
    if contested and not guard.owner_map():
        shown = ", ".join(contested[:5]) + (f" and {len(contested) - 5} more" if len(contested) > 5 else "")
        raise UsersRefused(f"every user was refused before any record was shared: {shown} claimed by several "
                           "nodes (given to none). Each device must hold its own user ids, e.g. "
                           "`cdcda data personas --user-prefix phone1-` on phone1")


def _nodes_to_ask_for_records(guard: NodeGuard, claims: Mapping[int, list[Any]], store: ResultStore) -> list[int]:
    """Nodes that announced users and none that another node also claims (the others share nothing)."""
    contested = guard.contested()
    sharing = []
    for node, users in sorted(claims.items()):
        if contested & set(map(str, users)):
            store.record_failure(f"node {node}", "not asked for records: it claims a user another node also claims",
                                 phase="share", node=node)
        elif users:
            sharing.append(node)
    return sharing


def _personalize_chunk(transport: Transport, cfg: Mapping[str, Scalar], chunk: list[str],
                       synthetic: Mapping[str, list[dict[str, Any]]], user_node: Mapping[str, int],
                       store: ResultStore, timeout: float | None, label: str,
                       cloud_info: Mapping[str, Mapping[str, Any]] | None = None,
                       global_adapters: Mapping[str, Any] | None = None) -> None:
    """Send each device its users' synthetic sets (and the global adapters of its users' tasks, for
    the federated methods); validate, audit and store the results.

    ``cloud_info`` (user key -> :func:`cloud_accounting`) is the server's own data: it is stored
    as the result's ``cloud`` entry, replacing anything a device put under that key.
    """
    cloud_info = cloud_info or {}
    audit = _audit_log(cfg)
    by_node: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for u in chunk:
        by_node.setdefault(user_node[u], {})[u] = list(synthetic.get(u, []))

    def on_result(reply: Reply) -> int:
        node = reply.node
        expected, seen = set(by_node[node]), set()
        if reply.body is None:
            for u in by_node[node]:
                store.record_failure(u, node_text(reply.error), phase="personalize", node=node)
            return len(expected)
        try:
            results = list(reply.body["results"])
        except (KeyError, TypeError, ValueError):
            results = [{"user_id": "*", "task": "*", "error": "malformed result reply"}]
        for result in results:
            try:
                key = NodeGuard.check_result(node, result, expected, seen)
            except Refused as exc:
                if isinstance(result, dict) and "error" in result:  # a node-wide error (user "*")
                    for u in expected - seen:
                        store.record_failure(u, node_text(result["error"]), phase="personalize", node=node)
                    seen.update(expected)
                else:
                    store.record_failure(f"node {node}", str(exc), phase="personalize", node=node)
                continue
            # The cloud's view of every result reply, to compare with the device's own log.
            audit.record_payload("result", str(result.get("user_id")), str(result.get("task")), result,
                                 destination="server", request="personalize", report=result.get("report", "error"))
            if "error" in result:
                store.record_failure(key, node_text(result["error"]), phase="personalize", node=node)
            else:
                result = {k: v for k, v in result.items() if k != "cloud"}  # the cloud's part is the server's
                if key in cloud_info:
                    result["cloud"] = dict(cloud_info[key])
                store.write(result)
        for u in sorted(expected - seen):
            store.record_failure(u, "the device's reply had no result for this user", phase="personalize", node=node)
        return len(expected)

    requests, arrays = personalize_requests(by_node, global_adapters or {})
    lost = exchange(transport, requests, PERSONALIZE, cfg, timeout, on_result, label, unit="users",
                    total=sum(map(len, by_node.values())), arrays=arrays)
    for node in lost:
        for u in by_node[node]:
            store.record_failure(u, "no reply before timeout", phase="personalize")

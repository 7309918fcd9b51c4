"""The device: a Flower ClientApp per node (thin; the work is in :mod:`cdcda_fl.device.node`).

Handlers:
- ``query.share``: reply with the records this node's users consented to share (scrubbed).
- ``train`` (Flower's FedAvg, issue 31): one round of the global LoRA adapter on this node's users'
  real records; the reply is the adapter's ArrayRecord and a MetricRecord with the record count,
  nothing else (:func:`fedavg_train`).
- ``train.personalize``: receive each user's synthetic records (and, for the federated methods,
  the final global adapter as ArrayRecords ``global/<task>``), train the private adapters on
  real + synthetic data, answer the held-out queries offline, reply with what the report level
  allows (:mod:`cdcda_fl.privacy.report`). Adapters and non-consented records never go into a reply.

Each handler decodes the message (only its kind's config keys: ``config.MESSAGE_KEYS``), calls
the Flower-free device node, and encodes the payload. Anything that raises leaves as a generic
code (:func:`_guarded`); consent, audit and which users a node serves are documented in
:mod:`cdcda_fl.device.node`.

Simulated or real is decided here, never by the server: ``simulation_app`` (what ``cdcda run``
hands Flower's simulation engine) marks every node simulated; ``app`` (the pyproject component a
SuperNode or ``flwr run .`` loads) marks a node simulated only while Flower's simulation engine
itself is calling it (its Ray actor's ``run`` is on the call stack). A SuperNode's own node config
cannot claim the mark; without ``data-dir`` it refuses to run (``device.node.NodeNotConfigured``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cdcda_fl.device import node, node_fedavg
from cdcda_fl.core.quiet import quiet_libraries
from cdcda_fl.core.config import received_config
from clients.codec import array_record, config_of, global_arrays, pack, split_fedavg_config, unpack

quiet_libraries()

Handler = Callable[[dict[str, Any], Any, dict[str, Any], Message], dict[str, Any]]
SIMULATION_ACTOR_MODULE = "flwr.simulation.ray_transport.ray_actor"


def run_by_simulation_engine() -> bool:
    """Whether Flower's simulation engine is running this ClientApp call (its actor's ``run``
    is a caller): only the engine calls apps that way, so neither a server's message nor a
    SuperNode's config can fake it. The module is looked up, not imported (devices have no Ray)."""
    module = sys.modules.get(SIMULATION_ACTOR_MODULE)
    actor = getattr(module, "VirtualClientEngineActor", None)
    code = getattr(getattr(actor, "run", None), "__code__", None)
    frame = sys._getframe(1)
    while code is not None and frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def node_config_of(context: Context, simulated: bool) -> dict[str, Any]:
    """The node config the device code sees: the node's own keys, with the simulation mark only
    where ``simulated`` (a mark in the SuperNode's own config is dropped)."""
    config: Mapping[str, Any] = context.node_config
    out = {k: v for k, v in config.items() if k != node.SIMULATED}
    if simulated:
        out[node.SIMULATED] = True
    return out


def _guarded(kind: str, handler: Handler, simulation: bool | None = None):
    """Run a node handler on a message; anything it raises leaves as a generic code, never as text.

    Flower turns an uncaught exception into an error reply that carries its message (which can
    quote a private value or a local path); this makes every reply a normal one with a code.
    An injected crash (``debug.crash-users``) is let through: it drills exactly that path.
    """
    def wrapped(msg: Message, context: Context) -> Message:
        # Again per message, not only at import: in Flower's Ray actors the library loggers and
        # warning filters set at import did not hold when the models load (bitsandbytes' missing
        # 'kernels' notice and torch.jit deprecations reached every actor's console). Idempotent.
        quiet_libraries()
        node_config = node_config_of(context, run_by_simulation_engine() if simulation is None else simulation)
        cfg = None
        try:
            cfg = config_of(msg, kind)
            payload = handler(node_config, cfg, unpack(msg), msg)
        except node.InjectedCrash:
            raise
        except Exception as exc:  # noqa: BLE001 - the reply must be generic whatever went wrong
            payload = node.error_reply(kind, node_config, cfg, exc)
        return Message(pack(**node.audit_reply(kind, node_config, cfg, payload)), reply_to=msg)

    wrapped.__doc__ = handler.__doc__
    return wrapped


FEDAVG_ERROR = 31  # Error code of a FedAvg round a node could not do (the reason is a generic code)


def _fedavg_train(simulation: bool | None):
    """One round of Flower's FedAvg: train the global adapter here, reply arrays + record count.

    A node that cannot train replies a Flower error (a generic code, never the exception's text),
    which FedAvg leaves out of the round's average; every reply, error or not, is in the audit log.
    """
    def fedavg_train(msg: Message, context: Context) -> Message:
        quiet_libraries()
        node_config = node_config_of(context, run_by_simulation_engine() if simulation is None else simulation)
        cfg, task, server_round = None, "*", 0
        try:
            raw, meta = split_fedavg_config(msg)
            cfg = received_config("fedavg", raw)
            task, server_round = str(meta["cdcda.task"]), int(meta["server-round"]) + int(meta["cdcda.round-offset"])
            arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()} if "arrays" in msg.content else {}
            updated, counts, users = node_fedavg.fedavg_round(node_config, cfg, task, server_round, arrays)
        except node.InjectedCrash:
            raise
        except Exception as exc:  # noqa: BLE001 - the reply must be generic whatever went wrong
            payload = node.error_reply("fedavg", node_config, cfg, exc)
            node.audit_reply("fedavg", node_config, cfg, payload)
            return Message(Error(FEDAVG_ERROR, str(payload["error"])), reply_to=msg)
        record = array_record(updated)
        node_fedavg.audit_update(node_config, cfg, task, users, [(k, bytes(a.data)) for k, a in record.items()],
                          counts, server_round)
        return Message(RecordDict({"arrays": record, "metrics": MetricRecord(dict(counts))}), reply_to=msg)

    return fedavg_train


def _share(node_config: dict[str, Any], cfg: Any, request: dict[str, Any], msg: Message) -> dict[str, Any]:
    return node.share(node_config, cfg, request)


def _personalize(node_config: dict[str, Any], cfg: Any, request: dict[str, Any], msg: Message) -> dict[str, Any]:
    # the global adapters of the federated methods travel as ArrayRecords beside the JSON payload
    return node.personalize(node_config, cfg, request, global_arrays(msg))


_share.__doc__, _personalize.__doc__ = node.share.__doc__, node.personalize.__doc__


def make_app(simulation: bool | None) -> ClientApp:
    """The device ClientApp; ``simulation``: True = every node simulated, None = as the engine says."""
    client = ClientApp()
    client.query("share")(_guarded("share", _share, simulation))
    client.train("personalize")(_guarded("personalize", _personalize, simulation))
    client.train()(_fedavg_train(simulation))  # Flower's FedAvg sends plain "train" messages
    return client


app = make_app(None)  # pyproject's clientapp: real SuperNodes and `flwr run .` simulations
simulation_app = make_app(True)  # `cdcda run` hands this one to Flower's simulation engine

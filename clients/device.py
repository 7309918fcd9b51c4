"""The device: a Flower ClientApp per node (thin; the work is in :mod:`cdcda_fl.device_node`).

Handlers:
- ``query.share``: reply with the records this node's users consented to share (scrubbed).
- ``train.personalize``: receive each user's synthetic records, train the private adapters on
  real + synthetic data, answer the held-out queries offline, reply with what the report level
  allows (:mod:`cdcda_fl.privacy.report`). Adapters and non-consented records never go into a reply.

Each handler decodes the message (only its kind's config keys: ``config.MESSAGE_KEYS``), calls
the Flower-free device node, and encodes the payload. Anything that raises leaves as a generic
code (:func:`_guarded`); consent, audit and which users a node serves are documented in
:mod:`cdcda_fl.device_node`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from cdcda_fl import device_node as node
from cdcda_fl.quiet import quiet_libraries
from clients.codec import config_of, pack, unpack

quiet_libraries()
app = ClientApp()

Handler = Callable[[dict[str, Any], Any, dict[str, Any]], dict[str, Any]]


def _guarded(kind: str, handler: Handler):
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
        cfg = None
        try:
            cfg = config_of(msg, kind)
            payload = handler(context.node_config, cfg, unpack(msg))
        except node.InjectedCrash:
            raise
        except Exception as exc:  # noqa: BLE001 - the reply must be generic whatever went wrong
            payload = node.error_reply(kind, context.node_config, cfg, exc)
        return Message(pack(**node.audit_reply(kind, context.node_config, cfg, payload)), reply_to=msg)

    wrapped.__doc__ = handler.__doc__
    return wrapped


app.query("share")(_guarded("share", node.share))
app.train("personalize")(_guarded("personalize", node.personalize))

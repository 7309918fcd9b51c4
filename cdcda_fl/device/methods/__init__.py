"""The methods a device compares, one small class each, and the per-user state they share.

Layout: ``method.py`` (the :class:`Method` interface), one module per method family
(``prompted``: base, rag; ``local``; ``cdcda``; ``cloud``; ``fedavg``: the three federated ones),
``private.py`` (the DP form of the trained methods), ``registry.py`` (building a run's methods
from ``cdcda_fl/core/method_table.py``), and what they share per user: ``user_run.py`` (the context),
``cloud_records.py`` with ``mixture.py`` and ``holdout_check.py`` (the cloud's records on the
device), ``stored.py`` (adapters reused from the device's disk), ``answers.py`` (batched answering).

Adding a method: a :class:`~.method.Method` subclass with its ``name``, its settings read once in
``from_config`` (and, if it trains on the user's records, its DP form in ``private``), and one row
in ``METHOD_TABLE``; the config check, the orchestrator's traits and the device follow from it.
"""

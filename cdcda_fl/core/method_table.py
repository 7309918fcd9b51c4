"""The methods a run can compare: the one list of them, with what the rest of the code must know.

``config.methods_of`` checks a run's ``methods`` against this table, the orchestrator asks it which
methods need the federated phase or the users' shared records, and a device builds each method
from the class it names (``cdcda_fl/device/methods/registry.py``). So a method the config accepts
always has an implementation, and the reverse, by construction: there is no second list to keep
equal (``tests/test_methods.py`` imports every class named here).

Why names and import paths rather than the classes: this module is in the foundation layer with
``config.py``, which must not import device code (torch, peft, the models); the device imports a
method's class only when it runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

_PACKAGE = "cdcda_fl.device.methods"


@dataclass(frozen=True)
class MethodEntry:
    """One method: its name in ``methods`` and reports, where it is implemented, and two traits."""

    name: str
    implementation: str  # "module:Class" of a cdcda_fl.device.methods.method.Method subclass
    federated: bool = False  # answers with the FedAvg global adapter (the federated phase runs first)
    uses_cloud_data: bool = False  # trains on the cloud's synthetic records (so users must share)


#: In report order (tables, plots and each user's result list methods in this order).
METHOD_TABLE: tuple[MethodEntry, ...] = (
    MethodEntry("base", f"{_PACKAGE}.prompted:Base"),
    MethodEntry("rag", f"{_PACKAGE}.prompted:Rag"),
    MethodEntry("local", f"{_PACKAGE}.local:Local"),
    MethodEntry("cdcda", f"{_PACKAGE}.cdcda:Cdcda", uses_cloud_data=True),
    MethodEntry("cloud", f"{_PACKAGE}.cloud:CloudUpperBound"),
    MethodEntry("fedavg", f"{_PACKAGE}.fedavg:FedAvg", federated=True),
    MethodEntry("fedavg+local", f"{_PACKAGE}.fedavg:FedAvgLocal", federated=True),
    MethodEntry("cdcda+fedavg", f"{_PACKAGE}.fedavg:CdcdaFedAvg", federated=True, uses_cloud_data=True),
)

METHODS: tuple[str, ...] = tuple(m.name for m in METHOD_TABLE)
#: methods answered with the global adapter of the federated phase (run before personalize)
FEDERATED_METHODS: tuple[str, ...] = tuple(m.name for m in METHOD_TABLE if m.federated)
#: methods that train on the cloud's synthetic records
CLOUD_DATA_METHODS: tuple[str, ...] = tuple(m.name for m in METHOD_TABLE if m.uses_cloud_data)


def method_entry(name: str) -> MethodEntry:
    """The table's entry for ``name`` (KeyError for a name the table does not list)."""
    for entry in METHOD_TABLE:
        if entry.name == name:
            return entry
    raise KeyError(name)

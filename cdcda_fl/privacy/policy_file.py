"""The device owner's consent file, and what a simulation writes as its devices' file.

A real device reads its owner's ``consent.toml`` (:func:`load_device_policy`; format in
docs/privacy.md). A simulation writes one for its simulated devices
(:func:`simulated_policy_tables`): the run's ``consent.*`` keys, and -- when the data directory
holds its owners' own ``consent.toml`` -- the most restrictive combination of the two
(:func:`most_restrictive`), so simulating real owners gives them their own choices, never more
(issue 29.13: a simulation silently ignored the owners' file and sent what they had denied).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcda_fl.core.atomic import write_text_atomic
from cdcda_fl.core.config import Scalar, config_section
from cdcda_fl.privacy.consent import (
    DEVICE_ONLY_KEYS,
    FEDERATED_MODES,
    DEVICE_POLICY_FILENAME,
    PREFIX,
    ConsentError,
    ConsentPolicy,
    _split_list,
    load_overrides,
    merge_entry,
)
from cdcda_fl.core.run_config import run_config


@dataclass(frozen=True)
class DevicePolicy:
    """A device owner's consent file: a ``[default]`` table plus one table per user id."""

    path: Path
    default: Mapping[str, Any]
    users: Mapping[str, Mapping[str, Any]]

    def values_for(self, user_id: str) -> dict[str, Any]:
        return merge_entry(self.default, self.users.get(str(user_id), {}))

    def policy_for(self, user_id: str) -> ConsentPolicy:
        """This user's own policy (before the server's ceiling); errors name the file."""
        values = {k: v for k, v in self.values_for(user_id).items() if k not in DEVICE_ONLY_KEYS}
        try:
            return ConsentPolicy.from_values(values)
        except ConsentError as exc:
            raise ConsentError(f"consent file {str(self.path)!r}, user {user_id!r}: {exc}") from None

    def report_for(self, user_id: str) -> str | None:
        """The result-report level the owner allows (``report`` key), None when the file is silent."""
        value = self.values_for(user_id).get("report")
        return None if value in (None, "") else str(value)

    def federated_for(self, user_id: str) -> str | None:
        """What the owner lets FedAvg updates be computed from (``federated``), None when silent."""
        value = self.values_for(user_id).get("federated")
        if value in (None, ""):
            return None
        mode = str(value).strip().lower()
        if mode not in FEDERATED_MODES:
            raise ConsentError(f"consent file {str(self.path)!r}, user {user_id!r}: federated must be one of "
                               f"{', '.join(FEDERATED_MODES)}, got {value!r}")
        return mode

    def unknown_users(self, known: Iterable[str]) -> list[str]:
        """User tables naming nobody this device holds (a typo would otherwise pass silently)."""
        known = {str(k) for k in known}
        return sorted(u for u in self.users if u not in known)


def load_device_policy(path: str | Path) -> DevicePolicy:
    """Read a device policy file (TOML or JSON). Keys may carry the ``consent.`` prefix."""
    p = Path(path).expanduser()
    tables = load_overrides(p, extra_keys=DEVICE_ONLY_KEYS)
    default = tables.pop("default", {})
    return DevicePolicy(p, default, tables)


def device_policy_values(cfg: Mapping[str, Scalar]) -> dict[str, dict[str, Any]]:
    """What a simulated run writes as its users' own policy files: the run's ``consent.*`` keys
    as ``[default]`` (with the run seed made explicit) and the overrides file's tables per user.
    With this, a simulation shares exactly what the same run config shared before devices owned
    their consent."""
    values: dict[str, Any] = {k[len(PREFIX):]: v for k, v in config_section(cfg, PREFIX).items()}
    overrides_path = values.pop("overrides", "")
    if "seed" not in values or values["seed"] in ("", None):
        values["seed"] = run_config(cfg).seed
    ConsentPolicy.from_values(values)  # fail early, naming the key
    tables: dict[str, dict[str, Any]] = {"default": values}
    if overrides_path:
        for user, entry in load_overrides(str(overrides_path)).items():
            if user == "default":
                raise ConsentError(f"consent overrides file {str(overrides_path)!r}: 'default' is not a user id")
            tables[user] = dict(entry)
    return tables


def write_device_policy(path: str | Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a policy file (TOML via tomli-w, ``[default]`` first) atomically; returns its path."""
    import tomli_w

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n in ["default", *sorted(k for k in tables if k != "default")] if n in tables]
    ordered = {str(n): {str(k): _toml_plain(v) for k, v in tables[n].items()} for n in names}
    header = ("# Consent policy of this device's users (who may share what with the cloud).\n"
              "# [default] applies to every user; a user's table overrides it, deny/redact lists add up.\n\n")
    return write_text_atomic(p, header + tomli_w.dumps(ordered))


def _toml_plain(value: Any) -> Any:
    """A policy value as TOML can hold it: lists of strings, booleans, numbers, else text."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


# ---------------------------------------------------------------------- simulating real owners
def _fraction_of(values: Mapping[str, Any]) -> float:
    return float(values.get("share-fraction", 0.0) or 0.0)  # a policy without one shares nothing


def _union(*lists: Any) -> list[str]:
    return list(dict.fromkeys(term for value in lists for term in _split_list(value, "list")))


def _selection(run: Mapping[str, Any], owner: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``share-fraction`` / ``record-ids`` of the stricter of the two: the smaller fraction, the
    common ids; a list against a fraction strictly between 0 and 1 has no exact meet, so it is refused."""
    ids = [_split_list(v.get("record-ids"), "record-ids") or None for v in (run, owner)]
    fractions = [_fraction_of(run), _fraction_of(owner)]
    if ids[0] is None and ids[1] is None:
        return {"share-fraction": min(fractions)}
    if ids[0] is not None and ids[1] is not None:
        common = [i for i in ids[0] if i in ids[1]]
        return {"share-fraction": 1.0, "record-ids": common} if common else {"share-fraction": 0.0}
    listed, other = (0, 1) if ids[0] is not None else (1, 0)
    if fractions[other] <= 0.0:
        return {"share-fraction": 0.0}
    if fractions[other] >= 1.0:
        return {"share-fraction": 1.0, "record-ids": list(ids[listed])}
    names = ("the run's consent.* keys", "the owners' file")
    raise ConsentError(f"{where}: record-ids in {names[listed]} cannot be combined with share-fraction = "
                       f"{fractions[other]} in {names[other]} (a list and a fraction have no exact common part); "
                       "set that fraction to 1 to share the listed records, or to 0 to share nothing")


def most_restrictive(run: Mapping[str, Any], owner: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Per key the stricter of the run's values and an owner's (short keys, one user's resolved table).

    Fewer records (:func:`_selection`), the common fields (none in common: nothing goes), every
    deny and redaction term and label, scrubbing if either asks, the owner's seed and report level.
    """
    out = _selection(run, owner, where)
    fields_ = [_split_list(v.get("fields"), "fields") for v in (run, owner)]
    if fields_[0] and fields_[1]:
        out["fields"] = [f for f in fields_[0] if f in fields_[1]]
        if not out["fields"]:
            out = {"share-fraction": 0.0}
    else:
        out["fields"] = list(fields_[0] or fields_[1])
    for key in ("deny-terms", "deny-labels", "redact-terms"):
        out[key] = _union(run.get(key), owner.get(key))
    out["scrub"] = bool(ConsentPolicy.from_values({"scrub": run.get("scrub", True)}).scrub
                        or ConsentPolicy.from_values({"scrub": owner.get("scrub", True)}).scrub)
    out["seed"] = owner.get("seed", run.get("seed", 0))
    for key in ("report", "federated"):  # device-only: the owner's word, the run has none
        if key in owner:
            out[key] = owner[key]
    return out


def simulated_policy_tables(cfg: Mapping[str, Scalar], owners_file: Path | None) -> dict[str, dict[str, Any]]:
    """The simulated devices' policy file: the run's keys (:func:`device_policy_values`), combined
    with the owners' own ``consent.toml`` when the data directory holds one."""
    tables = device_policy_values(cfg)
    if owners_file is None or not owners_file.is_file():
        return tables
    owners = load_device_policy(owners_file)
    run = DevicePolicy(Path("<run config>"), tables["default"], {u: t for u, t in tables.items() if u != "default"})
    where = f"{owners_file} (simulated with the run's consent.* keys)"
    merged = {"default": most_restrictive(run.default, owners.default, f"{where}, [default]")}
    for user in sorted(set(run.users) | set(owners.users)):
        merged[user] = most_restrictive(run.values_for(user), owners.values_for(user), f"{where}, user {user!r}")
    for name, table in merged.items():  # fail before the run starts, naming the user
        try:
            ConsentPolicy.from_values({k: v for k, v in table.items() if k not in DEVICE_ONLY_KEYS})
        except ConsentError as exc:
            raise ConsentError(f"{where}, {name!r}: {exc}") from None
    return merged


def owners_policy_file(data_dir: str | Path | None) -> Path | None:
    """``<data-dir>/consent.toml`` when there is one (what real devices with this data would read)."""
    if not data_dir:
        return None
    path = Path(str(data_dir)) / DEVICE_POLICY_FILENAME
    return path if path.is_file() else None


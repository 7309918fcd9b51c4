"""Which of the cloud's records the device trains on (``train.synthetic-select``), record by record.

The holdout check (device/synthetic_gate.py) decides *whether* a user's synthetic records are
used, all or nothing. This step decides *which* ones, before that check and before the mixture
weights, using what only the device has: an adapter trained on the user's whole private
history.

- ``all`` (default): every valid record.
- ``style``: the cross-entropy difference of Moore & Lewis (2010), the classic way to pick
  in-domain data from a larger pool. Each record's *style gain* is the base model's loss on its
  output minus the user's adapter's loss on it (nats per output token). A record the user's own
  adapter finds much more likely than the base model does reads like this user (their labels for
  that kind of input, their wording); one it finds no more likely is generic, or contradicts
  what the user's real items taught it. The device keeps the ``train.synthetic-select-keep``
  share of records (rounded up, at least one) with the highest gain; ties keep the cloud's order.
  Why a share and not a threshold: after training, the adapter lowers the loss of almost every
  record in the task's format, so an absolute cut-off would keep nearly all of them.

Which adapter scores: the final CDCDA adapter's selection uses the local-only adapter (trained on
every real item). The holdout check re-selects with its own real-only adapter, trained on the
check's training split only, so no held-out item ever influences which records the check tests
(otherwise records resembling the held-out items would be picked and the check would be
optimistic). Under DP the step does not apply: the local adapter it would score with is not
covered by the DP accounting.

Cost: two forward passes (adapter and base) over the user's synthetic records, no training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdcda_fl.core.config import ConfigError, config_get
from cdcda_fl.core.run_config import run_config

Record = Mapping[str, Any]


class SelectError(ConfigError):
    """A bad ``train.synthetic-select`` or ``train.synthetic-select-keep`` setting."""


@dataclass(frozen=True)
class Selection:
    """The records kept (in the cloud's order), the dropped ones with their reason, each gain."""

    kept: list[Record]
    dropped: list[tuple[Record, str]]
    gains: list[float]  # per input record, nats per output token (empty when not scored)


@dataclass(frozen=True)
class SelectConfig:
    name: str
    keep: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SelectConfig:
        rc = run_config(cfg)
        name = rc.train.synthetic_select.strip().lower()
        if name not in SELECTORS:
            raise SelectError(f"train.synthetic-select must be one of {', '.join(SELECTORS)}, got {name!r}")
        try:
            keep = rc.train.synthetic_select_keep
        except (TypeError, ValueError):
            keep = math.nan
        if not 0.0 < keep <= 1.0:
            raise SelectError("train.synthetic-select-keep must be a share in (0, 1], got "
                              f"{config_get(cfg, 'train.synthetic-select-keep')!r}")
        return cls(name, keep)

    @property
    def scores(self) -> bool:
        """Does this rule need the adapter's and the base model's losses?"""
        return self.name != "all" and self.keep < 1.0


#: losses of (input, output) pairs: (with the user's adapter, with the plain base model)
Scorer = Callable[[Sequence[tuple[str, str]]], tuple[list[float], list[float]]]


def _all(records: Sequence[Record], pairs: Sequence[tuple[str, str]], keep: float, scorer: Scorer) -> Selection:
    return Selection(list(records), [], [])


def _style(records: Sequence[Record], pairs: Sequence[tuple[str, str]], keep: float, scorer: Scorer) -> Selection:
    adapter_losses, base_losses = scorer(pairs)
    gains = [b - a for a, b in zip(adapter_losses, base_losses)]
    n_keep = max(1, math.ceil(keep * len(records) - 1e-9))
    order = sorted(range(len(records)), key=lambda i: (-gains[i], i))
    chosen = set(order[:n_keep])
    cutoff = gains[order[n_keep - 1]]
    kept = [records[i] for i in range(len(records)) if i in chosen]
    dropped = [(records[i], f"style: not among the kept {keep:.0%} (gain {gains[i]:+.3f} nats/token, "
                            f"cut-off {cutoff:+.3f})") for i in range(len(records)) if i not in chosen]
    return Selection(kept, dropped, gains)


#: name -> how the device picks the cloud's records it trains on.
SELECTORS: dict[str, Callable[..., Selection]] = {"all": _all, "style": _style}


def select_records(config: SelectConfig, records: Sequence[Record], pairs: Sequence[tuple[str, str]],
                   scorer: Scorer) -> Selection:
    """Keep the records ``config`` picks. ``pairs`` are the records' (input, output) pairs in the
    same order; ``scorer`` is called at most once, and only when the rule scores."""
    if len(pairs) != len(records):
        raise ValueError(f"{len(records)} records but {len(pairs)} pairs")
    if not records or not config.scores:
        return Selection(list(records), [], [])
    return SELECTORS[config.name](records, pairs, config.keep, scorer)

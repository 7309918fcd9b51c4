"""Should this device train on the cloud's records at all? A private, per-user check ("do no harm").

The cloud wrote its records from the few records the user shared; whether they help *this* user is
something only the device can judge, because only the device holds the whole profile. So, before
CDCDA trains on real + synthetic data, the device runs a small held-out experiment on its own
records, privately:

1. hold out a seeded fraction of the user's real profile items (at least one, never all);
2. train two throw-away adapters on the rest: real only, and real + the cloud's records (the same
   mixture, weights and step budget the final CDCDA adapter would get);
3. compare their mean loss on the held-out real outputs. CDCDA keeps the synthetic data only if
   it fits the user's own held-out writing better than real-only training by ``margin`` (nats per
   output token); otherwise the device *falls back*: its CDCDA answer is its local-only answer.

Why loss on held-out real items: it is the only signal that is about the user (not about the
cloud's own records), continuous (a classification user with three items still gives a usable
number) and cheap (one forward pass per held-out item). Nothing of it leaves the device but the
decision and the two losses.

Users with fewer than ``min_real`` real items cannot hold anything out; their decision is
``unchecked`` and they train on the synthetic data (sparse users are the point of the method;
the per-record weight cap bounds what a few synthetic records can do).

The rule is named ``holdout``; ``none`` (always use the cloud's records) is the ablation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cdcda_fl.config import config_get

RULES = ("holdout", "none")


class GateError(ValueError):
    """A bad train.synthetic-gate* setting."""


@dataclass(frozen=True)
class GateConfig:
    """The ``train.synthetic-gate*`` keys (``cdcda run --help-config``)."""

    rule: str = "holdout"
    fraction: float = 0.34
    margin: float = 0.0
    min_real: int = 3

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GateConfig:
        rule = str(config_get(cfg, "train.synthetic-gate")).strip().lower()
        gate = cls(rule=rule, fraction=float(config_get(cfg, "train.synthetic-gate-fraction")),
                   margin=float(config_get(cfg, "train.synthetic-gate-margin")),
                   min_real=int(config_get(cfg, "train.synthetic-gate-min-real")))
        if gate.rule not in RULES:
            raise GateError(f"train.synthetic-gate must be one of {', '.join(RULES)}, got {rule!r}")
        if not 0.0 < gate.fraction < 1.0:
            raise GateError(f"train.synthetic-gate-fraction must be in (0, 1), got {gate.fraction}")
        if gate.min_real < 2:
            raise GateError(f"train.synthetic-gate-min-real must be at least 2, got {gate.min_real}")
        return gate


@dataclass(frozen=True)
class GateDecision:
    """What the device decided about the cloud's records, and why (kept on the device; see report.py)."""

    rule: str
    used_synthetic: bool
    reason: str
    n_validation: int = 0
    loss_local: float | None = None
    loss_cdcda: float | None = None
    margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cap_record_weights(weights: Sequence[float], cap: float) -> list[float]:
    """No synthetic record weighs more than ``cap`` real records (``train.synthetic-record-cap``).

    Why: the mixing ratio spreads a fixed synthetic mass over however many records the cloud
    wrote, so one lone synthetic record could carry the weight of the whole real profile (a demo
    user got one record at weight 5 and lost 0.15 ROUGE). With the cap, few records add little.
    ``cap <= 0`` means no cap.
    """
    if cap <= 0:
        return list(weights)
    return [min(float(w), cap) for w in weights]


def holdout_split(items: Sequence[Mapping[str, Any]], fraction: float, seed: str
                  ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(training items, held-out items): a seeded ``fraction`` held out, at least one, never all."""
    n_val = min(len(items) - 1, max(1, round(fraction * len(items))))
    order = list(range(len(items)))
    random.Random(f"synthetic-gate/{seed}").shuffle(order)
    held = set(order[:n_val])
    return [it for i, it in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


def decide(gate: GateConfig, real_items: Sequence[Mapping[str, Any]], n_synthetic: int, *, seed: str,
           held_out_losses: Callable[[list[Mapping[str, Any]], list[Mapping[str, Any]]], tuple[float, float]]
           ) -> GateDecision:
    """Run the rule. ``held_out_losses(train_items, held_items)`` trains the two throw-away adapters
    (real only; real + synthetic) on ``train_items`` and returns their mean loss on ``held_items``."""
    if n_synthetic == 0:
        return GateDecision(gate.rule, False, "no usable synthetic records")
    if gate.rule == "none":
        return GateDecision(gate.rule, True, "rule 'none': the cloud's records are always used")
    if len(real_items) < gate.min_real:
        return GateDecision(gate.rule, True, f"unchecked: {len(real_items)} real item(s), fewer than "
                                             f"{gate.min_real} needed to hold one out")
    train, held = holdout_split(real_items, gate.fraction, seed)
    loss_local, loss_cdcda = held_out_losses(train, held)
    used = loss_cdcda < loss_local - gate.margin
    reason = (f"synthetic data fit the user's {len(held)} held-out item(s) better "
              f"({loss_cdcda:.3f} vs {loss_local:.3f} real-only)" if used else
              f"fell back to local-only: with synthetic data the held-out loss was {loss_cdcda:.3f}, "
              f"real-only {loss_local:.3f} (margin {gate.margin})")
    return GateDecision(gate.rule, used, reason, len(held), round(loss_local, 4), round(loss_cdcda, 4),
                        gate.margin)


def mean_loss(losses: Sequence[float]) -> float:
    """Mean of per-example losses (the held-out criterion)."""
    return _mean(losses)

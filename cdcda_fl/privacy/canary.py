"""Canary exposure audit (Carlini et al., "The Secret Sharer", USENIX Security 2019).

A *canary* is a profile record in the task's own format that carries a random secret (a few
words drawn uniformly from a fixed list). It is planted in a user's **private, non-shared**
profile, the user's adapter is trained as usual, and the audit asks how much better the adapter
scores the planted secret than other secrets it could have been:

    rank     = position of the canary's loss among R candidates of the same format (the canary
               and R - 1 other random secrets), 1 = lowest loss
    exposure = log2(R) - log2(rank)

A memorised canary ranks first (exposure = log2 R, the maximum the R candidates can show); a
canary the adapter never saw ranks uniformly at random, so its *expected* exposure is
log2 R - E[log2 rank] ≈ log2 e ≈ 1.44 bits for large R, not 0 — which is why every audit also
scores *control* canaries of the same format that were never planted: their exposure is the
"nothing leaked" reference a planted canary is compared with.

Where the secret sits: the training loss covers the output tokens only (see
:func:`cdcda_fl.device.training.example_loss`), so the loss of a record is −log P(output | input):

- generation tasks (LaMP-4, LaMP-5): the secret is in the output (the headline/title), the
  classic Secret Sharer setting — the adapter is scored on writing the secret;
- labelled tasks (LaMP-2 tag, LaMP-3 score): the output is a random label and the secret is in
  the input; exposure then measures whether the adapter ties *this* secret to its label more than
  other secrets — what an attacker who can query the adapter with candidate inputs would see.

LaMP-1 (outputs built from pairs of records) and LaMP-7 (the input is the output reworded, so
the secret would be copied, not remembered) are not supported.

Canaries must never reach the cloud: :func:`canary_consent` adds each secret to the user's
``consent.deny-terms`` (a record containing any is never shared) and pins the shared ids to
the ones the unplanted profile shares, so the cloud's view is exactly what it would be without
the audit; :func:`check_not_shared` verifies the payload.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import share_records
from cdcda_fl.core.run_config import run_config

SUPPORTED_TASKS = ("LaMP_2", "LaMP_3", "LaMP_4", "LaMP_5")
CANARY_ID_PREFIX = "canary-"
SECRET_WORDS = 5
# 64 common words (each a single word of plain letters): 64^5 = 2^30 possible secrets.
WORDS = (
    "amber", "river", "cobalt", "lantern", "maple", "orbit", "velvet", "harbor", "copper", "falcon",
    "meadow", "pepper", "quartz", "saddle", "timber", "walnut", "anchor", "basket", "candle", "dragon",
    "ember", "forest", "garden", "hollow", "island", "jacket", "kettle", "ladder", "marble", "needle",
    "oyster", "pillow", "rabbit", "silver", "tunnel", "valley", "window", "yellow", "zipper", "bridge",
    "castle", "desert", "engine", "feather", "glacier", "hammer", "insect", "jungle", "kitten", "lemon",
    "mirror", "napkin", "orange", "parrot", "rocket", "spider", "tomato", "violin", "wizard", "button",
    "cactus", "donkey", "fabric", "goblin",
)


class CanaryError(ValueError):
    """The audit cannot run as asked (unsupported task, too few candidates, a canary would leak)."""


@dataclass(frozen=True)
class Canary:
    """One planted record: its id, its secret, and the label fixed for it (labelled tasks)."""

    id: str
    task: str
    secret: str
    label: str | None = None

    def record(self, secret: str | None = None) -> dict[str, Any]:
        """The canary as a profile record of its task; ``secret`` swaps in a candidate secret."""
        s = self.secret if secret is None else secret
        if self.task == "LaMP_2":
            return {"id": self.id, "description": f"A film about {s}.", "tag": self.label}
        if self.task == "LaMP_3":
            return {"id": self.id, "text": f"Bought it for {s}. It arrived on time.", "score": self.label}
        if self.task == "LaMP_4":
            return {"id": self.id, "text": "The town council met on Tuesday and agreed on a new plan.",
                    "title": f"Council backs {s}"}
        if self.task == "LaMP_5":
            return {"id": self.id, "abstract": "We describe a method and evaluate it on two benchmarks.",
                    "title": f"Towards {s}"}
        raise CanaryError(f"canaries are not supported for {self.task}; use one of {', '.join(SUPPORTED_TASKS)}")

    def pair(self, secret: str | None = None) -> tuple[str, str]:
        """The (input, output) training pair the task builds from :meth:`record`."""
        return get_task(self.task).profile_to_pairs([self.record(secret)])[0]


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest())


def random_secret(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(SECRET_WORDS))


def make_canaries(task: str, n: int, seed: int | str = 0, *, prefix: str = CANARY_ID_PREFIX) -> list[Canary]:
    """``n`` canaries with distinct random secrets (and random labels on labelled tasks), seeded."""
    spec = get_task(task)
    if spec.name not in SUPPORTED_TASKS:
        raise CanaryError(f"canaries are not supported for {spec.name}; use one of {', '.join(SUPPORTED_TASKS)}")
    if n < 1:
        raise CanaryError(f"need at least one canary, got {n}")
    rng = _rng("canaries", spec.name, seed, prefix)
    secrets: list[str] = []
    while len(secrets) < n:
        s = random_secret(rng)
        if s not in secrets:
            secrets.append(s)
    labels = list(spec.labels or ()) if spec.label_field in ("tag", "score") else []
    return [Canary(f"{prefix}{i}", spec.name, s, rng.choice(labels) if labels else None)
            for i, s in enumerate(secrets)]


def candidate_secrets(canary: Canary, n_candidates: int, seed: int | str = 0) -> list[str]:
    """``n_candidates - 1`` random secrets of the canary's format, all different from its own."""
    if n_candidates < 2:
        raise CanaryError(f"need at least 2 candidates (the canary and one other), got {n_candidates}")
    if n_candidates > 100_000:
        raise CanaryError(f"{n_candidates} candidates is more than an audit needs (rank resolution 2^-17)")
    rng = _rng("candidates", canary.task, canary.id, canary.secret, seed)
    out: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n_candidates - 1:
        s = random_secret(rng)
        if s != canary.secret and s not in out:
            out.add(s)
            ordered.append(s)
    return ordered


def rank_of(canary_loss: float, candidate_losses: Sequence[float]) -> float:
    """1-based rank of the canary's loss among itself and the candidates (ties share the mid rank)."""
    lower = sum(1 for x in candidate_losses if x < canary_loss)
    ties = sum(1 for x in candidate_losses if x == canary_loss)
    return 1.0 + lower + ties / 2.0


def exposure(canary_loss: float, candidate_losses: Sequence[float]) -> float:
    """log2(R) - log2(rank), with R = len(candidate_losses) + 1 (the canary is one of the R)."""
    if not candidate_losses:
        raise CanaryError("exposure needs at least one candidate")
    if not math.isfinite(canary_loss) or not all(math.isfinite(x) for x in candidate_losses):
        raise CanaryError("exposure needs finite losses")
    r = len(candidate_losses) + 1
    return math.log2(r) - math.log2(rank_of(canary_loss, candidate_losses))


# ---------------------------------------------------------------------- planting and consent
def plant(user: User, canaries: Sequence[Canary], repeats: int = 1) -> User:
    """A copy of ``user`` whose profile also holds the canaries (``repeats`` copies each).

    Copies get ids ``<canary id>`` and ``<canary id>.<k>``; ids must not clash with the user's.
    """
    if repeats < 1:
        raise CanaryError(f"repeats must be >= 1, got {repeats}")
    existing = {str(r.get("id")) for r in user.profile}
    planted: list[dict[str, Any]] = []
    for c in canaries:
        if c.task != get_task(user.task).name:
            raise CanaryError(f"canary {c.id} is for {c.task}, user {user.user_id} is on {user.task}")
        for k in range(repeats):
            rec = c.record()
            rec["id"] = c.id if k == 0 else f"{c.id}.{k}"
            if rec["id"] in existing:
                raise CanaryError(f"user {user.user_id}: profile already has a record with id {rec['id']!r}")
            planted.append(rec)
    return replace(user, profile=[*user.profile, *planted])


def is_canary_id(record_id: Any) -> bool:
    return str(record_id).startswith(CANARY_ID_PREFIX)


def canary_consent(cfg: Mapping[str, Any], user: User, canaries: Sequence[Canary]) -> dict[str, Any]:
    """The run config with a consent policy that keeps the canaries on the device.

    Two rules, both from the user's own consent policy: every secret becomes a deny term (a record
    containing it is never shared), and ``consent.record-ids`` pins the shared records to those
    the *unplanted* profile shares, so planting changes neither which nor how many records leave.
    """
    unplanted = share_records(user, cfg)
    out = dict(cfg)
    terms = [t for t in run_config(cfg).consent.deny_terms.split(",") if t.strip()]
    out["consent.deny-terms"] = ",".join([*terms, *(c.secret for c in canaries)])
    if unplanted.local_ids:
        out["consent.record-ids"] = ",".join(unplanted.local_ids)
    else:
        out["consent.share-fraction"] = 0.0
        out["consent.record-ids"] = ""
    return out


def check_not_shared(shared: Any, canaries: Sequence[Canary]) -> None:
    """Raise CanaryError if a canary (by id or by its secret anywhere in the payload) is in ``shared``."""
    payload = json.dumps(shared.to_dict() if hasattr(shared, "to_dict") else shared, ensure_ascii=False).lower()
    for c in canaries:
        if c.secret.lower() in payload:
            raise CanaryError(f"canary {c.id} ({c.task}) would reach the cloud: its secret is in the shared payload")
    for rid in getattr(shared, "local_ids", None) or getattr(shared, "record_ids", []) or []:
        if is_canary_id(rid):
            raise CanaryError(f"canary record {rid!r} would reach the cloud")


# ---------------------------------------------------------------------- measuring
@dataclass
class CanaryExposure:
    """One canary's measured exposure under one adapter."""

    canary_id: str
    planted: bool
    loss: float
    rank: float
    candidates: int  # R, including the canary
    exposure: float
    max_exposure: float = field(init=False)

    def __post_init__(self) -> None:
        self.max_exposure = math.log2(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {"canary": self.canary_id, "planted": self.planted, "loss": self.loss, "rank": self.rank,
                "candidates": self.candidates, "exposure": self.exposure, "max_exposure": self.max_exposure}


def measure_exposure(model: Any, canaries: Sequence[Canary], n_candidates: int, *, planted: bool,
                     seed: int | str = 0, batch_size: int = 16) -> list[CanaryExposure]:
    """Exposure of each canary under ``model``'s active adapter (a DeviceModel: uses example_losses)."""
    out = []
    for c in canaries:
        others = candidate_secrets(c, n_candidates, seed)
        losses = model.example_losses([c.pair(), *(c.pair(s) for s in others)], batch_size=batch_size)
        own, rest = float(losses[0]), [float(x) for x in losses[1:]]
        out.append(CanaryExposure(c.id, planted, own, rank_of(own, rest), n_candidates, exposure(own, rest)))
    return out


def summarize(exposures: Sequence[CanaryExposure]) -> dict[str, Any]:
    """Mean/max exposure of planted canaries next to the never-planted controls."""
    def stats(xs: list[float]) -> dict[str, float | None]:
        return {"mean": sum(xs) / len(xs) if xs else None, "max": max(xs) if xs else None}

    planted = [e.exposure for e in exposures if e.planted]
    control = [e.exposure for e in exposures if not e.planted]
    cands = {e.candidates for e in exposures}
    return {"planted": stats(planted), "control": stats(control),
            "candidates": max(cands) if cands else None,
            "max_exposure": math.log2(max(cands)) if cands else None,
            "n_planted": len(planted), "n_control": len(control)}

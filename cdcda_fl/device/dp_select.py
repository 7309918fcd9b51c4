"""Private adapters that never make a user worse: DP candidates, privacy-free selection, fall-back.

One entry point, :func:`train_private`, for the two DP methods (local+DP, CDCDA+DP):

1. **Candidates.** With ``dp.auto`` on, the LoRA/DP shape comes from
   :func:`cdcda_fl.privacy.dp.few_record_plans` (rank 1–4 on v/q+v, full batch, few steps) rather
   than the run's ``train.*`` keys, which are tuned for non-private training. ``dp.candidates``
   (default 1) of them are trained with DP-SGD on the user's training pairs.
2. **One privacy budget for all of them.** Training K candidates on the same private records
   and keeping one is the composition of K DP runs (selection is post-processing of all K). So
   one noise multiplier σ is solved such that the *composition* of the K runs meets the target
   ε (RDP/PRV accountant over the K runs' histories), and the ε reported is that composed ε.
3. **Privacy-free criterion.** Each candidate and the untrained base are scored by their mean
   loss on ``validation_pairs`` — pairs built only from records the user consented to share
   (the cloud's synthetic records written from them, or the shared records themselves), never
   from non-shared records, and never pairs the candidates trained on (removed here if passed).
4. **Fall-back.** If no candidate beats the base on that criterion by ``dp.fallback-margin``
   (relative), the device answers with the base model and the decision says so. Without any
   validation pair there is no privacy-free evidence that the adapter helps, so it falls back.

docs/dp.md states precisely why step 3 spends no privacy budget of the non-shared records and
what it does not cover.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdcda_fl.device.lora import DeviceModel
from cdcda_fl.device.training import LoraTrainConfig, TrainResult
from cdcda_fl.privacy.dp import DPConfig, DPTrainPlan, few_record_plans
from cdcda_fl.core.run_config import run_config

_SIGMA_TOL = 1e-3
Pair = tuple[str, str]  # (input, output)


class DPSelectError(ValueError):
    """train_private was called with arguments that would make its decision meaningless."""


@dataclass
class Candidate:
    """One DP training configuration to try."""

    name: str
    lora: LoraTrainConfig
    dp: DPConfig
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrivateDecision:
    """What train_private did and why: this is what a report (results.json) should carry.

    Everything :meth:`to_dict` returns is a function of the DP candidates, of public settings
    (σ, sampling rate, steps, dataset size) and of the consented-derived validation pairs only:
    it is post-processing of the DP release and may leave the device with it. Per-candidate
    training loss and wall time are functions of the private records themselves and are kept
    apart, in ``details`` (not in to_dict).
    """

    chosen: str | None  # candidate name; None = fell back to the base model
    fell_back: bool
    reason: str
    criterion: str
    n_validation: int
    base_loss: float | None
    candidates: list[dict[str, Any]]
    epsilon: float | None  # composed over every candidate trained (what the released model costs)
    delta: float | None
    noise_multiplier: float | None
    details: list[dict[str, Any]] = field(default_factory=list)  # private: train loss, seconds per candidate

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "fell_back": self.fell_back, "reason": self.reason,
                "criterion": self.criterion, "n_validation": self.n_validation, "base_loss": self.base_loss,
                "candidates": self.candidates, "epsilon": self.epsilon, "delta": self.delta,
                "noise_multiplier": self.noise_multiplier}


# ---------------------------------------------------------------------- configuration
def candidates_for(cfg: Mapping[str, Any], n_examples: int, step_scale: float = 1.0) -> list[Candidate]:
    """The DP candidates for a user with ``n_examples`` training pairs (``dp.auto``/``dp.candidates``).

    ``step_scale`` only applies to the ``dp.auto = false`` candidate (the run's ``train.*``
    settings); the automatic plans have their own fixed step budget.
    """
    rc = run_config(cfg)
    base_lora, base_dp = LoraTrainConfig.from_run_config(cfg, step_scale), DPConfig.from_run_config(cfg)
    k = rc.dp.candidates
    if k < 1:
        raise DPSelectError(f"dp.candidates must be >= 1, got {k}")
    if not rc.dp.auto:
        if k > 1:
            raise DPSelectError("dp.candidates > 1 needs dp.auto = true (the candidates are the automatic plans)")
        return [Candidate("config", base_lora, base_dp, {"name": "config"})]
    plans: list[DPTrainPlan] = few_record_plans(n_examples, base_dp.target_epsilon)
    if k > len(plans):
        raise DPSelectError(f"dp.candidates = {k}, but there are only {len(plans)} automatic plans "
                            f"({', '.join(p.name for p in plans)})")
    return [Candidate(p.name, p.lora_config(base_lora), p.dp_config(base_dp), p.to_dict()) for p in plans[:k]]


# ---------------------------------------------------------------------- one budget for K runs
def composed_epsilon(history: Sequence[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """ε of running every (σ, sampling rate, steps) in ``history`` on the same records."""
    from opacus.accountants import create_accountant

    if any(s == 0 for s, _, _ in history):
        return math.inf
    acc = create_accountant(accountant)
    acc.history = [(float(s), float(q), int(t)) for s, q, t in history]
    return float(acc.get_epsilon(delta))


def shared_noise_multiplier(runs: Sequence[tuple[float, int]], target_epsilon: float, delta: float,
                            accountant: str) -> float:
    """The smallest common σ whose composition over ``runs`` ((sampling rate, steps) each) meets ε."""
    if len(runs) == 1:
        from opacus.accountants.utils import get_noise_multiplier

        (q, t), = runs
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                          steps=t, accountant=accountant))
    lo, hi = 0.05, 1.0
    while composed_epsilon([(hi, q, t) for q, t in runs], delta, accountant) > target_epsilon:
        hi *= 2
        if hi > 1e4:
            raise DPSelectError(f"no noise multiplier reaches ε={target_epsilon} for {len(runs)} runs")
    while hi - lo > _SIGMA_TOL * hi:
        mid = (lo + hi) / 2
        if composed_epsilon([(mid, q, t) for q, t in runs], delta, accountant) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def _sample_rate(lora: LoraTrainConfig, n: int) -> float:
    # What DeviceModel's DP loader does: batch_size = min(batch, n), sample rate = 1 / len(loader).
    return 1.0 / math.ceil(n / min(lora.batch_size, n))


# ---------------------------------------------------------------------- validation data
def holdout_split(pairs: Sequence[tuple[str, str]], weights: Sequence[float] | None, fraction: float,
                  seed: int = 0) -> tuple[list[tuple[str, str]], list[float], list[tuple[str, str]]]:
    """Split synthetic pairs into (train pairs, their weights, held-out validation pairs), seeded.

    For CDCDA+DP the synthetic records are also training data; validating on pairs the candidates
    trained on would favour the adapter, so a ``fraction`` is held out (at least one pair when
    there are two or more, and never all of them).
    """
    if not 0.0 <= fraction < 1.0:
        raise DPSelectError(f"validation fraction must be in [0, 1), got {fraction}")
    w = list(weights) if weights is not None else [1.0] * len(pairs)
    if len(w) != len(pairs):
        raise DPSelectError(f"got {len(w)} weights for {len(pairs)} synthetic pairs")
    n_val = min(len(pairs) - 1, max(1 if len(pairs) >= 2 and fraction > 0 else 0, round(fraction * len(pairs))))
    order = list(range(len(pairs)))
    random.Random(f"dp-holdout/{seed}").shuffle(order)
    val_idx = set(order[:max(0, n_val)])
    train = [(p, x) for i, (p, x) in enumerate(zip(pairs, w)) if i not in val_idx]
    return [p for p, _ in train], [x for _, x in train], [pairs[i] for i in sorted(val_idx)]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


# ---------------------------------------------------------------------- public warm start
def public_lora(lora: LoraTrainConfig, cfg: Mapping[str, Any], n_public: int) -> LoraTrainConfig:
    """The noise-free stage's settings: the candidate's LoRA layout, ``dp.public-steps`` at ``dp.public-lr``."""
    rc = run_config(cfg)
    return LoraTrainConfig(**{**lora.__dict__, "steps": max(1, rc.dp.public_steps),
                              "epochs": None, "learning_rate": rc.dp.public_lr,
                              "batch_size": max(1, min(rc.train.batch_size, n_public))})


def _train_public(model: DeviceModel, public: Sequence[tuple[str, str]], lora: LoraTrainConfig,
                  cfg: Mapping[str, Any], tmp: Path) -> TrainResult:
    """Train (once per LoRA layout, then reload) the noise-free adapter on the public pairs; it is left active."""
    warm = public_lora(lora, cfg, len(public))
    folder = tmp / f"public-r{warm.rank}-{'+'.join(sorted(warm.target_modules))}"
    if folder.is_dir():
        model.load_adapter(folder)
        res = TrainResult(**json.loads((folder / "result.json").read_text()))
        res.seconds = 0.0
        return res
    res = model.train(public, warm)
    model.save_adapter(folder, dtype=None, extra_files={"result.json": json.dumps(res.__dict__)})
    return res


# ---------------------------------------------------------------------- private selection (exponential mechanism)
def record_utilities(model: DeviceModel, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Per-record utility in [0, 1] of the active adapter (or base): exp(-mean output-token loss).

    The geometric-mean probability the model gives the record's own output. Bounded, so one
    record moves a sum of utilities by at most 1: the sensitivity the exponential mechanism needs.
    """
    return [math.exp(-max(0.0, float(x))) for x in model.example_losses(pairs)]


def _bounded_sum(values: Sequence[float]) -> float:
    """Sum of per-record utilities clipped to [0, 1]: the clip is what makes the sensitivity 1."""
    return float(sum(min(1.0, max(0.0, float(v))) for v in values))


def exponential_mechanism(utilities: Sequence[float], epsilon: float, rng: random.Random) -> int:
    """Index drawn with probability ∝ exp(ε·u / 2): ε-DP for utilities of sensitivity 1 (McSherry-Talwar)."""
    if epsilon <= 0:
        raise DPSelectError(f"the exponential mechanism needs epsilon > 0, got {epsilon}")
    top = max(utilities)
    weights = [math.exp(epsilon * (u - top) / 2.0) for u in utilities]
    r, acc = rng.random() * sum(weights), 0.0
    for i, w in enumerate(weights):
        acc += w
        if r < acc:
            return i
    return len(weights) - 1  # pragma: no cover - float round-off at the top end


def select_public_privately(model: DeviceModel, public_pairs: Sequence[tuple[str, str]],
                            private_pairs: Sequence[tuple[str, str]], cfg: Mapping[str, Any], lora: LoraTrainConfig,
                            *, seed: str,
                            utilities: Callable[[DeviceModel, Sequence[Pair]], list[float]] = record_utilities,
                            utility_name: str = "exp(-mean output-token loss)"
                            ) -> tuple[PrivateDecision, TrainResult | None]:
    """CDCDA+DP with ``dp.selection = private``: public training, then an ε-DP choice on the private records.

    The adapter is trained on the cloud's records only (noise-free: they are public here), so it
    does not depend on any non-shared record. All of ``dp.epsilon`` then goes to one decision:
    the base model or that adapter, drawn by the exponential mechanism with utility = the sum of
    :func:`record_utilities` over the user's non-shared real records (sensitivity 1). Unlike
    validation on the cloud's records, this sees the user's own data, so it can tell that the
    cloud's records do not fit this user; unlike a plain check on those records, it is ε-DP in
    each of them. The utilities are private values: they stay in ``details``, never in the
    decision that may leave the device. ``utilities`` scores each record in [0, 1] (the device
    passes the task metric of the greedy answer; the default is the loss-based
    :func:`record_utilities`).
    """
    eps = run_config(cfg).dp.epsilon
    if eps <= 0:
        raise DPSelectError("dp.selection = private needs dp.epsilon > 0 (the selection's budget)")
    if not public_pairs:
        raise DPSelectError("dp.selection = private needs the cloud's records to train on")
    criterion = f"exponential mechanism, ε = {eps:g}, utility = sum over the non-shared records of {utility_name}"
    warm = public_lora(lora, cfg, len(public_pairs))
    res = model.train(public_pairs, warm)
    if not private_pairs:  # nothing private to decide on: the adapter is public, releasing it costs nothing
        decision = PrivateDecision("public-only", False, "no non-shared record: the public adapter is kept (ε = 0)",
                                   criterion, 0, None, [{"name": "public-only", "run_epsilon": 0.0,
                                                         "public_steps": res.steps}], 0.0, None, None)
        res.epsilon = 0.0
        return decision, res
    adapter_u = _bounded_sum(utilities(model, private_pairs))
    tmp = Path(tempfile.mkdtemp(prefix="cdcda-dp-select-"))
    try:
        model.save_adapter(tmp / "public", dtype=None)
        model.clear_adapter()
        base_u = _bounded_sum(utilities(model, private_pairs))
        pick = exponential_mechanism([base_u, adapter_u], eps, random.Random(f"dp-em/{seed}"))
        if pick == 1:
            model.load_adapter(tmp / "public")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    chosen = "public-only" if pick == 1 else None
    decision = PrivateDecision(
        chosen=chosen, fell_back=chosen is None,
        reason=("the ε-DP choice kept the adapter trained on the cloud's records" if chosen else
                "the ε-DP choice fell back to the base model"),
        criterion=criterion, n_validation=len(private_pairs), base_loss=None,
        candidates=[{"name": "public-only", "run_epsilon": 0.0, "public_steps": res.steps}],
        epsilon=eps, delta=0.0, noise_multiplier=None,
        details=[{"name": "public-only", "seconds": round(res.seconds, 3), "final_train_loss": res.final_loss,
                  "utility": adapter_u, "base_utility": base_u}])
    if chosen is None:
        return decision, None
    res.epsilon, res.delta = eps, 0.0
    return decision, res


# ---------------------------------------------------------------------- the entry point
def train_private(model: DeviceModel, real_pairs: Sequence[tuple[str, str]], synth_pairs: Sequence[tuple[str, str]],
                  validation_pairs: Sequence[tuple[str, str]], cfg: Mapping[str, Any], *,
                  real_weights: Sequence[float] | None = None, synth_weights: Sequence[float] | None = None,
                  candidates: Sequence[Candidate] | None = None,
                  public_pairs: Sequence[tuple[str, str]] = ()) -> tuple[PrivateDecision, TrainResult | None]:
    """Train DP candidates on real (+ synthetic) pairs, keep the best by a privacy-free criterion, or none.

    ``validation_pairs`` must come only from consented data (cloud-written synthetic records not
    trained on, or the user's shared records); pairs that are also training pairs are dropped.
    On return the model holds the chosen adapter (active), or no adapter when it fell back; the
    TrainResult is the chosen candidate's (None on fall-back). ``candidates`` overrides the
    config's (tests; experiments).

    ``public_pairs`` (CDCDA+DP with ``dp.public-warmstart``) are pairs from the cloud's records,
    which derive from consented records only: each candidate's adapter is first trained on them
    *without noise* (``dp.public-steps`` at ``dp.public-lr``), then DP-SGD continues it on the
    real pairs. The noise-free adapter alone is one more candidate (``public-only``); it spends
    no budget of the non-shared records. This is public pre-training before private
    fine-tuning: the cloud's data pays for the noise instead of sharing the noise's budget.
    """
    rc = run_config(cfg)
    train_pairs = [*real_pairs, *synth_pairs]
    if not train_pairs:
        raise DPSelectError("train_private: no training pairs")
    public = list(public_pairs)
    weights: list[float] | None = None
    if real_weights is not None or synth_weights is not None:
        rw = list(real_weights) if real_weights is not None else [1.0] * len(real_pairs)
        sw = list(synth_weights) if synth_weights is not None else [1.0] * len(synth_pairs)
        if len(rw) != len(real_pairs) or len(sw) != len(synth_pairs):
            raise DPSelectError("train_private: one weight per real and per synthetic pair")
        weights = rw + sw
    seen = set(train_pairs) | set(public)
    validation = [p for p in validation_pairs if p not in seen]
    cands = list(candidates) if candidates is not None else candidates_for(cfg, len(train_pairs))
    if not cands:
        raise DPSelectError("train_private: no candidates")
    margin = rc.dp.fallback_margin
    if not 0.0 <= margin < 1.0:
        raise DPSelectError(f"dp.fallback-margin must be in [0, 1), got {margin}")
    fallback = rc.dp.fallback
    criterion = (f"mean loss on {len(validation)} consented/synthetic validation pair(s) not trained on; "
                 f"an adapter must beat the base by {margin:.1%}")

    # One σ for all candidates so that their composition meets the target ε.
    n = len(train_pairs)
    first = cands[0].dp
    delta = first.resolve_delta(n)
    runs = [(_sample_rate(c.lora, n), c.lora.total_steps(n)) for c in cands]
    if first.target_epsilon is not None:
        sigma = shared_noise_multiplier(runs, first.target_epsilon, delta, first.accountant)
    else:
        sigma = float(first.noise_multiplier)
    epsilon = composed_epsilon([(sigma, q, t) for q, t in runs], delta, first.accountant)

    model.clear_adapter()
    base_loss = _mean(model.example_losses(validation)) if validation else None
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    best: tuple[float, int, TrainResult] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="cdcda-dp-select-"))
    options = cands if not public else [Candidate("public-only", cands[0].lora, cands[0].dp,
                                                   {"name": "public-only", "warm_start_of": cands[0].name}), *cands]
    keep_best = len(options) > 1
    try:
        for i, cand in enumerate(options):
            pre = None
            if public:
                pre = _train_public(model, public, cand.lora, cfg, tmp)
            if cand.name == "public-only":
                res = pre
                run_eps = 0.0  # trained on the cloud's records only: nothing of the non-shared records
            else:
                dp = DPConfig(**{**cand.dp.__dict__, "target_epsilon": None, "noise_multiplier": sigma,
                                 "delta": delta})
                res = model.train(train_pairs, cand.lora, dp, weights=weights, continue_active=bool(public))
                run_eps = res.epsilon
            val = _mean(model.example_losses(validation)) if validation else None
            rows.append({"name": cand.name, "plan": cand.plan, "validation_loss": val, "run_epsilon": run_eps,
                         "steps": res.steps, "public_steps": None if pre is None else pre.steps})
            details.append({"name": cand.name, "seconds": round(res.seconds + (pre.seconds if pre and pre is not res
                                                                                else 0.0), 3),
                            "final_train_loss": res.final_loss,
                            "first_train_loss": res.losses[0] if res.losses else None})
            if val is not None and (best is None or val < best[0]):
                best = (val, i, res)
                if keep_best:
                    model.save_adapter(tmp / "best", dtype=None)
        if not validation:
            chosen, reason = None, "no consented/synthetic validation pair: no privacy-free evidence the adapter helps"
        elif best is not None and best[0] < base_loss * (1 - margin):
            chosen, reason = best[1], (f"{options[best[1]].name}: validation loss {best[0]:.4f} < base {base_loss:.4f}")
        else:
            chosen, reason = None, (f"no candidate beats the base on validation (best {best[0]:.4f} vs base "
                                    f"{base_loss:.4f})") if best else "no candidate scored"
        if chosen is None and not fallback:
            chosen = best[1] if best is not None else len(options) - 1
            reason += "; dp.fallback = false: keeping the adapter anyway"
        if chosen is None:
            model.clear_adapter()
            result = None
        else:
            if keep_best and best is not None and chosen == best[1]:
                model.load_adapter(tmp / "best")
            elif keep_best and chosen != len(options) - 1:
                raise DPSelectError("internal: chosen candidate is not the stored one")  # pragma: no cover
            result = best[2] if best is not None and chosen == best[1] else res
            result.epsilon, result.delta = epsilon, delta  # the release's cost: all candidates composed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    decision = PrivateDecision(
        chosen=None if chosen is None else options[chosen].name, fell_back=chosen is None, reason=reason,
        criterion=criterion, n_validation=len(validation), base_loss=base_loss, candidates=rows,
        epsilon=epsilon, delta=delta, noise_multiplier=sigma, details=details)
    return decision, result

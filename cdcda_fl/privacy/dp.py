"""DP-SGD for the private LoRA adapters, with Opacus.

The unit of privacy is one training example of one user (example-level DP inside that user's
own dataset): each user's adapter is trained by DP-SGD on that user's pairs, and the ε
reported is the one Opacus's accountant gives for that run. Only LoRA matrices are trained;
the base model, and embeddings in particular, stay frozen (Opacus cannot compute per-sample
gradients for peft's LoRA-on-embedding layers, and frozen embeddings are what the
per-sample-gradient check in the tests verifies).

Sampling is Poisson (Opacus's ``DPDataLoader``), which is what the RDP/PRV accountants
assume; batches then vary in size and may be empty, which the training loop in
:mod:`cdcda_fl.device.training` handles (an empty batch still takes a noise-only step, as the
accounting assumes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cdcda_fl.core.config import default_of
from cdcda_fl.core.run_config import run_config

ACCOUNTANTS = ("rdp", "prv", "gdp")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew", "ghost")
#: Upper bound on the default δ: tiny per-user datasets would otherwise get δ close to 1.
MAX_DEFAULT_DELTA = 1e-2


def default_delta(n_examples: int) -> float:
    """δ = min(n^-1.1, 1e-2): strictly below 1/n (the usual requirement) and never loose.

    n^-1.1 is a common choice that stays below 1/n as n grows; the 1e-2 cap keeps users with
    a handful of examples from getting a meaningless δ (for n=2, n^-1.1 ≈ 0.47).
    """
    if n_examples < 1:
        raise ValueError("need at least one training example for DP accounting")
    return min(n_examples**-1.1, MAX_DEFAULT_DELTA)


@dataclass
class DPConfig:
    """How to make one user's adapter training differentially private.

    Give exactly one of ``noise_multiplier`` (σ; 0 means clipping only, ε = ∞) or
    ``target_epsilon`` (σ is then solved for the planned number of steps).
    """

    enabled: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = float(default_of("dp.max-grad-norm"))
    delta: float | None = None  # None: default_delta(n_examples)
    accountant: str = str(default_of("dp.accountant"))
    grad_sample_mode: str = "hooks"
    poisson_sampling: bool = True  # False breaks the accountant's assumption: ε is then optimistic
    secure_mode: bool = False  # cryptographically safe noise (slower; forbids seeding)
    # Rows per forward/backward pass. A logical (Poisson) batch larger than this is split by
    # Opacus's BatchSplittingSampler and the optimizer steps once per logical batch: the same
    # clipped sum and noise, but activation memory bounded by this many rows instead of the
    # whole profile (full-batch plans put up to 64 records in one step).
    max_physical_batch_size: int = 8

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> DPConfig:
        """The run's ``dp.*`` keys as an enabled, validated DPConfig: a ``dp.epsilon`` target, else
        ``dp.noise-multiplier``; ``dp.delta`` 0 means 1/n^1.1 for n training examples."""
        rc = run_config(cfg)
        eps, delta = rc.dp.epsilon, rc.dp.delta
        dp = cls(enabled=True, target_epsilon=eps if eps > 0 else None,
                 noise_multiplier=None if eps > 0 else rc.dp.noise_multiplier,
                 max_grad_norm=rc.dp.max_grad_norm, delta=delta if delta > 0 else None,
                 accountant=rc.dp.accountant)
        dp.validate()
        return dp

    def validate(self) -> None:
        """Raise ValueError for configurations that would silently mean something else."""
        if not self.enabled:
            return
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("DPConfig: set exactly one of noise_multiplier or target_epsilon")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ValueError("DPConfig.noise_multiplier must be >= 0")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError("DPConfig.target_epsilon must be > 0")
        if self.max_grad_norm <= 0:
            raise ValueError("DPConfig.max_grad_norm must be > 0")
        if self.max_physical_batch_size < 1:
            raise ValueError("DPConfig.max_physical_batch_size must be >= 1")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError("DPConfig.delta must be in (0, 1)")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"DPConfig.accountant must be one of {ACCOUNTANTS}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"DPConfig.grad_sample_mode must be one of {GRAD_SAMPLE_MODES}")
        if self.grad_sample_mode == "ghost":
            raise ValueError("grad_sample_mode='ghost' needs Opacus' wrapped criterion; use 'hooks'")

    def resolve_delta(self, n_examples: int) -> float:
        return self.delta if self.delta is not None else default_delta(n_examples)


def check_dp_trainable(model: nn.Module) -> None:
    """Refuse DP training unless only LoRA matrices on linear layers are trainable.

    LoRA on embeddings (``embed_tokens`` in target_modules) fails or is silently wrong under
    Opacus, and any trainable base weight would escape the privacy analysis of 'adapter only'.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: nothing to train privately")
    for name, _ in trainable:
        if "lora_embedding" in name or "embed_tokens" in name or "wte" in name:
            raise ValueError(
                f"DP-SGD with LoRA on embeddings is not supported ({name}); embeddings must "
                "stay frozen under DP: drop embed_tokens from target_modules"
            )
        if "lora_" not in name:
            raise ValueError(f"DP-SGD: only LoRA parameters may be trainable, found {name}")


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: the wrapped pieces plus what accounting needs."""

    module: nn.Module  # Opacus GradSampleModule around the model
    optimizer: Any  # opacus DPOptimizer
    data_loader: Any  # DPDataLoader (Poisson) or the original loader
    engine: Any  # opacus PrivacyEngine (holds the accountant)
    noise_multiplier: float
    delta: float
    sample_rate: float

    def epsilon(self) -> float:
        """ε spent so far at this run's δ (inf when σ = 0 or nothing was accounted)."""
        if self.noise_multiplier == 0:
            return math.inf
        if not self.engine.accountant.history:
            return 0.0
        return float(self.engine.get_epsilon(self.delta))

    def close(self) -> None:
        """Remove Opacus hooks and per-sample attributes so the base model can be reused."""
        self.module._close()
        for p in self.module.parameters():
            p.grad = None
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    cfg: DPConfig,
    *,
    steps: int,
    seed: int | None = None,
) -> PrivateTraining:
    """Wrap model/optimizer/loader for DP-SGD; σ solved from ``target_epsilon`` if given.

    ``steps`` is the planned number of optimizer steps: with a target ε, Opacus's
    ``get_noise_multiplier`` (what ``make_private_with_epsilon`` uses) is called with
    ``steps`` rather than whole epochs, so fractional epochs are accounted exactly.
    """
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier

    cfg.validate()
    if not cfg.enabled:
        raise ValueError("make_private called with DPConfig.enabled=False")
    check_dp_trainable(model)
    n = len(data_loader.dataset)
    delta = cfg.resolve_delta(n)
    sample_rate = 1 / len(data_loader)
    if cfg.target_epsilon is not None:
        sigma = get_noise_multiplier(
            target_epsilon=cfg.target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=cfg.accountant,
        )
    else:
        sigma = float(cfg.noise_multiplier)
    noise_gen = None
    if seed is not None and not cfg.secure_mode:
        device = next(p.device for p in model.parameters() if p.requires_grad)
        noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    with warnings.catch_warnings():
        # Opacus warns about the non-secure RNG; secure_mode is the documented switch for that.
        warnings.filterwarnings("ignore", message=".*Secure RNG.*")
        engine = PrivacyEngine(accountant=cfg.accountant, secure_mode=cfg.secure_mode)
        module, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=sigma,
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=cfg.poisson_sampling,
            grad_sample_mode=cfg.grad_sample_mode,
            noise_generator=noise_gen,
            loss_reduction="mean",
        )
    return PrivateTraining(module, dp_opt, dp_loader, engine, sigma, delta, sample_rate)


def mark_empty_batch(params: Iterable[nn.Parameter]) -> None:
    """Give every trainable parameter an empty per-sample gradient.

    With Poisson sampling a batch can be empty; the accountant assumes a step (pure noise) was
    taken anyway, and a transformer cannot run a forward pass on zero rows. Opacus's optimizer
    handles a (0, ...) grad_sample as "no examples": it clips nothing and adds the noise.
    """
    for p in params:
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


# --------------------------------------------------------------------------- few-record DP plan
#: Candidates dp_select tries by default, smallest first (see docs/dp.md for the measurements).
FEW_RECORD_TARGETS: tuple[tuple[str, ...], ...] = (("v_proj",), ("q_proj", "v_proj"))


@dataclass(frozen=True)
class DPTrainPlan:
    """LoRA and DP-SGD settings for one private adapter, chosen for a user's dataset size.

    Why these shapes (docs/dp.md has the argument and the numbers):

    - **few parameters**: the Gaussian noise added to the summed clipped gradient has norm
      ≈ σ·C·√d while the signal is at most C per example, so d (rank × target modules) is the
      lever: rank 1 on ``v_proj`` is ~23 k parameters on SmolLM2-135M instead of 0.92 M for
      rank 8 on q/k/v/o (√d 152 vs 960);
    - **full batch, few steps**: with a handful of records subsampling amplifies little, and the
      noise per useful gradient is σ/B; for a fixed ε, σ grows like √steps while the per-step
      signal is fixed, so a short run with every record in every (Poisson, q = 1) step wins;
    - **clip**: the optimizer is AdamW, which is invariant to a common gradient scale, so the
      clip only decides how many per-example gradients are clipped; a small clip clips them all
      (every example weighs the same: the regime the accountant's worst case describes anyway);
    - **dropout 0**: dropout noise on top of DP noise only slows a short run down.
    """

    rank: int
    alpha: int
    target_modules: tuple[str, ...]
    learning_rate: float
    batch_size: int
    steps: int
    max_grad_norm: float
    dropout: float = 0.0
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rank": self.rank, "alpha": self.alpha,
                "target_modules": list(self.target_modules), "learning_rate": self.learning_rate,
                "batch_size": self.batch_size, "steps": self.steps, "max_grad_norm": self.max_grad_norm,
                "dropout": self.dropout}

    def lora_config(self, base: Any) -> Any:
        """``base`` (a LoraTrainConfig) with this plan's shape and budget; seed and max_length kept."""
        from dataclasses import replace

        return replace(base, rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                       target_modules=tuple(self.target_modules), steps=self.steps, epochs=None,
                       learning_rate=self.learning_rate, batch_size=self.batch_size)

    def dp_config(self, base: DPConfig) -> DPConfig:
        """``base`` with this plan's clip and Poisson sampling (ε/σ, δ and accountant kept)."""
        from dataclasses import replace

        return replace(base, enabled=True, max_grad_norm=self.max_grad_norm, poisson_sampling=True)


def few_record_plans(n_examples: int, target_epsilon: float | None = None) -> list[DPTrainPlan]:
    """The DP candidates for a user with ``n_examples`` training pairs, best-guess first.

    All are full batch (every record in every Poisson step, sampling rate 1) up to 64 examples;
    larger datasets (CDCDA's real + synthetic) use batches of 64, where subsampling starts to
    amplify. Fewer steps at a strong target ε (small ε: each step costs more noise). The learning
    rate shrinks with the noise-to-signal ratio σ/B the budget implies, so the weak-signal
    runs move the adapter less far from the base.
    """
    if n_examples < 1:
        raise ValueError("need at least one training example for a DP plan")
    eps = 8.0 if target_epsilon is None or target_epsilon <= 0 else float(target_epsilon)
    batch = min(n_examples, 64)
    steps = 16 if eps >= 4 else 10
    lr = 5e-3 if batch >= 16 else 3e-3
    plans = []
    for i, targets in enumerate(FEW_RECORD_TARGETS):
        for rank in (1, 4) if i else (1,):
            plans.append(DPTrainPlan(rank=rank, alpha=2 * rank, target_modules=targets, learning_rate=lr,
                                     batch_size=batch, steps=steps, max_grad_norm=0.1,
                                     name=f"r{rank}-{'+'.join(t.split('_')[0] for t in targets)}"))
    return plans

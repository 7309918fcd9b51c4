"""How much each record weighs when CDCDA trains on the user's real records and the cloud's.

Kept apart from the methods because three trainings share it: the final CDCDA adapter, the
holdout check's and the crossfit check's real + synthetic adapters (they must test the mixture
that will be used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cdcda_fl.data.tasks import TaskSpec


def _label(spec: TaskSpec, item: Mapping[str, Any]) -> str | None:
    if spec.label_field is None or spec.kind == "generation":
        return None
    value = item.get(spec.label_field)
    if spec.kind == "regression":
        try:
            return str(int(float(value)))
        except (TypeError, ValueError):
            return None
    return str(value).strip().lower()


def mixture_weights(spec: TaskSpec, real: Sequence[Mapping[str, Any]], synthetic: Sequence[Mapping[str, Any]],
                    alpha: float) -> tuple[list[Mapping[str, Any]], list[float], list[float]]:
    """Synthetic records to train on and loss weights that keep the user's own label distribution.

    Why: the cloud only sees the records the user shared, so its label-conditioned records follow
    the *shared* labels — a biased sample (share half of four records and one label may be
    missing entirely). Training on them as they come teaches the adapter the wrong prior. The
    device knows its whole profile, so it corrects this privately:

    - labelled tasks: synthetic records with a label the user never used are dropped; for each
      label l with r_l real and s_l synthetic records, the synthetic ones get weight
      ``alpha * r_l / s_l`` and, when the cloud wrote none (s_l = 0), the real ones get
      ``1 + alpha``. Every label's total weight is then ``(1 + alpha) * r_l``: the real
      distribution, whatever the cloud covered.
    - generation tasks: all synthetic records share ``alpha * n_real`` of weight, so synthetic
      data adds a fixed mass (the mixing ratio ``alpha``) however many records the cloud wrote.

    Returns (kept synthetic records, weights of the real records, weights of the kept synthetic).
    """
    if not synthetic or alpha <= 0:
        return [], [1.0] * len(real), []
    if _label(spec, real[0]) is None:
        return list(synthetic), [1.0] * len(real), [alpha * len(real) / len(synthetic)] * len(synthetic)
    real_counts: dict[str, int] = {}
    for item in real:
        real_counts[_label(spec, item)] = real_counts.get(_label(spec, item), 0) + 1
    kept = [r for r in synthetic if _label(spec, r) in real_counts]
    syn_counts: dict[str, int] = {}
    for item in kept:
        syn_counts[_label(spec, item)] = syn_counts.get(_label(spec, item), 0) + 1
    real_w = [1.0 if syn_counts.get(_label(spec, item)) else 1.0 + alpha for item in real]
    syn_w = [alpha * real_counts[_label(spec, item)] / syn_counts[_label(spec, item)] for item in kept]
    return kept, real_w, syn_w


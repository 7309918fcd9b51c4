"""Empirical privacy: a loss-threshold membership-inference attack on a user's adapter.

The device reports it per method (``mia.enabled``); the canary exposure audit reports it per DP
setting (cdcda_fl/sweeps/canary_audit.py, built on :mod:`cdcda_fl.privacy.canary`).

The attacker sees the adapter's loss on candidate records and guesses "member" when the loss is
low (Yeom et al., 2018). The AUC over all thresholds is reported: 0.5 means the adapter does not
reveal which records it was trained on; 1.0 means it reveals them perfectly. Members are the
user's training records, non-members held-out records of the same user, so the attack measures
memorisation of specific records rather than of the user's general style.
"""

from __future__ import annotations

from collections.abc import Sequence


def membership_auc(member_losses: Sequence[float], nonmember_losses: Sequence[float]) -> float | None:
    """AUC of the attack "lower loss = member"; None when either side is empty."""
    from sklearn.metrics import roc_auc_score

    if not member_losses or not nonmember_losses:
        return None
    labels = [1] * len(member_losses) + [0] * len(nonmember_losses)
    scores = [-float(x) for x in member_losses] + [-float(x) for x in nonmember_losses]
    return float(roc_auc_score(labels, scores))

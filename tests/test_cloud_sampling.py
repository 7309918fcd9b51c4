"""The cloud writer's sampler draws from transformers' temperature + top-p distribution, faster."""

from __future__ import annotations

import pytest
import torch

from cdcda_fl.cloud.sampling import NucleusGumbel


def _hf_top_p_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution transformers' TemperatureLogitsWarper + TopPLogitsWarper sample from."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


def _empirical(sampler: NucleusGumbel, logits: torch.Tensor, n: int) -> torch.Tensor:
    rows = logits.expand(n, -1).contiguous()
    out = sampler(None, rows)
    assert torch.isfinite(out).sum(-1).eq(1).all()  # exactly one token left for greedy decoding
    return torch.bincount(out.argmax(-1), minlength=logits.shape[-1]).float() / n


@pytest.mark.parametrize("candidates", [8, 1024])  # the nucleus outside / inside the candidates
def test_draws_follow_transformers_top_p_distribution(candidates: int) -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 400) * 1.5
    expected = _hf_top_p_probs(logits, 0.8, 0.95)[0]
    got = _empirical(NucleusGumbel(0.8, 0.95, candidates=candidates), logits, 60_000)
    assert got[expected == 0].sum() == 0  # never a token outside the nucleus
    assert (got - expected).abs().max() < 0.008
    assert 0.5 * (got - expected).abs().sum() < 0.02  # total variation distance (top_p 0.9 instead: 0.054)


def test_a_peaked_row_keeps_its_top_token_only_and_rows_are_independent() -> None:
    logits = torch.full((2, 50), -10.0)
    logits[0, 7] = 20.0  # p(7) ~ 1: the nucleus is that token alone
    logits[1, 3] = logits[1, 4] = 5.0  # two equal tokens hold nearly all mass
    out = NucleusGumbel(1.0, 0.95, candidates=4)(None, logits.expand(400, 2, 50).reshape(800, 50)[::1])
    picks = out.argmax(-1).view(400, 2)
    assert picks[:, 0].eq(7).all()
    assert set(picks[:, 1].tolist()) == {3, 4}


def test_the_same_seed_draws_the_same_tokens() -> None:
    logits = torch.randn(16, 300)
    torch.manual_seed(5)
    a = NucleusGumbel(0.7)(None, logits).argmax(-1)
    torch.manual_seed(5)
    b = NucleusGumbel(0.7)(None, logits).argmax(-1)
    assert torch.equal(a, b)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NucleusGumbel(0.0)
    with pytest.raises(ValueError, match="top_p"):
        NucleusGumbel(0.7, top_p=1.5)

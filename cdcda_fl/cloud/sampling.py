"""Temperature + nucleus (top-p) sampling for the in-process cloud writer, without sorting the vocabulary.

transformers' ``TopPLogitsWarper`` sorts every row's whole vocabulary at each decoding step and
``generate`` then draws with ``torch.multinomial`` over it. For SmolLM2's 49 152 tokens and a
batch of 32 prompts that is ~140 ms per step on one Zen 4 core (sort 107 ms, multinomial 35 ms,
2026-12-07) -- more than the model's own forward pass: most of the writer's time went into
sampling, not into the model.

:class:`NucleusGumbel` draws from exactly the same distribution (the smallest set of most likely
tokens whose probability reaches ``top_p``, renormalised, after ``temperature``), faster:

1. the nucleus is found among the ``candidates`` most likely tokens (``torch.topk``, a selection,
   not a sort), with the row's full normaliser (``logsumexp``) so the probabilities are exact; a row
   whose nucleus does not fit in them (a near-uniform model, e.g. the untrained ``tiny-random``)
   falls back to sorting that row's whole vocabulary;
2. one token of the nucleus is drawn by the Gumbel-max trick (argmax of log-probability plus
   Gumbel noise is an exact sample), and every other logit is set to ``-inf``, so ``generate``
   runs *greedy* and its argmax returns the drawn token.

The draws use torch's global generator, which the backend seeds per batch: a run is reproducible.
They are not the draws ``multinomial`` would make from the same seed, so records written before
and after this change differ token by token, not in distribution (tests/test_cloud_sampling.py).
"""

from __future__ import annotations

import torch

#: how many of the most likely tokens the nucleus is first looked for among
CANDIDATES = 256


class NucleusGumbel:
    """A ``generate`` logits processor: the next token drawn by temperature + top-p sampling (see module)."""

    def __init__(self, temperature: float, top_p: float = 0.95, candidates: int = CANDIDATES) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p, self.candidates = float(temperature), float(top_p), int(candidates)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        k = min(self.candidates, logits.shape[-1])
        top_logits, top_ids = logits.topk(k, dim=-1)  # sorted, most likely first
        log_probs = top_logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        probs = log_probs.exp()
        before = probs.cumsum(-1) - probs  # probability mass of the more likely tokens
        # A token is in the nucleus if the tokens before it hold less than top_p (the first always is).
        keep = before < self.top_p
        keep[..., 0] = True
        fits = (probs.sum(-1) >= self.top_p) | (k == logits.shape[-1])
        chosen = self._draw(log_probs, keep).unsqueeze(-1)
        token = top_ids.gather(-1, chosen)
        if not bool(fits.all()):
            rows = (~fits).nonzero(as_tuple=True)[0]
            token[rows] = self._draw_full(logits[rows]).unsqueeze(-1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, token, 0.0)

    @staticmethod
    def _draw(log_probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Index of an exact sample from softmax(log_probs) restricted to ``keep`` (Gumbel-max)."""
        uniform = torch.rand_like(log_probs).clamp_(min=torch.finfo(log_probs.dtype).tiny)
        gumbel = -torch.log(-torch.log(uniform))
        return torch.where(keep, log_probs + gumbel, torch.full_like(log_probs, float("-inf"))).argmax(-1)

    def _draw_full(self, logits: torch.Tensor) -> torch.Tensor:
        """The slow path for rows whose nucleus is wider than the candidates: sort the whole row."""
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        log_probs = sorted_logits - torch.logsumexp(sorted_logits, dim=-1, keepdim=True)
        probs = log_probs.exp()
        keep = (probs.cumsum(-1) - probs) < self.top_p
        keep[..., 0] = True
        return order.gather(-1, self._draw(log_probs, keep).unsqueeze(-1)).squeeze(-1)

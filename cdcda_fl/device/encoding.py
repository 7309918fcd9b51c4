"""Text to token batches and back: prompt formatting, pair encoding, padding, batch order.

Training, per-example losses and generation must all see a user's text in exactly the same
form (same chat turn, same special tokens, same left padding), or a trained adapter answers
a prompt it never saw. This module is that one definition; it knows nothing of adapters or
optimizers, so it can be tested and reused (e.g. by the llama.cpp runtime's prompt check) on
its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import torch

IGNORE = -100
# Batches are sorted by length inside windows of this many batches: less padding, still shuffled.
_BUCKET_BATCHES = 8

Encoded = tuple[list[int], list[int]]  # (prompt ids, completion ids)


# --------------------------------------------------------------------------- prompt formatting


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, user_text: str) -> str:
    """The text the model sees before answering: a chat user turn when the model has a template."""
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return user_text + "\n"


def _completion_text(tokenizer: Any, user_text: str, output: str, prompt: str) -> str:
    """What follows ``prompt`` in a finished exchange: the assistant turn incl. its end token.

    Ending the target with the turn/eos token teaches the adapter to stop, which is what makes
    short greedy answers come back short.
    """
    if _has_chat_template(tokenizer):
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}, {"role": "assistant", "content": output}],
            tokenize=False,
        )
        if full.startswith(prompt):
            return full[len(prompt) :].rstrip()
    return output + (tokenizer.eos_token or "")


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    # A chat template already writes the special tokens (bos etc.) into the text.
    return tokenizer(text, add_special_tokens=not _has_chat_template(tokenizer))["input_ids"]


def encode_pairs(tokenizer: Any, examples: Sequence[tuple[str, str]], max_length: int) -> list[Encoded]:
    """Tokenize (input, output) pairs into (prompt ids, completion ids), truncated to max_length.

    Over-long pairs lose the *start* of the prompt (the question sits at its end) and, only if
    needed, the end of the completion; at least half the budget stays for the completion.
    """
    out = []
    for user_text, output in examples:
        # the template and special tokens are part of the key: a tokenizer changed in place after
        # caching (a pad or eos token set, a template swapped) must not reuse stale encodings
        state = (getattr(tokenizer, "chat_template", None), getattr(tokenizer, "eos_token", None),
                 getattr(tokenizer, "bos_token", None))
        p, c = _encode_pair(tokenizer, state, user_text, output, max_length)
        out.append((list(p), list(c)))
    return out


@lru_cache(maxsize=4096)
def _encode_pair(tokenizer: Any, _state: tuple[Any, ...], user_text: str, output: str,
                 max_length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One pair, cached per process: the device's check encodes each of a user's items for every
    fold adapter's training and scoring and again for the final adapters (chat templating and
    tokenizing were a tenth of a tiny user's device time, benchmarks/scale.py, 2026-12-07).
    Keyed on the tokenizer object and ``_state`` (its chat template and special tokens, which
    :func:`encode_pairs` passes so a tokenizer changed in place never reuses stale encodings)."""
    prompt = format_prompt(tokenizer, user_text)
    p = _encode_text(tokenizer, prompt)
    c = tokenizer(_completion_text(tokenizer, user_text, output, prompt), add_special_tokens=False)["input_ids"]
    if not c:
        raise ValueError(f"empty output for input {user_text[:60]!r}")
    if len(p) + len(c) > max_length:
        c = c[: max(max_length - len(p), max_length // 2)]
        p = p[len(p) - (max_length - len(c)) :]
    return tuple(p), tuple(c)


def _cut(text: str, stop: Sequence[str]) -> str:
    """An answer up to its first stop string (generate's own stop check may overshoot a token)."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text


# --------------------------------------------------------------------------- batches


def collate(encoded: Sequence[Encoded], weights: Sequence[float], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch; labels are the completion tokens only (-100 on prompt and padding).

    Left padding puts every completion at the end of its row, so the logits needed for the
    loss are just the last ``keep`` positions: the frozen lm_head (21 % of SmolLM2's FLOPs)
    runs on those only instead of on every prompt token.
    """
    length = max(len(p) + len(c) for p, c in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for i, (p, c) in enumerate(encoded):
        seq = p + c
        ids[i, length - len(seq) :] = torch.tensor(seq)
        labels[i, length - len(c) :] = torch.tensor(c)
        mask[i, length - len(seq) :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "weights": torch.tensor(list(weights), dtype=torch.float32),
    }


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Batches are built on the CPU (tokenizers) and moved whole to the base model's device."""
    return {k: v.to(device) for k, v in batch.items()}


def _bucketed_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless stream of index batches: shuffled each epoch, length-sorted inside windows."""
    n = len(lengths)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        window = batch_size * _BUCKET_BATCHES
        batches: list[list[int]] = []
        for s in range(0, n, window):
            chunk = sorted(perm[s : s + window], key=lambda i: lengths[i])
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[b]


def _length_batches(lengths: Sequence[int], batch_size: int, groups: Sequence[int] | None = None) -> list[list[int]]:
    """Index batches sorted by length (little padding), never mixing two ``groups`` values."""
    key = (lambda i: (groups[i], lengths[i])) if groups is not None else (lambda i: lengths[i])
    order = sorted(range(len(lengths)), key=key)
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (groups is None or groups[batches[-1][0]] == groups[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class _PairDataset(torch.utils.data.Dataset):
    """Encoded pairs + weights, for Opacus's Poisson data loader."""

    def __init__(self, encoded: list[Encoded], weights: list[float]):
        self.encoded, self.weights = encoded, weights

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[Encoded, float]:
        return self.encoded[i], self.weights[i]


def _collate_items(items: list[tuple[Encoded, float]], pad_id: int) -> dict | None:
    """Collate for the DP loader (Opacus's wrapper turns empty Poisson batches into 0-row tensors)."""
    if not items:
        return None
    return collate([e for e, _ in items], [w for _, w in items], pad_id)

"""What every cloud backend speaks: prompts, generations, the backend protocol, usage counts.

Shared by the in-process backend (backends.py) and the HTTP one (openai_backend.py), so neither
imports the other.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable


PromptKind = Literal["chat", "completion"]
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class BackendError(RuntimeError):
    """A backend could not produce generations (after retries, for the HTTP backend)."""


@dataclass(frozen=True)
class Prompt:
    """One generation request: a chat conversation or a raw text to continue.

    Use :meth:`chat` / :meth:`continuation` rather than the constructor. ``stop`` strings end the
    generation early where the backend supports it (the text returned never contains them).
    """

    kind: PromptKind
    text: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    stop: tuple[str, ...] = ()

    @classmethod
    def chat(cls, user: str, system: str | None = None, stop: Sequence[str] = ()) -> Prompt:
        msgs = ((("system", system),) if system else ()) + (("user", user),)
        return cls("chat", user, msgs, tuple(stop))

    @classmethod
    def from_messages(cls, messages: Sequence[Mapping[str, Any]], stop: Sequence[str] = ()) -> Prompt:
        msgs = tuple((str(m.get("role", "user")), _content_text(m.get("content", ""))) for m in messages)
        last_user = next((c for r, c in reversed(msgs) if r == "user"), "")
        return cls("chat", last_user, msgs, tuple(stop))

    @classmethod
    def continuation(cls, text: str, stop: Sequence[str] = ()) -> Prompt:
        return cls("completion", text, (), tuple(stop))

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def flat_text(self) -> str:
        """Everything the model sees, as plain text (for prompts sent to non-chat models, and audits)."""
        if not self.is_chat:
            return self.text
        return "\n\n".join(c for _, c in self.messages) + "\n\n"


def _content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)


@dataclass
class Generation:
    """One generated continuation: its text, why it ended, and its token counts."""

    text: str
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length" (hit max_new_tokens)
    completion_tokens: int = 0
    prompt_tokens: int = 0


@runtime_checkable
class LLMBackend(Protocol):
    """What the augmenter needs from a model: batched generation for many prompts."""

    name: str

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]: ...


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass
class UsageStats:
    """Running totals a backend keeps, for benchmarks and logs (thread-safe updates)."""

    calls: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, gens: Sequence[Generation], seconds: float) -> None:
        with self._lock:
            self.calls += 1
            self.prompts += len(gens)
            self.prompt_tokens += sum(g.prompt_tokens for g in gens)
            self.completion_tokens += sum(g.completion_tokens for g in gens)
            self.seconds += seconds


# ====================================================================== in-process (transformers)
class _TextsFromDetails:
    """``generate`` (texts only) for a backend that implements ``generate_detailed``."""

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        gens = self.generate_detailed(prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return [g.text for g in gens]

"""Progress bars and log lines for long work, on stderr so tables on stdout stay clean."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress

console = Console(stderr=True)


def log(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)


class Progress:
    """A one-task progress bar: ``with Progress("training", total=n) as bar: bar.advance()``."""

    def __init__(self, label: str, total: int):
        self.label = label
        self.total = total
        self._bar = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                                  disable=not sys.stderr.isatty())
        self._task = None
        self._started = 0.0

    def __enter__(self) -> Progress:
        self._started = time.perf_counter()
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)
        if not sys.stderr.isatty():  # no live bar: one summary line instead
            done = int(self._bar.tasks[0].completed) if self._bar.tasks else 0
            log(f"{self.label}: {done}/{self.total} in {time.perf_counter() - self._started:.1f}s")

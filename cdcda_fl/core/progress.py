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


def rate_eta(done: float, total: float, elapsed: float, unit: str) -> str:
    """'3/10 users, 1.2 users/min, ETA 5m50s' (no rate before the first item is done)."""
    text = f"{done:g}/{total:g} {unit}"
    if done <= 0 or elapsed <= 0:
        return text
    per_s = done / elapsed
    rate = f"{per_s * 60:.1f} {unit}/min" if per_s < 1 else f"{per_s:.1f} {unit}/s"
    left = max(0.0, (total - done) / per_s)
    eta = f"{int(left // 3600)}h{int(left % 3600 // 60):02d}m" if left >= 3600 else f"{int(left // 60)}m{int(left % 60):02d}s"
    return f"{text}, {rate}, ETA {eta}" if done < total else f"{text}, {rate}"


class Progress:
    """A one-task progress bar: ``with Progress("training", total=n, unit="users") as bar: bar.advance()``.

    On a terminal: a live bar with rate and time remaining. Elsewhere (logs, CI, pipes): a log
    line with count, rate and ETA at most every ``every_s`` seconds and at the end, so a long
    phase never looks stuck at 0.
    """

    def __init__(self, label: str, total: int, unit: str = "items", every_s: float = 15.0):
        self.label = label
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self._tty = sys.stderr.isatty()
        self._bar = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                                  disable=not self._tty)
        self._task = None
        self._started = 0.0
        self._done = 0
        self._last_log = 0.0

    def __enter__(self) -> Progress:
        self._started = self._last_log = time.perf_counter()
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)
        self._done += n
        now = time.perf_counter()
        if not self._tty and self._done < self.total and now - self._last_log >= self.every_s:
            self._last_log = now
            log(f"{self.label}: {rate_eta(self._done, self.total, now - self._started, self.unit)}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)
        if not self._tty:  # no live bar: one summary line instead
            elapsed = time.perf_counter() - self._started
            log(f"{self.label}: {rate_eta(self._done, self.total, elapsed, self.unit)} in {elapsed:.1f}s")

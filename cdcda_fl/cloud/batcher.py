"""Groups concurrent generation requests of ``cdcda serve`` into batched backend calls.

Why: on CPU batching is the throughput lever (docs/design.md, "Facts"), but HTTP clients send
one prompt per request. Request handlers do not call the model: they put their prompts on a
queue; one worker thread takes the first waiting prompt, waits up to ``max_wait_ms`` for more (up
to ``batch_size``), and runs them as ONE batched ``generate`` call (prompts with different
``max_tokens``/``temperature`` go in separate calls). Sampling in a batch uses the first
request's seed. If a batch fails, its requests are retried one by one, so only the request that
breaks the model gets an error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from cdcda_fl.cloud.backends import BackendError, Generation, LLMBackend, Prompt

log = logging.getLogger("cdcda_fl.cloud.serve")


@dataclass
class _Item:
    prompt: Prompt
    max_tokens: int
    temperature: float
    seed: int
    future: Future


class Batcher:
    """Groups concurrent generation requests into batched backend calls (one worker thread)."""

    def __init__(self, backend: LLMBackend, batch_size: int = 8, max_wait_ms: float = 10.0) -> None:
        self.backend = backend
        self.batch_size = max(1, int(batch_size))
        self.max_wait = max(0.0, max_wait_ms / 1000.0)
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self.batches: list[int] = []  # sizes of the backend calls made, for tests and logs
        self._thread = threading.Thread(target=self._loop, name="cdcda-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt: Prompt, max_tokens: int, temperature: float, seed: int) -> Future:
        fut: Future = Future()
        self._q.put(_Item(prompt, max_tokens, temperature, seed, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._q.get(timeout=max(0.0, remaining)) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            groups: dict[tuple[int, float], list[_Item]] = {}
            # A request whose client left (timeout, disconnect) cancelled its future: skip its work.
            for it in (i for i in batch if i.future.set_running_or_notify_cancel()):
                groups.setdefault((it.max_tokens, it.temperature), []).append(it)
            for (max_tokens, temperature), items in groups.items():
                self._run(items, max_tokens, temperature)
            if stop:
                return

    def _run(self, items: list[_Item], max_tokens: int, temperature: float) -> None:
        """One backend call; if a batch fails, retry its requests one by one (error isolation)."""
        self.batches.append(len(items))
        try:
            gens = self._generate(items, max_tokens, temperature)
        except Exception as exc:  # noqa: BLE001 - the waiting request(s) get the error, the worker lives on
            if len(items) == 1:
                items[0].future.set_exception(exc)
                return
            log.warning("a batch of %d failed (%s); retrying its requests one by one", len(items), type(exc).__name__)
            for it in items:
                self._run([it], max_tokens, temperature)
            return
        for it, g in zip(items, gens):
            it.future.set_result(g)

    def _generate(self, items: list[_Item], max_tokens: int, temperature: float) -> list[Generation]:
        prompts = [it.prompt for it in items]
        kw = {"max_new_tokens": max_tokens, "temperature": temperature, "seed": items[0].seed}
        detailed = getattr(self.backend, "generate_detailed", None)
        gens = detailed(prompts, **kw) if callable(detailed) else [Generation(t) for t in self.backend.generate(prompts, **kw)]
        if len(gens) != len(items):  # a short answer would leave requests waiting until their timeout
            raise BackendError(f"backend returned {len(gens)} generations for {len(items)} prompts")
        return list(gens)

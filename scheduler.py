"""One front door for every generation: a bounded queue in front of the engine, and batching where it can.

The page's tabs, the API's clients and the benchmarks all call `Scheduler.generate`. An engine
that decodes several sequences at once (`FastEngine` with KV cache slots) is driven by one
worker thread that admits requests into free slots and runs one batched decode step for all of
them (continuous batching: a request joins or leaves between any two steps). Any other engine
(the plain transformers path) serves one request at a time in its caller's thread.
A full queue is refused at once with `QueueFull`, never left to hang.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from generation import Engine, SamplingSettings

log = logging.getLogger(__name__)

DEFAULT_QUEUE_LIMIT = 64
SECONDS_PER_WAITING_REQUEST = 2.0  # a rough Retry-After: how long each request ahead of you may take


class QueueFull(RuntimeError):
    """More requests are waiting than the queue admits; try again after `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: float) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model; try again in {retry_after:.0f} s")
        self.waiting = waiting
        self.retry_after = retry_after


@dataclass
class SchedulerStats:
    """A snapshot for /health, the page and the benchmarks."""

    slots: int
    active: int
    waiting: int
    queue_limit: int
    served: int


@dataclass
class Request:
    """One generation in flight; the worker fills `tokens`, the caller drains it."""

    prompt_ids: list[int]
    settings: SamplingSettings
    stop: threading.Event
    tokens: queue.Queue = field(default_factory=queue.Queue)  # ints, then None at the end (or an exception)
    produced: int = 0
    slot: int = -1
    finished: bool = False


class Scheduler:
    """Implements the `generation.Engine` interface over any engine; see the module docstring."""

    def __init__(self, engine: Engine, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.engine = engine
        self.queue_limit = queue_limit
        self.lock = threading.Lock()
        self.waiting = 0
        self.active = 0
        self.served = 0

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def slots(self) -> int:
        return 1

    @property
    def busy(self) -> bool:
        """Whether a new request would have to wait for a slot."""
        with self.lock:
            return self.active + self.waiting >= self.slots

    def stats(self) -> SchedulerStats:
        with self.lock:
            return SchedulerStats(self.slots, self.active, self.waiting, self.queue_limit, self.served)

    def admit(self) -> None:
        """Count a new request in, or refuse it when the queue is full."""
        with self.lock:
            queued = max(self.active + self.waiting - self.slots + 1, 0)
            if queued > self.queue_limit:
                raise QueueFull(self.waiting, SECONDS_PER_WAITING_REQUEST * max(queued, 1) / self.slots)
            self.waiting += 1

    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        """Queue a generation now (raising `QueueFull` at once if it cannot be); iterate for its tokens.

        Closing the iterator early (a client that went away) frees the request's place at once.
        """
        self.admit()
        return self.serve_one(prompt_ids, settings, stop)

    def serve_one(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        """One request at a time, in the caller's thread: the engine's own lock keeps the order."""
        started = False
        try:
            tokens = self.engine.generate(prompt_ids, settings, stop)
            try:
                for token in tokens:
                    if not started:
                        started = True
                        with self.lock:
                            self.waiting -= 1
                            self.active += 1
                    yield token
            finally:
                tokens.close()
        finally:
            with self.lock:
                if started:
                    self.active -= 1
                else:
                    self.waiting -= 1
                self.served += 1

"""Watching requests that are meant to be decoded together."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from gptq_chat.engine.scheduler import Scheduler


def most_active(scheduler: Scheduler, threads: Sequence[threading.Thread]) -> int:
    """The most requests `scheduler` ran at once until every thread ended: a test that means to batch its requests
    asserts on it, since requests that merely ran one after another would give the same replies."""
    together = 0
    while any(thread.is_alive() for thread in threads):
        together = max(together, scheduler.stats().active)
        time.sleep(0.005)
    return together

"""The model-wide bar of a download: each byte of the model counted once, however often a file starts over.

Both hub clients report bytes per file, and both start a file over after it arrived with the wrong size or
hash (ModelScope's client by itself, Hugging Face's through `hub_download.fetch_hf`). Adding up their reports
counted every retry again (a 113 MB model showed 331 MB after two retries); counting per file instead lets a
restart take back what its file had shown, so the bar counts the model's bytes and never more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from gptq_chat.models.store import ByteProgress

log = logging.getLogger(__name__)


class DownloadProgress:
    """One bar for a model's files, fed per file from any thread."""

    def __init__(self, total: int, present: Mapping[str, int], desc: str, *, enabled: bool = True) -> None:
        self.counted = dict(present)  # bytes of each file on the bar
        self.lock = threading.Lock()
        self.bar = ByteProgress(total, initial=sum(present.values()), desc=desc, enabled=enabled)

    def hold(self, path: str, size: int) -> None:
        """From now on the bar counts `size` bytes of `path`, whatever it counted before.

        Each attempt at a file starts with this, so a file that starts over takes back what it had shown.
        """
        with self.lock:
            self.bar.update(size - self.counted.get(path, 0))
            self.counted[path] = size

    def add(self, path: str, size: int) -> None:
        """`size` more bytes of `path` arrived (fewer, if negative: a client dropping what it had)."""
        with self.lock:
            self.bar.update(size)
            self.counted[path] = self.counted.get(path, 0) + size

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def announce_retry(path: str, attempt: int, attempts: int, reason: str) -> None:
    """A file starts over: one line says why, logged (download.py writes log lines above the bar, not into it)."""
    log.warning("retrying %s (%d/%d): %s", path, attempt, attempts, reason)

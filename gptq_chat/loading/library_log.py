"""What libraries print while a model loads goes to a log file, not to the user's terminal or the server's log.

gptqmodel prints a banner, its environment settings and kernel tables when it is first imported and used;
transformers prints warnings and a weight-loading bar. The user sees our own progress (the page's bar, the server's
log lines) instead, and a failure names the file that holds the libraries' side of the story.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from gptq_chat.models.home import log_file

MODEL_LOAD_LOG = "model-load"


class ModelLoadError(RuntimeError):
    """Loading failed inside a library; the message names the log of what the libraries printed."""


@contextlib.contextmanager
def library_output(name: str, subject: str) -> Iterator[Path]:
    """Send Python-level stdout and stderr (print, warnings, progress bars) to `logs/<name>.log` for the block;
    our logging handlers keep the streams they were given, so our own lines still reach the user.

    A logging handler made inside the block took the log file as its stream, and the file closes with the block:
    a library's handler goes on writing to the log (through a handle kept open), and one on the root logger (a
    library's `logging.basicConfig()`, which our own lines pass through too) to the stderr it would have had."""
    path = log_file(name)
    with path.open("a", encoding="utf-8") as log:
        log.write(f"\n==== {datetime.now(timezone.utc).isoformat(timespec='seconds')} {subject}\n")
        log.flush()
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = saved
            redirect_handlers(log, path, saved[1])


def redirect_handlers(closing: TextIO, path: Path, stderr: TextIO) -> None:
    """Give every logging handler whose stream is `closing` a stream that stays open (see `library_output`)."""
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    kept: TextIO | None = None
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is closing:
                if logger is logging.getLogger():
                    handler.setStream(stderr)
                else:
                    kept = kept or path.open("a", encoding="utf-8")  # open as long as the handler lives
                    handler.setStream(kept)

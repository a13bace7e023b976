"""Streaming one reply into the history: waiting for the model, stopping, keeping the partial text.

In Streamlit a click (the Stop button, or any other widget) reruns the script, which raises a
control exception out of the element that was being updated. `stream_into` keeps what was written,
marks it stopped, and releases the model at once, whatever ended the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gptq_chat.chat.attachments import sources_record
from gptq_chat.chat.reply import Reply, ReplyStats
from gptq_chat.engine.protocols import TokenSource

Show = Callable[[str, bool], None]  # (text so far, final)

STREAM_INTERVAL_S = 0.05  # redraw at most 20 times a second: each redraw resends the whole reply
WAIT_POLL_S = 0.25


def stats_record(stats: ReplyStats, context_length: int, model: str) -> dict[str, Any]:
    """The statistics kept with a reply (JSON-ready), shown under it and in the speed chart."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "new_tokens": stats.new_tokens,
        "dropped_messages": stats.dropped_messages,
        "first_token_s": stats.first_token_seconds,
        "tokens_per_s": round(stats.tokens_per_second, 2),
        "tokens_per_step": round(stats.tokens_per_step, 2),
        "total_s": round(stats.total_seconds, 3),
        "finish": stats.finish_reason,
        "context_length": context_length,
        "model": model,
        **({"sources": sources_record(stats.sources)} if stats.sources else {}),
    }


def wait_turn(engine: TokenSource, notify: Callable[[float], None], poll: float = WAIT_POLL_S) -> float:
    """While another tab's reply holds the model, call `notify(seconds waited)`; returns the wait.

    Each notify redraws the page, which is also where a Stop click gets through while waiting.
    """
    started = time.monotonic()
    while engine.busy:
        notify(time.monotonic() - started)
        time.sleep(poll)
    return time.monotonic() - started


def stream_into(
    entry: dict[str, Any],
    reply: Reply,
    show: Show,
    *,
    context_length: int,
    model: str,
    wait: Callable[[], None] = lambda: None,
    finish: Callable[[], None] = lambda: None,
    interval: float = STREAM_INTERVAL_S,
) -> None:
    """Wait for the model (`wait`), then append `reply`'s pieces to `entry["content"]`, redrawing through
    `show`, until the reply ends or is interrupted.

    Interrupted (a rerun, a closed tab, an error): the text so far stays, `stopped` or `error` says
    why, the model is released and `stats` set before this returns or raises, and `finish()` runs
    (the page saves the chat there; after a closed tab it must not touch `st.session_state`, whose
    every access raises again).
    """
    entry["streaming"] = True
    drawn = 0.0
    finished = False
    try:
        wait()
        for piece in reply:
            entry["content"] += piece
            if time.monotonic() - drawn >= interval:
                show(entry["content"], False)
                drawn = time.monotonic()
        finished = True
    except Exception as error:  # a generation failure: shown with the reply, the chat goes on
        entry["error"] = f"{type(error).__name__}: {error}"
    finally:
        reply.stop.set()
        reply.pieces.close()  # type: ignore[attr-defined]  # frees the engine's lock now, not at garbage collection
        entry.pop("streaming", None)
        entry["stats"] = stats_record(reply.stats, context_length, model)
        if not finished and "error" in entry:
            entry["stats"]["finish"] = "error"
        elif not finished:
            entry["stats"]["finish"] = "cancelled"
            entry["stopped"] = True
        finish()
    show(entry["content"], True)

"""The sidebar's chat list in words: each chat's title cut to one line, and when it last changed.

Two chats that begin with the same words looked the same; the time tells them apart, and where even the
minute is the same, the chat's number (the `?chat=` of the address).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gptq_chat.chat.conversations import Summary
from gptq_chat.ui.i18n import MONTH_NAMES, t

LIST_TITLE_CHARS = 26  # one line of the sidebar, with the time beside it


def list_title(title: str) -> str:
    return title if len(title) <= LIST_TITLE_CHARS else title[: LIST_TITLE_CHARS - 1] + "…"


def user_zone(name: str | None) -> tzinfo | None:
    """The browser's time zone from its IANA name; None (the server's own) when the page cannot know it."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def chat_time(updated: float, now: float, zone: tzinfo | None, lang: str) -> str:
    """As short as it can be said in `zone`: the time today, the day and time this year, else the date."""
    when, today = datetime.fromtimestamp(updated, zone), datetime.fromtimestamp(now, zone)
    clock = f"{when:%H:%M}"
    if when.date() == today.date():
        return clock
    if when.year == today.year:
        return t("date_this_year", lang).format(
            month=when.month, month_name=MONTH_NAMES[when.month - 1], day=when.day, time=clock
        )
    return f"{when:%Y-%m-%d}"


def chat_labels(summaries: Sequence[Summary], now: float, zone: tzinfo | None, lang: str) -> list[str]:
    """One label per chat: its title and time, and its number where two would read the same."""
    labels = [f"{list_title(s.title)} · {chat_time(s.updated, now, zone, lang)}" for s in summaries]
    repeated = Counter(labels)
    return [
        f"{label} · #{summary.id}" if repeated[label] > 1 else label
        for label, summary in zip(labels, summaries, strict=True)
    ]

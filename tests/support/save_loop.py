"""A process that saves a growing chat as fast as it can, as the page does after each reply, and prints the number
of each save once it has returned. Tests kill it (SIGKILL) at random moments and look at what the file kept.

`python -m tests.support.save_loop DB RUN`: prints "ready" once the store is open, then 1, 2, 3...
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from gptq_chat.chat.conversations import ChatRef, ConversationStore, save_chat


def loop_exchange(run: int, number: int) -> list[dict[str, Any]]:
    """The `number`th exchange of `run`: a reply of a few hundred bytes to a few KB, so saves span pages."""
    reply = f"Reply {run}.{number}. " * (20 + number * 37 % 300)
    return [{"role": "user", "content": f"Run {run} question {number}"}, {"role": "assistant", "content": reply}]


def loop_messages(run: int, saves: int) -> list[dict[str, Any]]:
    """What the chat of `run` holds after `saves` saves."""
    return [m for number in range(1, saves + 1) for m in loop_exchange(run, number)]


def main(path: str, run: str) -> None:
    store = ConversationStore(Path(path))
    chat, messages = ChatRef(), []
    print("ready", flush=True)
    for number in itertools.count(1):
        messages += loop_exchange(int(run), number)
        save_chat(store, chat, messages, {})
        print(number, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

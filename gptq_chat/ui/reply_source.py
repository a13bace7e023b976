"""Where the page's replies come from: the model in this process, or an OpenAI-compatible server.

The page asks a `ReplySource` for a reply and its settings' ranges, and never needs to know which
of the two it has.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gptq_chat.api.remote import RemoteModel, RemoteServer, stream_remote_reply
from gptq_chat.chat.prompt import Message
from gptq_chat.chat.reply import ChatSettings, Reply, stream_reply
from gptq_chat.engine.protocols import SamplingSettings, TokenSource
from gptq_chat.loading.loader import LoadedModel

UNKNOWN_CONTEXT = 8192  # a server that does not report its window (Ollama): what the meter measures against


@dataclass(frozen=True)
class ReplySource:
    name: str  # the model, saved with each reply's statistics
    defaults: SamplingSettings
    max_context: int
    default_context: int
    start: Callable[[Sequence[Message], ChatSettings], Reply]  # (history, settings) → a streaming reply
    queue: TokenSource | None  # what a reply may wait for here; a server queues requests itself
    shortens_history: bool  # the page fits the history to its context length (a server judges for itself)


def local_source(loaded: LoadedModel) -> ReplySource:
    return ReplySource(
        name=loaded.facts.name,
        defaults=loaded.defaults,
        max_context=loaded.facts.max_context,
        default_context=loaded.facts.default_context,
        start=functools.partial(stream_reply, loaded.scheduler, loaded.tokenizer),
        queue=loaded.scheduler,
        shortens_history=True,
    )


def remote_source(server: RemoteServer, model: RemoteModel) -> ReplySource:
    """Sampling defaults are Qwen's (the server's checkpoint defaults are not visible over the API)."""
    window = model.context_length or UNKNOWN_CONTEXT
    return ReplySource(
        name=model.id,
        defaults=SamplingSettings(),
        max_context=window,
        default_context=window,
        start=functools.partial(stream_remote_reply, server, model.id),
        queue=None,
        shortens_history=False,
    )

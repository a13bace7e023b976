"""The two interfaces of the engine room: what the page, the API and the benchmarks call (`TokenSource`), and what
the scheduler drives (`SlotEngine`).

Every generation path (the plain transformers path, the scheduler over the fast engine, a remote server) is a
`TokenSource`: `generate(prompt_ids, settings, stop)` yields token ids, so nothing above the engine touches tensors.
An engine that decodes several sequences at once, each in its own row of a KV cache (`FastEngine`, and
`TensorParallelEngine` over several GPUs), is a `SlotEngine`: the scheduler admits requests into its slots and runs
one batched step for all of them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens; temperature 0 means greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens must be at least 1": self.max_new_tokens >= 1,
            "temperature must be between 0 and 2": 0 <= self.temperature <= 2,
            "top_p must be in (0, 1]": 0 < self.top_p <= 1,
            "top_k must be 0 (off) or more": self.top_k >= 0,
            "repetition_penalty must be between 1 and 2": 1 <= self.repetition_penalty <= 2,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))


class TokenSource(Protocol):
    """What the page, the API and the benchmarks generate with."""

    name: str

    @property
    def busy(self) -> bool:
        """Whether a new generation would have to wait for another."""
        ...

    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        """Yield new token ids one by one until a stop token, the length limit, or `stop` is set."""
        ...


class SlotEngine(ABC):
    """`slots` sequences decoded together, each in its own row of a KV cache of `context_length` tokens.

    `prefill` puts a prompt into a slot and leaves its first new token in `next_tokens[slot]`; `decode` runs one
    step for the first `rows` slots; `park` retires a slot, whose cache keeps the K/V of `cached[slot]` for a
    prompt that starts the same way.
    """

    name: str
    slots: int
    context_length: int
    device: Any  # torch.device where token ids go in
    next_tokens: Any  # a device tensor [slots]: each slot's latest token
    cached: list[list[int]]  # per slot: the tokens whose K/V its cache row holds

    @abstractmethod
    def prefill(self, prompt_ids: list[int], settings: SamplingSettings, slot: int = 0) -> None: ...

    @abstractmethod
    def decode(self, rows: int, length: int, greedy: bool) -> None: ...

    @abstractmethod
    def park(self, slot: int, fed: list[int]) -> None: ...

    @abstractmethod
    def reset(self) -> None:
        """Every slot parked and empty."""

    @abstractmethod
    def close(self) -> None:
        """Free what the engine holds beyond its tensors (graphs, worker processes): a model switch, or exit."""

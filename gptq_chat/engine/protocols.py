"""The two interfaces of the engine room: what the page, the API and the benchmarks call (`TokenSource`), and what
the scheduler drives (`SlotEngine`).

Every generation path (the plain transformers path, the scheduler over the fast engine, a remote server) is a
`TokenSource`: `generate(prompt_ids, settings, stop)` yields token ids, so nothing above the engine touches tensors.
An engine that decodes several sequences at once, each in its own row of a KV cache (`FastEngine`, and
`TensorParallelEngine` over several GPUs), is a `SlotEngine`: the scheduler admits requests into its slots and runs
one batched step for all of them.

A request may also carry a grammar (`SamplingSettings.constraint`, a `Grammar`), a seed, and a wish for
log-probabilities. The engine room only knows the two grammar protocols below: compiling a JSON schema or a Lark
grammar needs the tokenizer and a grammar library, which live above it (`gptq_chat/chat/constraints.py`). Tokens
of a request that asked for log-probabilities come as `ScoredToken`s, which are ints everywhere else.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

MAX_TOP_LOGPROBS = 20  # as OpenAI's top_logprobs


class GrammarMatcher(Protocol):
    """One request's place in its grammar, advanced on the host after each token."""

    def fill_allowed(self, bits: Any) -> None:
        """Write the tokens that may come next into `bits` (a CPU int32 tensor of ceil(width / 32) words; bit
        `t % 32` of word `t // 32` for token t), clearing every bit past the tokenizer's vocabulary."""
        ...

    def advance(self, token: int) -> None:
        """Take the token that was chosen."""
        ...

    @property
    def finished(self) -> bool:
        """Whether the grammar is complete: only an end token may follow."""
        ...


class Grammar(Protocol):
    """A compiled constraint, shared by every request that carries it; each starts its own matcher."""

    def start(self) -> GrammarMatcher: ...


class ScoredToken(int):
    """A generated token id with its log-probability and the likeliest tokens at its place (id, log-probability),
    best first: what a request that asked for log-probabilities receives. An int to everything else."""

    logprob: float
    top_logprobs: tuple[tuple[int, float], ...]

    def __new__(cls, token: int, logprob: float, top_logprobs: tuple[tuple[int, float], ...]) -> ScoredToken:
        scored = super().__new__(cls, token)
        scored.logprob = logprob
        scored.top_logprobs = top_logprobs
        return scored


class GuessedToken(int):
    """A token that a step wrote after another: a check that confirms guesses (speculation.py) writes them and the
    model's own token after them at once, so all but the first cost no step of their own (as many as the confirmed
    guesses). An int to everything else; counted for a reply's tokens per step."""


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens; temperature 0 means greedy.

    `seed` makes sampled tokens reproducible on the same engine (None: random); `logprobs` asks for each token's
    log-probability and that many alternatives (0 to `MAX_TOP_LOGPROBS`; None: none); `constraint` is the grammar
    the reply must follow (None: free text).
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    constraint: Grammar | None = None

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens must be at least 1": self.max_new_tokens >= 1,
            "temperature must be between 0 and 2": 0 <= self.temperature <= 2,
            "top_p must be in (0, 1]": 0 < self.top_p <= 1,
            "top_k must be 0 (off) or more": self.top_k >= 0,
            "repetition_penalty must be between 1 and 2": 1 <= self.repetition_penalty <= 2,
            f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}": self.logprobs is None
            or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
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
    prompt that starts the same way. A grammar's mask reaches a slot with `prefill` (for the first token) and
    `constrain` (before each step); `score` leaves log-probabilities of the latest tokens in `scores`.
    """

    name: str
    slots: int
    context_length: int
    device: Any  # torch.device where token ids go in
    next_tokens: Any  # a device tensor [slots]: each slot's latest token
    scores: Any  # a `sampling.TokenScores` on the device: what `score` computed
    vocab_width: int  # the logits' width: a grammar mask has ceil(vocab_width / 32) words
    cached: list[list[int]]  # per slot: the tokens whose K/V its cache row holds
    can_verify = False  # whether `verify` checks guesses of slot 0's next tokens (engine/speculation.py)
    verify_cost: dict[int, float] = {}  # noqa: RUF012  # guesses -> a check's time in decode steps, where measured
    step_ms = 0.0  # one row's decode step on this card, where measured (CUDA graphs, one card)

    @abstractmethod
    def prefill(
        self, prompt_ids: list[int], settings: SamplingSettings, slot: int = 0, allowed: Any | None = None
    ) -> None:
        """`allowed`: the grammar's mask for the first token (a host int32 tensor), or None for any token."""

    @abstractmethod
    def constrain(self, slot: int, allowed: Any | None) -> None:
        """The mask the slot's next token must follow (a host int32 tensor, pinned on a GPU), or None for any."""

    @abstractmethod
    def score(self, first: int, rows: int) -> None:
        """Log-probabilities of the tokens slots first..first+rows-1 just chose, into `scores` (no host sync)."""

    @abstractmethod
    def decode(self, rows: int, length: int, greedy: bool) -> None: ...

    @abstractmethod
    def park(self, slot: int, fed: list[int]) -> None: ...

    def can_check(self, guesses: int, position: int) -> bool:
        """Whether slot 0 may check that many guesses with its newest token at `position`."""
        return False

    def verify(self, guesses: list[int], position: int, greedy: bool) -> list[int]:
        """Check guesses of slot 0's next tokens; the tokens plain decoding would write (speculation.py)."""
        raise NotImplementedError(f"{self.name} does not check guesses")

    @abstractmethod
    def reset(self) -> None:
        """Every slot parked and empty."""

    @abstractmethod
    def close(self) -> None:
        """Free what the engine holds beyond its tensors (graphs, worker processes): a model switch, or exit."""

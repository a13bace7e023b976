"""The engine's sampler inside transformers' `generate`: grammars, seeds and log-probabilities on the plain path.

`generate` draws its samples from the process's global random generator (no per-request seed) and applies its
repetition penalty before any logits processor a caller adds (no log-probabilities of the model's own
distribution). So a request that carries a grammar, a seed or a wish for log-probabilities is sampled by
`sampling.sample` on its own one-row `SamplingState`, exactly as the fast engine samples it, inside a logits
processor that leaves only the chosen token possible; `generate` then runs greedy with nothing of its own to
apply. Other requests keep transformers' sampling.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from transformers import LogitsProcessor

from gptq_chat.engine.protocols import SamplingSettings, ScoredToken
from gptq_chat.engine.sampling import SamplingState, TokenScores, mask_words, sample, score


def needs_own_sampler(settings: SamplingSettings) -> bool:
    """Whether `generate`'s sampling falls short for the request (see the module's docstring); the rest keep it."""
    return settings.constraint is not None or settings.seed is not None or settings.logprobs is not None


class EngineSampler(LogitsProcessor):
    """Chooses each token of one generation (batch of one); `scored` holds the chosen tokens with their
    log-probabilities until the streamer takes them, `ended` says a complete grammar took its end token."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self.matcher = settings.constraint.start() if settings.constraint is not None else None
        self.state: SamplingState | None = None  # made at the first step, when the logits' width is known
        self.scores: TokenScores | None = None
        self.bits: torch.Tensor | None = None  # the grammar's mask on the host
        self.scored: deque[ScoredToken] = deque()
        self.ended = False

    def start(self, prompt: torch.Tensor, width: int, device: torch.device) -> SamplingState:
        """The one-row state, made at the first step: only the logits tell their width (Qwen's exceeds its
        tokenizer's) and device (the last layer's, when a model is split)."""
        state = SamplingState.allocate(1, width, device)
        self.scores = TokenScores.allocate(1, width, device)
        self.bits = torch.zeros(mask_words(width), dtype=torch.int32)
        state.configure(0, self.settings, prompt, self.next_mask())
        return state

    def next_mask(self) -> torch.Tensor | None:
        """The grammar's mask for the next token, filled into the one host buffer; None without a grammar."""
        if self.matcher is None:
            return None
        assert self.bits is not None
        self.matcher.fill_allowed(self.bits)
        return self.bits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Choose the token as the fast engine would, then leave it the only finite score: greedy `generate` takes
        exactly it."""
        if self.state is None:
            self.state = self.start(input_ids[0], scores.shape[-1], scores.device)
        state = self.state
        chosen = sample(scores, state, greedy=self.settings.temperature == 0)
        if self.settings.logprobs is not None:
            assert self.scores is not None
            score(scores, state.allowed, chosen, self.scores, 0)
            self.scored.append(self.scores.token(0, int(chosen), self.settings.logprobs))
        state.took(chosen)
        if self.matcher is not None:
            self.ended = self.matcher.finished  # a token after the grammar is complete is its end token
            self.matcher.advance(int(chosen))
            state.constrain(0, self.next_mask())
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen.unsqueeze(-1), 0.0)

    def streamed(self, token: int) -> Any:
        """What the stream yields for `token`: itself, or the scored token this sampler made for it."""
        return self.scored.popleft() if self.scored else token
